"""Export: ONNX through paddle2onnx (paddle.onnx.export) and Paddle's own inference format (paddle.jit.save).

Quantized models: paddle2onnx 2.1.0 maps Paddle 3's `quantize_linear`/`dequantize_linear` only for FP8
(its mapper asserts ``qmax == 448 || qmax == 57344``: "Paddle2ONNX: Only support e4m3 or e5m2 now." and
*aborts the process*). So we export the float twin of the quantized model with paddle2onnx (weights
dequantized) and then the core's QDQ rewriter (`unicompress.onnx.qdq`) puts back, on each quantized MatMul,
the integers and scales Paddle computed: an int8 weight initializer + DequantizeLinear (per channel, axis 1
of Paddle's [in, out]) and a QuantizeLinear/DequantizeLinear pair on the activation input with Paddle's
calibrated scale. ONNX Runtime fuses these into int8 kernels (MatMulIntegerToFloat / QLinearMatMul).

paddle.onnx.export's default optimizer step (polygraphy) sets POLYGRAPHY_AUTOINSTALL_DEPS=1 and
pip-installs onnx_graphsurgeon into the running environment at export time, and paddle.onnx.export logs
and swallows conversion errors; we call paddle.jit.save + paddle2onnx.export(optimize_tool="None").
Every file is written atomically (unicompress.fileio).
"""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from unicompress.fileio import atomic_directory, atomic_path

from .compat import paddle
from .layers import compressible



def input_spec(model: Any, example: Any) -> list:
    """InputSpecs with dynamic batch (and sequence) axes, named like the neutral inputs."""
    from paddle.static import InputSpec
    names = getattr(model, "input_names", ("input_ids", "attention_mask"))
    specs = []
    for n in names:
        arr = np.asarray(example[n] if isinstance(example, dict) else example)
        shape = [None] * arr.ndim if n != "pixel_values" else [None] + list(arr.shape[1:])
        specs.append(InputSpec(shape, str(arr.dtype), n))
    return specs


def float_twin(model: Any) -> tuple[Any, dict[str, Any]]:
    """A float copy of a (possibly quantized) model + {layer: unicompress.onnx.qdq.QDQLayer} for its converted
    QuantedLinear layers (weight = the twin's parameter, by name: Paddle's [in, out] kernel; activations
    symmetric int8 from Paddle's calibrated abs-max where they are quantized).

    Converted QuantedLinear layers become plain Linear layers holding the dequantized weight; log-quantized
    layers hold their log-dequantized weight."""
    from paddle.nn.quant.qat.linear import QuantedLinear

    from unicompress.onnx.qdq import ActivationQuant, QDQLayer, WeightRef

    from .quantization import activation_bits, activation_scale, quantized_weights

    twin = copy.deepcopy(model)
    qts = quantized_weights(model)
    info: dict[str, Any] = {}
    layers = compressible(twin)
    for name, qt in qts.items():
        layer = layers[name]
        lin = paddle.nn.Linear(layer.weight.shape[0], layer.weight.shape[1])
        lin.weight.set_value(qt.dequantize().T.astype(np.float32))
        lin.bias.set_value(layer.bias.numpy())
        if isinstance(layer, QuantedLinear):
            amax, act = activation_scale(layer), None
            if amax is not None:
                bits = activation_bits(layer)
                if bits > 8:
                    raise NotImplementedError(f"{bits}-bit activations need int16 QuantizeLinear "
                                              "(opset 21); this export writes opset <= 17 int8 QDQ")
                act = ActivationQuant(float(np.float32(max(amax, 1e-8) / (2 ** (bits - 1) - 1))), 0, signed=True)
            info[name] = QDQLayer(qt, WeightRef(lin.weight.name, transposed=True), act)
        parent_name, _, child = name.rpartition(".")
        parent = twin if not parent_name else dict(twin.named_sublayers())[parent_name]
        setattr(parent, child, lin)
    return twin, info


def _paddle2onnx(model: Any, path: Path, example: Any, opset: int) -> None:
    """paddle.jit.save to a temporary folder, then paddle2onnx.export (what paddle.onnx.export does, minus
    its swallowed errors and its polygraphy step that pip-installs onnx_graphsurgeon)."""
    import paddle2onnx

    saved = os.environ.get("POLYGRAPHY_AUTOINSTALL_DEPS")
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "model")
        paddle.jit.save(model, prefix, input_spec=input_spec(model, example))
        try:
            paddle2onnx.export(prefix + ".json", prefix + ".pdiparams", save_file=str(path), opset_version=opset,
                               enable_onnx_checker=True, optimize_tool="None")
        finally:
            if saved is None:
                os.environ.pop("POLYGRAPHY_AUTOINSTALL_DEPS", None)
            else:
                os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = saved
    if not Path(path).stat().st_size:
        raise RuntimeError("paddle2onnx wrote an empty file")


def export_onnx(model: Any, path: Path, example: Any, opset: int = 17) -> Path:
    """Write the model as ONNX (inputs named like the neutral inputs, output "logits", dynamic axes).

    Quantized models get QDQ nodes with Paddle's integers and scales (see the module docstring).
    Example: ``export_onnx(build_model("tiny-bert"), Path("m.onnx"), zoo.inputs_for(...))``.
    """
    import onnx

    from unicompress.onnx.passes import constants_to_initializers, name_dynamic_axes, rename_io
    from unicompress.onnx.qdq import insert_qdq

    twin, info = float_twin(model)
    twin.eval()
    with atomic_path(path) as tmp:
        _paddle2onnx(twin, tmp, example, opset)
        proto = onnx.load(str(tmp))
        rename_io(proto, {proto.graph.output[0].name: "logits"})
        name_dynamic_axes(proto)
        constants_to_initializers(proto)  # paddle2onnx without its optimizer writes parameters as Constants
        if info:  # the core's QDQ rewriter; it raises when a weight is not in the exported graph
            insert_qdq(proto, info)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


def export_native(model: Any, directory: Path) -> Path:
    """Paddle's deployable inference format (paddle.jit.save: model.json + model.pdiparams) under `directory`.

    Quantized models are saved with their quantize/dequantize layers (made PIR-traceable by
    `compat.pir_safe_qdq`); load them with ``paddle.jit.load(str(directory / "model"))``.
    """
    from . import compat
    compat.pir_safe_qdq(model)
    names = getattr(model, "input_names", ("input_ids", "attention_mask"))
    if "pixel_values" in names:
        example = {"pixel_values": np.zeros((1, model.config.image_size, model.config.image_size), np.float32)}
    else:  # token models (the zoo BERTs, the user-encoder): only dtype and rank matter for the InputSpec
        example = {"input_ids": np.zeros((1, 2), np.int64), "attention_mask": np.ones((1, 2), np.int64)}
    model.eval()
    with atomic_directory(directory) as tmp:
        paddle.jit.save(model, str(Path(tmp) / "model"), input_spec=input_spec(model, example))
    return directory
