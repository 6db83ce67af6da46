"""SASL wire encoding shared by the protocols: base64 lines, "*" cancels, "=" is an empty initial response."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.auth.wire import (
    MalformedResponse,
    SaslCancelled,
    decode_initial,
    decode_response,
    encode_challenge,
)


def test_examples() -> None:
    assert decode_response(b"AGFsaWNlAHB3\r\n") == b"\0alice\0pw"
    assert decode_response(b"\r\n") == b""
    assert decode_initial(None) is None
    assert decode_initial(b"=") == b""
    assert decode_initial(b"AGFsaWNlAHB3") == b"\0alice\0pw"
    assert encode_challenge(b"") == b""
    with pytest.raises(SaslCancelled):
        decode_response(b"*\r\n")
    for bad in (b"AGFsaWNlAHB", b"!!!!", b"AGFs aWNl"):
        with pytest.raises(MalformedResponse):
            decode_response(bad)
    with pytest.raises(MalformedResponse):
        decode_response(b"A" * 20000)


@given(st.binary(max_size=600))
def test_round_trip(data: bytes) -> None:
    assert decode_response(encode_challenge(data) + b"\r\n") == data
    assert decode_initial(base64.b64encode(data) or b"=") == data


@given(st.binary(max_size=200))
def test_never_raises_anything_else(line: bytes) -> None:
    try:
        decode_response(line)
    except (SaslCancelled, MalformedResponse):
        pass
