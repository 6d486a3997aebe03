"""Test-wide settings: where the shared third-party data lives.

The data sits beside the repository (``../shared/data``), in development and in
CI alike; ``TCU_SHARED_DATA`` overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TCU_SHARED_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
