"""What an exported ONNX graph holds: per-initializer sparsity and bit widths, QDQ nodes with their axis,
factorised MatMul pairs and sizes. Needs only onnx and numpy.

Example::

    from unicompress.onnx import summarize
    s = summarize("model.onnx")
    s.zeros_in_weights, [q.axis for q in s.qdq], [f.rank for f in s.factorised]
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

ModelLike = Union[str, Path, "onnx.ModelProto"]  # noqa: F821 - onnx is imported lazily

#: ops that carry integers: a graph with any of these (or QDQ pairs) is a quantized graph
INTEGER_OPS = frozenset({"MatMulInteger", "QLinearMatMul", "ConvInteger", "QLinearConv", "DynamicQuantizeLinear",
                         "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulNBits", "QLinearAdd", "QLinearMul"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_BITS = {"INT4": 4, "UINT4": 4, "INT8": 8, "UINT8": 8, "INT16": 16, "UINT16": 16, "INT32": 32, "UINT32": 32,
         "INT64": 64, "UINT64": 64, "FLOAT16": 16, "BFLOAT16": 16, "FLOAT": 32, "DOUBLE": 64, "BOOL": 8}


def load(model: ModelLike):
    """An onnx.ModelProto from a path or a ModelProto (external data loaded)."""
    import onnx

    if isinstance(model, (str, Path)):
        return onnx.load(str(model))
    return model


def check_model(model: ModelLike) -> None:
    """Run onnx.checker (with shape inference); raises onnx.checker.ValidationError when invalid."""
    import onnx

    if isinstance(model, (str, Path)):
        onnx.checker.check_model(str(model), full_check=True)  # by path: works for files > 2 GB too
    else:
        onnx.checker.check_model(model, full_check=True)


@dataclass(frozen=True)
class InitializerInfo:
    """One constant tensor of the graph (an initializer or a Constant node's value)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    bits: int
    size: int
    zeros: int
    source: str = "initializer"

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size if self.size else 0.0

    @property
    def nbytes(self) -> float:
        return self.size * self.bits / 8

    @property
    def is_float(self) -> bool:
        return self.dtype in ("FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE")


@dataclass(frozen=True)
class QDQNode:
    """A QuantizeLinear or DequantizeLinear node: its axis and the integer type of its zero-point."""

    op: str
    name: str
    input: str
    axis: Optional[int]
    scale_shape: tuple[int, ...]
    zero_point_dtype: Optional[str]
    per_channel: bool


@dataclass(frozen=True)
class FactorisedMatMul:
    """Two weight MatMuls in a row with no non-linearity between them: x [in] -> [rank] -> [out]."""

    first: str
    second: str
    in_features: int
    rank: int
    out_features: int


@dataclass
class GraphSummary:
    """Everything the conformance suite and reports read from one graph."""

    op_counts: dict[str, int]
    initializers: list[InitializerInfo]
    qdq: list[QDQNode]
    factorised: list[FactorisedMatMul]
    inputs: list[str]
    outputs: list[str]
    file_bytes: Optional[int] = None
    opset: dict[str, int] = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        return bool(self.qdq) or any(op in INTEGER_OPS for op in self.op_counts)

    @property
    def weight_bytes(self) -> float:
        return sum(i.nbytes for i in self.initializers)

    def matrices(self, min_size: int = 16) -> list[InitializerInfo]:
        """2-D float constants (weight matrices in whatever layout the exporter chose)."""
        return [i for i in self.initializers if i.is_float and len(i.shape) == 2 and i.size >= min_size]

    @property
    def zeros_in_weights(self) -> int:
        """Exact zeros over all 2-D float constants (layout-independent, so transposed weights count too)."""
        return sum(i.zeros for i in self.matrices())


def _tensors(model) -> list[tuple[str, "onnx.TensorProto", str]]:  # noqa: F821
    out = [(t.name, t, "initializer") for t in model.graph.initializer]
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Constant" and attr.name == "value":
                    out.append((node.output[0], attr.t, "constant"))
                if attr.g is not None and attr.g.node:
                    stack.append(attr.g)
    return out


def initializers(model: ModelLike) -> list[InitializerInfo]:
    """Per-constant shape, dtype, bit width, size and exact zeros."""
    import onnx
    from onnx import numpy_helper

    model = load(model)
    out = []
    for name, tensor, source in _tensors(model):
        dtype = onnx.TensorProto.DataType.Name(tensor.data_type)
        arr = numpy_helper.to_array(tensor)
        out.append(InitializerInfo(name, tuple(int(d) for d in arr.shape), dtype, _BITS.get(dtype, 32),
                                   int(arr.size), int(np.count_nonzero(arr == 0)), source))
    return out


def _shapes_and_types(model) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    import onnx

    shapes, types = {}, {}
    for name, tensor, _ in _tensors(model):
        shapes[name] = tuple(int(d) for d in tensor.dims)
        types[name] = onnx.TensorProto.DataType.Name(tensor.data_type)
    return shapes, types


def qdq_nodes(model: ModelLike) -> list[QDQNode]:
    """Every QuantizeLinear/DequantizeLinear with its axis (None = per-tensor) and zero-point type."""
    model = load(model)
    shapes, types = _shapes_and_types(model)
    out = []
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        scale_shape = shapes.get(node.input[1], ())
        per_channel = len(scale_shape) == 1 and scale_shape[0] > 1
        zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
        zp_type = types.get(zp) if zp else None
        out.append(QDQNode(node.op_type, node.name, node.input[0], axis if per_channel else None,
                           scale_shape, zp_type, per_channel))
    return out


def is_quantized(model: ModelLike) -> bool:
    """True when the graph carries QuantizeLinear/DequantizeLinear pairs or integer ops."""
    model = load(model)
    ops = {n.op_type for n in model.graph.node}
    return bool(ops & (QDQ_OPS | INTEGER_OPS))


def _weight_matmuls(model) -> dict[str, tuple[str, int, int, str]]:
    """node output -> (node name, in, out, data input) for MatMul/Gemm nodes whose weight is a constant.

    A weight reached through Transpose or DequantizeLinear still counts (exporters put those in front).
    """
    shapes, _ = _shapes_and_types(model)
    producers = {o: n for n in model.graph.node for o in n.output}

    def const_shape(name: str, transposed: bool = False) -> Optional[tuple[int, ...]]:
        if name in shapes:
            return shapes[name]
        node = producers.get(name)
        if node is not None and node.op_type in ("Transpose", "DequantizeLinear", "Identity", "Cast"):
            inner = const_shape(node.input[0])
            if inner is not None and node.op_type == "Transpose" and len(inner) == 2:
                return inner[::-1]
            return inner
        return None

    out = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        shape = const_shape(node.input[1])
        if shape is None or len(shape) != 2:
            continue
        trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        fan_in, fan_out = (shape[1], shape[0]) if trans_b else shape
        out[node.output[0]] = (node.name or node.output[0], int(fan_in), int(fan_out), node.input[0])
    return out


def factorised_matmuls(model: ModelLike) -> list[FactorisedMatMul]:
    """Pairs of weight MatMuls joined directly (or through a bias Add) with a narrower middle: low-rank layers."""
    model = load(model)
    mm = _weight_matmuls(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    found = []
    for out_name, (name, fan_in, fan_out, data_in) in mm.items():
        src = data_in
        node = producers.get(src)
        if node is not None and node.op_type == "Add" and src not in mm:  # bias of the first factor
            src = next((i for i in node.input if i in mm), src)
        if src in mm:
            first_name, first_in, rank, _ = mm[src]
            if rank == fan_in and rank < min(first_in, fan_out):
                found.append(FactorisedMatMul(first_name, name, first_in, rank, fan_out))
    return found


def summarize(model: ModelLike) -> GraphSummary:
    """One pass over the graph: op counts, constants, QDQ nodes, factorised pairs, sizes."""
    path = Path(model) if isinstance(model, (str, Path)) else None
    proto = load(model)
    graph_inputs = {i.name for i in proto.graph.initializer}
    return GraphSummary(
        op_counts=dict(Counter(n.op_type for n in proto.graph.node)),
        initializers=initializers(proto),
        qdq=qdq_nodes(proto),
        factorised=factorised_matmuls(proto),
        inputs=[i.name for i in proto.graph.input if i.name not in graph_inputs],
        outputs=[o.name for o in proto.graph.output],
        file_bytes=path.stat().st_size if path is not None and path.exists() else None,
        opset={o.domain or "ai.onnx": int(o.version) for o in proto.opset_import},
    )
