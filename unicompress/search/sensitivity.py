"""Sensitivity analysis: the metric drop when only one layer takes one candidate, for every searched layer
and candidate; cached as JSON keyed by the input weights, the candidates and the data, with a table and a plot.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..backend.types import TaskData
from ..fileio import atomic_path, atomic_write_text
from ..record import data_fingerprint, weights_hash
from ..report import markdown_table
from .evaluate import Evaluator
from .plan import label


@dataclass
class SensitivityRow:
    """One (layer, candidate) run: the metric and objective with only that layer compressed."""

    layer: str
    candidate: int
    label: str
    metric: float
    drop: float
    objective: float
    saving: float  # objective saved against the uncompressed model
    seconds: float
    error: str = ""

    @property
    def usable(self) -> bool:
        return not self.error and math.isfinite(self.metric) and math.isfinite(self.objective)


def searched_layers(evaluator: Evaluator) -> list[str]:
    """The layers the search selector chooses that some candidate can change, in model order (the planner's
    selection per candidate: roles from the structure, kinds the backend compresses)."""
    from ..errors import UnicompressError
    from ..planner import plan_stage

    names: dict[str, None] = {}
    for cand in evaluator.spec.candidates:
        probe = cand.model_copy(update={"selector": evaluator.spec.selector.model_copy(update={"allow_partial": True})})
        try:
            names.update(dict.fromkeys(plan_stage(evaluator.adapter, evaluator.model, probe).selected))
        except UnicompressError:  # e.g. N:M on widths it does not tile: per-layer runs record the reason
            names.update(dict.fromkeys(layer.name for layer in evaluator.spec.selector.select(
                evaluator.adapter.layers(evaluator.model))))
    order = [layer.name for layer in evaluator.adapter.layers(evaluator.model)]
    return [n for n in order if n in names]


def cache_key(evaluator: Evaluator, layers: Sequence[str]) -> str:
    """sha256 over the input weights, the candidates, the layers, the metric and the data (train/calibration/
    test fingerprints and the validation batches): any change recomputes the sensitivities."""
    ev = evaluator
    parts = {"weights": weights_hash(ev.adapter.weights(ev.model)), "backend": ev.adapter.name,
             "candidates": [c.model_dump(mode="json") for c in ev.spec.candidates], "layers": list(layers),
             "metric": [ev.spec.metric, ev.spec.lower_is_better, ev.spec.objective],
             "data": data_fingerprint(ev.data), "validation": data_fingerprint(TaskData(evaluation=ev.validation))}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def compute_sensitivity(evaluator: Evaluator, layers: Optional[Sequence[str]] = None,
                        cache: Optional[Path] = None, progress: bool = False) -> list[SensitivityRow]:
    """One row per (layer, candidate); read from `cache` when its key matches, else computed and written there.

    Example: ``rows = compute_sensitivity(Evaluator(adapter, model, base, spec, data), cache=out / "s.json")``."""
    layers = list(layers) if layers is not None else searched_layers(evaluator)
    key = cache_key(evaluator, layers)
    if cache is not None and Path(cache).is_file():
        try:
            stored = json.loads(Path(cache).read_text(encoding="utf-8"))
            if stored.get("key") == key:
                return [SensitivityRow(**row) for row in stored["rows"]]
        except (OSError, ValueError, TypeError, KeyError):
            pass  # an unreadable cache is recomputed
    cands = evaluator.spec.candidates
    rows: list[SensitivityRow] = []
    bar = progress_bar(progress, len(layers) * len(cands), "sensitivity")
    for name in layers:
        for i, cand in enumerate(cands):
            t0 = time.perf_counter()
            metric, objective, error = evaluator.score({name: (i,)})
            rows.append(SensitivityRow(name, i, label(cand), metric, evaluator.drop(metric), objective,
                                       evaluator.baseline_objective - objective, time.perf_counter() - t0, error))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if cache is not None:
        atomic_write_text(cache, json.dumps({"key": key, "baseline_metric": evaluator.baseline_metric,
                                             "baseline_objective": evaluator.baseline_objective,
                                             "rows": [asdict(r) for r in rows]}, indent=1))
    return rows


def sensitivity_markdown(rows: Sequence[SensitivityRow], objective: str) -> str:
    """Layers down, candidates across: each cell the metric drop and the objective saved."""
    labels = list(dict.fromkeys(r.label for r in rows))
    table: dict[str, dict[str, str]] = {}
    for r in rows:
        cell = f"{r.drop:+.4f} / -{r.saving:,.0f}" if r.usable else f"refused: {r.error.split(':')[0]}"
        table.setdefault(r.layer, {})[r.label] = cell
    body = [(layer, *(cells.get(lb, "") for lb in labels)) for layer, cells in table.items()]
    return (f"Metric drop / {objective} saved when only that layer is compressed.\n\n"
            + markdown_table(("layer", *labels), body) + "\n")


def plot_sensitivity(rows: Sequence[SensitivityRow], path: Path) -> Optional[Path]:
    """Grouped horizontal bars of the metric drop per layer and candidate (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    layers = list(dict.fromkeys(r.layer for r in rows))
    labels = list(dict.fromkeys(r.label for r in rows))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.3 * len(layers) * max(1, len(labels)) ** 0.5))
    height = 0.8 / max(1, len(labels))
    for j, lb in enumerate(labels):
        drops = {r.layer: r.drop for r in rows if r.label == lb and r.usable}
        ax.barh([i + j * height for i in range(len(layers))], [drops.get(n, 0.0) for n in layers], height=height,
                label=lb)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(layers))], [".".join(n.split(".")[-4:]) for n in layers],
                  fontsize=6)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel("metric drop when only this layer is compressed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def progress_bar(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar (tqdm is a core dependency) or None when progress is off."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

