"""The ``strip`` virus action: replace each infected attachment with a short text notice.

clamd names a signature, not the part it found it in, so every leaf part is
scanned again on its own (decoded). The message is re-serialised with CRLF and
without refolding headers; a DKIM signature over the body no longer verifies
afterwards, which is why our Authentication-Results is computed before.
"""

from __future__ import annotations

import email.policy
from email import message_from_bytes
from email.generator import BytesGenerator
from email.message import Message
from io import BytesIO

from mailsrv.policy.clamd import Clamd

_POLICY = email.policy.compat32.clone(linesep="\r\n")


async def strip_infected(clamd: Clamd, message: bytes) -> tuple[bytes, list[str]] | None:
    """(the message without its infected parts, their signatures), or None when no part alone is
    infected or the whole message is the infected part (then nothing can be stripped)."""
    msg = message_from_bytes(message, policy=_POLICY)
    if not msg.is_multipart():
        return None
    found: list[str] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            continue
        res = await clamd.scan_bytes(payload)
        if res.status == "infected":
            found.append(res.signature)
            _replace(part, res.signature)
    if not found:
        return None
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, maxheaderlen=0, policy=_POLICY).flatten(msg)
    return out.getvalue(), found


def _replace(part: Message, signature: str) -> None:
    name = part.get_filename() or "an attachment"
    for header in ("Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "Content-ID"):
        del part[header]
    part["Content-Type"] = 'text/plain; charset="us-ascii"'
    part["Content-Disposition"] = "inline"
    part.set_payload(f"{name} contained a virus ({signature}) and was removed by the mail server.\r\n")
