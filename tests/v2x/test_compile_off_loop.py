"""The ASN.1 compile (asn1tools, ~0.3 + 0.9 CPU-s) never runs on, nor blocks, the agent's event loop."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_agent_v2x import LAT, LON, Drive, _config, _until, _v2x, ingest

from tcu.agent import Agent
from tcu.ingest import IngestServer
from tcu.v2x import messages
from tcu.v2x.messages import Cam, StationPosition, compile_release, encode_cam

__all__ = ["ingest"]  # the fixture, shared with test_agent_v2x


@pytest.fixture
def fresh_compile(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """Forget the compiled specifications; record (files, thread) of each compile."""
    calls: list[tuple[int, int]] = []
    real = messages.asn1tools.compile_files

    def spy(files: list[str], codec: str) -> Any:
        calls.append((len(files), threading.get_ident()))
        return real(files, codec)

    def forget() -> None:
        cache_clear = getattr(messages._compiled, "cache_clear", None)
        if cache_clear is not None:
            cache_clear()
        getattr(messages, "_specs", {}).clear()

    forget()
    monkeypatch.setattr(messages.asn1tools, "compile_files", spy)
    yield calls
    forget()


def _cam() -> Cam:
    return Cam(station_id=7, station_type=5, generation_delta_time_ms=1, position=StationPosition(LAT, LON))


def test_sending_does_not_wait_for_the_release_2_compile(
    fresh_compile: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_release(1)
    release_2_may_finish = threading.Event()
    real = messages.asn1tools.compile_files

    def slow(files: list[str], codec: str) -> Any:
        release_2_may_finish.wait(30)
        return real(files, codec)

    monkeypatch.setattr(messages.asn1tools, "compile_files", slow)
    compiling = threading.Thread(target=compile_release, args=(2,), name="compile-2")
    compiling.start()
    time.sleep(0.05)  # the compile thread holds whatever lock it takes
    sent: list[bytes] = []
    sender = threading.Thread(target=lambda: sent.append(encode_cam(_cam())), name="sender")
    sender.start()
    sender.join(10)
    finished = not sender.is_alive()
    release_2_may_finish.set()
    sender.join()
    compiling.join()
    assert finished, "encoding a release-1 CAM waited for the release-2 compile"
    assert sent and sent[0]


async def test_the_agent_compiles_the_asn1_in_a_thread_and_sends_once_ready(
    fresh_compile: list[tuple[int, int]], ingest: IngestServer
) -> None:
    loop_thread = threading.get_ident()
    channel = f"tcu-v2x-{uuid.uuid4().hex}"
    agent = Agent(_config(channel, ingest.bound_port, _v2x(None)))  # broker down: the station works
    assert agent.v2x is not None
    stop = asyncio.Event()
    drive = Drive(channel)
    task = asyncio.create_task(agent.run(stop))
    await _until(lambda: all(r.opened for r in agent.readers))
    await drive.run(1.0, lambda t: 0.0)
    await _until(lambda: agent.v2x is not None and agent.v2x.client.counters["cam_queued"] >= 1)
    await _until(lambda: len(fresh_compile) >= 2)
    stop.set()
    final = await asyncio.wait_for(task, 30)
    drive.close()
    assert final.v2x is not None
    assert len(fresh_compile) == 2  # releases 1 and 2, once each
    assert all(thread != loop_thread for _, thread in fresh_compile), "compiled on the event loop"
