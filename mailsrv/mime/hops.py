"""Hop counting for mail loops (RFC 5321 §6.3): the Received fields of a message's header block.

Bytes operations only (a find, a lower and a count for most mail: C calls, no loop per line), as
this runs for every message at end of DATA. Callers: the SMTP session, the queue runner, JMAP
EmailSubmission.
"""

from __future__ import annotations

import os

from mailsrv.util import fsio

# The limit is [smtp] max_hops (mailsrv.config.SmtpConfig): RFC 5321 §6.3 "SHOULD use a large
# rejection threshold, normally at least 100 Received entries"; Postfix's hopcount_limit is 50.
#: Bytes of a message searched for the end of its header block (as the policy's MAX_HEADER_READ).
#: Loops prepend their Received fields, so a longer header block is counted over its first part.
MAX_HEAD = 256 * 1024
#: RFC 5321 §6.3 reply; Postfix's text
TOO_MANY_HOPS = "Too many hops"
TOO_MANY_HOPS_REPLY = "554 5.4.6 Too many hops"


def header_block(data: bytes) -> bytes:
    """The header block at the start of ``data``, lowered: up to its empty line, or its first
    :data:`MAX_HEAD` bytes when it has none there (a message with no body, a huge header block)."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        end = data.find(b"\n\n", 0, MAX_HEAD)  # a message stored with bare LF line ends
    return (data[:end + 2] if end >= 0 else data[:MAX_HEAD]).lower()


def received_count(data: bytes) -> int:
    """Received header fields (any case of the name, RFC 5322 §1.2.2) in the header block at the start
    of ``data`` (:func:`header_block`); the body is never counted. A name followed by white space
    before its colon (RFC 5322 §4.5.3's obsolete syntax) counts too."""
    return _fields(header_block(data))


def too_many_hops(data: bytes, limit: int) -> bool:
    """More than ``limit`` (``[smtp] max_hops``) Received fields in ``data``'s header block, ours
    included once added: a loop, refused with :data:`TOO_MANY_HOPS_REPLY`."""
    head = header_block(data)
    # every field counted holds "received": when that word is rare enough, so are they (most mail:
    # one count, not three)
    return head.count(b"received") > limit and _fields(head) > limit


def _fields(head: bytes) -> int:
    """The Received fields of a lowered header block."""
    return (head.count(b"\nreceived:") + head.count(b"\nreceived :") + head.count(b"\nreceived\t:")
            + (head.startswith(b"received:") or head.startswith(b"received :")))


def read_head(path: str | os.PathLike[str]) -> bytes:
    """The first :data:`MAX_HEAD` bytes of the file at ``path`` (blocking: call it in a pool)."""
    return fsio.read_prefix(path, MAX_HEAD)
