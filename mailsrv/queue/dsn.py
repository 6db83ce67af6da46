"""Delivery status notifications (RFC 3464 in an RFC 6522 multipart/report): bounces, delays, successes.

Pure: builds bytes from an envelope and the original message's header/body.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from email.utils import format_datetime

from mailsrv.queue.store import Envelope, QRcpt

# RFC 3461 §4.3 RET=HDRS, and our bound on what a bounce carries back.
MAX_RETURNED_BODY = 256 * 1024


def _status_of(diag: str, default: str) -> str:
    """The RFC 3463 code inside an SMTP reply text ("550 5.1.1 ..."), else ``default``."""
    parts = diag.split()
    if len(parts) >= 2 and parts[1].count(".") == 2 and parts[1][0] in "245":
        return parts[1]
    return default


def shown_orcpt(orcpt: str | None) -> str | None:
    """The ORCPT a DSN reports: our own ``x-mailsrv-*`` address types (mailsrv.delivery.archive's
    ``x-mailsrv-archived;MAC;ORIGINAL``) wrap the recipient's original ORCPT ("-": it had none)."""
    if orcpt is None or not orcpt.startswith("x-mailsrv-"):
        return orcpt
    inner = orcpt.partition(";")[2].partition(";")[2]  # after the type and the MAC
    return inner if ";" in inner else None


def build(
    env: Envelope,
    rcpts: list[QRcpt],
    action: str,  # "failed" | "delayed" | "delivered" | "relayed" (RFC 3464 §2.3.3)
    original: bytes,
    *,
    reporting_mta: str,
    now: float | None = None,
    lifetime: float = 5 * 86400.0,
) -> bytes:
    """A complete RFC 5322 message from MAILER-DAEMON to ``env.sender``."""
    now = now or time.time()
    date = format_datetime(datetime.fromtimestamp(now, UTC))
    boundary = f"=_mailsrv_{secrets.token_hex(8)}"
    subject = {
        "failed": "Undelivered Mail Returned to Sender",
        "delayed": "Delayed Mail (still being retried)",
        "delivered": "Successful Mail Delivery Report",
        "relayed": "Successful Mail Delivery Report",
    }[action]
    human = [f"This is the mail system at host {reporting_mta}.", ""]
    if action == "failed":
        human.append("Your message could not be delivered to the following recipients:")
    elif action == "delayed":
        human.append("Your message has not been delivered yet; delivery is still being attempted:")
    else:
        human.append("Your message was successfully delivered to the following recipients:")
    human.append("")
    for r in rcpts:
        human.append(f"<{r.addr}>: {r.diag or action}")
    # RFC 3464 §2.2: per-message fields
    fields = [f"Reporting-MTA: dns; {reporting_mta}"]
    if env.envid:
        fields.append(f"Original-Envelope-Id: {env.envid}")
    fields.append(f"Arrival-Date: {format_datetime(datetime.fromtimestamp(env.created, UTC))}")
    per_rcpt = []
    for r in rcpts:
        default = {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")
        block = []
        orcpt = shown_orcpt(r.orcpt)
        if orcpt:
            atype, _, addr = orcpt.partition(";")
            block.append(f"Original-Recipient: {atype}; {addr}")
        block.append(f"Final-Recipient: rfc822; {r.addr}")
        block.append(f"Action: {action}")
        block.append(f"Status: {_status_of(r.diag, default)}")
        if r.remote:
            block.append(f"Remote-MTA: dns; {r.remote}")
        if r.diag and r.diag[:1].isdigit():
            block.append(f"Diagnostic-Code: smtp; {r.diag}")
        if action == "delayed":
            block.append(f"Will-Retry-Until: {format_datetime(datetime.fromtimestamp(env.created + lifetime, UTC))}")
        per_rcpt.append("\r\n".join(block))
    status = "\r\n".join(fields) + "\r\n\r\n" + "\r\n\r\n".join(per_rcpt) + "\r\n"
    header_end = original.find(b"\r\n\r\n")
    headers_only = env.ret == "HDRS" or action != "failed"
    if headers_only:
        returned = original[: header_end + 2] if header_end >= 0 else original[:MAX_RETURNED_BODY]
        rtype = "text/rfc822-headers"
    else:
        returned = original[:MAX_RETURNED_BODY]
        rtype = "message/rfc822"
    utf8 = env.smtputf8
    # RFC 6533: global delivery-status for SMTPUTF8 messages
    ds_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    head = (
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n"
        f"To: <{env.sender}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: <{secrets.token_hex(10)}@{reporting_mta}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated message.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
        + "\r\n".join(human)
        + "\r\n\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: {ds_type}\r\n\r\n"
        + status
        + f"\r\n--{boundary}\r\n"
        f"Content-Type: {rtype}\r\n\r\n"
    ).encode("utf-8")
    if returned and not returned.endswith(b"\r\n"):
        returned += b"\r\n"
    return head + returned + f"\r\n--{boundary}--\r\n".encode()
