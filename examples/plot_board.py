"""Plot scalars of one or more runs' TensorBoard logs into a PNG (the curves of docs/gallery.md).

    python examples/plot_board.py runs/gan "D/d_loss/step" "G/g_loss/step" --out docs/img/gallery/gan.png
    python examples/plot_board.py runs/finetune val/acc --also scratch=runs/scratch --out curves.png

Each tag gets its own panel (``--one-panel``: all on one axes); every run is a line in each panel. The
x axis is the board's step, ``global_counters.steps.train`` for ice_ignite runs. A RUN_DIR is a run
directory (its ``logs/`` is read) or any directory holding event files. A tag may be a glob pattern
(``"val/*"``). Importable: ``read_scalars(run_dir)`` and ``plot_board(runs, tags, out)``.
"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's event files: ``{tag: [(step, value), ...]}`` in logged order."""
    path = Path(run_dir)
    if (path / "logs").is_dir():
        path = path / "logs"
    if not any(path.glob("events.out.tfevents.*")):
        raise FileNotFoundError(f"no TensorBoard event files in {path}; pass a run directory or its logs/ folder")
    board = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every point
    board.Reload()
    return {tag: [(e.step, e.value) for e in board.Scalars(tag)] for tag in board.Tags()["scalars"]}


def _match(patterns: list[str], available: list[str], where: str) -> list[str]:
    tags = []
    for pattern in patterns:
        found = sorted(t for t in available if fnmatch.fnmatchcase(t, pattern))
        if not found:
            raise KeyError(f"tag {pattern!r} is not on the board of {where}; its tags: {', '.join(sorted(available))}")
        tags += [t for t in found if t not in tags]
    return tags


def _ema(values: tuple[float, ...], weight: float) -> list[float]:
    out, last = [], values[0]
    for v in values:
        last = weight * last + (1 - weight) * v
        out.append(last)
    return out


def plot_board(
    runs: dict[str, str | Path],
    tags: list[str],
    out: str | Path,
    title: str | None = None,
    one_panel: bool = False,
    logy: bool = False,
    smooth: float = 0.0,
    xlabel: str = "optimizer step",
) -> Path:
    """Plot ``tags`` (names or glob patterns) of every run in ``runs`` (``{label: run directory}``) into ``out``.

    Tags are matched against the first run's board; a tag another run lacks is left out of its lines.
    ``smooth`` in [0, 1): an exponential moving average as TensorBoard's slider draws it, over the
    raw values drawn faint; series of 50 points or fewer (per-epoch validations) are drawn raw.
    """
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth must be in [0, 1), got {smooth!r}")
    scalars = {label: read_scalars(d) for label, d in runs.items()}
    first = next(iter(runs))
    tags = _match(tags, list(scalars[first]), str(runs[first]))
    panels = [tags] if one_panel else [[t] for t in tags]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels) + (1.5 if one_panel else 0), 3.2), squeeze=False
    )
    for ax, panel in zip(axes[0], panels):
        for tag in panel:
            for label, board in scalars.items():
                if tag not in board:
                    continue
                steps, values = zip(*board[tag])
                name = " ".join(x for x in (label if len(runs) > 1 else "", tag if one_panel else "") if x)
                if smooth and len(values) > 50:
                    raw = ax.plot(steps, values, alpha=0.25, linewidth=0.8)[0]
                    values = _ema(values, smooth)
                    ax.plot(steps, values, color=raw.get_color(), label=name or None)
                else:
                    ax.plot(steps, values, marker="." if len(steps) < 40 else None, label=name or None)
        ax.set_xlabel(xlabel)
        if not one_panel:
            ax.set_title(panel[0], fontsize=10)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a run directory (or a folder of event files)")
    parser.add_argument("tags", nargs="+", help="scalar tags or glob patterns, e.g. val/acc 'train/*/step'")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--label", default="run", help="legend label of RUN_DIR when --also adds runs")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=DIR", help="another run to compare")
    parser.add_argument("--title", default=None)
    parser.add_argument("--one-panel", action="store_true", help="all tags on one axes")
    parser.add_argument("--logy", action="store_true", help="a logarithmic y axis")
    parser.add_argument("--xlabel", default="optimizer step", help="the x axis' label (ice_ignite: optimizer steps)")
    parser.add_argument("--smooth", type=float, default=0.0, help="moving-average weight in [0, 1), e.g. 0.9")
    args = parser.parse_args(argv)
    runs: dict[str, str | Path] = {args.label: args.run_dir}
    for item in args.also:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            parser.error(f"--also takes LABEL=DIR, got {item!r}")
        runs[label] = path
    out = plot_board(
        runs,
        args.tags,
        args.out,
        title=args.title,
        one_panel=args.one_panel,
        logy=args.logy,
        smooth=args.smooth,
        xlabel=args.xlabel,
    )
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
