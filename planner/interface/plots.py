"""Charts drawn with matplotlib (headless Agg backend)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def plot_history(rows, gpu_model: str, path: Path) -> None:
    """Hourly min (solid) and median (dashed) per provider/tier/kind, one colour per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list] = defaultdict(list)
    for r in rows:
        series[f"{r.provider} {r.tier} {'spot' if r.spot else 'on-demand'}"].append(r)
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    for index, (label, points) in enumerate(sorted(series.items())):
        colour = f"C{index % 10}"
        hours = [p.hour for p in points]
        ax.plot(hours, [p.min_usd for p in points], color=colour, label=f"{label} min")
        ax.plot(hours, [p.median_usd for p in points], color=colour, linestyle="--", alpha=0.6,
                label=f"{label} median")
    ax.set_title(f"{gpu_model}: hourly price per GPU")
    ax.set_ylabel("USD per GPU-hour")
    ax.set_xlabel("hour (UTC)")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7, ncol=2)
    else:
        ax.text(0.5, 0.5, "no data in this window", ha="center", va="center", transform=ax.transAxes)
    fig.autofmt_xdate()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
