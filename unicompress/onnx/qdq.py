"""The one QDQ rewriter: a float ONNX export + the backend's quantized tensors -> a quantized ONNX graph.

Every backend exports its quantized model as a float graph (weights = the dequantized integers) and hands
the integers over as neutral `QuantizedTensor`s; this module puts them back, so the file holds exactly the
integers and scales the toolkit computed:

- weights: ``int initializer -> DequantizeLinear -> (the nodes that read the float weight)``;
- static activations (`ActivationQuant` on a layer): ``x -> QuantizeLinear -> DequantizeLinear -> MatMul``,
  one QuantizeLinear per (input, qparams) and one DequantizeLinear per MatMul, the shape ONNX Runtime fuses
  into integer kernels;
- dynamic layers: ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(x_scale * w_scale) [-> Add bias]``,
  ONNX Runtime's own dynamic pattern (fused into MatMulIntegerToFloat).

Layers are found by value (`match_weights`): the MatMul/Gemm weight initializer equals the layer's float
weight in the orientation that node multiplies by. Exporters rename and re-scope freely; values survive.
A backend that knows its initializer names builds `WeightRef`s directly.

Opset rules: per-axis (per-channel) DequantizeLinear needs opset >= 13; DynamicQuantizeLinear 11;
MatMulInteger 10. Integers of up to 8 bits are stored in 8-bit containers (int8, or uint8 for grids with a
zero-point; 2..7-bit values fit them exactly) at any opset, as every backend did before this module: ONNX's
INT4/UINT4 types need opset 21 and ONNX Runtime fuses no integer kernels for them. Wider integers
(9..16 bits) are stored as int32, which DequantizeLinear reads (no integer kernels then). Needs onnx and numpy.

Example::

    refs = match_weights(proto, {"encoder.0.query": w_float})          # {layer: WeightRef}
    insert_qdq(proto, {n: QDQLayer(qweights[n], refs[n]) for n in refs})
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from ..backend.types import QuantizedTensor

#: what a per-axis DequantizeLinear needs
PER_AXIS_OPSET = 13


@dataclass(frozen=True)
class ActivationQuant:
    """Static quantization of a layer's input: ``q = clamp(round(x / scale) + zero_point)``, int8 or uint8."""

    scale: float
    zero_point: int = 0
    signed: bool = False


@dataclass(frozen=True)
class WeightRef:
    """Where a layer's weight lives in the graph: the initializer, and whether it holds the neutral
    [out, in] weight transposed ([in, out], as MatMul and Gemm without transB read it)."""

    initializer: str
    transposed: bool


@dataclass(frozen=True)
class QDQLayer:
    """One quantized layer to write: its integers (neutral [out, in], per-channel along axis 0), where its
    weight is, and how its input is quantized (`activation`: static; `dynamic`: at run time; neither:
    weight-only)."""

    tensor: QuantizedTensor
    ref: WeightRef
    activation: Optional[ActivationQuant] = None
    dynamic: bool = False


def container_dtype(t: QuantizedTensor) -> type:
    """The numpy integer type that stores `t` in ONNX: int8 / uint8 up to 8 bits, int32 above.

    uint8 for grids that are non-negative with a zero-point (or above 127), i.e. the asymmetric [0, 2^b-1]
    grid; int8 otherwise."""
    q, zp = np.asarray(t.q), np.asarray(t.zero_point)
    if t.bits > 8:
        return np.int32
    if q.size and q.min() >= 0 and zp.min(initial=0) >= 0 and (np.any(zp != 0) or q.max() > 127):
        return np.uint8
    return np.int8


def _fingerprint(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, hash(a.tobytes())


def _weight_layout(node: Any) -> Optional[bool]:
    """Whether the weight input (B) of a MatMul/Gemm holds [in, out] (True) or [out, in] (False)."""
    if node.op_type == "MatMul":
        return True
    if node.op_type == "Gemm":
        return not any(a.name == "transB" and a.i == 1 for a in node.attribute)
    return None


def match_weights(proto: Any, float_weights: Mapping[str, np.ndarray], atol: float = 0.0) -> dict[str, WeightRef]:
    """{layer: WeightRef} for the layers whose float weight (neutral [out, in]) is the weight initializer of a
    MatMul/Gemm, in the orientation that node multiplies by (a MatMul by W [out, in] is another computation).

    Values match exactly (a byte fingerprint) or, with `atol` > 0, within `atol` (for exporters that recompute
    the dequantized values, e.g. TensorFlow's constant folding). Each layer takes the first initializer in node
    order; layers with identical weights take distinct initializers. Layers not found are absent."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    exact: dict[tuple, list[str]] = {}  # fingerprint of the initializer-layout weight -> layers
    for lname, w in float_weights.items():
        w = np.asarray(w, np.float32)
        exact.setdefault(_fingerprint(w), []).append(lname)
        exact.setdefault(_fingerprint(w.T), []).append(lname)
    refs: dict[str, WeightRef] = {}
    taken: set[str] = set()
    for node in graph.node:
        layout = _weight_layout(node)
        if layout is None or len(node.input) < 2 or node.input[1] not in inits or node.input[1] in taken:
            continue
        value = numpy_helper.to_array(inits[node.input[1]])
        hit = None
        for lname in exact.get(_fingerprint(value), []):
            w = np.asarray(float_weights[lname], np.float32)
            if lname not in refs and np.array_equal(w.T if layout else w, value):
                hit = lname
                break
        if hit is None and atol > 0:
            hit = next((n for n, w in float_weights.items() if n not in refs and _close(w, value, layout, atol)),
                       None)
        if hit is not None:
            refs[hit] = WeightRef(node.input[1], layout)
            taken.add(node.input[1])
    return refs


def _close(w: np.ndarray, value: np.ndarray, transposed: bool, atol: float) -> bool:
    w = np.asarray(w, np.float32)
    w = w.T if transposed else w
    return w.shape == value.shape and bool(np.allclose(w, value, rtol=0, atol=atol))


def opset_of(proto: Any) -> int:
    """The default-domain opset the graph imports."""
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def insert_qdq(proto: Any, layers: Mapping[str, QDQLayer]) -> int:
    """Rewrite `proto` in place: every layer's weight initializer becomes its integers + DequantizeLinear,
    its MatMul/Gemm inputs get QuantizeLinear/DequantizeLinear (static) or the integer MatMul (dynamic).
    Returns how many layers were written; the float initializers they replaced are removed.

    Raises ValueError for log-mapped tensors (no ONNX operator), a shape that does not fit the initializer,
    per-channel parameters below opset 13, a dynamic layer wider than 8 bits, or a Gemm with alpha/beta != 1
    or transA (dynamic)."""
    graph = proto.graph
    opset = opset_of(proto)
    inits = {i.name: i for i in graph.initializer}
    names = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output} | \
        {i.name for i in graph.input}
    w = _Writer(graph, names)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    # every layer is checked before the graph is touched: a refusal leaves `proto` as it was
    prepared = {lname: _prepare(lname, layer, inits, consumers, graph, opset) for lname, layer in layers.items()}
    replaced: set[str] = set()
    for lname, layer in layers.items():
        t, ref = layer.tensor, layer.ref
        dtype, q, axis, scale, zp = prepared[lname]
        wq = w.const(f"{lname}.weight_quantized", np.ascontiguousarray(q.astype(dtype)))
        ws = w.const(f"{lname}.weight_scale", scale)
        wz = w.const(f"{lname}.weight_zero_point", zp)
        dq_w: Optional[str] = None
        for idx in consumers.get(ref.initializer, []):
            node = graph.node[idx]
            is_weight = _weight_layout(node) is not None and len(node.input) > 1 and \
                node.input[1] == ref.initializer
            if layer.dynamic and is_weight:
                w.replace(idx, _dynamic_nodes(w, idx, node, lname, t, dtype, wq, ws, wz, ref.transposed))
                continue
            if dq_w is None:  # one DequantizeLinear per weight, before its first reader
                dq_w = w.name(f"{lname}.weight_dequantized")
                w.before(idx, w.node("DequantizeLinear", [wq, ws, wz], [dq_w], f"{dq_w}/DequantizeLinear",
                                     **({"axis": axis} if axis is not None else {})))
            node.input[:] = [dq_w if i == ref.initializer else i for i in node.input]
            if is_weight and layer.activation is not None:
                node.input[0] = w.activation(idx, node.input[0], layer.activation, lname)
        replaced.add(ref.initializer)
    w.commit()
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    gone = (replaced | {i.name for i in w.inits}) - used  # e.g. the [out, in] integers a dynamic Gemm did not take
    keep = [i for i in graph.initializer if i.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name not in gone]  # IR < 4 lists initializers as inputs too
    del graph.input[:]
    graph.input.extend(inputs)
    return len(layers)


def _prepare(lname: str, layer: QDQLayer, inits: dict, consumers: dict, graph: Any, opset: int) -> tuple:
    """(container dtype, integers in the initializer's layout, DequantizeLinear axis, scale, zero point) of one
    layer, or ValueError when it cannot be written (see `insert_qdq`)."""
    t, ref = layer.tensor, layer.ref
    if t.mapping != "linear":
        raise ValueError(f"{lname}: {t.mapping}-mapped weights have no ONNX operator; export them as floats")
    if ref.initializer not in inits or not consumers.get(ref.initializer):
        raise ValueError(f"{lname}: no initializer {ref.initializer!r} that a node of the graph reads")
    dtype = container_dtype(t)
    q = np.asarray(t.q)
    q = q.T if ref.transposed else q
    dims = tuple(inits[ref.initializer].dims)
    if tuple(q.shape) != dims:
        raise ValueError(f"{lname}: ONNX weight {ref.initializer} has shape {dims}, the quantized one "
                         f"{tuple(np.shape(t.q))} ({'transposed' if ref.transposed else 'as is'})")
    axis = None if t.axis is None else (1 if ref.transposed else 0)
    if axis is not None and opset < PER_AXIS_OPSET:
        raise ValueError(f"{lname}: per-channel DequantizeLinear needs opset >= {PER_AXIS_OPSET} "
                         f"(the graph has {opset}); export with a newer opset or use per_tensor")
    if layer.dynamic:
        if t.bits > 8:
            raise ValueError(f"{lname}: MatMulInteger takes 8-bit weights (got {t.bits} bits)")
        for idx in consumers[ref.initializer]:
            node = graph.node[idx]
            attrs = {a.name: a for a in node.attribute}
            if node.op_type == "Gemm" and (any(k in attrs and abs(attrs[k].f - 1.0) > 0 for k in ("alpha", "beta"))
                                           or ("transA" in attrs and attrs["transA"].i)):
                raise ValueError(f"ONNX node {node.name}: Gemm with alpha/beta != 1 or transA is not rewritten")
    scale = np.asarray(t.scale, np.float32).reshape(-1 if axis is not None else ())
    zp = np.asarray(t.zero_point).astype(dtype).reshape(-1 if axis is not None else ())
    return dtype, q, axis, scale, zp


def _dynamic_nodes(w: "_Writer", idx: int, node: Any, lname: str, t: QuantizedTensor, dtype: type,
                   wq: str, ws: str, wz: str, transposed: bool) -> list:
    """MatMul/Gemm -> DynamicQuantizeLinear(x) (shared per input) + MatMulInteger + Cast + Mul [+ Add bias]."""
    from onnx import TensorProto

    x = node.input[0]
    xq, xs, xz = w.dynamic_input(idx, x)
    if not transposed:  # MatMulInteger wants [in, out]
        wq = w.const(f"{lname}.weight_quantized_t", np.ascontiguousarray(np.asarray(t.q).T.astype(dtype)))
    p = "/" + lname.replace(".", "/")
    acc, acc_f, both = w.name(p + "/MatMulInteger_output"), w.name(p + "/Cast_output"), \
        w.name(p + "/Mul_scales_output")
    out = node.output[0]
    has_bias = node.op_type == "Gemm" and len(node.input) > 2 and bool(node.input[2])
    mul = w.name(p + "/Mul_output") if has_bias else out
    nodes = [w.node("MatMulInteger", [xq, wq, xz, wz], [acc], p + "/MatMulInteger"),
             w.node("Mul", [xs, ws], [both], p + "/Mul_scales"),
             w.node("Cast", [acc], [acc_f], p + "/Cast", to=TensorProto.FLOAT),
             w.node("Mul", [acc_f, both], [mul], p + "/Mul")]
    if has_bias:
        nodes.append(w.node("Add", [mul, node.input[2]], [out], p + "/Add_bias"))
    return nodes


class _Writer:
    """Collects new initializers and nodes (inserted before / replacing existing ones) with unique names,
    and writes them into the graph once, in an order that stays topological."""

    def __init__(self, graph: Any, names: set[str]):
        self.graph, self.names = graph, names
        self.inits: list[Any] = []
        self._before: dict[int, list[Any]] = {}
        self._replace: dict[int, list[Any]] = {}
        self._q: dict[tuple, tuple[str, str, str]] = {}
        self._dq_x: dict[str, tuple[str, str, str]] = {}

    def name(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> Any:
        from onnx import helper

        return helper.make_node(op, inputs, outputs, name=self.name(name), **attrs)

    def before(self, idx: int, node: Any) -> None:
        self._before.setdefault(idx, []).append(node)

    def replace(self, idx: int, nodes: list) -> None:
        self._replace[idx] = nodes

    def activation(self, idx: int, x: str, a: ActivationQuant, lname: str) -> str:
        """x -> QuantizeLinear (one per input and qparams, before its first reader) -> DequantizeLinear (one per
        reader); returns the dequantized name that reader takes."""
        adt = np.int8 if a.signed else np.uint8
        key = (x, float(a.scale), int(a.zero_point), a.signed)
        if key not in self._q:
            tag = self.name(f"{x}.quantized_{len(self._q)}")
            s = self.const(tag + ".scale", np.array(a.scale, np.float32))
            z = self.const(tag + ".zero_point", np.array(a.zero_point, adt))
            self.before(idx, self.node("QuantizeLinear", [x, s, z], [tag], tag + "/QuantizeLinear"))
            self._q[key] = (tag, s, z)
        tag, s, z = self._q[key]
        dq = self.name(f"{tag}.dequantized_for_{lname}")
        self.before(idx, self.node("DequantizeLinear", [tag, s, z], [dq], dq + "/DequantizeLinear"))
        return dq

    def dynamic_input(self, idx: int, x: str) -> tuple[str, str, str]:
        """DynamicQuantizeLinear(x), one per input, before its first reader: (integers, scale, zero point)."""
        if x not in self._dq_x:
            base = self.name(f"{x}.dynamic_quantized")
            outs = (base, self.name(base + ".scale"), self.name(base + ".zero_point"))
            self._dq_x[x] = outs
            self.before(idx, self.node("DynamicQuantizeLinear", [x], list(outs), f"{x}/DynamicQuantizeLinear"))
        return self._dq_x[x]

    def commit(self) -> None:
        nodes = []
        for i, node in enumerate(self.graph.node):
            nodes.extend(self._before.get(i, []))
            nodes.extend(self._replace.get(i, [node]))
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.graph.initializer.extend(self.inits)


__all__ = ["ActivationQuant", "WeightRef", "QDQLayer", "container_dtype", "match_weights", "insert_qdq",
           "opset_of", "PER_AXIS_OPSET"]
