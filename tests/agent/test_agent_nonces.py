"""Command replay across a restart: the nonces of accepted commands persist by default.

A captured signed command must not run again after the agent restarts. With the
configuration of the README (``[commands] verify_key`` and a ``[spool]``, no
``nonce_store``) the nonces live in ``<spool>/nonces``; without a spool in the state
directory; ``nonce_store = "memory"`` is the explicit choice to forget them, and says so.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tcu.agent.commands import CommandHandler
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.config import AgentConfig, load_agent_config
from tcu.pki import DevPki, load_signing_key, sign_command

VIN = "WTCUNON0000000001"


def _config(tmp_path: Path, pki: DevPki, small_dbc: Path, small_mapping: Path, extra: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[vehicle]\nid = "{VIN}"\n\n'
        f'[[bus]]\nname = "can0"\ninterface = "virtual"\ndbc = ["{small_dbc}"]\n\n'
        f'[signals]\nmapping = "{small_mapping}"\n\n'
        '[uplink]\ntarget = "127.0.0.1:1"\ninsecure = true\n\n'
        f'[commands]\nverify_key = "{pki.command_verify_key}"\n' + extra
    )
    return path


async def _run_once(config: AgentConfig, blob: bytes) -> ingest_pb.CommandResult:
    """A fresh handler (an agent just started) answers one command."""
    assert config.commands is not None
    sent: list[ingest_pb.UploadRequest] = []
    handler = CommandHandler(config.commands, config.vehicle_id, sent.append)

    async def noop(payload: bytes, command_id: str) -> None:
        return None

    handler.register("test.noop", noop)
    handler.on_command(ingest_pb.VehicleCommand(command_id="c-1", kind="test.noop", payload=blob))
    for _ in range(500):
        if sent:
            break
        await asyncio.sleep(0.01)
    assert len(sent) == 1
    return sent[0].command_result


def _blob(pki: DevPki) -> bytes:
    key = load_signing_key(pki.command_signing_key)
    return sign_command(key, command_id="c-1", kind="test.noop", target=VIN, ttl_s=600)


async def test_a_command_is_refused_as_a_replay_after_a_restart_with_the_default_store(
    pki: DevPki, tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    path = _config(tmp_path, pki, small_dbc, small_mapping, '\n[spool]\ndirectory = "spool"\n')
    config = load_agent_config(path, env={})
    assert config.commands is not None
    assert config.commands.nonce_store == (tmp_path / "spool" / "nonces").resolve()
    blob = _blob(pki)
    first = await _run_once(config, blob)
    assert first.executed, first.reason
    # The agent restarts: a new handler over the same (default) store.
    again = await _run_once(load_agent_config(path, env={}), blob)
    assert not again.executed
    assert again.reason.startswith("replayed"), again.reason


async def test_without_a_spool_the_nonces_go_to_the_state_directory(
    pki: DevPki, tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    path = _config(tmp_path, pki, small_dbc, small_mapping, "")
    state = tmp_path / "state"  # systemd's StateDirectory= sets STATE_DIRECTORY
    config = load_agent_config(path, env={"STATE_DIRECTORY": str(state)})
    assert config.commands is not None and config.commands.nonce_store == state / "nonces"
    xdg = load_agent_config(path, env={"XDG_STATE_HOME": str(tmp_path / "xdg")})
    assert xdg.commands is not None and xdg.commands.nonce_store == tmp_path / "xdg" / "tcu" / "nonces"
    blob = _blob(pki)
    assert (await _run_once(config, blob)).executed
    again = await _run_once(load_agent_config(path, env={"STATE_DIRECTORY": str(state)}), blob)
    assert again.reason.startswith("replayed"), again.reason


async def test_memory_only_nonces_are_an_explicit_choice_that_warns(
    pki: DevPki, tmp_path: Path, small_dbc: Path, small_mapping: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _config(tmp_path, pki, small_dbc, small_mapping, 'nonce_store = "memory"\n')
    config = load_agent_config(path, env={"STATE_DIRECTORY": str(tmp_path / "state")})
    assert config.commands is not None and config.commands.nonce_store == "memory"
    with caplog.at_level(logging.WARNING, logger="tcu.agent.commands"):
        assert (await _run_once(config, _blob(pki))).executed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("replay" in m and "restart" in m for m in warnings), warnings
    assert not (tmp_path / "state").exists()
