"""The loss-latency picture of a sweep of searches: fronts, winners, limits, the largest model."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure


def plot_front(runs: Sequence[Mapping[str, Any]], reference: Mapping[str, Any], path: str | Path) -> None:
    """Write a PNG: per run (CLI result entries) its front of scored candidates and its winner."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for run in runs:
        front = run["search"]["pareto"]
        limit = run["latency_limit_ms"]
        line, = ax.step([p["latency_ms"] for p in front], [p["loss"] for p in front], where="post",
                        alpha=0.5, label=f"front, limit {limit:g} ms")
        ax.axvline(limit, color=line.get_color(), linestyle=":", linewidth=1)
        ax.plot(run["winner"]["predicted_latency_ms"], run["winner"]["valid_loss"], "o",
                color=line.get_color())
    ax.plot(reference["predicted_latency_ms"], reference["valid_loss"], "k*", markersize=10,
            label="largest SubTransformer")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("validation loss, inherited weights (nats/token)")
    ax.set_title("Evolutionary search: winners (dots) and loss-latency fronts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
