"""A PNG of a deployment table: speed-up against output agreement, one point per (file, runtime) pair."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:
    from .compare import DeployTable


def plot_table(table: "DeployTable", path: Union[str, Path]) -> Optional[Path]:
    """Write the plot atomically; None when matplotlib is not installed (``pip install matplotlib``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from ..fileio import atomic_path

    choice = table.choose()
    rows = [r for r in table.rows if r.speedup is not None and r.agreement is not None]
    runtimes = list(dict.fromkeys(r.runtime for r in rows))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r.speedup, r.agreement, s=90 if r is choice.row else 40,
                   color=colours(runtimes.index(r.runtime) % 10), edgecolors="black" if r is choice.row else "none",
                   label=r.runtime)
        ax.annotate(Path(r.file).name, (r.speedup, r.agreement), fontsize=7,  # staggered: pairs of one file overlap
                    xytext=(4, 4 - 9 * (runtimes.index(r.runtime) % 3)),
                    textcoords="offset points")
    ax.axhline(table.tolerance, color="grey", linestyle="--", linewidth=1)
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower left")
    ax.set_xlabel(f"speed-up vs {table.reference.label} (batch {table.batch}, {table.threads} threads)")
    ax.set_ylabel(table.metric_label + " with the reference")
    ax.set_title(f"chosen: {choice.row.label}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
