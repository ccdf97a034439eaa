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
  run time (Shape -> Gather -> Concat -> Reshape of the constant): `fold_constant_shapes` folds these
  layout-only chains, so each projection is a MatMul on a 2-D initializer (its pruned zeros countable, its
  weights matchable for QDQ).
"""
from __future__ import annotations

from . import ensure_legacy_keras

ensure_legacy_keras()

import gc  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
import tf2onnx.optimizer  # noqa: E402
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


#: ops that only move or describe a constant's values (never change them): safe to evaluate at export
_LAYOUT_OPS = frozenset({"Shape", "Gather", "Concat", "Reshape", "Unsqueeze", "Squeeze", "ReduceProd", "Cast",
                         "Slice", "Transpose", "Identity", "Flatten"})


def fold_constant_shapes(proto: onnx.ModelProto) -> int:
    """Evaluate every layout-only node (`_LAYOUT_OPS`) whose inputs are all constants, replacing it by an
    initializer (onnx's reference evaluator); returns how many were folded. Quantize/Dequantize nodes are
    never folded, so QDQ weights stay QDQ."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = proto.graph
    consts = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    values: dict[str, np.ndarray] = {}
    kept, folded = [], 0
    for n in g.node:
        if n.op_type in _LAYOUT_OPS and n.input and all(i in consts for i in n.input if i) and len(n.output) == 1:
            feeds = {i: values.setdefault(i, numpy_helper.to_array(consts[i])) for i in n.input if i}
            out = ReferenceEvaluator(n).run(None, feeds)[0]
            tensor = numpy_helper.from_array(np.asarray(out), n.output[0])
            g.initializer.append(tensor)
            consts[n.output[0]] = tensor
            values[n.output[0]] = np.asarray(out)
            folded += 1
        else:
            kept.append(n)
    if folded:
        _drop_dead(g, kept)
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        for t in [t for t in g.initializer if t.name not in used]:  # the folded chains' own constants
            g.initializer.remove(t)
    return folded


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


def fuse_layer_norms(proto: onnx.ModelProto) -> int:
    """tf_keras' unfused LayerNormalization (epsilon < 1e-5, as BERT's 1e-12) -> one ONNX LayerNormalization.

    tf2onnx writes `tf.nn.moments` + `batch_normalization` as eleven element-wise nodes, the means as
    GlobalAveragePool, which ONNX Runtime's LayerNorm fusion does not recognise:
        mean = GAP(x); d = x - mean; var = GAP(d * d); r = 1 / sqrt(var + eps); m = r * gamma
        y = x * m + (beta - mean * m)
    Matched exactly (constant eps, gamma, beta) and replaced by LayerNormalization(x, gamma, beta, eps) on
    the last axis (opset 17); returns how many. The dead nodes are dropped.
    """
    from onnx import helper, numpy_helper

    if not any(o.domain in ("", "ai.onnx") and o.version >= 17 for o in proto.opset_import):
        return 0
    g = proto.graph
    nodes = list(g.node)
    producer = {o: n for n in nodes for o in n.output}
    consts = {t.name: t for t in g.initializer}

    def op(name: str, kind: str) -> Optional[onnx.NodeProto]:
        n = producer.get(name)
        return n if n is not None and n.op_type == kind else None

    def other(node: onnx.NodeProto, name: str) -> str:
        return node.input[1] if node.input[0] == name else node.input[0]

    replaced = {}
    for add in [n for n in nodes if n.op_type == "Add"]:
        try:
            scaled, sub = op(add.input[0], "Mul"), op(add.input[1], "Sub")
            if scaled is None or sub is None:
                continue
            m = producer[scaled.input[1]] if scaled.input[1] in producer else None
            x = scaled.input[0]
            if m is None or m.op_type != "Mul":
                continue
            beta, mean_m = sub.input
            mean_times = op(mean_m, "Mul")
            mean = op(mean_times.input[0], "GlobalAveragePool")
            if mean is None or mean.input[0] != x or mean_times.input[1] != m.output[0]:
                continue
            recip, gamma = m.input
            sqrt = op(op(recip, "Reciprocal").input[0], "Sqrt")
            plus_eps = op(sqrt.input[0], "Add")
            var, eps = plus_eps.input
            sq = op(op(var, "GlobalAveragePool").input[0], "Mul")
            diff = op(sq.input[0], "Sub")
            if sq.input[0] != sq.input[1] or list(diff.input) != [x, mean.output[0]]:
                continue
            if not (eps in consts and gamma in consts and beta in consts):
                continue
            epsilon = float(numpy_helper.to_array(consts[eps]).reshape(-1)[0])
            if numpy_helper.to_array(consts[gamma]).ndim != 1 or numpy_helper.to_array(consts[beta]).ndim != 1:
                continue
        except (AttributeError, KeyError, ValueError):  # a node of the pattern is missing: not a LayerNorm
            continue
        replaced[id(add)] = helper.make_node("LayerNormalization", [x, gamma, beta], [add.output[0]],
                                             name=f"{add.name}/LayerNormalization", axis=-1, epsilon=epsilon)
    if not replaced:
        return 0
    _drop_dead(g, [replaced.get(id(n), n) for n in nodes])
    return len(replaced)


def canonical_gelu(proto: onnx.ModelProto) -> int:
    """tf_keras' exact GELU, 0.5 x erfc(-x / sqrt 2), rewritten as 0.5 x (1 + erf(x / sqrt 2)) in the node
    order PyTorch exports (Div, Erf, Add, Mul, Mul), which ONNX Runtime fuses into Gelu / BiasGelu;
    tf2onnx's form (Neg, Mul, Erf, Sub(1, .)) is not recognised. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    g = proto.graph
    nodes = list(g.node)
    producer = {o: n for n in nodes for o in n.output}
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}

    def const(name: str, value: float) -> bool:
        return name in consts and consts[name].size == 1 and abs(float(consts[name].reshape(-1)[0]) - value) < 1e-6

    def kind(name: str, op_type: str) -> Optional[onnx.NodeProto]:
        n = producer.get(name)
        return n if n is not None and n.op_type == op_type else None

    def operand(node: onnx.NodeProto, value: float) -> Optional[str]:
        """The other input of a binary node one of whose inputs is the constant `value`."""
        a, b = node.input
        return b if const(a, value) else a if const(b, value) else None

    replaced = {}
    for mul in [n for n in nodes if n.op_type == "Mul"]:
        for half_name, erfc_name in (tuple(mul.input), tuple(reversed(mul.input))):
            half, erfc = kind(half_name, "Mul"), kind(erfc_name, "Sub")
            if half is None or erfc is None or not const(erfc.input[0], 1.0):
                continue
            x = operand(half, 0.5)
            erf = kind(erfc.input[1], "Erf")
            scaled = kind(erf.input[0], "Mul") if erf is not None else None
            neg = kind(operand(scaled, float(1 / np.sqrt(2))) or "", "Neg") if scaled is not None else None
            if x is None or neg is None or neg.input[0] != x:
                continue
            base = mul.name
            init = [numpy_helper.from_array(np.array(np.sqrt(2), np.float32), f"{base}/sqrt2"),
                    numpy_helper.from_array(np.array(1, np.float32), f"{base}/one"),
                    numpy_helper.from_array(np.array(0.5, np.float32), f"{base}/half")]
            g.initializer.extend(init)
            replaced[id(mul)] = [
                helper.make_node("Div", [x, f"{base}/sqrt2"], [f"{base}/div"], name=f"{base}/Div"),
                helper.make_node("Erf", [f"{base}/div"], [f"{base}/erf"], name=f"{base}/Erf"),
                helper.make_node("Add", [f"{base}/erf", f"{base}/one"], [f"{base}/add"], name=f"{base}/Add"),
                helper.make_node("Mul", [x, f"{base}/add"], [f"{base}/mul"], name=f"{base}/Mul"),
                helper.make_node("Mul", [f"{base}/mul", f"{base}/half"], [mul.output[0]], name=f"{base}/Half")]
            break
    if not replaced:
        return 0
    nodes = [m for n in nodes for m in replaced.get(id(n), [n])]
    _drop_dead(g, nodes)
    return len(replaced)


def _drop_dead(g: onnx.GraphProto, nodes: list) -> None:
    """Write `nodes` into the graph without the ones nothing reads, and drop the constants they alone read."""
    before = {i for n in nodes for i in n.input}
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in nodes for i in n.input} | outputs
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del g.node[:]
    g.node.extend(nodes)
    for t in [t for t in g.initializer if t.name in before and t.name not in used]:
        g.initializer.remove(t)


def dequantize_next_to_matmul(proto: onnx.ModelProto) -> int:
    """Q -> DQ -> Reshape -> MatMul  =>  Q -> Reshape -> DQ -> MatMul; returns how many were moved.

    Keras' Dense on a [batch, seq, hidden] input is `tf.tensordot`, which tf2onnx writes as
    Reshape -> MatMul -> Reshape; the activation fake-quant sits before the Reshape. ONNX Runtime only
    fuses DQ -> MatMul <- DQ into an integer MatMul when both DequantizeLinear feed the MatMul directly,
    so the (per-tensor) DequantizeLinear moves after the Reshape, which then reshapes the integers.
    """
    from onnx import helper

    g = proto.graph
    # protobuf's repeated fields copy on extend: edit a Python list of the nodes, write it back once
    nodes = list(g.node)
    producer = {o: n for n in nodes for o in n.output}
    consts = {t.name for t in g.initializer}
    moved = 0
    for matmul in [n for n in nodes if n.op_type == "MatMul"]:
        reshape = producer.get(matmul.input[0])
        if reshape is None or reshape.op_type != "Reshape":
            continue
        dq = producer.get(reshape.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in consts or \
                any(a.name == "axis" for a in dq.attribute) and _is_per_axis(g, dq):
            continue
        integers = f"{reshape.output[0]}_quantized"
        new_dq = helper.make_node("DequantizeLinear", [integers, *dq.input[1:]], [reshape.output[0]],
                                  name=f"{reshape.name}/DequantizeLinear")
        reshape.input[0], reshape.output[0] = dq.input[0], integers
        nodes.insert(next(i for i, n in enumerate(nodes) if n is reshape) + 1, new_dq)
        producer[integers], producer[new_dq.output[0]] = reshape, new_dq
        moved += 1
    # tensordot also reads the input's shape: Shape of the integers is the same, and frees the old DQ
    dequantized = {n.output[0]: n.input[0] for n in nodes if n.op_type == "DequantizeLinear"}
    for n in nodes:
        if n.op_type == "Shape" and n.input[0] in dequantized and dequantized[n.input[0]] not in consts:
            n.input[0] = dequantized[n.input[0]]
    used = {i for n in nodes for i in n.input} | {o.name for o in g.output}
    nodes = [n for n in nodes if n.op_type != "DequantizeLinear" or set(n.output) & used]
    del g.node[:]
    g.node.extend(nodes)
    return moved


def _is_per_axis(graph: onnx.GraphProto, dq: onnx.NodeProto) -> bool:
    scale = next((t for t in graph.initializer if t.name == dq.input[1]), None)
    return scale is None or len(scale.dims) > 0 and int(np.prod(scale.dims)) > 1


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
