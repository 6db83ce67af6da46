"""SASL: PLAIN, LOGIN and SCRAM-SHA-256(-PLUS) exchanges as the three protocols carry them
(base64 lines, ``*`` cancels; RFC 4954 §4, RFC 9051 §6.2.2, RFC 5034 §4)."""

from __future__ import annotations

import base64

from fuzz.harness import Target
from mailsrv.auth import sasl, wire
from mailsrv.auth.passwords import ScramVerifier

VERIFIER = ScramVerifier(4096, b"salt" * 4, b"k" * 32, b"s" * 32)
BINDING = sasl.ChannelBinding("tls-exporter", b"b" * 32)


def _mechanism(sel: int) -> sasl.Plain | sasl.Login | sasl.Scram:
    if sel % 4 == 0:
        return sasl.Plain()
    if sel % 4 == 1:
        return sasl.Login()
    return sasl.Scram(plus=sel % 4 == 3, binding=BINDING if sel & 4 else None, plus_offered=bool(sel & 8),
                      nonce=b"n" * 18)


def _exchange(data: bytes) -> None:
    """First byte: the mechanism; then base64 lines (raw bytes for a line that starts with NUL)."""
    mech = _mechanism(data[0] if data else 0)
    lines = data[1:].split(b"\n")
    try:
        step: object = mech.step(wire.decode_initial(lines[0] or None))
    except (wire.SaslCancelled, wire.MalformedResponse):
        return
    for line in lines[1:]:
        if isinstance(step, sasl.NeedVerifier):
            assert isinstance(mech, sasl.Scram)
            step = mech.provide(VERIFIER)
            continue
        if not isinstance(step, sasl.Challenge):
            break
        try:
            payload = line[1:] if line[:1] == b"\0" else wire.decode_response(line)
        except (wire.SaslCancelled, wire.MalformedResponse):
            return
        step = mech.step(payload)
    assert isinstance(step, sasl.Challenge | sasl.NeedPassword | sasl.NeedVerifier | sasl.Verified | sasl.Failure)


def _b64(s: bytes) -> bytes:
    return base64.b64encode(s)


SEEDS = [
    b"\x00" + _b64(b"\0alice\0wonderland"),
    b"\x01\n" + _b64(b"alice") + b"\n" + _b64(b"wonderland"),
    b"\x02" + _b64(b"n,,n=alice,r=abcdef") + b"\n\n" + _b64(b"c=biws,r=abcdefnnnn,p=" + _b64(b"x" * 32)),
    b"\x07" + _b64(b"p=tls-exporter,a=bob,n=al=2Cice,r=abc") + b"\n\n\x00c=eSws,r=x,p=AAAA",
    b"\x02*",
]

TARGETS = [Target("sasl", _exchange, lambda: SEEDS, max_len=4096)]
