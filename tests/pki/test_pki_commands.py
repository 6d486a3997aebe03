"""Signed commands: acceptance, every rejection reason, replay protection across restarts."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from tcu.pki import CommandRejected, CommandRejectReason, DevPki, PkiError
from tcu.pki.commands import (
    CommandVerifier,
    NonceStore,
    load_signing_key,
    load_verify_key,
    sign_command,
)

VIN = "WDD2050461A000001"
T0 = 1_763_780_000_000_000_000  # a fixed epoch time in ns
S = 1_000_000_000


class Clock:
    def __init__(self, t_ns: int = T0) -> None:
        self.t_ns = t_ns

    def __call__(self) -> int:
        return self.t_ns


@pytest.fixture(scope="module")
def keys(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey]:
    pki = DevPki(tmp_path_factory.mktemp("cmdpki"))
    signing_path, verify_path = pki.create_command_keys()
    assert stat.S_IMODE(signing_path.stat().st_mode) == 0o600
    return load_signing_key(signing_path), load_verify_key(verify_path)


def _sign(key: ed25519.Ed25519PrivateKey, **overrides: object) -> bytes:
    args: dict[str, object] = {
        "command_id": "cmd-1",
        "kind": "campaign.start",
        "target": VIN,
        "payload": b"\x00\x01campaign",
        "issued_ns": T0,
        "ttl_s": 60.0,
    }
    args.update(overrides)
    return sign_command(key, **args)  # type: ignore[arg-type]


def _reason(verifier: CommandVerifier, blob: bytes) -> CommandRejectReason:
    with pytest.raises(CommandRejected) as info:
        verifier.verify(blob)
    return info.value.reason


def _verifier(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey], clock: Clock
) -> CommandVerifier:
    return CommandVerifier(keys[1], VIN, clock, NonceStore(clock=clock))


def test_valid_command_verifies(keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey]) -> None:
    blob = _sign(keys[0])
    command = _verifier(keys, Clock(T0 + 5 * S)).verify(blob)
    assert (command.command_id, command.kind, command.target) == ("cmd-1", "campaign.start", VIN)
    assert command.payload == b"\x00\x01campaign"
    assert (command.issued_ns, command.expires_ns) == (T0, T0 + 60 * S)
    assert len(command.nonce) == 32 and int(command.nonce, 16) >= 0


def test_forged_signature_is_rejected(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey],
) -> None:
    forged = _sign(ed25519.Ed25519PrivateKey.generate())
    verifier = _verifier(keys, Clock())
    with pytest.raises(CommandRejected) as info:
        verifier.verify(forged)
    assert info.value.reason is CommandRejectReason.BAD_SIGNATURE
    assert info.value.command_id == "cmd-1"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("payload", base64.b64encode(b"\x00\x01campaigo").decode()),
        ("kind", "campaign.stop"),
        ("expires_ns", T0 + 3600 * S),
        ("target", "WDD2050461A000009"),
    ],
)
def test_tampered_field_is_rejected(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey], field: str, value: object
) -> None:
    envelope = json.loads(_sign(keys[0]))
    envelope[field] = value
    tampered = json.dumps(envelope).encode()
    assert _reason(_verifier(keys, Clock()), tampered) is CommandRejectReason.BAD_SIGNATURE


def test_formatting_of_the_blob_does_not_matter(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey],
) -> None:
    reformatted = json.dumps(json.loads(_sign(keys[0])), indent=2).encode()
    assert _verifier(keys, Clock()).verify(reformatted).command_id == "cmd-1"


def test_expired_and_not_yet_valid(keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey]) -> None:
    blob = _sign(keys[0])  # valid T0 .. T0+60 s, skew tolerance 30 s
    assert _reason(_verifier(keys, Clock(T0 + 91 * S)), blob) is CommandRejectReason.EXPIRED
    assert _reason(_verifier(keys, Clock(T0 - 31 * S)), blob) is CommandRejectReason.NOT_YET_VALID
    # inside the tolerance on both sides
    assert _verifier(keys, Clock(T0 + 89 * S)).verify(blob).command_id == "cmd-1"
    assert _verifier(keys, Clock(T0 - 29 * S)).verify(blob).command_id == "cmd-1"
    strict = CommandVerifier(keys[1], VIN, Clock(T0 - 1 * S), max_skew_s=0)
    assert _reason(strict, blob) is CommandRejectReason.NOT_YET_VALID


def test_wrong_target_is_rejected(keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey]) -> None:
    blob = _sign(keys[0], target="WDD2050461A000002")
    assert _reason(_verifier(keys, Clock()), blob) is CommandRejectReason.WRONG_TARGET


def test_replayed_nonce_is_rejected(keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey]) -> None:
    verifier = _verifier(keys, Clock())
    blob = _sign(keys[0])
    verifier.verify(blob)
    assert _reason(verifier, blob) is CommandRejectReason.REPLAYED
    # the same nonce in a differently signed command is a replay too
    nonce = json.loads(blob)["nonce"]
    assert _reason(verifier, _sign(keys[0], command_id="cmd-2", nonce=nonce)) is CommandRejectReason.REPLAYED
    assert verifier.verify(_sign(keys[0], command_id="cmd-3")).command_id == "cmd-3"


def test_rejected_command_does_not_burn_its_nonce(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey],
) -> None:
    clock = Clock(T0 - 40 * S)
    verifier = _verifier(keys, clock)
    blob = _sign(keys[0])
    assert _reason(verifier, blob) is CommandRejectReason.NOT_YET_VALID
    clock.t_ns = T0
    assert verifier.verify(blob).command_id == "cmd-1"


def test_persisted_nonces_survive_a_restart(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey], tmp_path: Path
) -> None:
    path = tmp_path / "nonces"
    clock = Clock()
    blob = _sign(keys[0])
    CommandVerifier(keys[1], VIN, clock, NonceStore(path, clock=clock)).verify(blob)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    restarted = CommandVerifier(keys[1], VIN, clock, NonceStore(path, clock=clock))
    assert _reason(restarted, blob) is CommandRejectReason.REPLAYED
    # without the file the replay would have been accepted: the file is what protects
    assert CommandVerifier(keys[1], VIN, clock, NonceStore(clock=clock)).verify(blob).command_id == "cmd-1"
    # a torn last line (crash mid-append) is ignored, earlier nonces still count
    with path.open("a") as handle:
        handle.write("0123abc")
    assert _reason(CommandVerifier(keys[1], VIN, clock, NonceStore(path, clock=clock)), blob) is (
        CommandRejectReason.REPLAYED
    )


def test_nonce_store_forgets_expired_and_compacts_its_file(tmp_path: Path) -> None:
    path = tmp_path / "nonces"
    clock = Clock()
    store = NonceStore(path, clock=clock)
    for i in range(1200):
        assert store.remember(f"{i:032x}", T0 + S)
    assert len(store) == 1200
    clock.t_ns = T0 + 2 * S
    assert store.remember("f" * 32, T0 + 10 * S)
    assert len(store) == 1  # the expired ones were pruned
    reloaded = NonceStore(path, clock=clock)
    assert len(reloaded) == 1 and "f" * 32 in reloaded
    assert len(path.read_text().splitlines()) == 1  # rewritten without the expired lines


def test_full_nonce_store_refuses_rather_than_forgets(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey],
) -> None:
    clock = Clock()
    verifier = CommandVerifier(keys[1], VIN, clock, NonceStore(capacity=2, clock=clock))
    verifier.verify(_sign(keys[0], command_id="a"))
    verifier.verify(_sign(keys[0], command_id="b"))
    with pytest.raises(CommandRejected) as info:
        verifier.verify(_sign(keys[0], command_id="c"))
    assert info.value.reason is CommandRejectReason.REPLAY_STORE_FULL and info.value.command_id == "c"
    clock.t_ns = T0 + 60 * S + 31 * S  # a, b expired (plus skew): room again
    verifier.verify(_sign(keys[0], command_id="d", issued_ns=clock.t_ns))


def _mutate(blob: bytes, key: str, value: object) -> bytes:
    envelope = json.loads(blob)
    if value is KeyError:
        del envelope[key]
    else:
        envelope[key] = value
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    "make",
    [
        lambda b: b"not json",
        lambda b: b"[1, 2]",
        lambda b: b"\xff\xfe",
        lambda b: b'{"v": NaN}',
        lambda b: b[:-1] + b',"v":1}',  # duplicate key
        lambda b: _mutate(b, "extra", 1),
        lambda b: _mutate(b, "nonce", KeyError),
        lambda b: _mutate(b, "v", 2),
        lambda b: _mutate(b, "v", True),
        lambda b: _mutate(b, "issued_ns", True),
        lambda b: _mutate(b, "issued_ns", -1),
        lambda b: _mutate(b, "expires_ns", 1.5),
        lambda b: _mutate(b, "nonce", "ABCDEF" * 5 + "AB"),
        lambda b: _mutate(b, "payload", "not base64!"),
        lambda b: _mutate(b, "sig", base64.b64encode(b"short").decode()),
        lambda b: _mutate(b, "command_id", "has space"),
        lambda b: _mutate(b, "kind", ""),
        lambda b: b + b" " * 70_000,
    ],
)
def test_malformed_envelopes(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey], make: object
) -> None:
    blob = make(_sign(keys[0]))  # type: ignore[operator]
    assert _reason(_verifier(keys, Clock()), blob) is CommandRejectReason.MALFORMED


def test_too_long_validity_is_malformed(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey],
) -> None:
    blob = _sign(keys[0], ttl_s=2 * 86_400)
    assert _reason(_verifier(keys, Clock()), blob) is CommandRejectReason.MALFORMED


def test_sign_command_checks_its_arguments(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey],
) -> None:
    with pytest.raises(PkiError):
        _sign(keys[0], target="bad/vin")
    with pytest.raises(PkiError):
        _sign(keys[0], command_id="")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_is_rejected(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey], data: st.DataObject
) -> None:
    blob = _sign(keys[0])
    index = data.draw(st.integers(0, len(blob) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != blob[index]))
    mutated = blob[:index] + bytes([byte]) + blob[index + 1 :]
    with pytest.raises(CommandRejected) as info:
        _verifier(keys, Clock()).verify(mutated)
    assert info.value.reason in (CommandRejectReason.MALFORMED, CommandRejectReason.BAD_SIGNATURE)


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=512) | st.text(max_size=256).map(str.encode))
def test_arbitrary_input_only_raises_command_rejected(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey], blob: bytes
) -> None:
    with pytest.raises(CommandRejected):
        _verifier(keys, Clock()).verify(blob)


def test_non_canonical_base64_signature_is_malformed(
    keys: tuple[ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey],
) -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    blob = _sign(keys[0])
    sig = json.loads(blob)["sig"]
    assert sig.endswith("==")  # 64 bytes: the last data character carries 4 unused bits
    twin = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="
    assert base64.b64decode(twin) == base64.b64decode(sig)  # same signature bytes, other text
    assert _reason(_verifier(keys, Clock()), _mutate(blob, "sig", twin)) is CommandRejectReason.MALFORMED
