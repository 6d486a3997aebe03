"""Fixtures: real nats-server processes with JetStream on free loopback ports.

``nats_server`` is one node; ``nats_cluster`` is three routed nodes (stream replicas 3). Both
come from ``tcu.demo.nats``, the launcher the fleet demo and the cluster chaos run use, and
both stop their processes after the test. Without a nats-server binary the tests fail with
the install hint (``make setup`` installs Debian's ``nats-server``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tcu.demo.nats import NatsCluster, NatsNode


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsNode]:
    node = NatsNode(name="single", home=tmp_path / "nats")
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(home=tmp_path / "nats-cluster", size=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
