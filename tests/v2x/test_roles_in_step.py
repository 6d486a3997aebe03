"""tcu.config is a leaf and may not import tcu.v2x, so it keeps its own list of the ETSI vehicle
roles a `[v2x] vehicle_role` may name; this keeps the two lists in step."""

from __future__ import annotations

from tcu import config
from tcu.v2x import messages


def test_config_accepts_exactly_the_named_roles_the_codec_encodes() -> None:
    named = {role for role in messages._VEHICLE_ROLES if not role.startswith("reserved")}
    assert named == config._V2X_ROLES
