"""Sieve notifications (RFC 5435) by the mailto method only (RFC 5436): the URI's parts, and the
notification message. Pure: strings in, bytes out (delivery queues it, mailsrv.delivery.sieve).
"""

from __future__ import annotations

import email.message
import email.policy
import email.utils
from dataclasses import dataclass
from urllib.parse import unquote

from mailsrv.sieve.lang import ADDRESS

#: RFC 5436 §2.1: recipients one notification may have (To and Cc of the URI together)
MAX_NOTIFY_RECIPIENTS = 8
#: characters of a notification's subject and body text taken from a script or a URI
MAX_SUBJECT = 256
MAX_TEXT = 4096
#: RFC 5435 §3.4 :importance -> the notification's Importance field
IMPORTANCE = {"1": "high", "2": "normal", "3": "low"}


@dataclass(frozen=True)
class MailtoUri:
    """A mailto URI (RFC 6068) as a notification uses it: recipients, and its subject and body."""

    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str | None
    body: str | None


def parse_mailto(uri: str) -> MailtoUri | None:
    """The URI's parts, or None when it is not a mailto URI with 1 to MAX_NOTIFY_RECIPIENTS valid
    addresses. RFC 5436 §2.2: header fields other than to, cc, subject and body are ignored (a
    script may not set From, Received, ... of the notification)."""
    if uri[:7].lower() != "mailto:" or len(uri) > 4096:
        return None
    path, _, query = uri[7:].partition("?")
    to = [unquote(a).strip() for a in path.split(",") if a.strip()]
    cc: list[str] = []
    subject = body = None
    for pair in query.split("&") if query else ():
        name, _, value = pair.partition("=")
        name, value = unquote(name).lower(), unquote(value)
        if name == "to":
            to += [a.strip() for a in value.split(",") if a.strip()]
        elif name == "cc":
            cc += [a.strip() for a in value.split(",") if a.strip()]
        elif name == "subject":
            subject = value
        elif name == "body":
            body = value
    every = to + cc
    if not every or len(every) > MAX_NOTIFY_RECIPIENTS or not all(ADDRESS.fullmatch(a) for a in every):
        return None
    return MailtoUri(tuple(to), tuple(cc), subject, body)


def _one_line(value: str) -> str:
    return " ".join(value.splitlines())[:MAX_SUBJECT]


def compose_notification(uri: MailtoUri, *, from_: str, message: str | None, importance: str,
                         about_from: str, about_subject: str) -> bytes:
    """RFC 5436 §2.7: the notification message, Auto-Submitted: auto-notified. Its subject is the URI's
    subject, else :message, else a summary of the triggering message (``about_*``); its body the URI's
    body, else :message, else that summary."""
    summary = f"New message from {about_from or 'unknown sender'}: {about_subject}".strip()
    m = email.message.EmailMessage(policy=email.policy.SMTP)
    m["From"] = _one_line(from_)
    m["To"] = ", ".join(uri.to) if uri.to else "undisclosed-recipients:;"
    if uri.cc:
        m["Cc"] = ", ".join(uri.cc)
    m["Subject"] = _one_line(uri.subject or message or summary)
    m["Date"] = email.utils.formatdate()
    m["Message-ID"] = email.utils.make_msgid(domain=from_.rsplit("@", 1)[-1].strip("> ") or None)
    m["Auto-Submitted"] = "auto-notified"  # RFC 5436 §2.7 (and RFC 3834 §5)
    m["Importance"] = IMPORTANCE.get(importance, "normal")
    m.set_content((uri.body or message or summary)[:MAX_TEXT] + "\n")
    return m.as_bytes()
