"""lpac, the open-source SGP.22 LPA, built once per session from the shared snapshot.

``tools/build_lpac.sh`` builds it into a cache folder outside the repository (or finds it
built); as root it installs missing build packages with apt-get. Where it cannot be
built, the lpac tests skip with the script's reason; ``TCU_REQUIRE_LPAC=1`` (set it in
CI) turns that skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_EXIT_REASONS = {2: "no lpac source snapshot", 3: "build packages missing", 4: "lpac build failed"}


@pytest.fixture(scope="session")
def lpac_binary() -> Path:
    script = ROOT / "tools" / "build_lpac.sh"
    try:
        done = subprocess.run(
            ["bash", str(script)], capture_output=True, text=True, timeout=900, check=False, cwd=ROOT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"lpac could not be built: {exc}"
    else:
        if done.returncode == 0:
            return Path(done.stdout.strip().splitlines()[-1])
        lines = [line for line in done.stderr.splitlines() if line.startswith("build_lpac:")]
        what = _EXIT_REASONS.get(done.returncode, f"exit {done.returncode}")
        reason = f"lpac could not be built ({what}): {lines[-1] if lines else done.stderr.strip()[-300:]}"
    if os.environ.get("TCU_REQUIRE_LPAC") == "1":
        pytest.fail(reason)
    pytest.skip(reason)
