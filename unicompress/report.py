"""The compression report: per-layer stats, totals, metrics and timings as a table, JSON and a plot."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .backend.types import LayerStats
from .fileio import atomic_path, atomic_write_text


@dataclass
class StageReport:
    """What one stage did and how long it took."""

    index: int
    technique: str
    seconds: float
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    params: int = 0
    nonzero: int = 0
    nbytes: float = 0.0
    checks: list[dict[str, Any]] = field(default_factory=list)  # the judge's checks (unicompress.judge.Check)
    plan: dict[str, Any] = field(default_factory=dict)  # what the planner chose (plan_summary)


#: history series that are records, not training curves (distillation's (student, teacher) layer pairs)
NOT_CURVES = frozenset({"layer_map"})


def plan_summary(plan: Any) -> dict[str, Any]:
    """The report's view of a StagePlan: counts, the layers left alone and why, notes; for low rank each
    factorised layer's rank, for quantization each layer's resolved settings."""
    out = {"selected": len(plan.selected), "attention_blocks": len(plan.attention), "ffn_pairs": len(plan.ffn),
           "rows": list(plan.rows), "skipped": [list(s) for s in plan.skipped], "notes": list(plan.notes)}
    if getattr(plan, "ranks", None):
        out["ranks"] = dict(plan.ranks)
    if getattr(plan, "settings", None):
        out["settings"] = {name: dict(s) for name, s in plan.settings.items()}
    return out


@dataclass
class Totals:
    params: int
    nonzero: int
    nbytes: float  # parameter bytes at their bit widths (zeros included: dense storage)

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero / self.params if self.params else 0.0


def totals_of(layers: Sequence[LayerStats]) -> Totals:
    """Sum parameters, non-zeros and bytes over layers."""
    return Totals(sum(layer.params for layer in layers), sum(layer.nonzero for layer in layers),
                  sum(layer.nbytes for layer in layers))


@dataclass
class CompressionReport:
    """Everything a compression run measured. `to_markdown()` for people, `to_dict()` for tools."""

    recipe: str
    backend: str
    layers_before: list[LayerStats]
    layers_after: list[LayerStats]
    stages: list[StageReport] = field(default_factory=list)
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    exports: dict[str, str] = field(default_factory=dict)
    export_notes: list[str] = field(default_factory=list)  # what rewrote the exports (e.g. int8 embeddings)
    deployment: dict[str, Any] = field(default_factory=dict)  # export.deploy: the runtimes table and the choice
    structure: str = ""  # what structure discovery (or the declaration) found
    record: dict[str, Any] = field(default_factory=dict)  # the reproducibility record (unicompress.record)

    @property
    def before(self) -> Totals:
        return totals_of(self.layers_before)

    @property
    def after(self) -> Totals:
        return totals_of(self.layers_after)

    def summary_rows(self) -> list[tuple[str, str, str, str]]:
        """(quantity, before, after, ratio) rows of the headline table."""
        b, a = self.before, self.after
        rows = [("parameters", f"{b.params:,}", f"{a.params:,}", _ratio(b.params, a.params)),
                ("non-zero parameters", f"{b.nonzero:,}", f"{a.nonzero:,}", _ratio(b.nonzero, a.nonzero)),
                ("sparsity", f"{b.sparsity:.1%}", f"{a.sparsity:.1%}", ""),
                ("weight bytes", _mb(b.nbytes), _mb(a.nbytes), _ratio(b.nbytes, a.nbytes))]
        for key in sorted(set(self.metrics_before) | set(self.metrics_after)):
            vb, va = self.metrics_before.get(key), self.metrics_after.get(key)
            rows.append((key, _num(vb), _num(va), f"{va - vb:+.4f}" if vb is not None and va is not None else ""))
        for s in self.stages:
            rows.append((f"stage {s.index} {s.technique} time", "", f"{s.seconds:.2f} s", ""))
        return rows

    def layer_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(layer, shape, params, sparsity, bits) after compression."""
        return [(layer.name, "x".join(map(str, layer.shape)), f"{layer.params:,}", f"{layer.sparsity:.1%}",
                 str(layer.bits)) for layer in self.layers_after]

    def to_text(self) -> str:
        """The summary as an aligned plain-text table (what the CLI prints)."""
        head = f"unicompress report: {self.recipe} on {self.backend}"
        return head + "\n" + format_table(("", "before", "after", "change"), self.summary_rows())

    def to_markdown(self, layers: bool = True) -> str:
        out = [f"# Compression report: {self.recipe}", "", f"Backend: `{self.backend}`", "",
               markdown_table(("", "before", "after", "change"), self.summary_rows())]
        if layers and self.layers_after:
            out += ["", "## Layers after compression", "",
                    markdown_table(("layer", "shape", "params", "sparsity", "bits"), self.layer_rows())]
        out += self._plan_markdown() + self._checks_markdown() + self._record_markdown()
        if self.exports:
            out += ["", "## Files", ""] + [f"- {k}: `{v}`" for k, v in self.exports.items()]
            out += [f"- {n}" for n in self.export_notes]
        if self.deployment:
            out += ["", "## Deployment targets", "", self.deployment["markdown"].rstrip(), "",
                    f"Chosen: {self.deployment['reason']}"]
        return "\n".join(out) + "\n"

    def check_rows(self) -> list[tuple[str, str, str, str]]:
        """(stage, check, result, figure) of every judge check."""
        mark = {True: "ok", False: "FAILED", None: "not checked"}
        return [(f"{s.index} {s.technique}", c["name"], mark[c["passed"]], c["figure"])
                for s in self.stages for c in s.checks]

    def _checks_markdown(self) -> list[str]:
        rows = self.check_rows()
        if not rows:
            return []
        return ["", "## Checks (the per-run judge)", "", markdown_table(("stage", "check", "result", "figure"), rows)]

    def _plan_markdown(self) -> list[str]:
        out = ["", "## Plan", "", f"Structure: {self.structure or 'not reported'}", ""]
        for s in self.stages:
            p = s.plan
            if not p:
                continue
            parts = [f"{p['selected']} layer(s)"]
            if p["attention_blocks"]:
                parts.append(f"{p['attention_blocks']} attention block(s)")
            if p["ffn_pairs"]:
                parts.append(f"{p['ffn_pairs']} FFN pair(s)")
            out.append(f"- stage {s.index} {s.technique}: " + ", ".join(parts))
            if p.get("ranks"):  # one line: rank -> how many layers, then the layers by rank
                by_rank: dict[int, list[str]] = {}
                for name, r in p["ranks"].items():
                    by_rank.setdefault(r, []).append(name)
                out.append("  - ranks: " + "; ".join(f"{r}: {len(ns)} layer(s)" for r, ns in sorted(by_rank.items())))
            out += [f"  - left alone: `{name}`: {why}" for name, why in p["skipped"][:20]]
            if len(p["skipped"]) > 20:
                out.append(f"  - ... and {len(p['skipped']) - 20} more")
            out += [f"  - note: {n}" for n in p["notes"]]
        return out

    def _record_markdown(self) -> list[str]:
        r = self.record
        if not r:
            return []
        versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
        m = r["machine"]
        data = "; ".join(f"{k} {v['sha256_first_batches'][:12]} ({v['batches_hashed']} batches)"
                         if "sha256_first_batches" in v else f"{k} unreadable ({v['error']})"
                         for k, v in r["data"].items() if isinstance(v, dict)) or "none"
        return ["", "## Reproducibility", "",
                f"- versions: {versions}",
                f"- recipe sha256: `{r['recipe_sha256']}`; seeds: {r['seeds'] or 'none'}",
                f"- input weights sha256: `{r['input_weights_sha256']}` ({r['input_weights_layers']} layers)",
                f"- data fingerprint: {data}",
                f"- machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['cpu_flags']) or '-'}, "
                f"{m['platform']}{', env ' + str(m['env']) if m['env'] else ''}"]

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "backend": self.backend,
                "before": asdict(self.before) | {"sparsity": self.before.sparsity},
                "after": asdict(self.after) | {"sparsity": self.after.sparsity},
                "metrics_before": self.metrics_before, "metrics_after": self.metrics_after,
                "stages": [asdict(s) for s in self.stages],
                "layers_after": [asdict(layer) | {"sparsity": layer.sparsity} for layer in self.layers_after],
                "exports": self.exports, "export_notes": self.export_notes, "deployment": {
                    k: v for k, v in self.deployment.items() if k != "markdown"}, "structure": self.structure,
                "checks": [dict(c, stage=s.index) for s in self.stages for c in s.checks], "record": self.record}

    def save(self, directory: Path | str, plot: bool = True) -> dict[str, Path]:
        """Write report.md, report.json and (if matplotlib is installed) report.png atomically."""
        directory = Path(directory)
        written = {"markdown": atomic_write_text(directory / "report.md", self.to_markdown()),
                   "json": atomic_write_text(directory / "report.json", json.dumps(self.to_dict(), indent=2))}
        if plot:
            png = self.plot(directory / "report.png")
            if png is not None:
                written["plot"] = png
        return written

    def plot(self, path: Path | str) -> Optional[Path]:
        """Per-layer sparsity and bits after compression, plus every logged training curve."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        curves = [(s, k, v) for s in self.stages for k, v in s.history.items() if v and k not in NOT_CURVES]
        fig, axes = plt.subplots(1, 1 + bool(curves), figsize=(12 if curves else 7, 4.5), squeeze=False)
        ax = axes[0][0]
        names = [layer.name.split(".")[-3:] for layer in self.layers_after]
        ax.barh(range(len(names)), [layer.sparsity for layer in self.layers_after], color="#3b7dd8")
        ax.set_yticks(range(len(names)), [".".join(n) for n in names], fontsize=6)
        ax.set_xlabel("sparsity after compression")
        ax.set_xlim(0, 1)
        ax.set_title(f"{self.recipe} ({self.backend})")
        if curves:
            ax2 = axes[0][1]
            for s, key, points in curves:
                xs, ys = zip(*points)
                ax2.plot(xs, ys, label=f"stage {s.index} {s.technique}: {key}")
            ax2.set_xlabel("step")
            ax2.legend(fontsize=7)
            ax2.set_title("training curves")
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        return path


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An aligned plain-text table."""
    cols = list(zip(*([header] + [tuple(r) for r in rows])))
    widths = [max(len(str(c)) for c in col) for col in cols]
    line = "  ".join("-" * w for w in widths)
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), line] + [fmt(r) for r in rows])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _ratio(before: float, after: float) -> str:
    """'2.00x smaller' when the quantity changed; blank when it did not (or after is zero)."""
    return f"{before / after:.2f}x smaller" if after and before != after else ""


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f} MB"


def _num(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.4f}"
