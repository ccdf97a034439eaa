"""The compressible layers of an ONNX graph, their names and roles, and their weights in neutral terms.

A layer is a node that multiplies by a constant: MatMul, or Gemm (transA=0, alpha=1), on an initializer or
on a DequantizeLinear of an integer initializer (QDQ), or MatMulInteger on one (``quantize_dynamic``):
kind "linear"; Gather on a 2-D float initializer: kind "embedding". Neutral layout [out, in]: MatMul's B
is [in, out] (transposed here), Gemm honours transB.

Names, stable through ONNX Runtime's rewrites:
  1. the weight initializer's name less ORT's suffixes (``_quantized``, ``_Transposed``) and ``.weight``
     (``bert.encoder.layer.0.attention.self.query.weight`` -> ``bert.encoder.layer.0.attention.self.query``);
  2. else the node's TorchScript scope path (``/bert/encoder/layer.0/attention/self/query/MatMul`` -> the same);
  3. else the node's name, else the initializer's; a repeated name gets ``_1``, ``_2``, ...
Handlers that rewrite the graph first `canonicalize` it (weight initializers renamed ``<layer>.weight``), so
rule 1 gives every layer the name it had. Roles come from names (the core's `role_from_name`, as on every
backend) through `assign_roles(..., None)`: no structure is discovered, so the planner refuses head and
neuron pruning.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from unicompress.backend.types import LayerInfo, LayerStats, QuantizedTensor, count_nonzero, known_names
from unicompress.specs.selector import LayerRole
from unicompress.structure import assign_roles, block_from_name, role_from_name

#: marks the two nodes a low-rank factorisation made (their roles are those of the layer they replaced)
LOW_RANK_MARK = "unicompress:low_rank"
_INT_BITS = {onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT16: 16,
             onnx.TensorProto.UINT16: 16, onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}

@dataclass(frozen=True)
class Layer:
    """One weight of the graph: the node that consumes it and where its values (and qparams) live."""

    name: str
    kind: str  # "linear" or "embedding"
    node: Any  # the consuming onnx.NodeProto
    source: str  # the initializer holding the weight (float, or integers when quantized)
    transposed: bool  # the initializer is [in, out] (MatMul B, Gemm with transB=0)
    scale: Optional[str] = None  # qparam initializers of an integer weight
    zero_point: Optional[str] = None
    axis: Optional[int] = None  # per-channel axis in the initializer's own layout; None: per tensor

    @property
    def role(self) -> LayerRole:
        base = self.name[:-2] if self.node.doc_string == LOW_RANK_MARK else self.name
        if self.kind == "embedding":
            return LayerRole.embedding
        return role_from_name(base)


def _attr(node: Any, name: str, default: Any) -> Any:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _dims(tensor: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.dims)


def _found(node: Any, inits: dict, producers: dict) -> Optional[tuple]:
    """(kind, source, transposed, scale, zero_point, axis) of a weight-consuming node, or None."""
    op = node.op_type
    if op == "Gather" and node.input[0] in inits:
        t = inits[node.input[0]]
        return ("embedding", t.name, False, None, None, None) if t.data_type in _FLOATS and len(t.dims) == 2 else None
    if op == "Gemm" and (_attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0):
        return None  # not x @ W (+ b): left alone
    if op not in ("MatMul", "Gemm", "MatMulInteger") or len(node.input) < 2:
        return None
    transposed = not (op == "Gemm" and _attr(node, "transB", 0))
    b = node.input[1]
    if b in inits and len(inits[b].dims) == 2:
        if op == "MatMulInteger":  # ORT dynamic: qparams are initializers named after the integer weight
            base = b[:-len("_quantized")] if b.endswith("_quantized") else b
            scale = base + "_scale" if base + "_scale" in inits else None
            zp = node.input[3] if len(node.input) > 3 and node.input[3] else None
            per_channel = scale is not None and int(np.prod(_dims(inits[scale]))) > 1
            return "linear", b, True, scale, zp, (1 if per_channel else None)
        return ("linear", b, transposed, None, None, None) if inits[b].data_type in _FLOATS else None
    dq = producers.get(b)
    if op != "MatMulInteger" and dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
        q = inits[dq.input[0]]
        if len(q.dims) != 2 or q.data_type not in _INT_BITS:
            return None
        scale = dq.input[1]
        zp = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
        per_channel = int(np.prod(_dims(inits[scale]))) > 1 if scale in inits else False
        axis = _attr(dq, "axis", 1) % 2 if per_channel else None
        return "linear", q.name, transposed, scale, zp, axis
    return None


def _layer_name(node: Any, source: str) -> str:
    """Rules 1-3 of the module docstring (before de-duplication)."""
    base = re.sub(r"_Transposed(_\d+)?$", "", source[:-len("_quantized")] if source.endswith("_quantized") else source)
    if base.endswith(".weight"):
        return base[:-len(".weight")]
    if node.name.startswith("/") and node.name.count("/") >= 2:
        return ".".join(node.name.strip("/").split("/")[:-1])
    return node.name or base


def discover(model: Any) -> list[Layer]:
    """Every layer of the graph, in node order, with unique names."""
    g = model.graph
    lazy = next((t.name for t in g.initializer if t.data_location == onnx.TensorProto.EXTERNAL), None)
    if lazy is not None:
        raise ValueError(f"initializer {lazy!r} is stored in an external data file that was not loaded: load the "
                         "model with onnx.load(path) (load_external_data=True, the default) before compressing it")
    inits = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    out, seen = [], set()
    for node in g.node:
        found = _found(node, inits, producers)
        if found is None:
            continue
        name = candidate = _layer_name(node, found[1])
        i = 0
        while name in seen:
            i += 1
            name = f"{candidate}_{i}"
        seen.add(name)
        out.append(Layer(name, *found[:1], node, *found[1:]))
    return out


def by_name(model: Any) -> dict[str, Layer]:
    return {layer.name: layer for layer in discover(model)}


def layer_infos(model: Any) -> list[LayerInfo]:
    """`LayerInfo`s with roles from `assign_roles` (no structure: the name fallback decides)."""
    raw = [LayerInfo(la.name, la.kind, la.role, _neutral_shape(model, la), block_from_name(la.name))
           for la in discover(model)]
    return assign_roles(raw, None)


# ---- values ---------------------------------------------------------------------------------------------
def _init(model: Any, name: str) -> Any:
    return next(t for t in model.graph.initializer if t.name == name)


def _array(model: Any, name: str) -> np.ndarray:
    return numpy_helper.to_array(_init(model, name))


def _neutral_shape(model: Any, layer: Layer) -> tuple[int, ...]:
    dims = _dims(_init(model, layer.source))
    return dims[::-1] if layer.transposed else dims


def _along(p: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """A qparam shaped to broadcast over the initializer's channel axis."""
    return p.reshape((-1, 1) if axis == 0 else (1, -1)) if axis is not None and p.size > 1 else p.reshape(())


def _qparams(model: Any, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    scale = _array(model, layer.scale).astype(np.float64) if layer.scale else np.array(1.0)
    zp = _array(model, layer.zero_point).astype(np.int64) if layer.zero_point else np.zeros_like(scale, np.int64)
    return scale, zp


def weight(model: Any, layer: Layer) -> np.ndarray:
    """The float weight in the neutral layout (integers dequantized with their scale and zero-point)."""
    arr = _array(model, layer.source)
    if layer.scale is not None or arr.dtype.kind in "iu":
        scale, zp = _qparams(model, layer)
        arr = (arr.astype(np.int64) - _along(zp, layer.axis)) * _along(scale, layer.axis)
    arr = arr.astype(np.float32)
    return arr.T if layer.transposed else arr


def weights(model: Any, names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Float weights of the named layers (default: all), neutral [out, in]."""
    layers = by_name(model)
    return {n: weight(model, layers[n]) for n in known_names(layers, names)}


def replace_initializer(model: Any, name: str, array: np.ndarray) -> None:
    """Overwrite (or add) initializer `name` with `array`."""
    tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(tensor)
            return
    model.graph.initializer.append(tensor)


def drop_if_unused(model: Any, name: str) -> None:
    """Remove initializer `name` once no node reads it (another node may share a rewritten weight)."""
    if not any(name in n.input for n in model.graph.node):
        model.graph.initializer.remove(_init(model, name))


def insert_before(model: Any, node: Any, new: Any) -> None:
    """Insert `new` just before `node` (found by its name), keeping the graph in topological order."""
    nodes = model.graph.node
    nodes.insert(next(i for i, n in enumerate(nodes) if n.name == node.name), new)


def set_weights(model: Any, values: dict[str, np.ndarray]) -> None:
    """Write neutral float weights; a quantized layer keeps its qparams and stores clip(rint(w / s) + z)."""
    layers = by_name(model)
    for name in known_names(layers, values):
        layer, w = layers[name], np.asarray(values[name])
        old = _array(model, layer.source)
        held = old.shape[::-1] if layer.transposed else old.shape
        if tuple(w.shape) != held:
            raise ValueError(f"{name}: weight of shape {w.shape} given, the layer holds {held}")
        arr = w.T if layer.transposed else w
        if old.dtype.kind in "iu":
            scale, zp = _qparams(model, layer)
            info = np.iinfo(old.dtype)
            q = np.rint(arr.astype(np.float64) / _along(scale, layer.axis)) + _along(zp, layer.axis)
            arr = np.clip(q, info.min, info.max)
        replace_initializer(model, layer.source, arr.astype(old.dtype))


def quantized_weights(model: Any) -> dict[str, QuantizedTensor]:
    """The integers and qparams of every integer-stored layer, in the neutral [out, in] layout."""
    out = {}
    for layer in discover(model):
        q = _array(model, layer.source)
        if q.dtype.kind not in "iu":
            continue
        scale, zp = _qparams(model, layer)
        axis = None if layer.axis is None else (1 - layer.axis if layer.transposed else layer.axis)
        bits = _INT_BITS.get(_init(model, layer.source).data_type, 8)
        out[layer.name] = QuantizedTensor(q.T.astype(np.int64) if layer.transposed else q.astype(np.int64),
                                          scale.reshape(-1) if axis is not None else scale.reshape(()),
                                          zp.reshape(-1) if axis is not None else zp.reshape(()), bits, axis)
    return out


def describe(model: Any) -> list[LayerStats]:
    """Per-layer shape, parameters, non-zeros (of the dequantized weight) and bits of the stored values."""
    rows = []
    infos = {i.name: i for i in layer_infos(model)}
    for layer in discover(model):
        w = weight(model, layer)
        bits = _INT_BITS.get(_init(model, layer.source).data_type, 32)
        rows.append(LayerStats(layer.name, layer.kind, tuple(w.shape), int(w.size), count_nonzero(w), bits,
                               infos[layer.name].role.value))
    return rows


# ---- graph edits ------------------------------------------------------------------------------------------
def canonicalize(model: Any) -> list[Layer]:
    """Name every float weight initializer ``<layer>.weight`` and every node uniquely; returns the layers.

    ORT's quantizers and `nodes_to_quantize` need node names, and rule 1 of the module docstring then gives
    each layer the name it had, whatever ORT renames afterwards.
    """
    g = model.graph
    used = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    renames = {}
    for layer in discover(model):
        want = f"{layer.name}.weight"
        if layer.scale is None and layer.source != want and want not in used and layer.source not in renames:
            renames[layer.source] = want
            used.add(want)
    for t in g.initializer:
        t.name = renames.get(t.name, t.name)
    for value in g.input:
        value.name = renames.get(value.name, value.name)
    seen: set[str] = set()
    for i, node in enumerate(g.node):
        for j, inp in enumerate(node.input):
            node.input[j] = renames.get(inp, inp)
        while not node.name or node.name in seen:
            node.name = f"{node.name or node.op_type}_{i}"
        seen.add(node.name)
    return discover(model)
