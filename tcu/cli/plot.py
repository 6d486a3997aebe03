"""``tcu plot``: plot decoded signals of a CAN log over time (matplotlib, Agg backend)."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path
from typing import Any

from tcu.cli._logdecode import add_log_arguments, decode_log, print_summary, signal_info
from tcu.errors import InputError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "plot",
        help="plot signals of a CAN log decoded with DBC files",
        description="Decode a CAN log with DBC files and plot the named signals against time "
        "(seconds since the first decoded frame of the plotted signals), one panel per signal or "
        "all on one (--axes shared), each axis labelled with the DBC unit. NAME is SIGNAL or "
        "MESSAGE.SIGNAL and may be a glob (WHEEL_SPEEDS.*, '*SPEED*').",
        epilog="Example: tcu plot drive.log --dbc can0=powertrain.dbc --signal 'WHEEL_SPEEDS.WHEEL_SPEED_F?' "
        "--signal STEER_ANGLE --start 10 --end 70 -o drive.png",
    )
    add_log_arguments(p)
    p.add_argument(
        "--signal", action="append", required=True, metavar="NAME", help="signal or glob to plot (repeatable)"
    )
    p.add_argument("--start", type=float, help="from this many seconds after the first decoded frame")
    p.add_argument("--end", type=float, help="up to this many seconds after the first decoded frame")
    p.add_argument(
        "--axes",
        choices=("separate", "shared"),
        default="separate",
        help="one panel per signal (default), or every signal on one panel",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="image file (.png, .svg, .pdf)")
    p.set_defaults(func=run)


def expand(patterns: list[str], known: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (message, signal) pairs the names and globs select, in order, each once.

    A pattern with a dot matches ``MESSAGE.SIGNAL``, without one the signal name. A pattern
    that selects nothing is refused, with the closest names.
    """
    import difflib

    chosen: list[tuple[str, str]] = []
    for pattern in patterns:
        dotted = "." in pattern
        hits = [(m, s) for m, s in known if fnmatch.fnmatchcase(f"{m}.{s}" if dotted else s, pattern)]
        if not hits:
            names = [f"{m}.{s}" if dotted else s for m, s in known]
            close = difflib.get_close_matches(pattern, names, n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise InputError(f"--signal {pattern!r}: no such signal in the DBC files{hint}")
        chosen.extend(pair for pair in hits if pair not in chosen)
    return chosen


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib
    except ImportError as exc:
        raise InputError("tcu plot needs matplotlib: install tcu[plot]") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import numpy.typing as npt

    if args.start is not None and args.end is not None and args.end <= args.start:
        raise InputError(f"--end {args.end} must be after --start {args.start}")
    databases: dict[Path, Any] = {}
    blocks_per_chunk, decoder, stats = decode_log(args, databases=databases)
    info = signal_info(databases)
    known = list(dict.fromkeys(info))
    wanted = expand(args.signal, known)

    Parts = list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]
    series: dict[tuple[str, str], Parts] = {pair: [] for pair in wanted}
    by_signal: dict[str, list[str]] = {}
    for message, signal in wanted:
        by_signal.setdefault(signal, []).append(message)
    for blocks in blocks_per_chunk:
        for block in blocks:
            for signal in block.codec.signal_names:
                if block.codec.name not in by_signal.get(signal, ()):
                    continue
                present = block.decoded.present[signal]
                if present.any():
                    series[(block.codec.name, signal)].append(
                        (block.t_ns[present], block.decoded.values[signal][present])
                    )
    print_summary(decoder.counts, stats, lambda text: print(f"tcu plot: {text}", file=sys.stderr))

    starts = [int(t.min()) for parts in series.values() for t, _ in parts]
    t0 = min(starts) if starts else 0
    lo = t0 + int(args.start * 1e9) if args.start is not None else None
    hi = t0 + int(args.end * 1e9) if args.end is not None else None
    shared = args.axes == "shared"
    panels = 1 if shared else len(wanted)
    height = 2.2 * panels + 0.6 + (1.5 if shared else 0)
    fig, axes = plt.subplots(panels, 1, sharex=True, figsize=(10, height), squeeze=False)
    units_on_shared: list[str] = []
    for i, pair in enumerate(wanted):
        ax = axes[0 if shared else i][0]
        unit = info.get(pair, ("", {}))[0]
        name = f"{pair[0]}.{pair[1]}"
        parts = series[pair]
        samples = 0
        if parts:
            t_ns = np.concatenate([t for t, _ in parts])
            values = np.concatenate([v for _, v in parts])
            keep = np.ones(len(t_ns), dtype=bool)
            if lo is not None:
                keep &= t_ns >= lo
            if hi is not None:
                keep &= t_ns <= hi
            t_ns, values = t_ns[keep], values[keep]
            order = np.argsort(t_ns, kind="stable")
            samples = len(values)
            label = f"{name} [{unit}]" if unit else name
            ax.plot((t_ns[order] - t0) / 1e9, values[order], linewidth=0.8, label=label)
        if shared:
            if unit and unit not in units_on_shared:
                units_on_shared.append(unit)
            continue
        if not samples:
            ax.text(0.5, 0.5, "no frames", transform=ax.transAxes, ha="center")
        ax.set_ylabel(f"[{unit}]" if unit else "", fontsize=8)
        ax.set_title(f"{name} ({samples} samples)", fontsize=9, loc="left")
        ax.grid(True, alpha=0.3)
    if shared:
        ax = axes[0][0]
        ax.set_ylabel(" / ".join(f"[{u}]" for u in units_on_shared), fontsize=8)
        ax.legend(fontsize=7, loc="best")
        ax.grid(True, alpha=0.3)
    axes[-1][0].set_xlabel("time since first decoded frame [s]")
    if lo is not None or hi is not None:
        axes[-1][0].set_xlim(args.start if args.start is not None else None, args.end)
    fig.suptitle(str(args.log.name), fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output)
    plt.close(fig)
    print(f"tcu plot: wrote {args.output} ({len(wanted)} signals)", file=sys.stderr)
    return 0
