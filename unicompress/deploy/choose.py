"""The rule that picks where to deploy: the fastest pair whose outputs keep agreement within the tolerance.

The reference pair agrees with itself, so there is always a choice; the reason says what beat what, which
faster pairs were rejected and by how much, and, when nothing beats the reference, why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .compare import DeployTable, PairResult


@dataclass(frozen=True)
class Choice:
    """The chosen pair, the sentence saying why, and the pairs that broke the tolerance."""

    row: PairResult
    reason: str
    tolerance: float
    rejected: list[PairResult] = field(default_factory=list)

    def __str__(self) -> str:
        return self.reason


def keeps(row: PairResult, tolerance: float) -> bool:
    """A pair keeps agreement when it ran and its metric is at least the tolerance."""
    return row.error is None and row.agreement is not None and row.agreement >= tolerance


def _shortfall(table: DeployTable, row: PairResult, tolerance: float) -> str:
    if row.error is not None:
        return f"{row.label}: could not run ({row.error})"
    gap = tolerance - (row.agreement or 0.0)
    by = f"{gap * 100:.1f} points short" if table.metric == "argmax" else f"{gap:.2g} short"
    return (f"{row.label} ({row.speedup:.2f}x, {table.metric_label} {table.format_agreement(row.agreement)} "
            f"< {table.format_agreement(tolerance)}, {by})")


def choose(table: DeployTable, tolerance: Optional[float] = None) -> Choice:
    """The fastest pair with agreement >= `tolerance` (default the table's), and a sentence saying why.

    Example: ``choose(table, 0.99).reason`` ->
    "openvino on model-int8.onnx: 3.20x vs onnxruntime on model-fp32.onnx, argmax agreement 100.0% >= 99.0%;
    faster than onnxruntime on the same file (1.73x)".
    """
    tol = table.tolerance if tolerance is None else tolerance
    ref = table.reference
    ran = [r for r in table.rows if r.speedup is not None and r.error is None]
    good = [r for r in ran if keeps(r, tol)] or [ref]
    best = max(good, key=lambda r: (r.speedup, r.reference))  # a tie goes to the reference
    rejected = sorted((r for r in table.rows if not keeps(r, tol) and not r.reference),
                      key=lambda r: -(r.speedup or 0.0))
    faster_rejected = [r for r in rejected if r.error is None and (r.speedup or 0.0) > best.speedup]
    failed = [r for r in rejected if r.error is not None]
    value = f"{table.metric_label} {table.format_agreement(best.agreement)} >= {table.format_agreement(tol)}"

    if best.reference:
        others = [r for r in ran if not r.reference]
        if not others:
            parts = [f"{ref.label} (the reference): no other pair ran"]
        elif not [r for r in others if keeps(r, tol)]:
            parts = [f"{ref.label} (the reference): no other pair keeps {table.metric_label} >= "
                     f"{table.format_agreement(tol)}"]
            parts += [_shortfall(table, r, tol) for r in rejected if r.error is None]
            faster_rejected = []  # listed just above
        else:
            kept = max((r for r in others if keeps(r, tol)), key=lambda r: r.speedup)
            parts = [f"{ref.label} (the reference) is the fastest pair that keeps {table.metric_label}: the "
                     f"fastest other, {kept.label}, runs at {kept.speedup:.2f}x"]
    else:
        parts = [f"{best.label}: {best.speedup:.2f}x vs {ref.label}, {value}"]
        same_file = [r for r in ran if r.file == best.file and r is not best]
        parts += [f"faster than {r.runtime} on the same file ({best.speedup / r.speedup:.2f}x)" for r in same_file]
    if faster_rejected:
        parts.append("faster but rejected: " + ", ".join(_shortfall(table, r, tol) for r in faster_rejected))
    if failed:
        parts.append("not run: " + ", ".join(_shortfall(table, r, tol) for r in failed))
    return Choice(best, "; ".join(parts), tol, rejected)
