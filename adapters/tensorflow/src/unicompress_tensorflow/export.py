"""ONNX export with tf2onnx (Keras models via from_keras, TFLite flatbuffers via from_tflite) and the
native export (the TFLite flatbuffer). Every file is written atomically.

tf2onnx pitfalls handled here:
- `from_keras` binds the input signature to `model.inputs` by position, and a functional model with
  dict inputs orders `model.inputs` by sorted key (attention_mask before input_ids): the signature is
  built from `model.inputs` itself, never from the caller's dict order.
- tf_keras' exact GELU is `tf.nn.gelu(approximate=False)`, which lowers to `Erfc`; ONNX has no Erfc,
  so a custom handler rewrites it as 1 - Erf(x).
- names: graph inputs keep the neutral names; the output is renamed to "logits".
- keras MultiHeadAttention's einsums become MatMuls whose kernels tf2onnx leaves as 5-D constants reshaped at
  run time; tf_keras' LayerNormalization and exact GELU come out unfused; a Dense's activation DQ sits before
  tensordot's Reshape. The core's graph passes (`unicompress.onnx.passes`) fold, fuse and move these.
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

import gc  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
import tf2onnx.optimizer  # noqa: E402
from tf2onnx import utils as tf2onnx_utils  # noqa: E402
from unicompress.backend.types import Inputs  # noqa: E402
from unicompress.fileio import atomic_path, atomic_write_bytes  # noqa: E402
from unicompress.onnx.passes import (canonical_gelu, dequantize_next_to_matmul, fold_constant_shapes,  # noqa: E402
                                     fuse_layer_norms, rename_io)

OUTPUT_NAME = "logits"


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx custom handler: Erfc(x) -> Sub(1, Erf(x))."""
    dtype = ctx.get_dtype(node.input[0])
    erf = ctx.make_node("Erf", [node.input[0]])
    one = ctx.make_const(tf2onnx_utils.make_name("one"),
                         np.array(1, dtype=tf2onnx_utils.map_onnx_to_numpy_type(dtype)))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def _tflite_gelu(ctx, node, name, args):
    """tf2onnx custom handler for the TFLite GELU op (no ONNX Gelu before opset 20):
    0.5 * x * (1 + erf(x / sqrt(2))), or the tanh form when the op says approximate."""
    x = node.input[0]
    np_dtype = tf2onnx_utils.map_onnx_to_numpy_type(ctx.get_dtype(x))

    def const(value):
        return ctx.make_const(tf2onnx_utils.make_name("gelu_c"), np.array(value, dtype=np_dtype)).output[0]

    if node.get_attr_value("approximate", False):
        cube = ctx.make_node("Mul", [x, ctx.make_node("Mul", [x, x]).output[0]]).output[0]
        inner = ctx.make_node("Add", [x, ctx.make_node("Mul", [cube, const(0.044715)]).output[0]]).output[0]
        core = ctx.make_node("Tanh", [ctx.make_node("Mul", [inner, const(np.sqrt(2 / np.pi))]).output[0]])
    else:
        core = ctx.make_node("Erf", [ctx.make_node("Mul", [x, const(1 / np.sqrt(2))]).output[0]])
    one_plus = ctx.make_node("Add", [core.output[0], const(1.0)]).output[0]
    half_x = ctx.make_node("Mul", [x, const(0.5)]).output[0]
    node.type = "Mul"
    for attr in list(node.attr):
        del node.attr[attr]
    ctx.replace_inputs(node, [half_x, one_plus])


CUSTOM_OP_HANDLERS = {"Erfc": (_erfc_as_one_minus_erf, []), "TFL_GELU": (_tflite_gelu, [])}


def input_signature(model: Any) -> list[tf.TensorSpec]:
    """TensorSpecs in `model.inputs` order (what from_keras binds to), batch/sequence axes dynamic."""
    return [tf.TensorSpec([None] + list(t.shape[1:]), t.dtype, name=t.name.split(":")[0]) for t in model.inputs]


def _collecting(factory: Callable[[], Any]) -> Callable[[], Any]:
    """A tf2onnx optimizer factory that first frees the graph copies earlier optimizers left behind."""
    def make() -> Any:
        gc.collect()
        return factory()
    return make


#: weights above this size make the export collect garbage between tf2onnx's passes (see onnx_optimizers)
COLLECT_ABOVE_BYTES = 32 * 2**20


def onnx_optimizers(collect: bool = True) -> dict[str, Callable[[], Any]]:
    """tf2onnx's own optimizer passes, each preceded by a garbage collection when `collect`.

    tf2onnx's `optimize_graph` deep-copies the whole graph, constants included, before every pass (to
    roll back a failing one); the copies it drops hold reference cycles, so they wait for Python's cyclic
    collector, which counts objects, not bytes: on MiniLM (90 MB of weights) the dead copies took the
    export's peak to 6.2 GB instead of 2.6 GB. A full collection costs about 0.25 s in a process that has
    TensorFlow loaded, 37 of them per export: worth it for large models only (tiny-bert: 10.2 s against
    1.1 s per export, for no memory that matters).
    """
    passes = tf2onnx.optimizer._get_optimizers()
    return {name: _collecting(factory) for name, factory in passes.items()} if collect else dict(passes)


def _weight_bytes(model: Any) -> int:
    return sum(int(np.prod(w.shape)) * w.dtype.size for w in model.weights)


def keras_to_onnx(model: Any, opset: int = 17) -> onnx.ModelProto:
    """tf2onnx.convert.from_keras with the fixes above; inputs keep their names, output is 'logits'."""
    large = _weight_bytes(model) > COLLECT_ABOVE_BYTES
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=input_signature(model), opset=opset,
                                          custom_op_handlers=CUSTOM_OP_HANDLERS,
                                          optimizers=onnx_optimizers(collect=large))
    if large:
        gc.collect()  # tf2onnx's last graphs are cyclic garbage too (~1 GB on MiniLM until the collector runs)
    fold_constant_shapes(proto)
    fuse_layer_norms(proto)
    canonical_gelu(proto)
    return rename_io(proto, {proto.graph.output[0].name: OUTPUT_NAME})




def weights_as_qdq(proto: onnx.ModelProto, qweights: dict) -> int:
    """Store fake-quantized weights as integers + DequantizeLinear (QDQ); returns how many were rewritten.

    TensorFlow's grappler constant-folds FakeQuant on a constant kernel while tf2onnx freezes the graph,
    so a TFMOT-quantized Dense reaches ONNX as a float initializer holding the dequantized values (as
    TensorFlow computed them: equal to the toolkit's integers times scales within 1e-6). The core's QDQ
    rewriter (`unicompress.onnx.qdq`) finds that initializer by value and replaces it by the integers and
    a (per-axis) DequantizeLinear. Log-mapped and wider-than-8-bit tensors stay float.
    """
    from unicompress.onnx.qdq import QDQLayer, insert_qdq, match_weights

    linear = {n: t for n, t in qweights.items() if t.mapping == "linear" and t.bits <= 8}
    refs = match_weights(proto, {n: t.dequantize().astype(np.float32) for n, t in linear.items()}, atol=1e-6)
    return insert_qdq(proto, {n: QDQLayer(linear[n], ref) for n, ref in refs.items()})




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
    from .tflite import TFLiteModel  # local: quantization imports this module

    from .quantization import quantized_weights

    if isinstance(model, TFLiteModel):
        proto = tflite_to_onnx(model.flatbuffer, opset)
    else:
        proto = keras_to_onnx(model, opset)
        if weights_as_qdq(proto, quantized_weights(model)):
            dequantize_next_to_matmul(proto)
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return Path(path)


def tflite_flatbuffer(model: Any) -> bytes:
    """The TFLite flatbuffer of a model: dynamic-range models keep their own; a static model whose spec
    TFLite's int8 kernels can run becomes a full-int8 flatbuffer (integer FULLY_CONNECTED for the selected
    Dense layers, all else float); anything else is converted as is (a static model with other settings
    keeps TFMOT's fake-quant as QUANTIZE/DEQUANTIZE ops)."""
    from .tflite import TFLiteModel, static_int8_flatbuffer

    if isinstance(model, TFLiteModel):
        return model.flatbuffer
    int8 = static_int8_flatbuffer(model)
    if int8 is not None:
        return int8
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return converter.convert()


def export_native(model: Any, directory: Path) -> Path:
    """Write `<directory>/model.tflite` (the TFLite flatbuffer); returns its path."""
    path = Path(directory) / "model.tflite"
    atomic_write_bytes(path, tflite_flatbuffer(model))
    return path
