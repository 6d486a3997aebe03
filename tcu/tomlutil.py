"""The one TOML reading helper: parse text, translating every failure into the caller's error type.

A base module (it imports nothing of tcu): each reader passes ``make_error(detail, line)``
building its own :class:`~tcu.errors.TcuError` (file path included), and gets back the document
or that error, raised ``from`` the parser's. Nesting deep enough to exhaust the parser's recursion
(tomllib recurses once per nested array or inline table) is bad input like a syntax error.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from typing import Any

__all__ = ["TOO_DEEP", "parse_toml", "toml_error_line"]

TOO_DEEP = "arrays or tables nested too deeply"


def toml_error_line(exc: tomllib.TOMLDecodeError) -> int | None:
    """The line of a TOML syntax error (Python 3.11 only puts it in the message)."""
    line = getattr(exc, "lineno", None)
    if isinstance(line, int):
        return line
    match = re.search(r"at line (\d+)", str(exc))
    return int(match.group(1)) if match else None


def parse_toml(text: str, make_error: Callable[[str, int | None], Exception]) -> dict[str, Any]:
    """``tomllib.loads(text)``; a failure raises ``make_error(detail, line or None)``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise make_error(str(exc), toml_error_line(exc)) from exc
    except RecursionError as exc:
        raise make_error(TOO_DEEP, None) from exc
