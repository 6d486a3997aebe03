"""PUBLISH properties are cached: CAMs share one object, DENMs one per Message Expiry Interval."""

from __future__ import annotations

from tcu.v2x.client import V2xClient, V2xClientConfig, _Item

S = 1_000_000_000


def test_properties_are_shared_where_they_are_equal() -> None:
    now = [100 * S]
    client = V2xClient(V2xClientConfig(host="127.0.0.1", port=1, client_id="t"), wall_ns=lambda: now[0])
    cam = _Item("cam", "t/cam", b"x", None, None)
    first = client._properties(cam)
    assert first is not None and first is client._properties(cam)
    assert first.MessageExpiryInterval == client.config.cam_expiry_s
    a = client._properties(_Item("denm", "t/denm", b"x", now[0] + 20 * S, None))
    b = client._properties(_Item("denm", "t/denm", b"y", now[0] + 20 * S - S // 2, None))
    c = client._properties(_Item("denm", "t/denm", b"z", now[0] + 7 * S, None))
    assert a is not None and b is not None and c is not None
    assert a is b and a.MessageExpiryInterval == 20
    assert c is not a and c.MessageExpiryInterval == 7
    assert client._properties(_Item("denm", "t/denm", b"w", now[0] - 1, None)) is None
    assert client.counters["denm_expired_unsent"] == 1
