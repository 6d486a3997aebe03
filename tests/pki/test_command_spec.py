"""docs/commands.md is a spec other languages build on: its test vector must be what the code does."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tcu.pki import CommandRejected, CommandVerifier, sign_command
from tcu.pki.commands import _canonical

SPEC = Path(__file__).resolve().parents[2] / "docs" / "commands.md"


def _vector() -> dict[str, str]:
    text = SPEC.read_text(encoding="utf-8")
    found = dict(re.findall(r"^(seed|public|signed|signature) +([0-9a-f]+)$", text, re.MULTILINE))
    pem = re.search(r"-----BEGIN PUBLIC KEY-----\n.*?\n-----END PUBLIC KEY-----\n", text, re.S)
    envelope = re.search(r'^(\{"command_id".*"sig".*\})$', text, re.MULTILINE)
    assert pem is not None and envelope is not None, "docs/commands.md lost its test vector"
    found["pem"], found["envelope"] = pem[0], envelope[1]
    assert set(found) == {"seed", "public", "signed", "signature", "pem", "envelope"}, found.keys()
    return found


def _sign(key: ed25519.Ed25519PrivateKey) -> bytes:
    return sign_command(
        key,
        command_id="esim-order-0001",
        kind="esim.enable",
        target="WTCUSIM0000000001",
        payload=b"89490200001234567803\nnetwork test",
        ttl_s=300,
        issued_ns=1764820800000000000,
        nonce="00112233445566778899aabbccddeeff",
    )


def test_the_documented_vector_is_what_sign_command_produces() -> None:
    vector = _vector()
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["seed"]))
    public = key.public_key()
    enc, fmt = serialization.Encoding, serialization.PublicFormat
    assert public.public_bytes(enc.Raw, fmt.Raw).hex() == vector["public"]
    assert public.public_bytes(enc.PEM, fmt.SubjectPublicKeyInfo).decode() == vector["pem"]
    blob = _sign(key)
    assert blob.decode() == vector["envelope"]
    fields = json.loads(blob)
    signature = base64.b64decode(fields.pop("sig"))
    assert _canonical(fields).hex() == vector["signed"]
    assert signature.hex() == vector["signature"]
    # A signer written from the spec alone: the signature over the documented bytes verifies.
    public.verify(bytes.fromhex(vector["signature"]), bytes.fromhex(vector["signed"]))


def test_the_documented_envelope_is_accepted_once_by_its_target_only() -> None:
    vector = _vector()
    verify_key = serialization.load_pem_public_key(vector["pem"].encode())
    assert isinstance(verify_key, ed25519.Ed25519PublicKey)
    now = 1764820800000000000 + 10 * 1_000_000_000
    verifier = CommandVerifier(verify_key, "WTCUSIM0000000001", clock=lambda: now)
    command = verifier.verify(vector["envelope"].encode())
    assert (command.kind, command.payload) == ("esim.enable", b"89490200001234567803\nnetwork test")
    with pytest.raises(CommandRejected, match="seen before"):
        verifier.verify(vector["envelope"].encode())
    other = CommandVerifier(verify_key, "WTCUSIM0000000002", clock=lambda: now)
    with pytest.raises(CommandRejected) as caught:
        other.verify(vector["envelope"].encode())
    assert caught.value.reason.value == "wrong_target"
    # One changed byte of the signed content: bad_signature.
    tampered = vector["envelope"].replace("ODk0", "ODk1")
    with pytest.raises(CommandRejected) as caught:
        CommandVerifier(verify_key, "WTCUSIM0000000001", clock=lambda: now).verify(tampered.encode())
    assert caught.value.reason.value == "bad_signature"
