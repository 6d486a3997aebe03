"""``tcu plot``: plot decoded signals of a CAN log over time (matplotlib, Agg backend)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tcu.cli._logdecode import add_log_arguments, decode_log, parse_dbc_args, print_summary
from tcu.errors import InputError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "plot",
        help="plot signals of a CAN log decoded with DBC files",
        description="Decode a CAN log with DBC files and plot the named signals against time "
        "(seconds since the log's first decoded frame), one panel per signal. "
        "NAME is SIGNAL or MESSAGE.SIGNAL.",
        epilog="Example: tcu plot drive.log --dbc can0=powertrain.dbc --signal WHEEL_SPEEDS.WHEEL_SPEED_FL "
        "--signal STEER_ANGLE -o drive.png",
    )
    add_log_arguments(p)
    p.add_argument(
        "--signal", action="append", required=True, metavar="NAME", help="signal to plot (repeatable)"
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="image file (.png, .svg, .pdf)")
    p.set_defaults(func=run)


def _split(name: str) -> tuple[str | None, str]:
    message, _, signal = name.rpartition(".")
    return (message or None), signal


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib
    except ImportError as exc:
        raise InputError("tcu plot needs matplotlib: install tcu[plot]") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import numpy.typing as npt

    wanted = [_split(name) for name in args.signal]
    known = {
        (m.name, s)
        for codec in parse_dbc_args(args.dbc).values()
        for m in codec.messages
        for s in m.signal_names
    }
    for (message, signal), name in zip(wanted, args.signal, strict=True):
        if not any(s == signal and (message is None or m == message) for m, s in known):
            raise InputError(f"--signal {name!r}: no such signal in the DBC files")

    # per requested name: message name → parts of (t_ns, values)
    Parts = list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]
    series: list[dict[str, Parts]] = [{} for _ in wanted]
    blocks_per_chunk, decoder, stats = decode_log(args)
    for blocks in blocks_per_chunk:
        for block in blocks:
            for i, (message, signal) in enumerate(wanted):
                if signal not in block.decoded.present or (
                    message is not None and block.codec.name != message
                ):
                    continue
                present = block.decoded.present[signal]
                if present.any():
                    parts = series[i].setdefault(block.codec.name, [])
                    parts.append((block.t_ns[present], block.decoded.values[signal][present]))
    print_summary(decoder.counts, stats, lambda text: print(f"tcu plot: {text}", file=sys.stderr))

    starts = [int(t.min()) for by_message in series for parts in by_message.values() for t, _ in parts]
    t0 = min(starts) if starts else 0
    fig, axes = plt.subplots(
        len(wanted), 1, sharex=True, figsize=(10, 2.2 * len(wanted) + 0.6), squeeze=False
    )
    for i, name in enumerate(args.signal):
        ax = axes[i][0]
        samples = 0
        for message_name, parts in sorted(series[i].items()):
            t_ns = np.concatenate([t for t, _ in parts])
            values = np.concatenate([v for _, v in parts])
            order = np.argsort(t_ns, kind="stable")
            label = f"{message_name}.{wanted[i][1]}"
            ax.plot((t_ns[order] - t0) / 1e9, values[order], linewidth=0.8, label=label)
            samples += len(values)
        if len(series[i]) > 1:
            ax.legend(fontsize=7, loc="best")
        if not samples:
            ax.text(0.5, 0.5, "no frames", transform=ax.transAxes, ha="center")
        ax.set_ylabel(name, fontsize=8)
        ax.set_title(f"{name} ({samples} samples)", fontsize=9, loc="left")
        ax.grid(True, alpha=0.3)
    axes[-1][0].set_xlabel("time since first decoded frame [s]")
    fig.suptitle(str(args.log.name), fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output)
    plt.close(fig)
    print(f"tcu plot: wrote {args.output}", file=sys.stderr)
    return 0
