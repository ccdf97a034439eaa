"""The Pareto front of metric against objective: the trials no other trial beats on both."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from ..fileio import atomic_path
from ..report import markdown_table
from .evaluate import Trial
from .plan import plan_key


def dominates(a: Trial, b: Trial) -> bool:
    """`a` is no worse than `b` on drop and objective, and better on one."""
    return a.drop <= b.drop and a.objective <= b.objective and (a.drop < b.drop or a.objective < b.objective)


def pareto_front(trials: Sequence[Trial]) -> list[Trial]:
    """The non-dominated trials (finite ones; one per distinct plan), sorted by objective."""
    seen: dict[str, Trial] = {}
    for t in trials:
        if not t.error and math.isfinite(t.drop) and math.isfinite(t.objective):
            seen.setdefault(plan_key(t.plan), t)
    pool = list(seen.values())
    front = [t for t in pool if not any(dominates(o, t) for o in pool)]
    return sorted(front, key=lambda t: (t.objective, t.drop))


def front_markdown(front: Sequence[Trial], objective: str, baseline_objective: float, labels: Sequence[str]) -> str:
    """The front as a Markdown table: trial, metric, drop, objective and its ratio, and the plan in short."""
    from .latency import format_objective, ratio_word

    rows = [(str(t.number), f"{t.metric:.4f}", f"{t.drop:+.4f}", format_objective(t.objective, objective),
             f"{baseline_objective / t.objective:.2f}x" if t.objective else "", _short(t, labels)) for t in front]
    return markdown_table(("trial", "metric", "drop", objective, ratio_word(objective), "plan"), rows) + "\n"


def plot_front(trials: Sequence[Trial], front: Sequence[Trial], path: Path, objective: str,
               tolerance: Optional[float] = None) -> Optional[Path]:
    """Every trial as a dot, the front as a line, the tolerance as a dashed line (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [t for t in trials if not t.error and math.isfinite(t.drop)]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter([t.objective for t in ok], [t.drop for t in ok], s=14, color="#9aa5b1", label="trials")
    ax.plot([t.objective for t in front], [t.drop for t in front], "o-", color="#d8583b", label="Pareto front")
    if tolerance is not None:
        ax.axhline(tolerance, color="black", linestyle="--", linewidth=0.8, label=f"tolerance {tolerance:g}")
    ax.set_xlabel(objective)
    ax.set_ylabel("metric drop on validation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def _short(t: Trial, labels: Sequence[str]) -> str:
    """``12 layers: int4 x5, int8 x6, prune50% x1`` (counts of each candidate)."""
    if not t.plan:
        return "uncompressed"
    counts: dict[str, int] = {}
    for idx in t.plan.values():
        for i in idx:
            counts[labels[i]] = counts.get(labels[i], 0) + 1
    return f"{len(t.plan)} layers: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
