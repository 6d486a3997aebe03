"""Fuzz the CAM/DENM decoder, the topic parser and the receiver (harness: tools/fuzz/fuzz_v2x.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcu.v2x.errors import V2xDecodeError
from tcu.v2x.messages import decode_any
from tools.fuzz import fuzz_v2x as harness
from tools.fuzz._hypothesis import check_input, fuzz_settings, mutated


def test_fuzz_v2x_seeds_decode():
    seeds = harness.seeds()
    assert len(seeds) == 6
    for seed in seeds:
        decode_any(seed)
        check_input(harness, seed)


@fuzz_settings(600)
@given(st.binary(max_size=300))
def test_fuzz_v2x_random_bytes(data):
    check_input(harness, data)


@fuzz_settings(1500)
@given(mutated(harness.seeds()))
def test_fuzz_v2x_mutated_messages(data):
    check_input(harness, data)


@fuzz_settings(300)
@given(
    st.lists(
        st.sampled_from(["v2x", "/", "cam", "denm", "+", "#", "0", "1", "3", "4", "42", ""]), max_size=12
    )
)
def test_fuzz_v2x_topics(parts):
    check_input(harness, "".join(parts).encode())


def test_fuzz_v2x_long_extension_length_is_a_decode_error():
    # Found by the fuzzer: a CAM whose extension bitmap length is "normally small" over 64
    # made asn1tools raise NotImplementedError, which escaped the decoder.
    data = bytes.fromhex(
        "01020000109204d200005a56f0360e1860a11ffffffc223cd0de00e11fdffffe3fe9ed0737feebfff600"
    )
    with pytest.raises(V2xDecodeError) as info:
        decode_any(data)
    assert info.value.reason == "malformed"
    check_input(harness, data)


def test_fuzz_v2x_values_outside_their_asn1_range_are_refused():
    # Found by the fuzzer: asn1tools' UPER decoder does not check value ranges, so a DENM
    # with validityDuration 114752 (the type allows 0..86400) decoded, and could not be re-encoded.
    data = bytes.fromhex(
        "010100001092c7800008490003945f680b000517da0302c0a52b781b070c30508ffffffe111e686f010100001092c780"
        "0008490003945f680b000517da0302c0a52b781b070c30508ffffffe111e686f6809603e70500c602c2717e369fc00"
    )
    with pytest.raises(V2xDecodeError) as info:
        decode_any(data)
    assert info.value.reason == "constraint"
    check_input(harness, data)


@pytest.mark.parametrize(
    "hexdata",
    [
        # Found by the fuzzer: a CAM with vehicleRole reserved1 decoded but did not re-encode.
        "01020000109204d2405a56f0360e1860a11ffffffc223cd09f00349fc2b77e02e8897f379204d2405a56f0360e981860"
        "a11ffffffcde00349fc2b77e02e8897fe2fee201ee014000",
        # Found by the fuzzer: a release-1 cancellation may still carry a situation; its cause must
        # not survive as if the event went on (a termination carries only the management).
        "01010000109289000008490003945f680b000517da02c0a295bc0d8386182847ffffff088f34378000109209000008"
        "490003945f680b000517da02c0a295bc0d8386182847ffffff088f343780960140",
    ],
)
def test_fuzz_v2x_decoded_messages_re_encode(hexdata):
    check_input(harness, bytes.fromhex(hexdata))
