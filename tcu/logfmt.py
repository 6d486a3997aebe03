"""Log formats of the ``tcu`` commands: text, JSON lines, and journald-friendly output.

* ``text`` (default): ``2026-12-04 20:01:02,345 INFO    tcu.agent.app: message``.
* ``json``: one object per line with the stable keys ``ts`` (UTC, ISO 8601 with
  milliseconds), ``level``, ``logger`` and ``msg``, then the record's extras (``extra=``
  of the logging call; values that are not JSON become strings), and ``exc`` (``Type:
  message``) when the record carries an exception (``traceback`` too with ``--debug``).
* Under systemd, when ``$JOURNAL_STREAM`` names the stream stderr is connected to
  (:func:`journal_stream`), each line starts with its syslog priority ``<N>`` (journald
  strips it and files the line under that priority) and the text format has no timestamp
  of its own (journald adds one). Without ``--debug`` no record prints a traceback in any
  format: the exception is one ``[Type: message; run with --debug ...]`` suffix.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["FORMATS", "JsonFormatter", "TextFormatter", "journal_stream", "make_formatter"]

FORMATS = ("text", "json")

_HINT = "run with --debug for the traceback"
_TEXT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_JOURNAL_TEXT = "%(levelname)-7s %(name)s: %(message)s"

_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys() | {"message", "asctime"}
)


def _priority(levelno: int) -> int:
    """The syslog priority of a logging level (sd-daemon(3) prefixes)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def journal_stream(env: Mapping[str, str], stream: TextIO) -> bool:
    """True when ``$JOURNAL_STREAM`` (``<dev>:<inode>``) is the file ``stream`` writes to."""
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


class TextFormatter(logging.Formatter):
    """The text format; without ``debug`` an exception is a one-line suffix, never a traceback."""

    def __init__(self, *, debug: bool = False, journal: bool = False) -> None:
        super().__init__(_JOURNAL_TEXT if journal else _TEXT)
        self.debug = debug
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        if self.debug or (not record.exc_info and not record.stack_info):
            text = super().format(record)
        else:
            saved = record.exc_info, record.exc_text, record.stack_info
            exc = record.exc_info[1] if record.exc_info else None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            try:
                text = super().format(record)
            finally:
                record.exc_info, record.exc_text, record.stack_info = saved
            if exc is not None:
                text += f" [{type(exc).__name__}: {exc}; {_HINT}]"
        if self.journal:
            prefix = f"<{_priority(record.levelno)}>"
            text = prefix + text.replace("\n", "\n" + prefix)  # a traceback (--debug): every line filed
        return text


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, extras, ``exc``."""

    def __init__(self, *, debug: bool = False, journal: bool = False) -> None:
        super().__init__()
        self.debug = debug
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        obj: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in obj:
                obj[key] = _jsonable(value)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            obj["exc"] = f"{type(exc).__name__}: {exc}"
            if self.debug:
                obj["traceback"] = self.formatException(record.exc_info)
        line = json.dumps(obj, ensure_ascii=False)
        return f"<{_priority(record.levelno)}>{line}" if self.journal else line


def make_formatter(fmt: str, *, debug: bool, journal: bool) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(debug=debug, journal=journal)
    return TextFormatter(debug=debug, journal=journal)
