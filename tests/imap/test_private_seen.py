"""A grantee's private \\Seen on a shared folder (``[imap] shared_private_seen``, store/privateseen.py),
over `mailsrv serve` (IMAPS): the owner with imaplib and the grantee with imapclient side by side; the
grantee's \\Seen survives a restart of the server; with the setting off \\Seen is the owner's as before."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import imaplib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import imapclient
import pytest
from support.admin import cli
from support.server import init_setup, serve_users

D = "example.test"
ALICE, BOB = f"alice@{D}", f"bob@{D}"
INBOX = f"Other Users/{ALICE}/INBOX"
SEEN = b"\\Seen"


def _setup(base: Path, private: bool | None) -> tuple[Path, dict[str, str]]:
    cfg = init_setup(base, "--demo", workers=1)
    if private is not None:
        with cfg.open("a") as fh:
            fh.write(f"\n[imap]\nshared_private_seen = {'true' if private else 'false'}\n")
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "demo-users.txt").read_text()))
    cli(cfg, "share", "grant", ALICE, BOB, "--rights", "write")
    return cfg, users


@contextlib.contextmanager
def serving(cfg: Path, users: dict[str, str]) -> Iterator[Any]:
    server = serve_users(cfg, users)
    try:
        yield server
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with serving(*_setup(tmp_path_factory.mktemp("pvtseen") / "s", None)) as server:  # the default: private
        yield server


def owner(srv: Any) -> imaplib.IMAP4_SSL:
    c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.ctx, timeout=30)
    c.login(ALICE, srv.users[ALICE])
    return c


def grantee(srv: Any) -> imapclient.IMAPClient:
    c = imapclient.IMAPClient("127.0.0.1", port=srv.ports["imaps"], ssl=True, ssl_context=srv.ctx, timeout=30)
    c.login(BOB, srv.users[BOB])
    return c


def owner_flags(a: imaplib.IMAP4_SSL) -> dict[int, set[bytes]]:
    """uid -> flags as the owner's session has them after a NOOP (which takes in other sessions' changes)."""
    assert a.noop()[0] == "OK"
    typ, data = a.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK"
    out = {}
    for line in data:
        assert isinstance(line, bytes)
        m = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", line)
        if m is None:  # an unsolicited FETCH (another session's change, RFC 9051 §7.5.2)
            continue
        uid = int(m.group(1) or m.group(4))
        out[uid] = set((m.group(2) if m.group(1) else m.group(3)).split()) - {b"\\Recent"}
    return out


def fill(a: imaplib.IMAP4_SSL, n: int, mailbox: str = "INBOX") -> list[int]:
    for i in range(n):
        msg = f"From: carol@{D}\r\nTo: {ALICE}\r\nSubject: note {i}\r\n\r\nbody {i}\r\n".encode()
        assert a.append(mailbox, None, None, msg)[0] == "OK"
    a.select(mailbox)
    return sorted(owner_flags(a))


def folder(a: imaplib.IMAP4_SSL, box: str, n: int) -> list[int]:
    """A new folder of the owner's with ``n`` messages (subjects ``<box> <i>``), selected: their uids."""
    assert a.create(box)[0] == "OK"
    for i in range(n):
        msg = f"From: carol@{D}\r\nTo: {ALICE}\r\nSubject: {box} {i}\r\n\r\nbody\r\n".encode()
        assert a.append(box, None, None, msg)[0] == "OK"
    a.select(box)
    return sorted(owner_flags(a))


def test_grantee_seen_is_private_and_owner_view_unchanged(srv: Any) -> None:
    a = owner(srv)
    uids = fill(a, 3)
    u1, u2, u3 = uids[-3:]
    b = grantee(srv)
    b2 = grantee(srv)  # a second session of the grantee, idling
    try:
        b.enable("CONDSTORE")
        assert b.folder_status(INBOX, ["UNSEEN"])[b"UNSEEN"] == len(uids)  # the first look: seeded (none seen)
        assert a.uid("STORE", str(u1), "+FLAGS", "(\\Seen)")[0] == "OK"  # the owner has read the first since
        assert a.uid("STORE", str(u2), "+FLAGS", "(\\Flagged)")[0] == "OK"
        sel = b.select_folder(INBOX)
        hms0 = sel[b"HIGHESTMODSEQ"]
        flags = b.get_flags([u1, u2, u3])
        assert SEEN not in flags[u1]  # the owner's \Seen is not the grantee's
        assert b"\\Flagged" in flags[u2]  # the other flags are the owner's
        assert set(b.search(["UNSEEN"])) >= {u1, u2, u3}
        assert b.folder_status(INBOX, ["UNSEEN"])[b"UNSEEN"] == len(uids)

        b2.select_folder(INBOX)
        b2.idle()
        # a body fetch sets the grantee's \Seen (RFC 9051 §6.4.5), and only theirs
        got = b.fetch([u2], ["BODY[]", "FLAGS"])
        assert SEEN in got[u2][b"FLAGS"]
        changes: list[Any] = []
        for _ in range(150):  # the other grantee session hears of it (a deadline, not a sleep)
            changes += b2.idle_check(timeout=0.2)
            if any(r[1] == b"FETCH" for r in changes):
                break
        b2.idle_done()
        assert any(r[1] == b"FETCH" and SEEN in r[2][-1] for r in changes), changes
        assert b.search(["SEEN"]) == [u2]
        of = owner_flags(a)
        assert SEEN in of[u1] and SEEN not in of[u2]  # the owner's view is unchanged
        typ, st = a.status("INBOX", "(UNSEEN)")
        assert int(re.search(rb"UNSEEN (\d+)", st[0]).group(1)) == len(uids) - 1  # type: ignore[union-attr]

        # STORE: \Seen to the grantee's store, a keyword to the owner's
        b.add_flags([u3], [SEEN, b"$label"])
        of = owner_flags(a)
        assert b"$label" in of[u3] and SEEN not in of[u3]
        b.remove_flags([u1], [SEEN])  # the grantee's unseen does not touch the owner's \Seen
        assert SEEN in owner_flags(a)[u1]
        # a replace keeps the owner's \Seen and sets the grantee's from the list
        b.set_flags([u1], [b"\\Flagged"])
        of = owner_flags(a)
        assert of[u1] == {SEEN, b"\\Flagged"}
        assert SEEN not in b.get_flags([u1])[u1]
        assert b.folder_status(INBOX, ["UNSEEN"])[b"UNSEEN"] == len(uids) - 2

        # CONDSTORE: private changes have modseqs in the grantee's sequence
        hms1 = b.folder_status(INBOX, ["HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"]
        assert hms1 > hms0
        changed = b.fetch(uids, ["FLAGS"], modifiers=[f"CHANGEDSINCE {hms0}"])
        assert {u2, u3, u1} <= set(changed)
        before = b.fetch([u2], ["MODSEQ"])[u2][b"MODSEQ"][0]
        b.remove_flags([u2], [SEEN])
        after = b.fetch([u2], ["MODSEQ", "FLAGS"])[u2]
        assert after[b"MODSEQ"][0] > before and SEEN not in after[b"FLAGS"]
        typ, data = b._imap._simple_command("UID", "STORE", str(u2), f"(UNCHANGEDSINCE {before})",
                                            "+FLAGS", "(\\Seen)")
        assert typ == "OK" and b"[MODIFIED %d]" % u2 in data[-1], data  # RFC 7162 §3.1.3
        assert SEEN not in b.get_flags([u2])[u2]
        assert SEEN not in owner_flags(a)[u2]  # the owner never saw any of it
        # the owner's own change still reaches the grantee, above the private modseqs
        hms2 = b.folder_status(INBOX, ["HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"]
        assert a.uid("STORE", str(u3), "+FLAGS", "(\\Answered)")[0] == "OK"
        changed = b.fetch(uids, ["FLAGS", "MODSEQ"], modifiers=[f"CHANGEDSINCE {hms2}"])
        assert set(changed) == {u3} and b"\\Answered" in changed[u3][b"FLAGS"] and SEEN in changed[u3][b"FLAGS"]
        assert changed[u3][b"MODSEQ"][0] > hms2
        # QRESYNC (RFC 7162 §3.2.5): a SELECT since the first modseq reports the private changes too
        b2.unselect_folder()
        b2.enable("QRESYNC")
        uv = sel[b"UIDVALIDITY"]
        typ, _ = b2._imap._simple_command("SELECT", f'"{INBOX}"', f"(QRESYNC ({uv} {hms0}))")
        assert typ == "OK"
        lines = b"\n".join(x for x in b2._imap.untagged_responses.get("FETCH", []) if isinstance(x, bytes))
        assert re.search(rb"UID %d FLAGS \([^)]*\\Seen" % u3, lines), lines
        assert re.search(rb"UID %d FLAGS \([^)]*\\Flagged" % u1, lines), lines
        assert re.search(rb"UID %d FLAGS \(\\Flagged\)" % u2, lines), lines  # only private changes since
    finally:
        b.logout()
        b2.logout()
        a.logout()


def test_first_look_seeds_from_the_owners_seen(srv: Any) -> None:
    """The grantee's first look at a folder (a new grant, an upgrade) starts from what the owner has read
    then (once per UIDVALIDITY); the owner's later reads are theirs only."""
    a = owner(srv)
    box, shared = "Reports", f"Other Users/{ALICE}/Reports"
    uids = folder(a, box, 5)
    assert a.uid("STORE", ",".join(map(str, uids[:3])), "+FLAGS", "(\\Seen)")[0] == "OK"  # read 3 of 5
    cli(srv.cfg, "share", "grant", ALICE, BOB, "--folder", box, "--rights", "lrs")
    b = grantee(srv)
    try:
        b.enable("CONDSTORE")
        sel = b.select_folder(shared)
        assert b.search(["SEEN"]) == uids[:3]  # what the owner had read
        typ, st = a.status(box, "(HIGHESTMODSEQ)")
        hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", st[0]).group(1))  # type: ignore[union-attr,arg-type]
        assert sel[b"HIGHESTMODSEQ"] == hms  # the seeding is no change of the grantee's view (no private write)
        assert b.folder_status(shared, ["UNSEEN"])[b"UNSEEN"] == 2
        assert a.uid("STORE", str(uids[3]), "+FLAGS", "(\\Seen)")[0] == "OK"  # the owner reads on
        b.remove_flags([uids[0]], [SEEN])  # and the grantee marks one unread again
        b.noop()
        assert b.search(["SEEN"]) == uids[1:3]
        assert SEEN in owner_flags(a)[uids[0]]
    finally:
        b.logout()
    b = grantee(srv)  # a new session (and the seeding is not done again)
    try:
        b.select_folder(shared, readonly=True)
        assert b.search(["SEEN"]) == uids[1:3]
    finally:
        b.logout()
        a.logout()
    got = asyncio.run(_jmap_seen_by_subject(srv, BOB))
    assert [got[f"{box} {i}"] for i in range(5)] == [False, True, True, False, False]


def _private_rows(srv: Any) -> tuple[int, int]:
    """(rows, seeded folders) of bob's private-seen.db (the only one: alice is no grantee)."""
    found = list(srv.cfg.parent.rglob("private-seen.db"))
    if not found:
        return 0, 0
    (path,) = found
    db = sqlite3.connect(path)
    try:
        return (db.execute("SELECT count(*) FROM seen").fetchone()[0],
                db.execute("SELECT count(*) FROM seeded").fetchone()[0])
    finally:
        db.close()


def test_a_deleted_folders_private_state_goes(srv: Any) -> None:
    """The grantee's rows of an owner's folder that was deleted are dropped at their next LIST."""
    a = owner(srv)
    box, shared = "Old", f"Other Users/{ALICE}/Old"
    uids = folder(a, box, 2)
    assert a.uid("STORE", str(uids[0]), "+FLAGS", "(\\Seen)")[0] == "OK"
    b = grantee(srv)
    try:
        b.list_folders()
        rows, seeded = _private_rows(srv)
        b.select_folder(shared)  # seeded with one row
        b.add_flags([uids[1]], [SEEN])  # and one of bob's own
        assert _private_rows(srv) == (rows + 2, seeded + 1)
        a.close()
        assert a.delete(box)[0] == "OK"
        b.unselect_folder()
        assert shared not in [f[2] for f in b.list_folders()]
        assert _private_rows(srv) == (rows, seeded)
    finally:
        b.logout()
        a.logout()


def test_grantee_seen_survives_a_restart(tmp_path: Path) -> None:
    cfg, users = _setup(tmp_path / "s", True)
    with serving(cfg, users) as server:
        a = owner(server)
        uids = fill(a, 2)
        a.logout()
        b = grantee(server)
        b.select_folder(INBOX)
        b.add_flags([uids[0]], [SEEN])
        b.logout()
    with serving(cfg, users) as server:
        b = grantee(server)
        b.select_folder(INBOX, readonly=True)
        flags = b.get_flags(uids)
        assert SEEN in flags[uids[0]] and SEEN not in flags[uids[1]]
        b.logout()
        a = owner(server)
        a.select("INBOX")
        assert all(SEEN not in f for f in owner_flags(a).values())
        a.logout()
        # JMAP reads the same private store: bob sees his $seen on one of alice's two emails
        assert asyncio.run(_jmap_seen(server, BOB)) == [False, True]
        assert asyncio.run(_jmap_seen(server, ALICE)) == [False, False]


async def _jmap_seen(srv: Any, user: str) -> list[bool]:
    """Over JMAP (aiohttp, HTTPS): whether each email of alice's account is $seen for ``user``, sorted."""
    return sorted((await _jmap_seen_by_subject(srv, user)).values())


async def _jmap_seen_by_subject(srv: Any, user: str) -> dict[str, bool]:
    """Over JMAP (aiohttp, HTTPS): subject -> whether that email of alice's account is $seen for ``user``."""
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{srv.users[user]}".encode()).decode()}
    url = f"https://127.0.0.1:{srv.ports['jmaps']}"
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(url + "/jmap/session", ssl=srv.ctx) as r:
            session = await r.json()
        account = next(k for k, v in session["accounts"].items() if v["name"] == ALICE)
        body = {"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"], "methodCalls": [
            ["Email/query", {"accountId": account}, "q"],
            ["Email/get", {"accountId": account, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                           "properties": ["keywords", "subject"]}, "g"]]}
        async with http.post(url + "/jmap/api", json=body, ssl=srv.ctx) as r:
            got = (await r.json())["methodResponses"][1][1]["list"]
    return {e["subject"]: "$seen" in e["keywords"] for e in got}


def _status_unseen(c: imaplib.IMAP4_SSL | imapclient.IMAPClient, mailbox: str) -> int:
    if isinstance(c, imapclient.IMAPClient):
        return int(c.folder_status(mailbox, ["UNSEEN"])[b"UNSEEN"])
    typ, st = c.status(mailbox, "(UNSEEN)")
    assert typ == "OK"
    return int(re.search(rb"UNSEEN (\d+)", st[0]).group(1))  # type: ignore[union-attr,arg-type]


def test_seen_is_private_only_with_the_s_right(tmp_path: Path) -> None:
    """RFC 4314 §4: without ``s`` (an ``lr`` auditor) the grantee sees the owner's \\Seen, read-only,
    in IMAP and JMAP; with ``lrs`` their \\Seen is their own."""
    cfg, users = _setup(tmp_path / "s", True)
    with serving(cfg, users) as server:
        a = owner(server)
        uids: dict[str, list[int]] = {}
        for box in ("Audit", "Team"):
            uids[box] = folder(a, box, 3)
            assert a.uid("STORE", str(uids[box][0]), "+FLAGS", "(\\Seen)")[0] == "OK"
        cli(cfg, "share", "grant", ALICE, BOB, "--folder", "Audit", "--rights", "lr")
        cli(cfg, "share", "grant", ALICE, BOB, "--folder", "Team", "--rights", "lrs")
        audit, team = f"Other Users/{ALICE}/Audit", f"Other Users/{ALICE}/Team"
        b = grantee(server)
        try:
            b.select_folder(audit, readonly=True)  # RFC 4314 §5.2: lr is read-only (a SELECT says READ-ONLY)
            au = uids["Audit"]
            assert SEEN in b.get_flags([au[0]])[au[0]]  # the owner's \Seen
            assert _status_unseen(b, audit) == 2
            a.select("Audit")
            assert a.uid("STORE", str(au[1]), "+FLAGS", "(\\Seen)")[0] == "OK"  # the owner reads on
            b.noop()
            assert set(b.search(["SEEN"])) == {au[0], au[1]}  # and the auditor sees it
            b.fetch([au[2]], ["BODY[]"])  # sets no \Seen: neither the owner's nor a private one
            assert SEEN not in b.get_flags([au[2]])[au[2]] and SEEN not in owner_flags(a)[au[2]]
            with pytest.raises(imapclient.exceptions.IMAPClientError):
                b.add_flags([au[2]], [SEEN])
            assert _status_unseen(b, audit) == 1 == _status_unseen(a, "Audit")

            tu = uids["Team"]
            b.select_folder(team)
            b.add_flags([tu[2]], [SEEN])  # lrs: the grantee's own
            a.select("Team")
            assert SEEN not in owner_flags(a)[tu[2]]
            assert a.uid("STORE", str(tu[1]), "+FLAGS", "(\\Seen)")[0] == "OK"
            b.noop()
            assert SEEN not in b.get_flags([tu[1]])[tu[1]] and SEEN in b.get_flags([tu[2]])[tu[2]]
        finally:
            b.logout()
            a.logout()
        # JMAP: the same rules (Audit: the owner's $seen, Team: bob's own)
        got = asyncio.run(_jmap_seen_by_subject(server, BOB))
        assert [got[f"Audit {i}"] for i in range(3)] == [True, True, False]
        assert got["Team 1"] is False and got["Team 2"] is True


def test_setting_off_seen_is_the_owners(tmp_path: Path) -> None:
    with serving(*_setup(tmp_path / "s", False)) as server:
        a = owner(server)
        uids = fill(a, 2)
        assert a.uid("STORE", str(uids[1]), "+FLAGS", "(\\Seen)")[0] == "OK"
        b = grantee(server)
        b.select_folder(INBOX)
        assert SEEN in b.get_flags([uids[1]])[uids[1]]  # the owner's \Seen, as before
        b.fetch([uids[0]], ["BODY[]"])
        assert SEEN in owner_flags(a)[uids[0]]  # the grantee's read marks the owner's mail
        b.logout()
        a.logout()
        assert not list(tmp_path.rglob("private-seen.db"))
