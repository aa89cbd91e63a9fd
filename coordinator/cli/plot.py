"""The swarm's progress plot, in the manner of upstream's progress.png.

One panel per hardware class (classes are never compared with each other): every ok result as a
dot in the order it was reported (x = experiment number within the class, failures count but are
not drawn), the running best of the kept results (baselines and merged wins) as a step line, and
each merged win labelled with its title at its best measurement.

Drawn with matplotlib's Agg canvas directly (no pyplot, no display needed): works on a headless VM.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coordinator.cli.formatting import ResultRow, UpstreamStatus, shorten

DPI = 100
DEFAULT_WIDTH_PX = 1600
PANEL_HEIGHT_PX = 450  # per class, when no height is given
LABEL_CHARS = 40  # merged-win labels are cut to this many characters
COLOR_KEEP = "#2ca02c"
COLOR_BASELINE = "#1f77b4"
COLOR_DISCARD = "#b0b0b0"
COLOR_BEST = "#d62728"


@dataclass(frozen=True)
class PlotSummary:
    path: Path
    classes: int
    points: int  # dots drawn (ok results), counted from the figure's artists
    labels: int  # merged wins labelled
    width_px: int
    height_px: int


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def plot_progress(
    rows: Sequence[ResultRow], path: Path, *, width_px: int = DEFAULT_WIDTH_PX, height_px: int | None = None
) -> PlotSummary:
    """Write the progress PNG for these result rows (see formatting.result_rows) and describe it."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    by_class: dict[str, list[ResultRow]] = defaultdict(list)
    for row in rows:
        by_class[str(row["class"])].append(row)
    classes = sorted(by_class)
    panels = max(1, len(classes))
    if height_px is None:
        height_px = PANEL_HEIGHT_PX * panels
    if width_px < 100 or height_px < 100:
        raise ValueError(f"plot size {width_px}x{height_px} px is too small (at least 100x100)")

    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    axes_list = figure.subplots(panels, 1, squeeze=False)[:, 0]
    points = labels = 0
    if not classes:
        axes_list[0].text(0.5, 0.5, "no results yet", ha="center", va="center", transform=axes_list[0].transAxes)
        axes_list[0].set_axis_off()
    for axes, hardware_class in zip(axes_list, classes, strict=False):
        class_rows = sorted(by_class[hardware_class], key=lambda r: (_float(r["reported_unix_s"]), str(r["result_id"])))
        ok = [(x, row) for x, row in enumerate(class_rows, start=1) if row["run_status"] == "ok"]
        groups = {
            "discard": [(x, r) for x, r in ok if r["status"] == UpstreamStatus.DISCARD],
            "baseline": [(x, r) for x, r in ok if r["status"] == UpstreamStatus.KEEP and r["kind"] == "baseline"],
            "merged win": [(x, r) for x, r in ok if r["status"] == UpstreamStatus.KEEP and r["kind"] != "baseline"],
        }
        colors = {"discard": COLOR_DISCARD, "baseline": COLOR_BASELINE, "merged win": COLOR_KEEP}
        for name, members in groups.items():
            if members:
                axes.scatter(
                    [x for x, _ in members], [_float(r["val_bpb"]) for _, r in members],
                    s=14 if name == "discard" else 26, color=colors[name], label=name, zorder=3,
                )
        # Running best of what the branch kept: the swarm's accepted progress, not its luckiest run.
        best_x: list[int] = []
        best_y: list[float] = []
        best = float("inf")
        for x, row in ok:
            if row["status"] == UpstreamStatus.KEEP:
                best = min(best, _float(row["val_bpb"]))
            if best < float("inf"):
                best_x.append(x)
                best_y.append(best)
        if best_x:
            axes.step(best_x, best_y, where="post", color=COLOR_BEST, linewidth=1.5, label="running best (kept)", zorder=2)
        # One label per merged hypothesis, at its best measurement on this class.
        best_of_win: dict[str, tuple[int, ResultRow]] = {}
        for x, row in groups["merged win"]:
            current = best_of_win.get(str(row["hypothesis"]))
            if current is None or _float(row["val_bpb"]) < _float(current[1]["val_bpb"]):
                best_of_win[str(row["hypothesis"])] = (x, row)
        for x, row in best_of_win.values():
            axes.annotate(
                shorten(str(row["description"]), LABEL_CHARS), (x, _float(row["val_bpb"])),
                xytext=(6, 8), textcoords="offset points", fontsize=8, rotation=20, color=COLOR_KEEP,
            )
            labels += 1
        points += sum(len(collection.get_offsets()) for collection in axes.collections)
        failed = len(class_rows) - len(ok)
        wins = len(best_of_win)
        axes.set_title(
            f"{hardware_class}: {len(class_rows)} results ({failed} failed, not drawn), "
            f"{wins} merged win{'' if wins == 1 else 's'}",
            fontsize=10,
        )
        axes.set_xlim(0.5, len(class_rows) + 0.5)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("experiment # (within class)")
        axes.set_ylabel("val_bpb (lower is better)")
        axes.grid(alpha=0.3)
        if ok:
            axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(str(path), format="png", dpi=DPI)
    return PlotSummary(path=path, classes=len(classes), points=points, labels=labels, width_px=width_px, height_px=height_px)
