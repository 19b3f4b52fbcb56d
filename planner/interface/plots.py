"""Charts drawn with matplotlib (headless Agg backend)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

FORMATS = (".png", ".svg")


def plot_history(rows, gpu_model: str, path: Path, daily: bool = False) -> None:
    """Min (solid) and median (dashed) per provider/tier/kind, one colour per series, per hour or (with
    `daily`, the daily roll-up) per day; the legend sits right of the axes, never over the data.
    The format follows the file name: .png or .svg."""
    if Path(path).suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: give a {' or '.join(FORMATS)} file name")
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
    bucket = "day" if daily else "hour"
    ax.set_title(f"{gpu_model}: {'daily' if daily else 'hourly'} price per GPU "
                 f"(min solid, {'mean of hourly medians' if daily else 'median'} dashed)")
    ax.set_ylabel("USD per GPU-hour")
    ax.set_xlabel(f"{bucket} (UTC)")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    else:
        ax.text(0.5, 0.5, "no data in this window", ha="center", va="center", transform=ax.transAxes)
    fig.autofmt_xdate()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")  # the box grows to hold the legend outside the axes
    plt.close(fig)
