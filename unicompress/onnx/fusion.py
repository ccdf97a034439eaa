"""ONNX Runtime's transformer fusions on exported files: Attention, SkipLayerNormalization, BiasGelu, ...

`fuse_transformer` runs ONNX Runtime's transformer optimizer (``onnxruntime.transformers.optimizer.optimize_model``,
``model_type="bert"``, opt_level 1: ONNX Runtime's basic, portable graph rewrites, then its Python fusions) on an
export, after the framework-neutral passes that make every exporter's graph recognisable
(`unicompress.onnx.passes`: tf2onnx's Keras Dense as one MatMul, its LayerNorm and GELU forms, tf2onnx's and
paddle2onnx's attention-mask chains in the order ONNX Runtime matches). Measured on all-MiniLM-L6-v2 (6 layers):
torch, TensorFlow and Paddle exports all reach Attention 6, SkipLayerNormalization 12, BiasGelu 6 (tiny-bert: 2,
4, 2); torch's also EmbedLayerNormalization 1 (tf2onnx's and paddle2onnx's position-id chains are not ONNX
Runtime's pattern, so their embedding LayerNorm stays a LayerNormalization). Without the passes tf2onnx's graph
fuses no Attention and no BiasGelu, paddle2onnx's no Attention.

Speed, measured (MiniLM, batch 32, length 128, 2 threads, ONNX Runtime 1.32 CPU, files interleaved, two runs of
10 rounds on a shared 2-core machine, ratios against torch FP32): fused FP32 0.95-0.98x (torch), 0.98-1.02x
(TensorFlow), 0.98-1.03x (Paddle), i.e. no gain: ONNX Runtime's session already fuses what matters at load time.
The fused int8 static (QDQ) file is SLOWER, 1.90-1.95x vs 2.18-2.38x unfused. Fused FP32 then
`quantize_fused_dynamic`: 2.05-2.07x and 22.9 MB (its embeddings are int8 too) against 2.26-2.31x / 59.3 MB for
unicompress's own dynamic int8, but its logits moved more (relative L2 0.17 vs 0.10 from FP32).
So fusion is for runtimes and batch shapes where ONNX Runtime's own load-time fusion falls short; measure first.

The fused operators are com.microsoft contrib ops: ONNX Runtime runs them, OpenVINO, TensorRT's ONNX parser and
plain-opset runtimes cannot. `fuse_file` rewrites a file atomically and only after ONNX Runtime's outputs of the
fused graph match the unfused one on example inputs (`FUSION_TOLERANCE`), else FusionError and the
file is left as it was.

Quantized exports (measured on tiny-bert and MiniLM): a QDQ file (int8 static) fuses SkipLayerNormalization and
BiasGelu (tf2onnx's: Gelu) but no Attention (the fusion needs float weight initializers on the Q/K/V MatMuls, a
QDQ file has DequantizeLinear there); torch's dynamic file (MatMulInteger) fuses SkipLayerNormalization and Gelu
only, and on MiniLM its outputs then moved by 4.6% (relative L2): `fuse_file` refuses that (FusionError). Integer
Attention comes from quantizing the FUSED float graph with ONNX Runtime: `quantize_fused_dynamic` (QAttention,
QEmbedLayerNormalization, MatMulInteger), which needs ``DefaultTensorType=FLOAT`` for the contrib ops' outputs
(without it: "Unable to find data type for weight_name ... shape_inference failed").

Example::

    report = fuse_file("model.onnx", num_heads=12, hidden_size=384, example=inputs)
    print(report.summary())   # optimize ort-transformers: Attention 6, SkipLayerNormalization 12, ...
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from ..errors import UnicompressError

#: the fused operators counted in reports (com.microsoft domain), in the order reports list them
FUSED_OPS = ("EmbedLayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu",
             "FastGelu", "Gelu", "QAttention", "QEmbedLayerNormalization")
#: ONNX Runtime outputs of the fused graph must stay within |fused - unfused| <= FUSION_TOLERANCE * max |unfused|
#: everywhere (fused kernels sum in another order: measured ~1e-7 of the largest logit on float tiny-bert exports)
FUSION_TOLERANCE = 1e-3
#: who can read the result
RUNTIMES = "com.microsoft contrib ops: ONNX Runtime only (OpenVINO, TensorRT's ONNX parser and plain-opset runtimes cannot)"


class FusionError(UnicompressError, ValueError):
    """Fusion was asked for a model without attention heads, or the fused graph's outputs moved too far."""


@dataclass
class FusionReport:
    """What `fuse_transformer` / `fuse_file` did: fused operators in the result, the preparing passes' rewrites,
    and (from `fuse_file`) file sizes and how far ONNX Runtime's outputs moved."""

    num_heads: int
    hidden_size: int
    counts: dict[str, int] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)
    file_bytes_before: Optional[int] = None
    file_bytes_after: Optional[int] = None
    output_max_abs: Optional[float] = None
    output_rel_l2: Optional[float] = None

    @property
    def fused(self) -> int:
        """How many fused operators the result holds."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line for the run report."""
        ops = ", ".join(f"{op} {self.counts[op]}" for op in FUSED_OPS if self.counts.get(op)) or "nothing fused"
        rewrites = ", ".join(f"{k} {v}" for k, v in self.passes.items() if v)
        heads = f"num_heads {self.num_heads}, hidden {self.hidden_size}" if self.num_heads else "heads read from the graph"
        out = f"optimize ort-transformers: {ops} ({heads}"
        out += f"; passes: {rewrites})" if rewrites else ")"
        if self.output_max_abs is not None:
            out += (f"; ONNX Runtime outputs vs unfused: max |diff| {self.output_max_abs:.3g}, relative L2 "
                    f"{self.output_rel_l2:.3g}")
        return out + "; contrib ops: ONNX Runtime only"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fusion_heads(structure: Any) -> tuple[int, int]:
    """(num_heads, hidden_size) for ONNX Runtime's optimizer from a TransformerStructure; FusionError when the
    model has no structure or no attention (nothing to fuse into Attention, refused before work)."""
    if structure is None or not getattr(structure, "attention", None):
        found = "no Transformer structure was found" if structure is None else "its structure has no attention block"
        raise FusionError(f"export.optimize: ort-transformers fuses attention heads, but {found} in the model; "
                          "declare the structure in the recipe (structure:) or use optimize: none")
    heads = [a.num_heads for a in structure.attention if a.kind == "self"] or \
        [a.num_heads for a in structure.attention]
    # ONNX Runtime reads each layer's head count from its Reshape when it is a constant (pruned layers differ);
    # the given value is its fallback for dynamic shapes, so the most common count is the right default
    return Counter(heads).most_common(1)[0][0], int(structure.hidden_size)


def export_heads(structure: Any) -> tuple[int, int]:
    """`fusion_heads` of a compressed model's structure, or (0, 0) (ONNX Runtime reads the heads from the graph)
    when its structure is no longer discoverable (a framework's quantized modules); the input model's structure
    was checked before work."""
    try:
        return fusion_heads(structure)
    except FusionError:
        return 0, 0


def prepare_for_fusion(proto: Any) -> dict[str, int]:
    """The framework-neutral passes that make an export's patterns ONNX Runtime's (edits `proto` in place);
    returns how many places each pass changed."""
    from . import passes

    return {name: getattr(passes, name)(proto) for name in
            ("fuse_layer_norms", "canonical_gelu", "collapse_tensordot", "canonical_attention_mask")}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's optimizer logs warnings for every exporter but torch ("Model producer not matched") and
    INFO lines per fusion; the report carries the counts instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _has_external(proto: Any) -> bool:
    return any(t.data_location == 1 for t in proto.graph.initializer)  # TensorProto.EXTERNAL


def _count(proto: Any) -> dict[str, int]:
    ops = Counter(n.op_type for n in proto.graph.node if n.domain == "com.microsoft" or n.op_type in FUSED_OPS)
    return {op: ops[op] for op in FUSED_OPS if ops.get(op)}


def fuse_transformer(model: Union[str, Path, Any], num_heads: int, hidden_size: int, *,
                     opt_level: int = 1) -> tuple[Any, FusionReport]:
    """ONNX Runtime's transformer optimizer (``model_type="bert"``) on a float (or QDQ) export at `model` (a path
    or a ModelProto, which is not modified); returns the fused ModelProto and its report.

    ONNX Runtime reads each layer's head count from its Q Reshape when that is a constant; `num_heads` and
    `hidden_size` are its fallback (0 and 0: only what the graph says, e.g. for a quantized model whose
    framework structure is no longer discoverable).

    opt_level 1 (the default) runs ONNX Runtime's basic graph rewrites first (constant folding, Identity and
    no-op removal: portable across CPUs), 0 only the Python fusions; higher levels write hardware-specific graphs.
    Example: ``fused, report = fuse_transformer("m.onnx", num_heads=4, hidden_size=32)``.
    """
    import onnx

    if (num_heads, hidden_size) != (0, 0) and (num_heads < 1 or hidden_size < 1 or hidden_size % num_heads):
        raise FusionError(f"num_heads {num_heads} and hidden_size {hidden_size}: both must be positive and the "
                          "hidden size a multiple of the head count (or both 0: read from the graph)")
    if isinstance(model, (str, Path)):
        proto = onnx.load(str(model))
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    passes = prepare_for_fusion(proto)
    from onnxruntime.transformers.optimizer import optimize_model

    # a file, not the proto: given a ModelProto the optimizer saves every initializer as external data, and ONNX
    # Runtime then cannot read the small shape constants (Unsqueeze axes) its shape inference needs
    with tempfile.TemporaryDirectory(prefix="unicompress-fusion-") as folder, _quiet():
        prepared = os.path.join(folder, "prepared.onnx")
        onnx.save(proto, prepared)
        optimized = optimize_model(prepared, model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                   opt_level=opt_level)
        fused = optimized.model
        if _has_external(fused):  # large models: read the weights back before the folder goes
            onnx.load_external_data_for_model(fused, folder)
    return fused, FusionReport(num_heads, hidden_size, _count(fused), passes)


def fuse_file(path: Union[str, Path], num_heads: int, hidden_size: int, example: Any, *,
              tolerance: float = FUSION_TOLERANCE, threads: int = 1,
              opt_level: int = 1) -> FusionReport:
    """Rewrite the ONNX file at `path` with ONNX Runtime's fused operators, atomically.

    ONNX Runtime runs the file and the fused graph on `example`; the fused graph replaces the file only when the
    first output agrees (|fused - unfused| <= tolerance * max |unfused| everywhere), else FusionError and the file
    is unchanged. A graph in which nothing fused is not rewritten (the report says so).
    Example: ``fuse_file("m.onnx", 12, 384, example={"input_ids": ids, "attention_mask": mask}).summary()``.
    """
    import onnx

    from ..fileio import atomic_path
    from .runtime import compare_outputs, run_onnx

    path = Path(path)
    fused, report = fuse_transformer(path, num_heads, hidden_size, opt_level=opt_level)
    if not report.fused:
        return report
    report.file_bytes_before = os.path.getsize(path)
    with atomic_path(path) as tmp:
        onnx.save(fused, str(tmp))
        report.file_bytes_after = os.path.getsize(tmp)
        before = run_onnx(path, example, threads=threads).astype(np.float64)
        after = run_onnx(tmp, example, threads=threads).astype(np.float64)
        scale = float(np.abs(before).max()) if before.size else 0.0
        check = compare_outputs(after, before, atol=tolerance * max(scale, 1e-30), rtol=0.0)
        report.output_max_abs, report.output_rel_l2 = check.max_abs, check.rel_l2
        if not check.ok:
            raise FusionError(f"ONNX Runtime's fused graph of {path.name} ({report.summary()}) moved the outputs "
                              f"beyond the tolerance: {check}; the file was left unfused")
    return report


def quantize_fused_dynamic(fused: Union[str, Path], out: Union[str, Path], *, per_channel: bool = False) -> Path:
    """ONNX Runtime's dynamic int8 quantization of a FUSED float file (Attention -> QAttention, EmbedLayerNorm ->
    QEmbedLayerNormalization, MatMul -> MatMulInteger), written atomically to `out`; returns `out`.

    ``DefaultTensorType=FLOAT`` tells the quantizer the type of the contrib ops' outputs, which onnx's shape
    inference cannot infer (the error "Unable to find data type for weight_name ... shape_inference failed").
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..fileio import atomic_path

    out = Path(out)
    with atomic_path(out) as tmp, _quiet():
        quantize_dynamic(str(fused), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


__all__ = ["FUSED_OPS", "FUSION_TOLERANCE", "RUNTIMES", "FusionError", "FusionReport", "fuse_file",
           "export_heads", "fuse_transformer", "fusion_heads", "prepare_for_fusion", "quantize_fused_dynamic"]
