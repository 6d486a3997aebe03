"""Test-wide settings: the repository on ``sys.path`` (for ``tools.*``) and where the shared
third-party data lives.

The data sits beside the repository (``../shared/data``), in development and in CI alike;
``TCU_SHARED_DATA`` overrides it. Tests find a file of it with
``tools.shared_data.shared_path("can/dbc/x.dbc")``, which fails with a message naming
``TCU_SHARED_DATA`` when the file is not there (no skip: CI has the data). The variable is
also set here for subprocesses the tests start.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tools.shared_data import ENV, shared_root  # noqa: E402 - after the sys.path fix above

os.environ.setdefault(ENV, str(shared_root()))

from nats_servers import nats_cluster, nats_server  # noqa: E402,F401 - fixtures for every test folder
from smdpp_server import smdpp, smdpp_proxy, smdpp_tree  # noqa: E402,F401 - the osmo-smdpp fixtures


@pytest.fixture(autouse=True)
def _own_state_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own agent state directory (the default spool, catalogs and nonces).

    Without a ``[spool]`` section an agent spools to ``$STATE_DIRECTORY/spool``; the agents the
    tests start as processes inherit this variable, so no two tests (nor another person's agent
    on the machine) share ``/var/lib/tcu`` and its spool lock.
    """
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    return state
