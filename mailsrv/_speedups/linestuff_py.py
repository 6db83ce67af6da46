"""Byte-stuffing of a multi-line response body (RFC 1939 §3, RFC 5321 §4.5.2): the specification of
``linestuff_c``. Input is already CRLF; a line that starts with ``.`` gets another one."""

from __future__ import annotations


def stuff(data: bytes, line_start: bool) -> bytes:
    """``data`` with a ``.`` put before every ``.`` that begins a line: one after CR LF, and the
    first byte when ``line_start`` (the data before ``data`` ended a line). ``data`` itself when
    no dot needs it."""
    out = data.replace(b"\r\n.", b"\r\n..") if b"\n." in data else data
    if line_start and out.startswith(b"."):
        out = b"." + out
    return out
