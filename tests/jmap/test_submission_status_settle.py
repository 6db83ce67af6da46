"""settle(): how a submission's deliveryStatus takes the queue's word (RFC 8621 §7.1), on a real
collection file: expired and failed are "no", a retry keeps "queued" with the last reply, an entry
the queue forgot is "unknown", a canceled or still pending submission is left alone, and nothing
changes (no new state) when the queue has nothing new."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from mailsrv.jmap.objects import Collection, put
from mailsrv.jmap.submission import delivery_status, settle
from mailsrv.util.fsio import FileIO


class QueueView:
    """The queue as settle() sees it through a TrackingSubmitter: qid -> rcpt -> (status, reply)."""

    def __init__(self, entries: dict[str, dict[str, tuple[str, str]]]) -> None:
        self.entries = entries
        self.asked: list[str] = []

    async def status(self, queue_id: str) -> dict[str, tuple[str, str]] | None:
        self.asked.append(queue_id)
        e = self.entries.get(queue_id)
        return None if e is None else {r: delivery_status(s, reply) for r, (s, reply) in e.items()}


def record(qid: str, rcpts: list[str], undo: str = "final", release: float = 0.0) -> dict[str, Any]:
    return {"identityId": "I1", "emailId": "M1", "threadId": "T1", "envelope": {}, "sendAt": "", "undoStatus": undo,
            "deliveryStatus": {r: {"smtpReply": f"250 2.0.0 queued as {qid}", "delivered": "queued",
                                   "displayed": "unknown"} for r in rcpts},
            "dsnBlobIds": [], "mdnBlobIds": [], "queueId": qid, "releaseAt": release}


def test_settle_follows_the_queue(tmp_path: Path) -> None:
    io = FileIO(2)

    async def main() -> None:
        coll = Collection(tmp_path, io, "A1", "EmailSubmission")
        now = time.time()

        def seed(d: dict[str, Any]) -> None:
            put(d, "S1", record("q1", ["a@x.test", "b@x.test", "c@x.test"]))
            put(d, "S2", record("q2", ["d@x.test"]))
            put(d, "S3", record("q3", ["e@x.test"], undo="canceled"))
            put(d, "S4", record("q4", ["f@x.test"], undo="pending", release=now + 3600))

        await coll.change(seed)
        q = QueueView({"q1": {"a@x.test": ("expired", "451 4.4.1 busy (gave up: 4.4.7 message expired after 5s)"),
                              "b@x.test": ("pending", "451 4.3.0 later"),
                              "c@x.test": ("pending", "")},
                       "q3": {"e@x.test": ("sent", "250 ok")}, "q4": {"f@x.test": ("sent", "250 ok")}})
        before = await coll.state()
        await settle(coll, q, now)
        recs = await coll.records()
        s1 = recs["S1"]["deliveryStatus"]
        assert s1["a@x.test"]["delivered"] == "no" and "4.4.7" in s1["a@x.test"]["smtpReply"]
        assert s1["b@x.test"] == {"delivered": "queued", "smtpReply": "451 4.3.0 later", "displayed": "unknown"}
        assert s1["c@x.test"]["smtpReply"] == "250 2.0.0 queued as q1"  # no reply yet: the queueing one stays
        assert recs["S2"]["deliveryStatus"]["d@x.test"]["delivered"] == "unknown"  # the queue forgot q2
        assert recs["S3"]["deliveryStatus"]["e@x.test"]["delivered"] == "queued"  # canceled: not followed
        assert recs["S4"]["undoStatus"] == "pending" and recs["S4"]["deliveryStatus"]["f@x.test"]["delivered"] == "queued"
        assert sorted(q.asked) == ["q1", "q2"]
        changed = await coll.state()
        assert int(changed) == int(before) + 2  # S1 and S2
        cs = await coll.changes(before, None)
        assert sorted(cs.updated) == ["S1", "S2"] and cs.created == []
        # nothing new in the queue: no new state
        await settle(coll, q, now)
        assert await coll.state() == changed
        # the last retry succeeds; S4's release comes: final, then followed
        q.entries["q1"]["b@x.test"] = q.entries["q1"]["c@x.test"] = ("sent", "250 2.0.0 accepted")
        await settle(coll, q, now + 3601)
        recs = await coll.records()
        assert {r: v["delivered"] for r, v in recs["S1"]["deliveryStatus"].items()} == {
            "a@x.test": "no", "b@x.test": "yes", "c@x.test": "yes"}
        assert recs["S4"]["undoStatus"] == "final" and recs["S4"]["deliveryStatus"]["f@x.test"]["delivered"] == "yes"
        # a submitter that cannot follow the queue (no status method) changes nothing but undoStatus
        await settle(coll, object(), now + 3601)
        assert await coll.records() == recs

    try:
        asyncio.run(main())
    finally:
        io.shutdown()


def test_delivery_status_mapping() -> None:
    assert delivery_status("pending", "451 4.3.0 x") == ("queued", "451 4.3.0 x")
    assert delivery_status("sent", "250 ok") == ("yes", "250 ok")
    assert delivery_status("failed", "550 no") == ("no", "550 no")
    assert delivery_status("expired", "451 (gave up)") == ("no", "451 (gave up)")
