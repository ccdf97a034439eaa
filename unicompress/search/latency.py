"""The search's latency objective: a plan's compressed model exported to ONNX and timed on the target runtime
against the uncompressed model's export, in one interleaved run per plan (the benchmarks' ratio method), so a
trial's objective is its latency relative to the baseline's (1.0 = as fast; 0.5 = twice as fast) whatever the
machine's load is doing at the time.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ExportError


class LatencyProbe:
    """Exports the baseline once; `relative(model)` times a compressed model against it on `spec.runtime`."""

    def __init__(self, adapter: Any, model: Any, spec: Any, example: Mapping[str, np.ndarray]):
        from ..deploy.runtimes import resolve_runtimes
        from ..deploy.targets import timing_rows

        resolve_runtimes([spec.runtime])  # unknown or not installed: fails now, before any trial
        self.adapter, self.spec = adapter, spec
        self.inputs = timing_rows(example, spec.latency_batch)
        self._dir = tempfile.TemporaryDirectory(prefix="uc-search-latency-")
        self.baseline = self._export(model, "baseline")
        self.count = 0

    def _export(self, model: Any, stem: str) -> Path:
        path = Path(self._dir.name) / f"{stem}.onnx"
        try:
            return Path(self.adapter.export_onnx(model, path, self.inputs))
        except Exception as exc:  # noqa: BLE001 - a plan whose model cannot be exported scores NaN, with the reason
            raise ExportError(f"the latency objective exports every plan's model to ONNX; this one failed: "
                              f"{type(exc).__name__}: {exc}") from exc

    def relative(self, model: Any) -> float:
        """Median latency of `model` on the runtime over the baseline's, both timed in the same rounds."""
        from ..deploy.compare import compare_runtimes

        self.count += 1
        path = self._export(model, f"trial-{self.count}")
        from ..deploy.targets import sequence_length

        table = compare_runtimes([self.baseline, path], [self.spec.runtime], batch=self.spec.latency_batch,
                                 length=sequence_length(self.inputs), threads=self.spec.threads, runs=self.spec.latency_runs,
                                 reference=(self.spec.runtime, self.baseline), inputs=self.inputs)
        row = next(r for r in table.rows if Path(r.file) == path)
        path.unlink(missing_ok=True)
        if row.error is not None or not row.speedup:
            raise ExportError(f"{self.spec.runtime} could not time the plan's model: {row.error}")
        return 1.0 / row.speedup


def format_objective(value: float, objective: str) -> str:
    """A latency ratio with three decimals; byte and parameter counts as whole numbers."""
    return f"{value:.3f}" if objective == "latency" else f"{value:,.0f}"


def ratio_word(objective: str) -> str:
    return "faster" if objective == "latency" else "smaller"


__all__ = ["LatencyProbe", "format_objective", "ratio_word"]
