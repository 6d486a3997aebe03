"""Refuse absolute paths of a particular machine in the project's tracked files (part of ``make test``).

A test, tool or module that names a folder of the development machine (a home folder, the
work folder, a fixed temporary file) passes there and fails everywhere else. This check reads
every tracked file under ``tcu/``, ``sim/``, ``tools/``, ``tests/`` and the ``Makefile``
(``git ls-files``; without git, every file under those folders) and reports each such path as
``file:line:column``. It exits 1 when it found one, 0 otherwise.

Refused (at the start of a path, not inside a URL or a relative path such as ``../work``):
``/home/<name>``, ``/root``, ``/Users/<name>``, ``/work``, ``/tmp/<anything>`` and a bare
``"/tmp"``, ``/var/tmp/<…>``, ``/var/folders/<…>``, ``/private/…``, ``/mnt/<…>``,
``/media/<…>`` and ``C:\\Users\\…``. Fine: device and system paths such as ``/dev/ttyUSB2``,
``/proc``, ``/sys``, ``/etc/tcu``, ``/var/lib/tcu``, ``/usr/sbin``.

Instead: ``tempfile`` or pytest's ``tmp_path`` for temporary files, paths relative to the
repository (``Path(__file__).parent``), ``tools.shared_data.shared_path`` for the shared data,
and relative names (``gt.npz``) in usage examples.

    .venv/bin/python tools/check_paths.py            # the repository this file is in
    .venv/bin/python tools/check_paths.py --root DIR # another checkout
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SCOPE", "Finding", "check", "check_text", "files_to_check", "main"]

#: What is checked, relative to the repository root.
SCOPE = ("tcu", "sim", "tools", "tests", "Makefile")
_SKIP_DIRS = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "build"}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".so", ".png", ".npz", ".sqlite", ".db"}

# Not after a word character, a dot, a slash, "~", "$" or "-": so "https://host/home/x",
# "../work" and "$TMPDIR/x" are not taken for absolute paths; "file:///home/x" is.
_START = r"(?:(?<=file://)|(?<![\w.~/$-]))"
_END = r"(?=[/\"'`\s),;:]|$)"  # the folder name ends here
_PATTERN = re.compile(
    _START
    + "(?:"
    + "|".join(
        (
            r"/home/[\w.$-]+",
            r"/root" + _END,
            r"/Users/[\w.$-]+",
            r"/work" + _END,
            r"/tmp/[\w.${}-]+",
            r"/tmp(?=[\"'`])",
            r"/var/tmp/[\w.${}-]+",
            r"/var/folders/",
            r"/private/(?:tmp|var)\b",
            r"/mnt/[\w.-]+",
            r"/media/[\w.-]+",
        )
    )
    + ")"
    + r"|(?<![\w])[A-Za-z]:\\\\?Users\\"
)

_REST = re.compile(r"[^\s\"'`),;]*")  # the rest of a found path, to show it whole


@dataclass(frozen=True, slots=True)
class Finding:
    path: str
    line: int
    column: int
    text: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}:{self.column}: absolute path of a particular machine: {self.text!r} "
            "(use tempfile or tmp_path, a path relative to the repository, or tools.shared_data)"
        )


def check_text(text: str, path: str) -> list[Finding]:
    """Every machine-specific absolute path in ``text`` (``path`` only names it)."""
    found: list[Finding] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for match in _PATTERN.finditer(line):
            rest = _REST.match(line, match.end())
            whole = match.group(0) + (rest.group(0) if rest else "")
            found.append(Finding(path, number, match.start() + 1, whole))
    return found


def files_to_check(root: Path) -> list[Path]:
    """The tracked files in :data:`SCOPE` (every file there when ``root`` is not a git checkout)."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--", *SCOPE],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        listed = None
    if listed is not None:
        return [root / name for name in sorted(os.fsdecode(n) for n in listed.split(b"\0") if n)]
    out: list[Path] = []
    for name in SCOPE:
        top = root / name
        if top.is_file():
            out.append(top)
            continue
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
            out.extend(Path(folder) / f for f in sorted(files))
    return out


def check(root: Path) -> tuple[int, list[Finding]]:
    """(files read, findings) for the checkout at ``root``. Binary files are skipped, and so is
    this file (its docstring lists what is refused)."""
    findings: list[Finding] = []
    read = 0
    for file in files_to_check(root):
        if file.suffix.lower() in _SKIP_SUFFIXES or not file.is_file() or _is_this_file(root, file):
            continue
        data = file.read_bytes()
        if b"\0" in data[:8192]:
            continue
        read += 1
        findings.extend(check_text(data.decode("utf-8", errors="replace"), file.relative_to(root).as_posix()))
    return read, findings


def _is_this_file(root: Path, file: Path) -> bool:
    return file.relative_to(root).as_posix() == _SELF


_SELF = "tools/check_paths.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, default=Path(__file__).resolve().parents[1], help="the checkout to check"
    )
    args = parser.parse_args(argv)
    read, findings = check(args.root)
    for finding in findings:
        print(finding)
    if findings:
        count = len(findings)
        print(f"check_paths: {count} machine-specific absolute path(s) in {read} files", file=sys.stderr)
        return 1
    if read == 0:
        print(f"check_paths: no files found to check under {args.root}", file=sys.stderr)
        return 1
    print(f"check_paths: {read} files, no machine-specific absolute paths")
    return 0


if __name__ == "__main__":
    sys.exit(main())
