"""Automatic replies (RFC 3834), shared by Sieve vacation (RFC 5230) and JMAP VacationResponse:
when to stay silent, and the reply's header fields.

Pure: header values in, decisions and bytes out.
"""

from __future__ import annotations

import email.message
import email.policy
import email.utils
from collections.abc import Iterable, Mapping

#: RFC 3834 §2: a responder should not answer one sender more than once in a period (7 days suggested)
REPLY_PERIOD = 7 * 86400
#: local parts that never read replies (RFC 3834 §2 "no-reply", RFC 2142 role addresses of software)
NO_REPLY_LOCALS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "do-not-reply", "donotreply",
                   "listserv", "majordomo", "owner-", "bounce")
#: the fields :func:`silenced` looks at
FIELDS = ("auto-submitted", "precedence", "list-id", "list-unsubscribe")


def silenced(fields: Mapping[str, str]) -> str | None:
    """Why RFC 3834 §2 says not to answer a message with these (lower-cased name -> decoded first
    value) header fields, or None: auto-submitted mail (§5), bulk/list/junk precedence, list mail
    (RFC 2919 List-Id, RFC 2369 List-Unsubscribe)."""
    auto = fields.get("auto-submitted", "no").strip().lower()
    if auto and auto != "no":
        return "auto-submitted"
    if fields.get("precedence", "").strip().lower() in ("bulk", "list", "junk"):
        return "precedence"
    if "list-id" in fields or "list-unsubscribe" in fields:
        return "list"
    return None


def no_reply_address(address: str, own: Iterable[str] = ()) -> bool:
    """True when ``address`` must get no automatic reply: not an address, one of ``own`` (RFC 3834 §2:
    never answer oneself), or a no-reply / software local part."""
    if not address or "@" not in address:
        return True
    low = address.lower()
    if any(low == o.lower() for o in own):
        return True
    return low.split("@", 1)[0].startswith(NO_REPLY_LOCALS)


def reply_subject(subject: str) -> str:
    """RFC 3834 §3.1.5: "Auto: " and the original subject (not doubled on an auto-reply's subject)."""
    subject = subject.strip()
    return subject if subject.lower().startswith("auto:") else f"Auto: {subject}".strip()


def _one_line(value: str) -> str:
    """A header value from a script or a decoded subject: no CR/LF (no header injection)."""
    return " ".join(value.splitlines())


def compose(*, from_: str, to: str, subject: str, text: str, msgid: str | None,
            references: Iterable[str] = (), mime: bytes | None = None, html: str | None = None) -> bytes:
    """An RFC 3834 reply: Auto-Submitted: auto-replied (§5), In-Reply-To/References (§3.1.6), a fresh
    Message-ID and Date. ``mime``: the body as a MIME entity (header, empty line, body; RFC 5230 §4.3
    :mime) instead of ``text``; ``html``: an HTML alternative to ``text``."""
    m = email.message.EmailMessage(policy=email.policy.SMTP)
    m["From"] = _one_line(from_)
    m["To"] = _one_line(to)
    m["Subject"] = _one_line(subject)
    m["Date"] = email.utils.formatdate()
    m["Message-ID"] = email.utils.make_msgid(domain=from_.rsplit("@", 1)[-1].strip("> ") or None)
    m["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5
    if msgid:
        m["In-Reply-To"] = f"<{msgid}>"
        refs = [r for r in references if r != msgid][-20:] + [msgid]
        m["References"] = " ".join(f"<{r}>" for r in refs)
    if mime is not None:
        head = m.as_bytes().rstrip(b"\r\n") + b"\r\nMIME-Version: 1.0\r\n"
        entity = mime.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if b"\r\n\r\n" not in entity:
            entity = b"\r\n" + entity  # no header: a text/plain body (RFC 2045 §5.2 default)
        return head + entity
    if html:
        m.set_content(text)
        m.add_alternative(html, subtype="html")
    else:
        m.set_content(text)
    return m.as_bytes()
