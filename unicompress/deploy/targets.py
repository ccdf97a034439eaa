"""A recipe's deployment targets (``export: {deploy: ...}``): the uncompressed model's ONNX baseline, written before
the stages, and the table of every exported file on every runtime, measured after the export.

`compress` calls `export_baseline` before the first stage (the model is still the user's) and `measure_targets`
after the export; the table, the choice and its reason go into the report (``CompressionReport.deployment``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np



def baseline_path(onnx_path: Path) -> Path:
    """Where the FP32 baseline of an export goes: ``<name>-fp32.onnx`` beside ``<name>.onnx``."""
    return onnx_path.with_name(f"{onnx_path.stem}-fp32{onnx_path.suffix}")


def export_baseline(adapter: Any, model: Any, onnx_path: Path, example: Mapping[str, np.ndarray],
                    opset: int) -> Path:
    """Export the (uncompressed) model as the FP32 reference of the deployment table; returns its path."""
    path = baseline_path(Path(onnx_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(adapter.export_onnx(model, path, example, opset))


def timing_rows(example: Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """The example rows repeated (in order) to `batch` rows: real inputs at the batch size being timed."""
    out = {}
    for name, value in example.items():
        value = np.asarray(value)
        if value.ndim == 0:
            out[name] = value
            continue
        reps = math.ceil(batch / value.shape[0])
        out[name] = np.concatenate([value] * reps, axis=0)[:batch]
    return out


def sequence_length(inputs: Mapping[str, np.ndarray], default: int = 128) -> int:
    """The second axis of the first input with one (token inputs: the sequence length)."""
    return int(next((v.shape[1] for v in inputs.values() if np.ndim(v) >= 2), default))


def measure_targets(deploy: Any, exports: Mapping[str, Path], baseline: Path,
                    example: Mapping[str, np.ndarray]) -> dict:
    """Every exported file (ONNX, and the native file for a runtime that reads it) on every runtime of `deploy`
    (a `DeploySpec`), against ONNX Runtime on `baseline`: ``{"table", "chosen", "reason", "markdown"}``."""
    from .compare import compare_runtimes

    files = [Path(p) for k, p in exports.items() if k in ("onnx", "native")]
    native = Path(exports["native"]) if "native" in exports else None
    if native is not None and native.is_dir():  # a folder export: the runtimes read a file in it
        files = [f for f in files if f != native] + sorted(p for p in native.iterdir() if p.is_file())
    inputs = timing_rows(example, deploy.batch)
    table = compare_runtimes([baseline, *files], deploy.runtimes, batch=deploy.batch, length=sequence_length(inputs),
                             threads=deploy.threads, runs=deploy.runs, reference=("onnxruntime", baseline),
                             inputs=inputs, tolerance=deploy.tolerance)
    choice = table.choose(deploy.tolerance)
    return {"table": table.to_dict(), "chosen": choice.row.to_dict(), "reason": choice.reason,
            "markdown": table.to_markdown()}


__all__ = ["baseline_path", "export_baseline", "measure_targets", "sequence_length", "timing_rows"]
