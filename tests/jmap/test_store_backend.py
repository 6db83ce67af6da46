"""JMAP over the real maildir store: states from modseqs, IMAP-side changes seen by /changes, push."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jmaptest import USING, Client, Server

from mailsrv.config import StoreConfig
from mailsrv.jmap.storebackend import decode_state, encode_state, keywords_of, store_factory
from mailsrv.store import Store


@dataclass
class DirAccount:
    id: int
    address: str
    store: str
    quota_bytes: int | None = None
    quota_messages: int | None = None


class Dir:
    def __init__(self) -> None:
        self.accounts = {1: DirAccount(1, "alice@example.test", "mail/alice"),
                         2: DirAccount(2, "bob@example.test", "mail/bob", quota_messages=1)}

    async def account(self, account_id: int) -> DirAccount | None:
        return self.accounts.get(account_id)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Client, Store, Any]]:
    store = Store(StoreConfig(io_threads=2), tmp_path, hostname="test")
    directory = Dir()
    from mailsrv.jmap.storebackend import with_sort_order
    from mailsrv.util.fsio import FileIO

    io = FileIO(2, "test-meta")
    factory = with_sort_order(store_factory(store, directory, tmp_path), tmp_path / "uploads", io)

    async def by_principal(p: Any) -> Any:
        # tests log in with FakeAuth whose accounts lack store paths: look them up in Dir
        return await factory(type(p)(p.id, p.username, directory.accounts[int(p.id)]))

    server = Server(tmp_path, factory=by_principal)
    await server.start()
    async with aiohttp.ClientSession() as http:
        c = Client(server, http)
        c.account_id = "A1"
        acct = await store.account("1", tmp_path / "mail/alice")
        yield c, store, acct
    await server.stop()
    await store.close()
    io.shutdown()


def msg(subject: str, extra: str = "") -> bytes:
    return f"From: bob@x.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n{extra}\r\nbody of {subject}\r\n".encode()


async def test_mailboxes_and_roles(env: tuple[Client, Store, Any]) -> None:
    c, _, acct = env
    got = await c.one("Mailbox/get", {})
    roles = {m["role"]: m for m in got["list"]}
    assert set(roles) == {"inbox", "sent", "drafts", "trash", "junk", "archive"}
    assert roles["inbox"]["name"] == "Inbox"
    r = await c.one("Mailbox/set", {"create": {"p": {"name": "Projects", "isSubscribed": True},
                                               "c": {"name": "Alpha", "parentId": "#p"}}})
    pid, cid = r["created"]["p"]["id"], r["created"]["c"]["id"]
    names = {i.name for i in await acct.list_mailboxes()}
    assert {"Projects", "Projects/Alpha"} <= names
    r = await c.one("Mailbox/set", {"update": {cid: {"name": "Beta", "parentId": None}}})
    assert r["updated"] == {cid: None}
    names = {i.name: i.id for i in await acct.list_mailboxes()}
    assert names["Beta"] == cid  # ids survive renames
    r = await c.one("Mailbox/set", {"destroy": [pid, cid]})
    assert sorted(r["destroyed"]) == sorted([pid, cid])


async def test_imap_and_jmap_alternate_on_one_mailbox(env: tuple[Client, Store, Any]) -> None:
    c, _, acct = env
    s0 = (await c.one("Email/get", {"ids": []}))["state"]
    # "IMAP" APPEND, then JMAP sees it as created
    uid1 = await acct.append("INBOX", msg("one"))
    ch = await c.one("Email/changes", {"sinceState": s0})
    assert len(ch["created"]) == 1 and ch["updated"] == [] and ch["destroyed"] == []
    e1 = ch["created"][0]
    # JMAP sets $seen; IMAP sees \\Seen with a new modseq
    r = await c.one("Email/set", {"update": {e1: {"keywords/$seen": True}}})
    view = await acct.open_mailbox("INBOX")
    info = view.by_uid(uid1)
    assert info is not None and "\\Seen" in info.flags
    # IMAP STORE +FLAGS (\\Flagged $Label1): JMAP reports exactly that email updated
    await acct.store_flags("INBOX", [uid1], frozenset({"\\Flagged", "$Label1"}), "add")
    ch = await c.one("Email/changes", {"sinceState": r["newState"]})
    assert ch["updated"] == [e1] and ch["created"] == [] and ch["destroyed"] == []
    got = (await c.one("Email/get", {"ids": [e1], "properties": ["keywords", "subject"]}))["list"][0]
    assert got["keywords"] == {"$seen": True, "$flagged": True, "$label1": True} and got["subject"] == "one"
    # JMAP moves it to Archive (store MOVE keeps the email id), IMAP sees it there
    archive = await c.mailbox_id("archive")
    s1 = ch["newState"]
    await c.one("Email/set", {"update": {e1: {"mailboxIds": {archive: True}}}})
    assert [m.email_id for m in (await acct.open_mailbox("Archive")).messages] == [e1]
    ch = await c.one("Email/changes", {"sinceState": s1})
    assert ch["updated"] == [e1] and ch["destroyed"] == []
    # IMAP EXPUNGE: JMAP reports it destroyed
    s2 = ch["newState"]
    m2 = (await c.one("Mailbox/get", {"ids": []}))["state"]
    view = await acct.open_mailbox("Archive")
    await acct.expunge("Archive", [view.messages[0].uid], only_deleted=False)
    ch = await c.one("Email/changes", {"sinceState": s2})
    assert ch["destroyed"] == [e1] and ch["created"] == [] and ch["updated"] == []
    mb = await c.one("Mailbox/changes", {"sinceState": m2})
    assert mb["updated"] == [archive] and mb["updatedProperties"] is not None


async def test_import_get_query_and_threads_on_store(env: tuple[Client, Store, Any], corpus: Path) -> None:
    c, _, acct = env
    raw = (corpus / "stalwart-mail-parser/eml/legacy/015.eml").read_bytes()
    e = await c.import_message(raw, keywords={"$seen": True})
    got = (await c.one("Email/get", {"ids": [e], "properties": ["attachments", "size", "keywords", "mailboxIds"]}))["list"][0]
    assert len(got["attachments"]) == 4 and got["keywords"] == {"$seen": True}
    inbox = await c.mailbox_id("inbox")
    assert got["mailboxIds"] == {inbox: True}
    e1 = await c.import_message(msg("Lunch", "Message-ID: <l1@x>\r\n"))
    e2 = await c.import_message(msg("Re: Lunch", "Message-ID: <l2@x>\r\nIn-Reply-To: <l1@x>\r\nReferences: <l1@x>\r\n"))
    q = await c.one("Email/query", {"filter": {"text": "lunch"}, "sort": [{"property": "receivedAt"}],
                                    "collapseThreads": True})
    assert len(q["ids"]) == 1 and q["ids"][0] in (e1, e2)
    th = await c.one("Email/get", {"ids": [e1, e2], "properties": ["threadId"]})
    assert th["list"][0]["threadId"] == th["list"][1]["threadId"]
    mbox = {m["role"]: m for m in (await c.one("Mailbox/get", {}))["list"]}["inbox"]
    assert mbox["totalEmails"] == 3 and mbox["unreadEmails"] == 2 and mbox["totalThreads"] == 2


async def test_over_quota(env: tuple[Client, Store, Any]) -> None:
    c, _, _ = env
    bob = Client(c.server, c.http, {"Authorization": "Basic Ym9iQGV4YW1wbGUudGVzdDpodW50ZXIy"})
    bob.account_id = "A2"
    await bob.import_message(msg("first"))
    blob = await bob.upload(msg("second"))
    inbox = await bob.mailbox_id("inbox")
    r = await bob.one("Email/import", {"emails": {"x": {"blobId": blob["blobId"], "mailboxIds": {inbox: True}}}})
    assert r["notCreated"]["x"]["type"] == "overQuota"


async def _event_lines(r: aiohttp.ClientResponse) -> list[str]:
    """The lines of an EventSource stream opened with closeafter=state, within 5 s."""
    lines = []
    async with asyncio.timeout(5):
        while True:
            line = await r.content.readline()
            if not line:
                return lines
            lines.append(line.decode())


async def test_push_sees_store_change_from_another_path(env: tuple[Client, Store, Any]) -> None:
    c, _, acct = env
    url = c.server.url + "/jmap/eventsource?types=Email&closeafter=state&ping=0"
    async with c.http.get(url, headers=c.headers) as r:
        assert r.status == 200
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await acct.append("INBOX", msg("pushed"))
        lines = await _event_lines(r)
        elapsed = loop.time() - t0
    assert lines[0] == "event: state\n" and '"Email"' in lines[1]
    assert elapsed < 1.0


def test_state_round_trip_and_garbage() -> None:
    from mailsrv.jmap.backend import CannotCalculateChanges
    from mailsrv.jmap.storebackend import Entry

    vec = {"Mabc": Entry(7, 10, 22, "a1b2c3"), "Mdef": Entry(8, 1, 0, "ffffff")}
    assert decode_state(encode_state(vec)) == vec
    for bad in ("!!", "eJwrSS0u0c1NzCnRtbUFAB1xBEE", "abc"):
        with pytest.raises(CannotCalculateChanges):
            decode_state(bad)


def test_keyword_mapping() -> None:
    assert keywords_of(frozenset({"\\Seen", "\\Deleted", "$Forwarded", "\\Recent"})) == {"$seen", "$forwarded"}


async def test_api_using_store_rejects_bad_state(env: tuple[Client, Store, Any]) -> None:
    c, _, _ = env
    r = await c.call(["Email/changes", {"accountId": "A1", "sinceState": "garbage!"}, "0"], using=USING)
    assert r[0][1]["type"] == "cannotCalculateChanges"


async def test_download_streams_the_maildir_file_with_range(env: tuple[Client, Store, Any], corpus: Path) -> None:
    c, _, _ = env
    raw = (corpus / "stalwart-mail-parser/eml/legacy/015.eml").read_bytes()
    eid = await c.import_message(raw)
    blob = (await c.one("Email/get", {"ids": [eid], "properties": ["blobId"]}))["list"][0]["blobId"]
    url = f"{c.server.url}/jmap/download/A1/{blob}/m.eml?accept=message/rfc822"
    async with c.http.get(url, headers=c.headers) as r:
        assert r.status == 200 and await r.read() == raw
        assert r.headers["Content-Type"] == "message/rfc822"
    async with c.http.get(url, headers={**c.headers, "Range": "bytes=100-199"}) as r:
        assert r.status == 206 and await r.read() == raw[100:200]


async def test_thread_changes_created_and_updated(env: tuple[Client, Store, Any]) -> None:
    c, _, acct = env
    s0 = (await c.one("Thread/get", {"ids": []}))["state"]
    await acct.append("INBOX", msg("topic", "Message-ID: <t1@x>\r\n"))
    ch = await c.one("Thread/changes", {"sinceState": s0})
    assert len(ch["created"]) == 1 and ch["updated"] == []
    tid = ch["created"][0]
    await acct.append("INBOX", msg("Re: topic", "Message-ID: <t2@x>\r\nIn-Reply-To: <t1@x>\r\nReferences: <t1@x>\r\n"))
    ch2 = await c.one("Thread/changes", {"sinceState": ch["newState"]})
    assert ch2["updated"] == [tid] and ch2["created"] == []
    got = await c.one("Thread/get", {"ids": [tid]})
    assert len(got["list"][0]["emailIds"]) == 2


async def test_sort_order_is_kept_and_reported(env: tuple[Client, Store, Any]) -> None:
    c, _, _ = env
    got = await c.one("Mailbox/get", {})
    s0 = got["state"]
    archive = next(m["id"] for m in got["list"] if m["role"] == "archive")
    r = await c.one("Mailbox/set", {"update": {archive: {"sortOrder": 3}},
                                    "create": {"n": {"name": "Notes", "sortOrder": 7}}})
    assert r["updated"] == {archive: None} and "sortOrder" not in r["created"]["n"]  # given: not echoed
    got = {m["id"]: m for m in (await c.one("Mailbox/get", {}))["list"]}
    assert got[archive]["sortOrder"] == 3 and got[r["created"]["n"]["id"]]["sortOrder"] == 7
    ch = await c.one("Mailbox/changes", {"sinceState": s0})
    assert archive in ch["updated"] and ch["created"] == [r["created"]["n"]["id"]]
    assert ch["updatedProperties"] is None and ch["newState"] == r["newState"]
    q = await c.one("Mailbox/query", {"sort": [{"property": "sortOrder"}, {"property": "name"}]})
    assert q["ids"].index(archive) < q["ids"].index(r["created"]["n"]["id"])


async def test_structure_properties_come_from_the_store_index(env: tuple[Client, Store, Any], corpus: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    c, _, acct = env
    raw = (corpus / "stalwart-mail-parser/eml/legacy/015.eml").read_bytes()
    uid = await acct.append("INBOX", raw)
    info = (await acct.open_mailbox("INBOX")).by_uid(uid)
    reads: list[int] = []
    real = type(acct).read_message

    async def counting(self: Any, mailbox: str, uid: int, *a: Any, **kw: Any) -> bytes:
        reads.append(uid)
        return bytes(await real(self, mailbox, uid, *a, **kw))

    monkeypatch.setattr(type(acct), "read_message", counting)
    props = ["from", "subject", "sentAt", "hasAttachment", "bodyStructure", "textBody", "htmlBody", "attachments"]
    body = ["partId", "blobId", "type", "name", "charset", "disposition"]
    got = await c.one("Email/get", {"ids": [info.email_id], "properties": props, "bodyProperties": body})
    e = got["list"][0]
    assert reads == [] and e["hasAttachment"] is True
    assert [p["partId"] for p in e["textBody"]] == ["1.1.1"] and e["from"][0]["email"] == "dwsauder@example.com"
    # the bytes are read once when a property needs them, and agree with the structure's answer
    got = await c.one("Email/get", {"ids": [info.email_id], "properties": [*props, "preview", "headers"],
                                    "bodyProperties": body})
    assert reads == [uid]
    e2 = got["list"][0]
    assert e2["preview"].startswith("Die Hasen") and {k: e2[k] for k in props} == {k: e[k] for k in props}
    # a part's blob is its decoded content
    png = e["attachments"][0]["blobId"]
    async with c.http.get(f"{c.server.url}/jmap/download/A1/{png}/a.png", headers=c.headers) as r:
        assert r.status == 200 and (await r.read())[:8] == b"\x89PNG\r\n\x1a\n"


OTHER_WORKER = """
import asyncio, sys
from pathlib import Path
from mailsrv.config import StoreConfig
from mailsrv.store import Store

async def main():
    store = Store(StoreConfig(), Path(sys.argv[1]), hostname="other")
    acct = await store.account("1", Path(sys.argv[1]) / "mail/alice")
    if sys.argv[2] == "append":
        uid = await acct.append("INBOX", b"From: a@x\\r\\nSubject: elsewhere\\r\\nMessage-ID: <o1@x>\\r\\n\\r\\nhi\\r\\n")
        m = (await acct.open_mailbox("INBOX")).by_uid(uid)
        print(m.email_id, m.thread_id, flush=True)
    else:
        view = await acct.open_mailbox("INBOX")
        done = await acct.expunge("INBOX", [m.uid for m in view.messages], only_deleted=False)
        print(len(done), flush=True)
    await store.close()

asyncio.run(main())
"""


async def _other_worker(tmp: Path, what: str) -> list[str]:
    import sys

    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", OTHER_WORKER, str(tmp), what,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    return out.decode().split()


async def test_changes_name_an_expunge_made_by_another_process(env: tuple[Client, Store, Any],
                                                               tmp_path: Path) -> None:
    """A client's state from one worker, an expunge by another process, /changes on a third worker
    that never listed the message: destroyed (was cannotCalculateChanges)."""
    c, _, _ = env
    email_id, thread_id = await _other_worker(tmp_path, "append")
    s0 = (await c.one("Email/get", {"ids": []}))["state"]
    t0 = (await c.one("Thread/get", {"ids": []}))["state"]
    assert await _other_worker(tmp_path, "expunge") == ["1"]
    store2 = Store(StoreConfig(io_threads=2), tmp_path, hostname="worker2")
    try:
        fresh = await store_factory(store2, Dir(), tmp_path)(type("P", (), {"id": "1", "account": None})())
        ch = await fresh.changes("Email", s0, None)
        assert (ch.destroyed, ch.created, ch.updated) == ([email_id], [], [])
        th = await fresh.changes("Thread", t0, None)
        assert (th.destroyed, th.created, th.updated) == ([thread_id], [], [])
    finally:
        await store2.close()
    ch = await c.one("Email/changes", {"sinceState": s0})  # the worker that did list it agrees
    assert ch["destroyed"] == [email_id] and ch["created"] == [] and ch["updated"] == []


async def test_mailbox_ids_change_into_and_out_of_junk_trains_the_policy(env: tuple[Client, Store, Any],
                                                                         tmp_path: Path) -> None:
    from mailsrv.config import PolicyConfig
    from mailsrv.net.dns import Resolver
    from mailsrv.policy.pipeline import Policy
    from mailsrv.policy.state import PolicyState

    _, store, acct = env
    state = PolicyState(tmp_path / "policy.db")
    policy = Policy(PolicyConfig(), hostname="mx.example.test", resolver=Resolver(["127.0.0.1:1"]), state=state)
    assert policy.trainer is not None
    try:
        be = await store_factory(store, Dir(), tmp_path, lambda: policy)(type("P", (), {"id": "1", "account": None})())
        ids = {i.name: i.id for i in await acct.list_mailboxes()}
        uid1 = await acct.append("INBOX", msg("win a prize"))
        uid2 = await acct.append("INBOX", msg("lunch"))
        view = await acct.open_mailbox("INBOX")
        e1, e2 = view.by_uid(uid1).email_id, view.by_uid(uid2).email_id  # type: ignore[union-attr]
        await be.update_email(e1, mailbox_ids=frozenset({ids["Junk"]}))
        await policy.trainer.drain()  # learned in the background (docs/policy.md)
        assert await state.training_counts("alice@example.test") == {"spam": 1}
        await be.update_email(e2, mailbox_ids=frozenset({ids["Archive"]}))  # not about Junk
        await be.update_email(e2, keywords=frozenset({"$seen"}))
        await policy.trainer.drain()  # learned in the background (docs/policy.md)
        assert await state.training_counts("alice@example.test") == {"spam": 1}
        await be.update_email(e1, mailbox_ids=frozenset({ids["INBOX"]}))  # out of Junk: ham
        await policy.trainer.drain()  # learned in the background (docs/policy.md)
        assert await state.training_counts("alice@example.test") == {"ham": 1}
        assert [m.email_id for m in (await acct.open_mailbox("INBOX")).messages] == [e1]
    finally:
        policy.close()


async def test_mailbox_query_changes_on_the_store(env: tuple[Client, Store, Any]) -> None:
    c, _, acct = env
    sort = [{"property": "sortOrder"}, {"property": "name"}]
    q0 = await c.one("Mailbox/query", {"sort": sort})
    await acct.create_mailbox("Zed")  # made by another protocol (IMAP CREATE)
    r = await c.one("Mailbox/set", {"create": {"a": {"name": "Aardvark", "sortOrder": 1}}})
    q1 = await c.one("Mailbox/query", {"sort": sort})
    ch = await c.one("Mailbox/queryChanges", {"sort": sort, "sinceQueryState": q0["queryState"]})
    zed = next(m.id for m in await acct.list_mailboxes() if m.name == "Zed")
    assert {x["id"] for x in ch["added"]} == {zed, r["created"]["a"]["id"]} and ch["removed"] == []
    assert ch["newQueryState"] == q1["queryState"]
    old = list(q0["ids"])
    for add in sorted(ch["added"], key=lambda x: x["index"]):
        old.insert(add["index"], add["id"])
    assert old == q1["ids"]
    await acct.delete_mailbox("Zed")
    ch = await c.one("Mailbox/queryChanges", {"sort": sort, "sinceQueryState": q1["queryState"]})
    assert ch["removed"] == [zed] and ch["added"] == []


async def test_push_streams_give_back_their_inotify_watches(env: tuple[Client, Store, Any]) -> None:
    """An account's inotify watches last while one of its push streams (EventSource or WebSocket) is open:
    the worker's watch count comes back to its start when the last stream closes, not at worker exit."""
    from test_limits import until
    from test_push import read_event

    c, store, acct = env
    n = store._notifier_for_loop()
    start = n.watch_count
    streams = lambda: len(n._watches.get(acct.id, ()))  # noqa: E731 - open watches of the account
    url = c.server.url + "/jmap/eventsource?types=Email&closeafter=no&ping=0"
    async with c.http.get(url, headers=c.headers) as r1:
        async with asyncio.timeout(5):
            assert (await read_event(r1))[0] == "state"
        one = n.watch_count
        assert one > start
        async with c.http.get(url, headers=c.headers) as r2:
            async with asyncio.timeout(5):
                assert (await read_event(r2))[0] == "state"
            assert streams() == 2 and n.watch_count == one  # the second stream shares the watches
        await until(lambda: streams() == 1)
        assert n.watch_count == one  # r1 still follows the account
        await acct.append("INBOX", msg("still pushed"))
        async with asyncio.timeout(5):
            ev, data = await read_event(r1)
        assert ev == "state" and "Email" in data["changed"]["A1"]
    await until(lambda: n.watch_count == start)
    assert streams() == 0

    ws_url = c.server.url.replace("http", "ws") + "/jmap/ws"
    async with c.http.ws_connect(ws_url, protocols=("jmap",), headers=c.headers) as ws:
        await ws.send_str('{"@type": "WebSocketPushEnable", "dataTypes": ["Email"]}')
        await until(lambda: n.watch_count == one)
        await ws.send_str('{"@type": "WebSocketPushDisable"}')
        await until(lambda: n.watch_count == start)
        await ws.send_str('{"@type": "WebSocketPushEnable", "dataTypes": ["Email"]}')
        await until(lambda: n.watch_count == one)
    await until(lambda: n.watch_count == start)  # the socket closed with push on


async def test_push_indexes_mail_another_process_left_in_new(env: tuple[Client, Store, Any]) -> None:
    """A delivery by another worker (or an outside MDA) is a durable file in new/ that no indexer of
    this process knows about: the push stream indexes it on the wake-up and sends the StateChange
    at once, instead of staying silent until some reader indexes the mailbox."""
    c, _, acct = env
    url = c.server.url + "/jmap/eventsource?types=Email&closeafter=state&ping=0"
    async with c.http.get(url, headers=c.headers) as r:
        assert r.status == 200
        tmp = acct.root / "tmp" / "1.outside.test"
        tmp.write_bytes(msg("left in new/"))
        os.rename(tmp, acct.root / "new" / "1.outside.test")
        lines = await _event_lines(r)
    assert lines[0] == "event: state\n" and '"Email"' in lines[1]
    got = await c.one("Email/query", {"filter": {"text": "left"}})
    assert len(got["ids"]) == 1


async def test_email_changes_go_on_after_a_mailbox_is_created(env: tuple[Client, Store, Any]) -> None:
    """RFC 8620 §5.2: a client that creates a mailbox (or moves mail into a new one) still syncs
    incrementally; a new mailbox's expunge history starting at its creation is no reason to refuse."""
    c, _, acct = env
    uid = await acct.append("INBOX", msg("old"))
    old_id = (await acct.open_mailbox("INBOX")).by_uid(uid).email_id
    s0 = (await c.one("Email/get", {"ids": []}))["state"]
    r = await c.one("Mailbox/set", {"create": {"p": {"name": "Projects"}}})
    pid = r["created"]["p"]["id"]
    ch = await c.one("Email/changes", {"sinceState": s0})
    assert (ch["created"], ch["updated"], ch["destroyed"]) == ([], [], [])
    # mail moved into it and new mail filed there, then one message expunged from it
    await c.one("Email/set", {"update": {old_id: {"mailboxIds": {pid: True}}}})
    await acct.append("Projects", msg("new"))
    gone = await acct.append("Projects", msg("short-lived"))
    await acct.store_flags("Projects", [gone], frozenset({"\\Deleted"}), "add")
    await acct.expunge("Projects")
    ch = await c.one("Email/changes", {"sinceState": s0})
    new_id = next(m.email_id for m in (await acct.open_mailbox("Projects")).messages if m.email_id != old_id)
    assert (ch["created"], ch["updated"], ch["destroyed"]) == ([new_id], [old_id], [])
    t0 = (await c.one("Thread/get", {"ids": []}))["state"]
    await c.one("Mailbox/set", {"create": {"q": {"name": "Later"}}})
    th = await c.one("Thread/changes", {"sinceState": t0})
    assert (th["created"], th["updated"], th["destroyed"]) == ([], [], [])


async def test_mailbox_counts_and_names_follow_changes_made_elsewhere(env: tuple[Client, Store, Any]) -> None:
    """Mailbox/get's counts are kept while nothing changed: a change made by another path (IMAP
    here: no JMAP write marks the backend dirty) must show at once."""
    c, _, acct = env

    def counts(got: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
        return {m["name"]: (m["totalEmails"], m["unreadEmails"], m["totalThreads"], m["unreadThreads"],
                            m["isSubscribed"]) for m in got["list"]}

    first = counts(await c.one("Mailbox/get", {}))
    assert first["Inbox"][:4] == (0, 0, 0, 0)
    uids = [await acct.append("INBOX", msg("one")), await acct.append("INBOX", msg("two"))]
    got = counts(await c.one("Mailbox/get", {}))
    assert got["Inbox"][:4] == (2, 2, 2, 2) and got == counts(await c.one("Mailbox/get", {}))  # kept: the same
    await acct.store_flags("INBOX", uids[:1], frozenset({"\\Seen"}), "add")
    assert counts(await c.one("Mailbox/get", {}))["Inbox"][:4] == (2, 1, 2, 1)
    await acct.rename_mailbox("Archive", "Old")
    await acct.subscribe("Old", False)
    got = counts(await c.one("Mailbox/get", {}))
    assert "Archive" not in got and got["Old"][4] is False
    ch = await c.one("Mailbox/changes", {"sinceState": (await c.one("Mailbox/get", {"ids": []}))["state"]})
    assert ch["updated"] == [] and ch["created"] == [] and ch["destroyed"] == []
