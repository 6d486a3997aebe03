"""Where the shared third-party data lives: the one mechanism for tests, tools/fuzz and tools/bench.

The data (DBCs, CAN logs, ES10 vectors, …) is not part of the repository. It sits beside the
checkout, in ``../shared/data``; the environment variable ``TCU_SHARED_DATA`` points elsewhere.
Nothing else may name its location: ``tools/check_paths.py`` (part of ``make test``) refuses
absolute paths of a particular machine.

    from tools.shared_data import shared_path
    DBC = shared_path("can/dbc/toyota_adas.dbc")   # raises SharedDataMissing, naming TCU_SHARED_DATA

A script under ``tools/`` run as ``python tools/x/y.py`` puts the repository on ``sys.path``
first (``tools/fuzz/run.py`` and ``tools/bench/decode.py`` do); the tests' ``conftest.py`` does
it for pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_ROOT", "ENV", "REPO", "SharedDataMissing", "shared_path", "shared_root"]

#: The environment variable that overrides where the shared data is.
ENV = "TCU_SHARED_DATA"
REPO = Path(__file__).resolve().parents[1]
#: ``../shared/data`` beside the checkout.
DEFAULT_ROOT = REPO.parent / "shared" / "data"


class SharedDataMissing(FileNotFoundError):
    """A file or folder of the shared data is not where ``TCU_SHARED_DATA`` says."""


def shared_root() -> Path:
    """The shared data folder: ``$TCU_SHARED_DATA``, else ``../shared/data`` beside the checkout."""
    value = os.environ.get(ENV)
    return Path(value) if value else DEFAULT_ROOT


def shared_path(relative: str | os.PathLike[str] = "") -> Path:
    """``relative`` inside the shared data folder; :class:`SharedDataMissing` if it is not there.

    The message names the path looked for, ``TCU_SHARED_DATA`` and what it was set to.
    """
    if Path(relative).is_absolute():
        raise ValueError(f"shared_path wants a path relative to the shared data folder, not {relative}")
    root = shared_root()
    path = root / relative
    if not path.exists():
        value = os.environ.get(ENV)
        how = (
            f"{ENV}={value}; unset, it means ../shared/data beside the checkout"
            if value
            else f"{ENV} is not set, so ../shared/data beside the checkout"
        )
        missing = "the shared data folder itself is missing" if not root.is_dir() else "no such file"
        raise SharedDataMissing(
            f"shared test data not found: {path} ({missing}; {how}). Put the shared data "
            f"(can/, esim/, …) in ../shared/data beside the checkout or set {ENV} to its folder."
        )
    return path
