"""Captured events as ``tcu.api.v1.Event`` (absolute times, signal names): Fleet API and event blob.

The SQLite sink stores each event's columns and raw frames as one serialised
``Event`` message (see :mod:`tcu.ingest.store`), so the stored form and the wire
form are the same schema.
"""

from __future__ import annotations

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.ingest.model import Capture, Column, FrameSeries, Series, SignalDef, ValueKind

__all__ = ["capture_from_pb", "capture_pb", "series_pb"]


def series_pb(series: Series) -> fleet_pb.SignalSeries:
    message = fleet_pb.SignalSeries(name=series.name, unit=series.unit, t_ns=series.t_ns)
    if series.kind is ValueKind.DOUBLE:
        message.double_values.extend(series.double_values)
    else:
        message.string_values.extend(series.string_values)
    return message


def _column_pb(column: Column) -> fleet_pb.SignalSeries:
    signal = column.signal
    message = fleet_pb.SignalSeries(name=signal.name, unit=signal.unit, t_ns=column.t_ns)
    if signal.kind is ValueKind.DOUBLE:
        message.double_values.extend(column.double_values)
    else:
        message.string_values.extend(column.string_values)
    return message


def capture_pb(capture: Capture, signals: frozenset[str] = frozenset()) -> fleet_pb.Event:
    """The event as the Fleet API shows it; a non-empty ``signals`` keeps only those columns."""
    return fleet_pb.Event(
        campaign=capture.campaign,
        campaign_version=capture.campaign_version,
        trigger_ns=capture.trigger_ns,
        start_ns=capture.start_ns,
        end_ns=capture.end_ns,
        series=[
            _column_pb(column) for column in capture.columns if not signals or column.signal.name in signals
        ],
        truncated=capture.truncated,
        history_incomplete=capture.history_incomplete,
        frames=[
            fleet_pb.FrameSeries(
                bus=f.bus, arbitration_id=f.arbitration_id, t_ns=f.t_ns, data=f.data, dropped=f.dropped
            )
            for f in capture.frames
        ],
    )


def capture_from_pb(message: fleet_pb.Event) -> Capture:
    """Back from a stored ``Event``: signals by name (``signal_id`` 0); a series without values is DOUBLE."""
    columns: list[Column] = []
    for series in message.series:
        kind = ValueKind.STRING if series.string_values else ValueKind.DOUBLE
        columns.append(
            Column(
                signal=SignalDef(signal_id=0, name=series.name, unit=series.unit, kind=kind),
                t_ns=list(series.t_ns),
                double_values=list(series.double_values),
                string_values=list(series.string_values),
            )
        )
    return Capture(
        campaign=message.campaign,
        campaign_version=message.campaign_version,
        trigger_ns=message.trigger_ns,
        start_ns=message.start_ns,
        end_ns=message.end_ns,
        columns=tuple(columns),
        truncated=message.truncated,
        history_incomplete=message.history_incomplete,
        frames=tuple(
            FrameSeries(
                bus=f.bus,
                arbitration_id=f.arbitration_id,
                t_ns=list(f.t_ns),
                data=list(f.data),
                dropped=f.dropped,
            )
            for f in message.frames
        ),
    )
