"""How far a runtime's outputs are from the reference's: max |diff|, cosine, argmax agreement.

Outputs are matched by name when both files name the same outputs, else by position.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

#: output names that say "class scores": their argmax is the prediction
CLASSIFIER_NAMES = re.compile(r"logit|class|prob|score|label", re.I)
METRICS = ("auto", "argmax", "cosine")


@dataclass(frozen=True)
class Agreement:
    """Distance of one (file, runtime) pair's outputs from the reference outputs."""

    max_abs: float  # over every matched output
    cosine: float  # of the flattened first output
    argmax: Optional[float]  # share of rows whose argmax of the first output agrees (classifiers only)
    note: str = ""  # why outputs could not be matched, if they could not


def resolve_metric(metric: str, first_output_name: str, first_output: np.ndarray) -> str:
    """``argmax`` for a classifier's scores (by output name, rank >= 2, more than one class), else ``cosine``."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if metric != "auto":
        return metric
    scores = first_output.ndim >= 2 and first_output.shape[-1] > 1
    return "argmax" if scores and CLASSIFIER_NAMES.search(first_output_name) else "cosine"


def _match(names: Sequence[str], outputs: Sequence[np.ndarray], ref_names: Sequence[str]) -> list[np.ndarray]:
    if set(ref_names) <= set(names):
        by_name = dict(zip(names, outputs))
        return [by_name[n] for n in ref_names]
    return list(outputs[:len(ref_names)])


def agreement(names: Sequence[str], outputs: Sequence[np.ndarray], ref_names: Sequence[str],
              ref_outputs: Sequence[np.ndarray], with_argmax: bool) -> Agreement:
    """Compare `outputs` with the reference outputs (matched by name, else position)."""
    got = _match(names, outputs, ref_names)
    if len(got) < len(ref_outputs):
        return Agreement(float("inf"), 0.0, 0.0 if with_argmax else None,
                         f"{len(got)} output(s), the reference has {len(ref_outputs)}")
    worst = 0.0
    for a, e in zip(got, ref_outputs):
        if np.shape(a) != np.shape(e):
            return Agreement(float("inf"), 0.0, 0.0 if with_argmax else None,
                             f"output shape {np.shape(a)} differs from the reference's {np.shape(e)}")
        a64, e64 = np.asarray(a, np.float64), np.asarray(e, np.float64)
        diff = float(np.abs(a64 - e64).max()) if a64.size else 0.0
        worst = max(worst, diff if np.isfinite(diff) else float("inf"))
    a, e = np.asarray(got[0], np.float64).ravel(), np.asarray(ref_outputs[0], np.float64).ravel()
    norm = float(np.linalg.norm(a) * np.linalg.norm(e))
    cosine = float(a @ e / norm) if norm > 0 else float(np.array_equal(a, e))
    cosine = cosine if np.isfinite(cosine) else 0.0
    arg = None
    if with_argmax:
        x, y = np.asarray(got[0]), np.asarray(ref_outputs[0])
        arg = float((x.argmax(-1) == y.argmax(-1)).mean()) if x.size else 1.0
    return Agreement(worst, cosine, arg)
