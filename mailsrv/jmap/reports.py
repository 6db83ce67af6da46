"""Delivery and read reports for EmailSubmission (RFC 8621 §7 dsnBlobIds, mdnBlobIds, displayed).

A report that arrives in the sender's account is linked to the submission it is about by the
Message-ID of the submitted message: a DSN (RFC 3464 in an RFC 6522 multipart/report,
report-type=delivery-status) returns the original's header (``text/rfc822-headers`` or
``message/rfc822``), an MDN (RFC 8098, report-type=disposition-notification) names it in
``Original-Message-ID``. The DSN's blob id goes into ``dsnBlobIds``, the MDN's into ``mdnBlobIds``,
and an MDN whose disposition is ``displayed`` sets that recipient's ``displayed`` to ``"yes"``.

:func:`parse_report` is pure (bytes in, :class:`Report` or None out); :func:`link_reports` looks at
the emails that arrived since it last looked (per process, from the submission's own Email state at
creation after a restart), reading only those whose cached structure is a multipart/report.
"""

from __future__ import annotations

import asyncio
import email
import email.parser
import email.policy
import time
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from mailsrv import log
from mailsrv.jmap.backend import CannotCalculateChanges
from mailsrv.jmap.message import header_list
from mailsrv.jmap.objects import put
from mailsrv.mime.headers import message_ids

logger = log.get("jmap")

#: a report later than this after its submission is not looked for (RFC 3464 bounces come within the
#: queue lifetime, 5 days by default; MDNs when the reader opens the message, usually sooner)
REPORT_WINDOW = 7 * 86400.0
#: reports larger than this are not parsed (our bounces return at most 256 KiB of the original)
MAX_REPORT = 1 << 20
#: accounts whose last looked-at Email state this process remembers
MEMO_SIZE = 10_000

DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
MDN_TYPES = ("message/disposition-notification", "message/global-disposition-notification")


@dataclass
class Report:
    """What a report says: ``kind`` "dsn" or "mdn", the Message-IDs of the message it reports on
    (without angle brackets), and per final recipient (lower case) the DSN ``Action`` or the MDN
    disposition type (``displayed``, ``deleted``, ...)."""

    kind: str
    about: set[str] = field(default_factory=set)
    recipients: dict[str, str] = field(default_factory=dict)


def _fields(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status or disposition-notification part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [m for m in payload if isinstance(m, Message)]
    text = payload if isinstance(payload, str) else ""
    parser = email.parser.HeaderParser(policy=email.policy.compat32)
    return [parser.parsestr(block + "\n") for block in text.replace("\r\n", "\n").split("\n\n") if block.strip()]


def _address(value: str | None) -> str | None:
    """``rfc822; alice@example.com`` -> ``alice@example.com`` (RFC 3464 §2.3.2)."""
    if not value:
        return None
    _atype, sep, addr = str(value).partition(";")
    addr = (addr if sep else _atype).strip().strip("<>").strip()
    return addr.lower() or None


def _ids(value: Any) -> set[str]:
    return set(message_ids(str(value).encode("utf-8", "surrogateescape"))) if value else set()


def parse_report(raw: bytes) -> Report | None:
    """The :class:`Report` in a multipart/report message, or None for any other message.

    RFC 6522 §3: the second part holds the machine-readable report, the third (optional) the
    original message or its header. Never raises on bad input."""
    try:
        return _parse(raw)
    except Exception:  # a malformed report is not a report: stdlib's parser has odd corners
        return None


def _parse(raw: bytes) -> Report | None:
    msg = email.message_from_bytes(raw[:MAX_REPORT], policy=email.policy.compat32)
    if msg.get_content_type() != "multipart/report":
        return None
    report: Report | None = None
    returned: set[str] = set()
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in DSN_TYPES or ctype in MDN_TYPES:
            if report is not None:
                continue  # RFC 6522 §3: one report per message
            report = Report("dsn" if ctype in DSN_TYPES else "mdn")
            for block in _fields(part):
                report.about |= _ids(block.get("Original-Message-ID"))  # RFC 8098 §3.2.5
                rcpt = _address(block.get("Final-Recipient"))
                if rcpt is None:
                    continue
                if report.kind == "dsn":  # RFC 3464 §2.3.3
                    report.recipients[rcpt] = str(block.get("Action", "")).strip().lower()
                else:  # RFC 8098 §3.2.6: Disposition: action-mode/sending-mode; type
                    disposition = str(block.get("Disposition", ""))
                    report.recipients[rcpt] = disposition.rpartition(";")[2].split("/")[0].strip().lower()
        elif ctype == "text/rfc822-headers":
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                returned |= _message_id_of(body)
        elif ctype in ("message/rfc822", "message/global") and part is not msg:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                returned |= _ids(inner[0].get("Message-ID"))
    if report is None:
        return None
    report.about |= returned
    return report


def _message_id_of(header: bytes) -> set[str]:
    out: set[str] = set()
    for name, value in header_list(header):
        if name.lower() == "message-id":
            out |= set(message_ids(value))
    return out


def submitted_message_id(raw: bytes) -> str | None:
    """The Message-ID of a message being submitted (what its reports will name)."""
    found = _message_id_of(raw[: raw.find(b"\r\n\r\n") + 2] if b"\r\n\r\n" in raw else raw)
    return min(found) if found else None


_memo: dict[str, str] = {}


def wants_mdn(raw: bytes) -> bool:
    """RFC 8098 §2.1: the message asks for read receipts (``Disposition-Notification-To``)."""
    end = raw.find(b"\r\n\r\n")
    return any(n.lower() == "disposition-notification-to" for n, _ in header_list(raw[: end + 2] if end >= 0 else raw))


def _waiting(records: dict[str, Any], now: float) -> dict[str, dict[str, Any]]:
    """Submissions a report may still arrive for: one that went through the outbound queue (a
    bounce, a delay notice, a remote server's late DSN) or asked for read receipts, within
    REPORT_WINDOW of its release. Mail only delivered locally at once expects none."""
    return {i: r for i, r in records.items()
            if r.get("messageId") and r.get("reportFrom") is not None and r.get("undoStatus") != "canceled"
            and (r.get("queueId") or r.get("mdnWanted"))
            and now - float(r.get("releaseAt") or 0) < REPORT_WINDOW}


async def link_reports(be: Any, coll: Any, data: dict[str, Any] | None = None,
                       now: float | None = None) -> dict[str, Any]:
    """Link the reports that arrived in ``be`` since the last look to the submissions of ``coll``.

    Returns the collection's data as it is afterwards (``data``: as just read, to save a read).
    Cheap when nothing can be linked: no read of the Email state without a submission waiting,
    no message read unless its cached structure is a multipart/report."""
    now = time.time() if now is None else now
    data = await coll.read() if data is None else data
    waiting = _waiting(data["records"], now)
    if not waiting:
        return data
    key = str(coll.path)
    current = await be.state("Email")
    since = _memo.get(key) or data.get("reportScan") or \
        min(waiting.values(), key=lambda r: float(r.get("releaseAt") or 0))["reportFrom"]
    if since == current:
        return data
    try:
        created = (await be.changes("Email", since, None)).created
    except CannotCalculateChanges:  # too old (or another backend's state): from now on
        created = []
    found = await _reports(be, created)
    by_id: dict[str, list[str]] = {}
    for sid, r in waiting.items():
        by_id.setdefault(r["messageId"], []).append(sid)
    links = [(sid, blob_id, rep) for blob_id, rep in found for mid in rep.about for sid in by_id.get(mid, ())]
    if not links:
        _remember(key, current)
        return data

    def apply(d: dict[str, Any]) -> dict[str, Any]:
        for sid, blob_id, rep in links:
            rec = d["records"].get(sid)
            if rec is None:
                continue
            prop = "dsnBlobIds" if rep.kind == "dsn" else "mdnBlobIds"
            status = rec["deliveryStatus"]
            if rep.kind == "mdn":  # RFC 8621 §7: displayed "yes" once an MDN says so
                status = {a: ({**v, "displayed": "yes"} if rep.recipients.get(a.lower()) == "displayed" else v)
                          for a, v in status.items()}
            blobs = list(rec.get(prop) or [])
            if blob_id not in blobs or status != rec["deliveryStatus"]:
                if blob_id not in blobs:
                    blobs.append(blob_id)
                put(d, sid, {**rec, prop: blobs, "deliveryStatus": status})
        d["reportScan"] = current
        return d

    out: dict[str, Any] = await coll.change(apply)
    _remember(key, current)  # only now: a write that failed leaves these reports to the next look
    logger.info("jmap.submission.reports", account=be.account_id, linked=len(links))
    return out


async def _reports(be: Any, email_ids: list[str]) -> list[tuple[str, Report]]:
    """(blob id, report) for the emails among ``email_ids`` that are reports."""
    if not email_ids:
        return []
    metas = await be.get_emails(email_ids)
    blob_ids = [m.blob_id for m in metas.values() if m.size <= MAX_REPORT]
    structures = await be.structures(blob_ids)
    out = []
    loop = asyncio.get_running_loop()
    for blob_id in blob_ids:
        st = structures.get(blob_id)
        if st is not None and st.root.mime_type != "multipart/report":
            continue  # the cache says it is no report: not read
        raw = await be.read_blob(blob_id)
        rep = await loop.run_in_executor(None, parse_report, raw) if raw is not None else None
        if rep is not None:
            out.append((blob_id, rep))
    return out


def _remember(key: str, state: str) -> None:
    if len(_memo) >= MEMO_SIZE and key not in _memo:
        _memo.pop(next(iter(_memo)))
    _memo[key] = state
