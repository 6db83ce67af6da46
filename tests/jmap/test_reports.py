"""Reports on submissions (RFC 8621 §7): DSNs (RFC 3464) and MDNs (RFC 8098) parsed, and linked to
the submission whose message they name (dsnBlobIds, mdnBlobIds, displayed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_submission_status_settle import record

from mailsrv.jmap import reports
from mailsrv.jmap.memory import MemoryBackend
from mailsrv.jmap.objects import Collection, put
from mailsrv.jmap.reports import link_reports, parse_report, submitted_message_id
from mailsrv.queue import dsn
from mailsrv.queue.store import Envelope, QRcpt
from mailsrv.util.fsio import FileIO

ORIGINAL = (b"From: alice@example.test\r\nTo: bad@remote.test\r\nSubject: hi\r\n"
            b"Message-ID: <orig.1@example.test>\r\n\r\nbody\r\n")


def bounce(ret: str | None = None, action: str = "failed", envid: str | None = None) -> bytes:
    env = Envelope("q1", "alice@example.test", [], envid=envid, ret=ret)
    rcpt = QRcpt("Bad@Remote.test", status="failed", diag="550 5.1.1 no such user")
    return dsn.build(env, [rcpt], action, ORIGINAL, reporting_mta="mail.example.test")


def mdn(original_id: str = "<orig.1@example.test>", disposition: str = "displayed",
        rcpt: str = "bob@example.test") -> bytes:
    # RFC 8098 §9 example, shortened
    return (f"From: Bob <{rcpt}>\r\nTo: alice@example.test\r\nSubject: Read: hi\r\n"
            "Message-ID: <mdn.1@example.test>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nThe message was displayed.\r\n"
            "--b\r\nContent-Type: message/disposition-notification\r\n\r\n"
            "Reporting-UA: bob.example.test; Some MUA\r\n"
            f"Original-Recipient: rfc822;{rcpt}\r\nFinal-Recipient: rfc822;{rcpt}\r\n"
            f"Original-Message-ID: {original_id}\r\n"
            f"Disposition: manual-action/MDN-sent-manually; {disposition}\r\n"
            "--b--\r\n").encode()


@pytest.mark.parametrize("ret", [None, "HDRS", "FULL"])
def test_our_bounces_parse(ret: str | None) -> None:
    rep = parse_report(bounce(ret))
    assert rep is not None and rep.kind == "dsn"
    assert rep.about == {"orig.1@example.test"} and rep.recipients == {"bad@remote.test": "failed"}


def test_delay_notice_and_mdn_parse() -> None:
    rep = parse_report(bounce(action="delayed"))
    assert rep is not None and rep.recipients == {"bad@remote.test": "delayed"}
    rep = parse_report(mdn())
    assert rep is not None and rep.kind == "mdn"
    assert rep.about == {"orig.1@example.test"} and rep.recipients == {"bob@example.test": "displayed"}
    rep = parse_report(mdn(disposition="deleted"))
    assert rep is not None and rep.recipients == {"bob@example.test": "deleted"}


def test_not_reports() -> None:
    assert parse_report(ORIGINAL) is None
    assert parse_report(b"Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\n\r\nno report\r\n--x--\r\n") is None
    assert parse_report(b"") is None
    assert submitted_message_id(ORIGINAL) == "orig.1@example.test"
    assert submitted_message_id(b"Subject: none\r\n\r\nMessage-ID: <body@x>\r\n") is None
    assert reports.wants_mdn(b"Disposition-Notification-To: <alice@example.test>\r\n" + ORIGINAL)
    assert not reports.wants_mdn(ORIGINAL + b"Disposition-Notification-To: in the body\r\n")


@given(st.binary(max_size=400))
def test_parse_never_raises(data: bytes) -> None:
    rep = parse_report(data)
    assert rep is None or rep.kind in ("dsn", "mdn")


@given(st.binary(max_size=60), st.integers(0, 2000))
def test_mutated_reports_never_raise(junk: bytes, at: int) -> None:
    for raw in (bounce("HDRS"), mdn()):
        cut = min(at, len(raw))
        rep = parse_report(raw[:cut] + junk + raw[cut:])
        assert rep is None or rep.kind in ("dsn", "mdn")


class CountingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__("A1", "alice@example.test")
        self.read: list[str] = []

    async def read_blob(self, blob_id: str) -> bytes | None:
        self.read.append(blob_id)
        return await super().read_blob(blob_id)


def test_link_reports(tmp_path: Path) -> None:
    io = FileIO(2)
    reports._memo.clear()

    async def main() -> None:
        be = CountingBackend()
        inbox = frozenset({next(iter(be.boxes))})
        coll = Collection(tmp_path, io, "A1", "EmailSubmission")
        start = await be.state("Email")
        rec: dict[str, Any] = {**record("q1", ["bad@remote.test", "bob@example.test"]),
                               "messageId": "orig.1@example.test", "reportFrom": start, "releaseAt": time.time()}
        other = {**rec, "messageId": "other@example.test"}
        await coll.change(lambda d: (put(d, "S1", rec), put(d, "S2", other)))
        plain = await be.import_email(ORIGINAL, inbox, frozenset(), None)
        b = await be.import_email(bounce("HDRS"), inbox, frozenset(), None)
        m = await be.import_email(mdn(), inbox, frozenset(), None)
        before = await coll.state()
        data = await link_reports(be, coll)
        s1 = data["records"]["S1"]
        assert s1["dsnBlobIds"] == [b.blob_id] and s1["mdnBlobIds"] == [m.blob_id]
        assert s1["deliveryStatus"]["bob@example.test"]["displayed"] == "yes"
        assert s1["deliveryStatus"]["bad@remote.test"]["displayed"] == "unknown"
        assert data["records"]["S2"]["dsnBlobIds"] == [] and await coll.state() != before
        assert plain.blob_id not in be.read  # its cached structure says it is no report
        # nothing new: no read, no new state; a later MDN from another process's view (memo gone)
        reads, state = len(be.read), await coll.state()
        await link_reports(be, coll)
        assert len(be.read) == reads and await coll.state() == state
        reports._memo.clear()
        await be.import_email(mdn(disposition="deleted", rcpt="bad@remote.test"), inbox, frozenset(), None)
        data = await link_reports(be, coll)
        s1 = data["records"]["S1"]
        assert len(s1["mdnBlobIds"]) == 2 and s1["deliveryStatus"]["bad@remote.test"]["displayed"] == "unknown"
        assert len(be.read) == reads + 1  # from the stored scan point, not from the start
        # delivered locally at once (no queue entry): reports are looked for only when asked for
        local = {**rec, "queueId": None, "messageId": "local@example.test", "dsnBlobIds": [], "mdnBlobIds": []}
        await coll.change(lambda d: (put(d, "S3", local), put(d, "S4", {**local, "mdnWanted": True})))
        m2 = await be.import_email(mdn("<local@example.test>"), inbox, frozenset(), None)
        data = await link_reports(be, coll)
        assert data["records"]["S3"]["mdnBlobIds"] == [] and data["records"]["S4"]["mdnBlobIds"] == [m2.blob_id]
        # outside the window, or canceled: not looked for
        for sid in ("S1", "S3", "S4"):
            await coll.change(lambda d, sid=sid: put(d, sid, {**d["records"][sid], "releaseAt": time.time() - 8 * 86400}))
        await coll.change(lambda d: put(d, "S2", {**d["records"]["S2"], "undoStatus": "canceled"}))
        reports._memo.clear()
        await be.import_email(bounce(), inbox, frozenset(), None)
        reads = len(be.read)
        await link_reports(be, coll)
        assert len(be.read) == reads

    try:
        asyncio.run(main())
    finally:
        io.shutdown()


class FailingOnce(Collection):
    """A collection whose next change fails (a full disk), as a write of the submissions may."""

    fail = False

    async def change(self, fn: Any) -> Any:
        if self.fail:
            self.fail = False
            raise OSError(28, "No space left on device")
        return await super().change(fn)


class Broken(CountingBackend):
    """Its blobs cannot be read while ``broken`` (an I/O error)."""

    broken = False

    async def read_blob(self, blob_id: str) -> bytes | None:
        if self.broken:
            raise OSError(5, "Input/output error")
        return await super().read_blob(blob_id)


def with_a_bounce(tmp_path: Path, check: Any) -> None:
    """Run ``check(be, coll, blob_id)``: submission S1 of ``coll`` waits for reports and the bounce about
    it (``blob_id``) has arrived in ``be``, not linked yet."""
    io = FileIO(2)
    reports._memo.clear()

    async def main() -> None:
        be = Broken()
        coll = FailingOnce(tmp_path, io, "A1", "EmailSubmission")
        rec: dict[str, Any] = {**record("q1", ["bad@remote.test"]), "messageId": "orig.1@example.test",
                               "reportFrom": await be.state("Email"), "releaseAt": time.time()}
        await coll.change(lambda d: put(d, "S1", rec))
        b = await be.import_email(bounce("HDRS"), frozenset({next(iter(be.boxes))}), frozenset(), None)
        await check(be, coll, b.blob_id)

    try:
        asyncio.run(main())
    finally:
        io.shutdown()


def test_a_report_whose_link_failed_to_be_written_is_linked_at_the_next_look(tmp_path: Path) -> None:
    """The scan point moves only once the links are written: a write that fails leaves the reports
    to the next look (they were lost for the process's life)."""

    async def check(be: Broken, coll: FailingOnce, blob_id: str) -> None:
        coll.fail = True
        with pytest.raises(OSError):
            await link_reports(be, coll)
        data = await link_reports(be, coll)
        assert data["records"]["S1"]["dsnBlobIds"] == [blob_id]

    with_a_bounce(tmp_path, check)


def test_a_failing_report_look_does_not_fail_the_submissions(tmp_path: Path) -> None:
    """A report that cannot be read now (an I/O error on its blob) is linked at a later look; meanwhile
    EmailSubmission/get, /changes and the push (all through submission.refresh) still settle and answer."""
    from mailsrv.jmap.submission import refresh

    async def check(be: Broken, coll: FailingOnce, blob_id: str) -> None:
        be.broken = True
        assert await refresh(be, coll, None) is True  # S1 is still followed in the queue
        assert (await coll.records())["S1"]["dsnBlobIds"] == []
        be.broken = False
        await refresh(be, coll, None)
        assert (await coll.records())["S1"]["dsnBlobIds"] == [blob_id]

    with_a_bounce(tmp_path, check)
