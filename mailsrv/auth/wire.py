"""SASL on the wire, the same for SMTP AUTH, IMAP AUTHENTICATE and POP3 AUTH (pure functions).

RFC 4954 §4, RFC 9051 §6.2.2 and RFC 5034 §4 agree: challenges and responses
are base64 lines, a client response of ``*`` cancels, and an initial response
of ``=`` means "present but empty".
"""

from __future__ import annotations

import base64
import binascii


class SaslCancelled(Exception):
    """The client sent ``*``: answer with the protocol's "authentication cancelled" error."""


class MalformedResponse(Exception):
    """Not valid base64: answer with the protocol's syntax error and end the exchange."""


#: Longest base64 line we decode (a SCRAM client-final message is ~200 bytes; PLAIN allows 3 x 255).
MAX_LINE = 12288


def decode_response(line: bytes) -> bytes:
    """A client's continuation line (CRLF optional) -> the decoded bytes."""
    text = line.rstrip(b"\r\n").strip(b" ")
    if text == b"*":
        raise SaslCancelled
    if len(text) > MAX_LINE:
        raise MalformedResponse("response too long")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedResponse("not base64") from None


def decode_initial(arg: bytes | None) -> bytes | None:
    """The optional initial response on the AUTH command line: None when absent, ``=`` is empty."""
    if arg is None:
        return None
    if arg.strip() == b"=":
        return b""
    return decode_response(arg)


def encode_challenge(data: bytes) -> bytes:
    """Challenge bytes -> base64 text for ``334 ``, ``+ `` (empty data gives an empty string)."""
    return base64.b64encode(data)
