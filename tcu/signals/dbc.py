"""Load DBC files with cantools, translating its errors into :class:`~tcu.errors.DbcError`.

``load_dbc(path)`` first tries cantools' strict mode. Real DBCs (opendbc's Toyota and
VW files among them) often define overlapping signals, which strict mode rejects; in
that case the file is loaded with ``strict=False`` and one warning names every message
whose signals overlap. Such messages usually cannot be decoded at all by cantools;
:func:`tcu.signals.codec.compile_database` reports and marks them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cantools
import cantools.database
from cantools.database.can import Database
from cantools.database.errors import Error as CantoolsDbError
from cantools.database.errors import UnsupportedDatabaseFormatError

from tcu.errors import DbcError

__all__ = ["find_overlaps", "load_dbc"]

log = logging.getLogger(__name__)

_OVERLAP_RE = re.compile(r"The signals (\S+) and (\S+) are overlapping in message (\S+)\.")
_LINE_RE = re.compile(r"at line (\d+), column (\d+)")


def load_dbc(path: str | Path, *, strict: bool | None = None) -> Database:
    """Load one DBC file.

    ``strict=True`` or ``False`` is passed to cantools as is. ``strict=None`` (default)
    tries strict first; if that fails only because signals overlap, the file is loaded
    with ``strict=False`` and a warning names the overlapping signals per message.

    Raises :class:`DbcError` naming the file and, where the parser says, the line.
    """
    file = Path(path)
    if not file.is_file():
        raise DbcError("no such DBC file", path=str(file))
    first_strict = True if strict is None else strict
    try:
        return _load(file, strict=first_strict)
    except DbcError as exc:
        if strict is not None or _OVERLAP_RE.search(exc.problem) is None:
            raise
    db = _load(file, strict=False)
    overlaps = find_overlaps(db)
    log.warning(
        "%s: loaded with strict=False because signals overlap in %d message(s): %s",
        file,
        len(overlaps),
        "; ".join(f"{name}: {problem}" for name, problem in sorted(overlaps.items())),
    )
    return db


def find_overlaps(db: Database) -> dict[str, str]:
    """Map message name → cantools' strict-check complaint, for messages that fail it."""
    found: dict[str, str] = {}
    for message in db.messages:
        try:
            message.refresh(strict=True)
        except CantoolsDbError as exc:
            found[message.name] = str(exc)
        finally:
            message.refresh(strict=False)
    return found


def _load(file: Path, *, strict: bool) -> Database:
    try:
        db = cantools.database.load_file(str(file), database_format="dbc", strict=strict)
    except UnsupportedDatabaseFormatError as exc:
        cause = getattr(exc, "e_dbc", None) or exc
        raise _translate(file, cause) from exc
    except (CantoolsDbError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise _translate(file, exc) from exc
    except UnicodeDecodeError as exc:  # pragma: no cover - cantools reads DBCs as cp1252
        raise DbcError(f"cannot decode text: {exc}", path=str(file)) from exc
    if not isinstance(db, Database):
        raise DbcError("not a CAN database", path=str(file))
    return db


def _translate(file: Path, exc: BaseException) -> DbcError:
    text = str(exc).strip().strip('"')
    line: int | None = None
    match = _LINE_RE.search(text)
    if match is not None:
        line = int(match.group(1))
    else:
        overlap = _OVERLAP_RE.search(text)
        if overlap is not None:
            line = _message_line(file, overlap.group(3))
    return DbcError(text or type(exc).__name__, path=str(file), line=line)


def _message_line(file: Path, message_name: str) -> int | None:
    """Line number of ``BO_ <id> <message_name>:`` in the file, if found."""
    pattern = re.compile(rf"^\s*BO_\s+\d+\s+{re.escape(message_name)}\s*:")
    try:
        with file.open(encoding="cp1252", errors="replace") as handle:
            for number, text in enumerate(handle, start=1):
                if pattern.match(text):
                    return number
    except OSError:
        return None
    return None
