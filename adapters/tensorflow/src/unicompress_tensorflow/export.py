"""ONNX export with tf2onnx (Keras models via from_keras, TFLite flatbuffers via from_tflite) and the
native export (the TFLite flatbuffer). Every file is written atomically.

tf2onnx pitfalls handled here:
- `from_keras` binds the input signature to `model.inputs` by position, and a functional model with
  dict inputs orders `model.inputs` by sorted key (attention_mask before input_ids): the signature is
  built from `model.inputs` itself, never from the caller's dict order.
- tf_keras' exact GELU is `tf.nn.gelu(approximate=False)`, which lowers to `Erfc`; ONNX has no Erfc,
  so a custom handler rewrites it as 1 - Erf(x).
- names: graph inputs keep the neutral names; the output is renamed to "logits".
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from tf2onnx import utils as tf2onnx_utils  # noqa: E402
from unicompress.backend.types import Inputs  # noqa: E402
from unicompress.fileio import atomic_path, atomic_write_bytes  # noqa: E402

OUTPUT_NAME = "logits"


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx custom handler: Erfc(x) -> Sub(1, Erf(x))."""
    dtype = ctx.get_dtype(node.input[0])
    erf = ctx.make_node("Erf", [node.input[0]])
    one = ctx.make_const(tf2onnx_utils.make_name("one"),
                         np.array(1, dtype=tf2onnx_utils.map_onnx_to_numpy_type(dtype)))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


CUSTOM_OP_HANDLERS = {"Erfc": (_erfc_as_one_minus_erf, [])}


def input_signature(model: Any) -> list[tf.TensorSpec]:
    """TensorSpecs in `model.inputs` order (what from_keras binds to), batch/sequence axes dynamic."""
    return [tf.TensorSpec([None] + list(t.shape[1:]), t.dtype, name=t.name.split(":")[0]) for t in model.inputs]


def rename_io(proto: onnx.ModelProto, renames: dict[str, str]) -> onnx.ModelProto:
    """Rename graph inputs/outputs (and every reference to them)."""
    g = proto.graph
    for vi in list(g.input) + list(g.output):
        if vi.name in renames:
            vi.name = renames[vi.name]
    for node in g.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    return proto


def keras_to_onnx(model: Any, opset: int = 17) -> onnx.ModelProto:
    """tf2onnx.convert.from_keras with the fixes above; inputs keep their names, output is 'logits'."""
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=input_signature(model), opset=opset,
                                          custom_op_handlers=CUSTOM_OP_HANDLERS)
    return rename_io(proto, {proto.graph.output[0].name: OUTPUT_NAME})


def tflite_to_onnx(flatbuffer: bytes, opset: int = 17) -> onnx.ModelProto:
    """tf2onnx.convert.from_tflite: TFLite int8 tensors become QuantizeLinear/DequantizeLinear (QDQ)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(flatbuffer)
        proto, _ = tf2onnx.convert.from_tflite(str(path), opset=opset, custom_op_handlers=CUSTOM_OP_HANDLERS)
    renames = {vi.name: _neutral_input_name(vi.name) for vi in proto.graph.input}
    renames[proto.graph.output[0].name] = OUTPUT_NAME
    return rename_io(proto, renames)


def _neutral_input_name(name: str) -> str:
    # TFLite signature inputs are "serving_default_<name>:0"
    name = name.split(":")[0]
    return name[len("serving_default_"):] if name.startswith("serving_default_") else name


def export_onnx(model: Any, path: Path, example: Inputs, opset: int = 17) -> Path:
    """Write the model as ONNX (quantized models as QDQ), checked by onnx.checker; returns the path."""
    from .quantization import TFLiteModel  # local: quantization imports this module

    proto = tflite_to_onnx(model.flatbuffer, opset) if isinstance(model, TFLiteModel) else \
        keras_to_onnx(model, opset)
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return Path(path)


def tflite_flatbuffer(model: Any) -> bytes:
    """A float TFLite flatbuffer of a Keras model (quantized models keep their own flatbuffer)."""
    from .quantization import TFLiteModel

    if isinstance(model, TFLiteModel):
        return model.flatbuffer
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return converter.convert()


def export_native(model: Any, directory: Path) -> Path:
    """Write `<directory>/model.tflite` (the TFLite flatbuffer); returns its path."""
    path = Path(directory) / "model.tflite"
    atomic_write_bytes(path, tflite_flatbuffer(model))
    return path
