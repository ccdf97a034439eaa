"""Integer embedding tables in exported ONNX files: every backend's export, rewritten after the exporter ran.

Every exporter (torch.onnx, tf2onnx, paddle2onnx, the onnx backend's own graph) writes an embedding lookup as
``Gather(float table [rows, dim], ids)`` on an initializer, and the quantization stages leave those tables float
(MiniLM: 11.7M of 22.7M parameters). `quantize_embeddings` rewrites them in the file, so the rewrite is the same
for every backend:

- ``int8`` (standard ONNX ops only; read by ONNX Runtime, OpenVINO and any runtime of opset >= 13):
  ``Gather(int8 table, ids) -> Cast(float) -> Mul(Gather(scales [rows, 1], ids))``, per-row symmetric scales
  (``scale = max|row| / 127``, integers in [-127, 127]). The rows are gathered before they are dequantized, so a
  run touches only the rows it reads (a DequantizeLinear on the whole table would dequantize every row per run).
  Tied tables (the same initializer also read by a MatMul / Gemm / Transpose, e.g. an LM head) keep ONE int8
  initializer: the other readers take ``DequantizeLinear(int8 table, scales [rows], axis=0)`` of it. A tied head
  the exporter folded into its own constant (torch.onnx writes GPT-2's / BERT-MLM's as ``table.T``) is found by
  value and reads ``Transpose(DequantizeLinear(...))`` of the same integers (ONNX Runtime folds that into one
  weight-only int8 MatMulNBits).
- ``int4`` (the contrib op ``com.microsoft.GatherBlockQuantized``: ONNX Runtime, and OpenVINO 2026.4, which
  reads this op too (checked here on MiniLM); runtimes without com.microsoft ops, e.g. TensorRT's ONNX parser
  or plain opset runtimes, cannot load it): ``GatherBlockQuantized(uint8 packed table, ids, scales
  [rows, dim/32])``, bits=4, block_size=32 along the row, symmetric (integers in [-7, 7] stored with ORT's
  default zero point 8, two per byte, low nibble first). A tied table or one of odd width falls back to the int8
  form (the report says so).

Tables with fewer than `min_elements` elements (default `DEFAULT_MIN_ELEMENTS`: 4096; position and token-type
tables of small models) stay float unless a smaller `min_elements` is given. The rewritten file is written
inline (one file under 2 GB; an exporter's external-data file is not rewritten). Needs onnx and numpy
(onnxruntime for the model-level check of `quantize_embeddings_file`).

Example::

    report = quantize_embeddings_file("model.onnx", "int8", example={"input_ids": ids, "attention_mask": mask})
    print(report.summary())
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import UnicompressError
from .qdq import PER_AXIS_OPSET, _Writer, opset_of

#: the forms an export's embedding tables can take (ExportSpec.embeddings)
EMBEDDING_FORMS = ("float", "int8", "int4")
#: tables with fewer elements stay float by default (tiny-bert's 128x32 word table has 4096: it is quantized)
DEFAULT_MIN_ELEMENTS = 4096
#: values per scale of the int4 form (GatherBlockQuantized wants a power of two >= 16)
INT4_BLOCK = 32
#: which runtimes read each form (for reports and docstrings)
RUNTIMES = {"int8": "standard ONNX ops: ONNX Runtime, OpenVINO and other opset >= 13 runtimes",
            "int4": "com.microsoft.GatherBlockQuantized: ONNX Runtime and OpenVINO (2026.4), not plain-opset runtimes"}
_CONTRIB = "com.microsoft"
_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64, 16: None}  # 16: bfloat16 (read via numpy_helper)


class EmbeddingError(UnicompressError, ValueError):
    """Integer embeddings were asked for, but the export holds no float embedding table to quantize."""


@dataclass(frozen=True)
class TableReport:
    """One quantized table: its initializer, shape, form, bytes before/after (integers + scales) and the
    largest |dequantized - float| over its elements."""

    name: str
    shape: tuple[int, int]
    form: str
    bytes_before: int
    bytes_after: int
    max_abs_error: float
    gathers: int
    tied: int = 0  # readers other than Gather (MatMul/Gemm/Transpose...) that now read a DequantizeLinear
    note: str = ""


@dataclass
class EmbeddingReport:
    """What `quantize_embeddings` did: the tables it quantized, those it left float and why, and (from
    `quantize_embeddings_file`) the file sizes and how far ONNX Runtime's outputs moved."""

    form: str
    tables: list[TableReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    file_bytes_before: Optional[int] = None
    file_bytes_after: Optional[int] = None
    output_max_abs: Optional[float] = None  # ORT outputs of the rewritten file vs the float file, same inputs
    output_rel_l2: Optional[float] = None

    @property
    def saved_bytes(self) -> int:
        return sum(t.bytes_before - t.bytes_after for t in self.tables)

    def summary(self) -> str:
        """One line for the run report."""
        if not self.tables:
            return f"embeddings {self.form}: no table quantized" + (
                f" ({'; '.join(f'{n}: {why}' for n, why in self.skipped[:4])})" if self.skipped else "")
        tables = ", ".join(f"{t.name} {t.shape[0]}x{t.shape[1]} {t.form} {_mb(t.bytes_before)} -> "
                           f"{_mb(t.bytes_after)} (max |err| {t.max_abs_error:.3g}{', tied' if t.tied else ''})"
                           for t in self.tables)
        out = f"embeddings {self.form}: {tables}"
        if self.file_bytes_before is not None and self.file_bytes_after is not None:
            out += f"; file {_mb(self.file_bytes_before)} -> {_mb(self.file_bytes_after)}"
        if self.output_max_abs is not None:
            out += (f"; ONNX Runtime outputs vs float: max |diff| {self.output_max_abs:.3g}, "
                    f"relative L2 {self.output_rel_l2:.3g}")
        left = len(self.skipped)
        return out + (f"; {left} table(s) left float" if left else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def _bits_of(form: str) -> int:
    if form not in ("int8", "int4"):
        raise ValueError(f"embeddings form {form!r}: quantized forms are int8 and int4")
    return 8 if form == "int8" else 4


def quantize_rows_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: (integers [rows, dim] in [-127, 127], float32 scales [rows]); an all-zero row
    gets scale 1 (its integers are 0 either way)."""
    t = np.asarray(table, np.float32)
    amax = np.abs(t).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(t / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def quantize_blocks_int4(table: np.ndarray, block: int = INT4_BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-block symmetric 4-bit along each row: (integers [rows, dim] in [-7, 7], packed uint8
    [rows, dim/2] (value + 8, low nibble first, as GatherBlockQuantized reads), float32 scales
    [rows, ceil(dim/block)]). `dim` must be even."""
    t = np.asarray(table, np.float32)
    rows, dim = t.shape
    blocks = -(-dim // block)
    padded = np.zeros((rows, blocks * block), np.float32)
    padded[:, :dim] = t
    amax = np.abs(padded.reshape(rows, blocks, block)).max(axis=2)
    scale = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(padded.reshape(rows, blocks, block) / scale[:, :, None]), -7, 7)
    q = q.reshape(rows, blocks * block)[:, :dim].astype(np.int8)
    u = (q + 8).astype(np.uint8)
    packed = (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)
    return q, packed, scale


def _subgraph_inputs(graph: Any) -> set[str]:
    """Names read inside If/Loop/Scan bodies (a table read there is left alone)."""
    names: set[str] = set()
    for node in graph.node:
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                names |= {i for n in g.node for i in n.input} | _subgraph_inputs(g)
    return names


@dataclass
class _Use:
    """One table and the nodes that read it: Gathers (possibly through Identity/Cast) and other readers."""

    name: str
    gathers: list[tuple[int, int]] = field(default_factory=list)  # (node index, output elem type)
    others: int = 0
    #: other initializers holding the same values (an exporter's constant-folded copy of a tied head: torch.onnx
    #: writes GPT-2's and BERT-MLM's LM head as a transposed copy), with whether they are transposed
    copies: list[tuple[str, bool]] = field(default_factory=list)


def _is_row_gather(node: Any, rank: int = 2) -> bool:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return node.op_type == "Gather" and axis in (0, -rank)


def find_tables(proto: Any, min_elements: int = DEFAULT_MIN_ELEMENTS) -> tuple[list[_Use], list[tuple[str, str]]]:
    """The float 2-D initializers read as embedding tables (input 0 of a Gather on axis 0, directly or through
    Identity / Cast nodes), and the (name, why) of tables left alone."""
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list[int]] = {}
    for idx, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(idx)
    producers = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    nested = _subgraph_inputs(graph)
    found: list[_Use] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for node in graph.node:
        if node.op_type != "Gather" or not node.input:
            continue
        src = node.input[0]
        while src not in inits and src in producers and producers[src].op_type in ("Identity", "Cast"):
            src = producers[src].input[0]
        if src in producers and producers[src].op_type == "DequantizeLinear":
            if src not in seen:
                seen.add(src)
                skipped.append((src, "already integer (read through a DequantizeLinear)"))
            continue
        if src not in inits or src in seen:
            continue
        seen.add(src)
        init = inits[src]
        shape = tuple(init.dims)
        if len(shape) != 2:
            continue  # a Gather on a shape or index vector, not a table
        size = int(np.prod(shape))
        why = None
        if init.data_type not in _FLOAT_TYPES:
            why = "not a float table"
        elif size < min_elements:
            why = f"{shape[0]}x{shape[1]} = {size} elements < min_elements {min_elements}"
        elif src in inputs:
            why = "also a graph input (a caller may override it)"
        elif src in outputs or src in nested:
            why = "read by a graph output or a subgraph"
        if why is not None:
            skipped.append((src, why))
            continue
        use = _Use(src)
        _collect(graph, src, init.data_type, consumers, use, outputs)
        if not use.gathers:
            continue
        use.copies = _copies(graph, init, consumers, inputs | outputs | nested)
        use.others += sum(len(consumers[name]) for name, _ in use.copies)
        found.append(use)
    return found, skipped


def _copies(graph: Any, table: Any, consumers: dict, protected: set[str]) -> list[tuple[str, bool]]:
    """Float initializers (read by some node) equal to `table` or to its transpose: a tied head the exporter
    folded into its own constant."""
    from onnx import numpy_helper

    rows, dim = tuple(table.dims)
    value = None
    out = []
    for init in graph.initializer:
        if init.name == table.name or init.data_type != table.data_type or tuple(init.dims) not in \
                ((rows, dim), (dim, rows)) or init.name in protected or not consumers.get(init.name):
            continue
        value = numpy_helper.to_array(table) if value is None else value
        other = numpy_helper.to_array(init)
        if other.shape == (rows, dim) and np.array_equal(other, value):
            out.append((init.name, False))
        elif other.shape == (dim, rows) and np.array_equal(other, value.T):
            out.append((init.name, True))
    return out


def _collect(graph: Any, value: str, elem: int, consumers: dict, use: _Use, outputs: set[str]) -> None:
    """Walk the readers of `value` (the table or an Identity/Cast of it): row Gathers, or other readers."""
    for idx in consumers.get(value, []):
        node = graph.node[idx]
        if _is_row_gather(node) and node.input[0] == value and all(i != value for i in node.input[1:]):
            use.gathers.append((idx, elem))
        elif node.op_type in ("Identity", "Cast") and node.input[0] == value:
            to = next((a.i for a in node.attribute if a.name == "to"), elem)
            if to not in _FLOAT_TYPES or node.output[0] in outputs:
                use.others += 1
                continue
            before = len(use.gathers)
            _collect(graph, node.output[0], to, consumers, use, outputs)
            if len(use.gathers) == before:  # nothing gathered through it: it stays a reader of the float table
                use.others += 1
        else:
            use.others += 1


def quantize_embeddings(proto: Any, bits: int = 8, min_elements: int = DEFAULT_MIN_ELEMENTS) -> EmbeddingReport:
    """Rewrite `proto` in place: every float embedding table (`find_tables`) becomes int8 (``bits=8``) or
    4-bit (``bits=4``: com.microsoft.GatherBlockQuantized, read by ONNX Runtime and OpenVINO only) as the module
    docstring describes; the float initializers (and folded copies of tied tables) are removed.

    Returns an EmbeddingReport (tables quantized with bytes and max |dequantized - float|, tables left float and
    why). A graph without such tables is returned unchanged with an empty report (the caller decides whether
    that is an error).
    """
    from onnx import TensorProto, helper, numpy_helper

    if bits not in (4, 8):
        raise ValueError(f"embedding tables are quantized to 8 or 4 bits, not {bits}")
    form = f"int{bits}"
    report = EmbeddingReport(form)
    uses, report.skipped = find_tables(proto, min_elements)
    if not uses:
        return report
    graph = proto.graph
    opset = opset_of(proto)
    inits = {i.name: i for i in graph.initializer}
    names = set(inits) | {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | \
        {n.name for n in graph.node}
    w = _Writer(graph, names)
    replaced: set[str] = set()
    for use in uses:
        if use.others and opset < PER_AXIS_OPSET:
            report.skipped.append((use.name, f"tied (read by {use.others} non-Gather node(s)): the per-row "
                                   f"DequantizeLinear needs opset >= {PER_AXIS_OPSET}, the graph has {opset}"))
            continue
        table = numpy_helper.to_array(inits[use.name])
        rows, dim = table.shape
        note = ""
        use_bits = bits
        if bits == 4 and use.others:
            use_bits, note = 8, "int8: tied (a 4-bit table has no standard DequantizeLinear below opset 21)"
        elif bits == 4 and dim % 2:
            use_bits, note = 8, f"int8: width {dim} is odd (4-bit values are packed two per byte)"
        base = use.name
        if use_bits == 8:
            q, scale = quantize_rows_int8(table)
            err = float(np.abs(q.astype(np.float32) * scale[:, None] - table.astype(np.float32)).max())
            qname = w.const(f"{base}_int8", q)
            sname = w.const(f"{base}_scale", scale.reshape(rows, 1))
            after = q.nbytes + scale.nbytes
            for idx, elem in use.gathers:
                node = graph.node[idx]
                p, out, ids = node.name or f"{base}/Gather", node.output[0], node.input[1]
                gq, gf, gs = w.name(f"{p}_int8_rows"), w.name(f"{p}_rows_float"), w.name(f"{p}_row_scales")
                prod = w.name(f"{p}_dequantized") if elem != TensorProto.FLOAT else out
                nodes = [w.node("Gather", [qname, ids], [gq], f"{p}_int8", axis=0),
                         w.node("Cast", [gq], [gf], f"{p}_Cast", to=TensorProto.FLOAT),
                         w.node("Gather", [sname, ids], [gs], f"{p}_scales", axis=0),
                         w.node("Mul", [gf, gs], [prod], f"{p}_Mul")]
                if elem != TensorProto.FLOAT:
                    nodes.append(w.node("Cast", [prod], [out], f"{p}_Cast_out", to=elem))
                w.replace(idx, nodes)
            if use.others:
                flat = w.const(f"{base}_scale_rows", scale)
                zero = w.const(f"{base}_zero_point", np.zeros(rows, np.int8))
                after += scale.nbytes + rows
                _dequantize_other_readers(w, graph, use, qname, flat, zero, inits[use.name].data_type)
        else:
            q4, packed, scale = quantize_blocks_int4(table)
            deq = q4.astype(np.float32) * np.repeat(scale, INT4_BLOCK, axis=1)[:, :dim]
            err = float(np.abs(deq - table.astype(np.float32)).max())
            qname = w.const(f"{base}_int4_packed", packed)
            sname = w.const(f"{base}_scale", scale)
            after = packed.nbytes + scale.nbytes
            for idx, elem in use.gathers:
                node = graph.node[idx]
                p, out, ids = node.name or f"{base}/Gather", node.output[0], node.input[1]
                prod = w.name(f"{p}_dequantized") if elem != TensorProto.FLOAT else out
                nodes = [helper.make_node("GatherBlockQuantized", [qname, ids, sname], [prod],
                                          name=w.name(f"{p}_int4"), domain=_CONTRIB, bits=4,
                                          block_size=INT4_BLOCK, gather_axis=0, quantize_axis=1)]
                if elem != TensorProto.FLOAT:
                    nodes.append(w.node("Cast", [prod], [out], f"{p}_Cast_out", to=elem))
                w.replace(idx, nodes)
        replaced.add(use.name)
        replaced.update(name for name, _ in use.copies)
        if use.copies:
            note = "; ".join([note] * bool(note) + [f"tied copy {name}{' (transposed)' * t} now reads the int8 table"
                                                    for name, t in use.copies])
        report.tables.append(TableReport(use.name, (rows, dim), f"int{use_bits}",
                                         int(table.nbytes) * (1 + len(use.copies)), int(after), err,
                                         len(use.gathers), use.others, note))
    w.commit()
    _drop_dead_casts(graph)
    if any(t.form == "int4" for t in report.tables) and not any(o.domain == _CONTRIB for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(_CONTRIB, 1))
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if not (i.name in replaced and i.name not in used)]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return report


def _dequantize_other_readers(w: _Writer, graph: Any, use: _Use, qname: str, scale: str, zero: str,
                              elem: int) -> None:
    """Every reader of the float table other than the rewritten Gathers reads DequantizeLinear(int8, per row)
    of the same integers (one node, before the first such reader)."""
    from onnx import TensorProto

    out = w.name(f"{use.name}_dequantized")
    dq = [w.node("DequantizeLinear", [qname, scale, zero], [out if elem == TensorProto.FLOAT else out + "_f32"],
                 f"{use.name}/DequantizeLinear", axis=0)]
    if elem != TensorProto.FLOAT:
        dq.append(w.node("Cast", [out + "_f32"], [out], f"{use.name}/Cast", to=elem))
    renames = {use.name: out}
    for name, transposed in use.copies:
        renames[name] = out
        if transposed:  # the copy held table.T: read Transpose(dequantized table)
            renames[name] = w.name(f"{name}_from_int8")
            dq.append(w.node("Transpose", [out], [renames[name]], f"{name}/Transpose", perm=[1, 0]))
    gathered = {idx for idx, _ in use.gathers}
    first = None
    for idx, node in enumerate(graph.node):
        if idx in gathered or not set(renames) & set(node.input):
            continue
        node.input[:] = [renames.get(i, i) for i in node.input]
        first = idx if first is None else first
    if first is not None:
        for node in dq:
            w.before(first, node)


def _drop_dead_casts(graph: Any) -> None:
    """Identity / Cast nodes left without readers (they fed only the rewritten Gathers)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("Identity", "Cast") and n.output[0] not in used]
        if not dead:
            return
        keep = [n for n in graph.node if all(n is not d for d in dead)]
        del graph.node[:]
        graph.node.extend(keep)


def quantize_embeddings_file(path: Union[str, Path], form: str = "int8", *,
                             min_elements: int = DEFAULT_MIN_ELEMENTS,
                             example: Any = None, threads: int = 1) -> EmbeddingReport:
    """Rewrite the ONNX file at `path` atomically with its embedding tables in `form` ("int8" or "int4").

    The rewritten graph is checked by onnx.checker before it replaces the file; given `example` inputs, ONNX
    Runtime runs both the float file and the rewritten one on them and the report holds how far the first output
    moved. A file without tables to quantize is left untouched (empty report). Example:
    ``quantize_embeddings_file("m.onnx", "int8", example=x).summary()``.
    """
    import onnx

    from ..fileio import atomic_path
    from .inspect import check_model
    from .runtime import run_onnx

    path = Path(path)
    proto = onnx.load(str(path))
    report = quantize_embeddings(proto, _bits_of(form), min_elements)
    if not report.tables:
        return report
    check_model(proto)
    report.file_bytes_before = os.path.getsize(path)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        report.file_bytes_after = os.path.getsize(tmp)
        if example is not None:
            before = run_onnx(path, example, threads=threads).astype(np.float64)
            after = run_onnx(tmp, example, threads=threads).astype(np.float64)
            report.output_max_abs = float(np.abs(after - before).max()) if before.size else 0.0
            report.output_rel_l2 = float(np.linalg.norm(after - before) / max(np.linalg.norm(before), 1e-12))
    return report


def require_tables(report: EmbeddingReport, path: Union[str, Path], min_elements: int = DEFAULT_MIN_ELEMENTS) -> None:
    """Raise EmbeddingError when `report` quantized nothing and found no table already integer."""
    if report.tables or any("already integer" in why for _, why in report.skipped):
        return
    found = "; ".join(f"{n}: {why}" for n, why in report.skipped) or "no Gather reads a 2-D float initializer"
    raise EmbeddingError(f"export.embeddings is {report.form}, but {path} holds no float embedding table of at "
                         f"least {min_elements} elements to quantize ({found}); use embeddings: float for this model")


__all__ = ["EMBEDDING_FORMS", "DEFAULT_MIN_ELEMENTS", "INT4_BLOCK", "RUNTIMES", "EmbeddingError", "EmbeddingReport",
           "TableReport", "find_tables", "quantize_embeddings", "quantize_embeddings_file", "quantize_rows_int8",
           "quantize_blocks_int4", "require_tables"]
