"""``tcu decode``: decode a recorded CAN log with DBC files into long-form CSV or Parquet."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tcu.cli._logdecode import add_log_arguments, decode_log, print_summary
from tcu.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from tcu.signals.decoder import MessageBlock

COLUMNS = ("timestamp", "bus", "arbitration_id", "message", "signal", "value")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "decode",
        help="decode a CAN log with DBC files into CSV or Parquet",
        description="Decode every frame of a CAN log (candump -L .log, .blf, .asc, .trc, .mf4) with DBC "
        "files, a DBC per channel if wanted, into long-form rows: "
        "timestamp (s), bus, arbitration_id, message, signal, value (physical, choices not applied). "
        "Progress and a summary (frames, decoded, unknown ids, errors) go to stderr.",
        epilog="Example: tcu decode drive.log --dbc can0=powertrain.dbc --dbc can1=radar.dbc -o drive.csv",
    )
    add_log_arguments(p)
    p.add_argument("-o", "--output", type=Path, help="output file (default: CSV on stdout)")
    p.add_argument(
        "--format", choices=("csv", "parquet"), help="output format (default: from -o's suffix, else csv)"
    )
    p.set_defaults(func=run)


class _Sink(Protocol):
    def write(self, columns: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def run(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is None:
        fmt = "parquet" if args.output is not None and args.output.suffix.lower() == ".parquet" else "csv"
    if fmt == "parquet" and args.output is None:
        raise InputError("--format parquet needs -o FILE")
    blocks_per_chunk, decoder, stats = decode_log(args)
    sink = _open_sink(fmt, args.output)
    try:
        for blocks in blocks_per_chunk:
            columns = long_form(blocks)
            if columns is not None:
                sink.write(columns)
    except BaseException:
        sink.close()
        if args.output is not None:  # no partial or header-only file that looks like a result
            args.output.unlink(missing_ok=True)
        raise
    sink.close()
    print_summary(decoder.counts, stats, lambda text: print(f"tcu decode: {text}", file=sys.stderr))
    return 0


def long_form(blocks: list[MessageBlock]) -> dict[str, Any] | None:
    """Rows of one chunk in frame order: numpy arrays, with string columns as
    (codes, names) pairs."""
    import numpy as np

    rows: list[npt.NDArray[np.intp]] = []
    t_ns: list[npt.NDArray[np.int64]] = []
    values: list[npt.NDArray[np.float64]] = []
    bus_code: list[npt.NDArray[np.int32]] = []
    id_code: list[npt.NDArray[np.int32]] = []
    msg_code: list[npt.NDArray[np.int32]] = []
    sig_code: list[npt.NDArray[np.int32]] = []
    buses: dict[str, int] = {}
    ids: dict[int, int] = {}
    messages: dict[str, int] = {}
    signals: dict[str, int] = {}
    for block in blocks:
        b = buses.setdefault(block.bus, len(buses))
        m = messages.setdefault(block.codec.name, len(messages))
        unique_ids, id_inverse = np.unique(block.arbitration_id, return_inverse=True)
        id_codes = np.array([ids.setdefault(int(i), len(ids)) for i in unique_ids], dtype=np.int32)[
            id_inverse
        ]
        decoded = block.decoded
        for name in block.codec.signal_names:
            present = decoded.present[name]
            count = int(present.sum())
            if count == 0:
                continue
            s = signals.setdefault(name, len(signals))
            rows.append(block.rows[present])
            t_ns.append(block.t_ns[present])
            values.append(decoded.values[name][present])
            bus_code.append(np.full(count, b, dtype=np.int32))
            id_code.append(id_codes[present])
            msg_code.append(np.full(count, m, dtype=np.int32))
            sig_code.append(np.full(count, s, dtype=np.int32))
    if not rows:
        return None
    order = np.argsort(np.concatenate(rows), kind="stable")
    id_names = {code: f"0x{ident:X}" for ident, code in ids.items()}
    return {
        "timestamp": np.concatenate(t_ns)[order] / 1e9,
        "bus": (np.concatenate(bus_code)[order], _names(buses)),
        "arbitration_id": (np.concatenate(id_code)[order], [id_names[i] for i in range(len(ids))]),
        "message": (np.concatenate(msg_code)[order], _names(messages)),
        "signal": (np.concatenate(sig_code)[order], _names(signals)),
        "value": np.concatenate(values)[order],
    }


def _names(table: dict[str, int]) -> list[str]:
    out = [""] * len(table)
    for name, code in table.items():
        out[code] = name
    return out


def _open_sink(fmt: str, output: Path | None) -> _Sink:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        if fmt == "parquet":
            raise InputError("Parquet output needs pyarrow: install tcu[parquet]") from None
        return _CsvModuleSink(output)
    return _ArrowSink(fmt, output)


class _ArrowSink:
    def __init__(self, fmt: str, output: Path | None) -> None:
        import pyarrow as pa

        self._pa = pa
        self._fmt = fmt
        self._schema = pa.schema(
            [
                ("timestamp", pa.float64()),
                ("bus", pa.string()),
                ("arbitration_id", pa.string()),
                ("message", pa.string()),
                ("signal", pa.string()),
                ("value", pa.float64()),
            ]
        )
        self._writer: Any
        self._file: Any = None
        if fmt == "parquet":
            import pyarrow.parquet as pq

            assert output is not None
            self._writer = pq.ParquetWriter(str(output), self._schema)
        else:
            import pyarrow.csv as pacsv

            header = (",".join(COLUMNS) + "\n").encode()
            if output is not None:
                self._file = output.open("wb")
            else:
                sys.stdout.flush()
                self._file = sys.stdout.buffer
            self._file.write(header)
            self._writer = pacsv.CSVWriter(
                pa.PythonFile(self._file, mode="w"),
                self._schema,
                write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"),
            )

    def write(self, columns: dict[str, Any]) -> None:
        pa = self._pa
        arrays = []
        for name in COLUMNS:
            column = columns[name]
            if isinstance(column, tuple):
                codes, names = column
                arrays.append(pa.array(names, type=pa.string()).take(pa.array(codes)))
            else:
                arrays.append(pa.array(column, type=pa.float64()))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))

    def close(self) -> None:
        self._writer.close()
        if self._file is not None:
            if self._file is sys.stdout.buffer:
                self._file.flush()
            else:
                self._file.close()


class _CsvModuleSink:
    def __init__(self, output: Path | None) -> None:
        self._file: Any = output.open("w", newline="") if output is not None else sys.stdout
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)

    def write(self, columns: dict[str, Any]) -> None:
        bus_codes, bus_names = columns["bus"]
        id_codes, id_names = columns["arbitration_id"]
        msg_codes, msg_names = columns["message"]
        sig_codes, sig_names = columns["signal"]
        for t, b, i, m, s, v in zip(
            columns["timestamp"].tolist(),
            bus_codes.tolist(),
            id_codes.tolist(),
            msg_codes.tolist(),
            sig_codes.tolist(),
            columns["value"].tolist(),
            strict=True,
        ):
            self._writer.writerow((repr(t), bus_names[b], id_names[i], msg_names[m], sig_names[s], repr(v)))

    def close(self) -> None:
        if self._file is not sys.stdout:
            self._file.close()
        else:
            self._file.flush()
