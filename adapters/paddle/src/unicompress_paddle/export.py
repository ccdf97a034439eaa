"""Export: ONNX through paddle2onnx (paddle.onnx.export) and Paddle's own inference format (paddle.jit.save).

Quantized models: paddle2onnx 2.1.0 maps Paddle 3's `quantize_linear`/`dequantize_linear` only for FP8
(its mapper asserts ``qmax == 448 || qmax == 57344``: "Paddle2ONNX: Only support e4m3 or e5m2 now." and
*aborts the process*). So we export the float twin of the quantized model with paddle2onnx (weights
dequantized) and then put back, on each quantized MatMul, the integers and scales Paddle computed:
an int8 weight initializer + DequantizeLinear (per channel, axis 1 of Paddle's [in, out]) and a
QuantizeLinear/DequantizeLinear pair on the activation input with Paddle's calibrated scale. ONNX Runtime
fuses these into int8 kernels (MatMulIntegerToFloat / QLinearMatMul).

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


def float_twin(model: Any) -> tuple[Any, dict[str, dict]]:
    """A float copy of a (possibly quantized) model + {weight param name: quantization info}.

    Converted QuantedLinear layers become plain Linear layers holding the dequantized weight; log-quantized
    layers hold their log-dequantized weight."""
    from paddle.nn.quant.qat.linear import QuantedLinear

    from .quantization import activation_bits, activation_scale, quantized_weights, weight_qparams

    twin = copy.deepcopy(model)
    qts = quantized_weights(model)
    info: dict[str, dict] = {}
    layers = compressible(twin)
    for name, qt in qts.items():
        layer = layers[name]
        lin = paddle.nn.Linear(layer.weight.shape[0], layer.weight.shape[1])
        lin.weight.set_value(qt.dequantize().T.astype(np.float32))
        lin.bias.set_value(layer.bias.numpy())
        if isinstance(layer, QuantedLinear):
            _, bits, axis = weight_qparams(layer)
            container = np.int8 if bits <= 8 else np.int32  # DequantizeLinear takes int32 (no int8 kernels then)
            info[lin.weight.name] = {"q": qt.q.T.astype(container), "scale": np.atleast_1d(qt.scale).astype(np.float32),
                                     "axis": axis, "bits": bits, "act_amax": activation_scale(layer),
                                     "act_bits": activation_bits(layer)}
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


def _rename_io(graph, model: Any) -> None:
    """Output named "logits"; dynamic axes named batch / sequence."""
    old = graph.output[0].name
    for node in graph.node:
        for i, o in enumerate(node.output):
            if o == old:
                node.output[i] = "logits"
        for i, o in enumerate(node.input):
            if o == old:
                node.input[i] = "logits"
    graph.output[0].name = "logits"
    for vi in list(graph.input) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim
        for j, d in enumerate(dims):
            if not d.dim_value:
                d.dim_param = "batch" if j == 0 else "sequence"


def _constants_to_initializers(graph) -> None:
    """paddle2onnx (without its optimizer) emits every parameter as a Constant node; make them initializers
    so weights are graph initializers as usual (and QDQ can replace them)."""
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = node.attribute[0].t
            t.name = node.output[0]
            graph.initializer.append(t)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _insert_qdq(graph, info: dict[str, dict]) -> int:
    """Replace float weights of quantized MatMuls by int8 + DequantizeLinear, and quantize their inputs."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    new_nodes, count = [], 0
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in info and node.input[1] in inits:
            meta, w = info[node.input[1]], node.input[1]
            graph.initializer.remove(inits[w])
            wscale = meta["scale"] if meta["axis"] is not None else meta["scale"][:1].reshape(())
            graph.initializer.extend([
                numpy_helper.from_array(meta["q"], f"{w}_q"),
                numpy_helper.from_array(np.asarray(wscale, np.float32), f"{w}_scale"),
                numpy_helper.from_array(np.zeros(np.shape(wscale), meta["q"].dtype), f"{w}_zp")])
            dq_attrs = {"axis": 1} if meta["axis"] is not None else {}
            new_nodes.append(helper.make_node("DequantizeLinear", [f"{w}_q", f"{w}_scale", f"{w}_zp"],
                                              [f"{w}_dq"], name=f"{w}_DequantizeLinear", **dq_attrs))
            x = node.input[0]
            if meta["act_amax"] is not None:
                if meta["act_bits"] > 8:
                    raise NotImplementedError(f"{meta['act_bits']}-bit activations need int16 QuantizeLinear "
                                              "(opset 21); this export writes opset <= 17 int8 QDQ")
                qmax = 2 ** (meta["act_bits"] - 1) - 1
                a = f"{w}_act"
                graph.initializer.extend([
                    numpy_helper.from_array(np.asarray(max(meta["act_amax"], 1e-8) / qmax, np.float32), f"{a}_scale"),
                    numpy_helper.from_array(np.asarray(0, np.int8), f"{a}_zp")])
                new_nodes.append(helper.make_node("QuantizeLinear", [x, f"{a}_scale", f"{a}_zp"], [f"{a}_q"],
                                                  name=f"{a}_QuantizeLinear"))
                new_nodes.append(helper.make_node("DequantizeLinear", [f"{a}_q", f"{a}_scale", f"{a}_zp"],
                                                  [f"{a}_dq"], name=f"{a}_DequantizeLinear"))
                x = f"{a}_dq"
            node.input[0], node.input[1] = x, f"{w}_dq"
            count += 1
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return count


def export_onnx(model: Any, path: Path, example: Any, opset: int = 17) -> Path:
    """Write the model as ONNX (inputs named like the neutral inputs, output "logits", dynamic axes).

    Quantized models get QDQ nodes with Paddle's integers and scales (see the module docstring).
    Example: ``export_onnx(build_model("tiny-bert"), Path("m.onnx"), zoo.inputs_for(...))``.
    """
    import onnx

    twin, info = float_twin(model)
    twin.eval()
    with atomic_path(path) as tmp:
        _paddle2onnx(twin, tmp, example, opset)
        proto = onnx.load(str(tmp))
        _rename_io(proto.graph, model)
        _constants_to_initializers(proto.graph)
        if info:
            n = _insert_qdq(proto.graph, info)
            if n != len(info):
                raise RuntimeError(f"placed QDQ on {n} of {len(info)} quantized layers; the exported graph "
                                   "does not use the weights as MatMul inputs")
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
