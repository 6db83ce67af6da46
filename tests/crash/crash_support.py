"""The chaos test's parts (tests/crash/test_chaos.py): a ledger of what the server acknowledged, the writers
(one thread per client, each recording every acknowledgement it gets) and the invariant checks after a crash.

A module of its own name: basenames shared across test folders shadow each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import imaplib
import json
import poplib
import random
import re
import smtplib
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.admin import cli

D = "example.test"
#: every account the writers write to (all in domain D, whose quota usage is checked)
ACCOUNTS = ("alice", "bob", "carol", "dave", "erin")
#: the group address of the SMTP group writer and its members
GROUP = f"team@{D}"
MEMBERS = ("carol", "dave")
#: the word every test message's body holds (SEARCH BODY finds them all once the index caught up)
WORD = "chaosword"
MSGID = re.compile(rb"^Message-ID: <(\w+)@chaos\.test>", re.M | re.I)
UIDPAIR = re.compile(rb"(\d+) (\d+)")
BLANK = b"\r\n\r\n"


def body_hash(raw: bytes) -> str:
    """The body's hash (after the header: SMTP delivery prepends Return-Path and Received)."""
    return hashlib.sha256(raw[raw.index(BLANK) + 4:]).hexdigest()


@dataclass
class Msg:
    """One message a writer tried to store, and what the server's answers let us expect of it.

    ``present``: "yes" (acknowledged), "no" (its delete or expunge acknowledged), "maybe" (the answer was
    lost: the connection died with the process). ``folders``: where it may be (two during a MOVE whose
    answer was lost). ``uids``: (account, folder) -> the UID the server gave it (APPENDUID, COPYUID, FETCH).
    """

    mid: str
    accounts: tuple[str, ...]
    raw: bytes
    sha: str
    present: str = "maybe"
    folders: set[str] = field(default_factory=lambda: {"INBOX"})
    uids: dict[tuple[str, str], int] = field(default_factory=dict)
    flagged: bool = False
    remote: bool = False  # sent to far@remote.test: must reach the sink (at least once) once acknowledged
    busy: bool = False  # a writer has an operation on it in flight
    jmap_id: str = ""


@dataclass
class Folder:
    """What a verification saw of one folder (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, UID -> Message-ID)."""

    uidvalidity: int
    uidnext: int
    modseq: int
    uids: dict[int, str]


class Ledger:
    """Every message attempted and every acknowledgement; shared by the writer threads (one lock)."""

    def __init__(self, rng: random.Random) -> None:
        self.lock = threading.Lock()
        self.msgs: dict[str, Msg] = {}
        self.acks = 0
        self.counter = 0
        self.batches = 0  # IMAP commands acknowledged on several messages at once
        self.rng = rng
        #: (account, folder) -> what the last verification saw
        self.seen: dict[tuple[str, str], Folder] = {}

    def new(self, accounts: tuple[str, ...], remote: bool = False) -> Msg:
        """A fresh message (unique Message-ID and body words, a size between 200 B and 24 KB), recorded as maybe."""
        with self.lock:
            self.counter += 1
            mid = f"chaos{self.counter:05d}x{self.rng.randrange(16**6):06x}"
            size = self.rng.choice((200, 1500, 6000, 24000))
        to = ", ".join(f"{a}@{D}" for a in accounts) or "far@remote.test"
        filler = "".join(f"line {i} of {mid} lorem ipsum dolor\r\n" for i in range(size // 40))
        raw = (f"From: x@remote.test\r\nTo: {to}\r\nSubject: chaos {mid}\r\nMessage-ID: <{mid}@chaos.test>\r\n"
               f"Date: Sat, 28 Nov 2026 07:00:00 +0000\r\n\r\n{WORD} {mid}\r\n{filler}").encode()
        m = Msg(mid, accounts, raw, body_hash(raw), remote=remote)
        with self.lock:
            self.msgs[mid] = m
        return m

    def ack(self, m: Msg, **changes: Any) -> None:
        with self.lock:
            for k, v in changes.items():
                setattr(m, k, v)
            self.acks += 1

    def pick(self, account: str, folder: str | None = None, need_uid: bool = True) -> Msg | None:
        """A random certainly present, idle message of ``account`` (in ``folder``), marked busy; or None."""
        with self.lock:
            cands = [m for m in self.msgs.values()
                     if account in m.accounts and m.present == "yes" and not m.busy and len(m.folders) == 1
                     and (folder is None or m.folders == {folder})
                     and (not need_uid or (account, next(iter(m.folders))) in m.uids)]
            if not cands:
                return None
            m = self.rng.choice(sorted(cands, key=lambda x: x.mid))
            m.busy = True
            return m

    def done(self, m: Msg) -> None:
        with self.lock:
            m.busy = False


class Writer(threading.Thread):
    """One client in a loop until ``stop``: each ``step`` records in the ledger what the server acknowledged.
    A failed step (the server process died under it) leaves its message "maybe" and reconnects."""

    def __init__(self, name: str, cluster: Any, ledger: Ledger, stop: threading.Event, seed: int) -> None:
        super().__init__(name=name, daemon=True)
        self.cluster = cluster
        self.ledger = ledger
        self.stop = stop
        self.rng = random.Random(seed)
        self.errors = 0
        self.conn: Any = None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.conn is None:
                    self.conn = self.connect()
                    self.login()  # apart: a failed login leaves self.conn for drop() to close
                self.step()
            except (TimeoutError, OSError, EOFError, smtplib.SMTPException, imaplib.IMAP4.error, poplib.error_proto, ConnectionError, AssertionError, ValueError) as exc:
                self.errors += 1
                self.last_error = repr(exc)
                self.drop()
                self.stop.wait(0.05)  # back-off before reconnecting to a server that may be restarting
        self.drop()

    def connect(self) -> Any:
        raise NotImplementedError

    def login(self) -> None:
        """After connect: authenticate ``self.conn`` (nothing by default)."""

    def step(self) -> None:
        raise NotImplementedError

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close() if not isinstance(conn, imaplib.IMAP4) else conn.shutdown()
            except Exception:
                pass


def _replies(f: Any, count: int) -> list[int]:
    """Read ``count`` SMTP replies (multi-line ones whole); their codes."""
    codes = []
    for _ in range(count):
        while True:
            line = f.readline(1024)
            if not line:
                raise ConnectionError("SMTP connection closed")
            if line[3:4] != b"-":
                codes.append(int(line[:3]))
                break
    return codes


class SmtpPipelined(Writer):
    """The MTA listener, a raw client pipelining MAIL, RCPT and DATA (RFC 2920); to ``rcpts``."""

    def __init__(self, *args: Any, rcpts: tuple[str, ...], accounts: tuple[str, ...]) -> None:
        super().__init__(*args)
        self.rcpts = rcpts
        self.accounts = accounts

    def connect(self) -> Any:
        return _Raw(socket.create_connection(("127.0.0.1", self.cluster.srv.ports["smtp"]), timeout=30))

    def login(self) -> None:
        self.conn.sock.sendall(b"EHLO chaos.test\r\n")
        assert _replies(self.conn.file, 2) == [220, 250]

    def step(self) -> None:
        m = self.ledger.new(self.accounts)
        c = self.conn
        rc = "".join(f"RCPT TO:<{r}>\r\n" for r in self.rcpts)
        c.sock.sendall(f"MAIL FROM:<x@remote.test>\r\n{rc}DATA\r\n".encode())
        codes = _replies(c.file, 2 + len(self.rcpts))
        assert codes == [250] * (1 + len(self.rcpts)) + [354], codes
        c.sock.sendall(m.raw + b".\r\n")  # raw ends with CRLF (no line of it starts with ".")
        (code,) = _replies(c.file, 1)
        assert code == 250, code  # acknowledged: durable in every recipient's new/
        self.ledger.ack(m, present="yes")


class _Raw:
    """A raw client socket and its buffered reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class SmtpRelay(Writer):
    """alice's client on submissions (TLS, AUTH) to far@remote.test: the queue relays it to the sink."""

    def connect(self) -> Any:
        return smtplib.SMTP_SSL("127.0.0.1", self.cluster.srv.ports["submissions"], context=self.cluster.ctx,
                                timeout=30)

    def login(self) -> None:
        self.conn.login(f"alice@{D}", self.cluster.users[f"alice@{D}"])

    def step(self) -> None:
        m = self.ledger.new((), remote=True)
        raw = m.raw.replace(b"From: x@remote.test", f"From: alice@{D}".encode(), 1)
        assert self.conn.sendmail(f"alice@{D}", ["far@remote.test"], raw) == {}  # 250: queued, durable
        self.ledger.ack(m, present="yes")


class ImapWriter(Writer):
    """alice over IMAPS: APPEND (APPENDUID), UID STORE +FLAGS \\Flagged, UID MOVE to Archive (COPYUID), and
    UID STORE \\Deleted + UID EXPUNGE; each recorded once its tagged OK came."""

    def connect(self) -> Any:
        self.selected = ""
        return imaplib.IMAP4_SSL("127.0.0.1", self.cluster.srv.ports["imaps"], ssl_context=self.cluster.ctx,
                                 timeout=30)

    def login(self) -> None:
        self.conn.login(f"alice@{D}", self.cluster.users[f"alice@{D}"])

    def _select(self, folder: str) -> None:
        if self.selected != folder:
            assert self.conn.select(folder)[0] == "OK"
            self.selected = folder

    def step(self) -> None:
        op = self.rng.choice(("append", "append", "flag", "move", "expunge"))
        if op == "append":
            self._append()
            return
        m = self.ledger.pick("alice")
        if m is None:
            self._append()
            return
        (folder,) = m.folders
        more = (self.ledger.pick("alice", folder) for _ in range(self.rng.randrange(3)))
        ms = [m, *(x for x in more if x is not None)]  # one to three messages of one folder
        try:
            uids = [x.uids[("alice", folder)] for x in ms]
            self.ledger.batches += len(ms) > 1
            uidset = ",".join(map(str, uids))
            self._select(folder)
            if op == "flag":
                typ, _ = self.conn.uid("STORE", uidset, "+FLAGS", "(\\Flagged)")
                assert typ == "OK"
                for x in ms:
                    self.ledger.ack(x, flagged=True)
            elif op == "move":
                dest = "Archive" if folder == "INBOX" else "INBOX"
                with self.ledger.lock:
                    for x in ms:
                        x.folders = {folder, dest}  # in flight: either, exactly once
                typ, _ = self.conn.uid("MOVE", uidset, dest)
                assert typ == "OK"
                code = self.conn.response("COPYUID")[1]
                assert code and code[0], code
                uv, src, dst = code[-1].decode().split()  # RFC 4315 §3: the two sets in the same order
                moved = dict(zip(_uid_set(src), _uid_set(dst), strict=True))
                self.cluster.note_uidvalidity("alice", dest, int(uv))
                for x, uid in zip(ms, uids, strict=True):
                    self.ledger.ack(x, folders={dest}, uids={("alice", dest): moved[uid]})
            else:
                with self.ledger.lock:
                    for x in ms:
                        x.present = "maybe"
                typ, _ = self.conn.uid("STORE", uidset, "+FLAGS", "(\\Deleted)")
                assert typ == "OK"
                typ, _ = self.conn.uid("EXPUNGE", uidset)  # RFC 4315 §2.1
                assert typ == "OK"
                for x in ms:
                    self.ledger.ack(x, present="no")
        finally:
            for x in ms:
                self.ledger.done(x)

    def _append(self) -> None:
        m = self.ledger.new(("alice",))
        folder = self.rng.choice(("INBOX", "Archive"))
        with self.ledger.lock:
            m.folders = {folder}
        typ, _ = self.conn.append(folder, "", None, m.raw)
        assert typ == "OK"
        code = self.conn.response("APPENDUID")[1]
        assert code and code[0], code
        uv, uid = code[-1].split()
        self.cluster.note_uidvalidity("alice", folder, int(uv))
        self.ledger.ack(m, present="yes", uids={("alice", folder): int(uid)})


def _uid_set(text: str) -> list[int]:
    """The UIDs of an IMAP sequence set ("3,5:7"), in its order."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        out += range(int(lo), int(hi or lo) + 1) if int(hi or lo) >= int(lo) else range(int(lo), int(hi) - 1, -1)
    return out


class Pop3Writer(Writer):
    """bob over POP3S: TOP to name up to 3 messages, DELE them, QUIT; deleted once QUIT's +OK came."""

    def connect(self) -> Any:
        return _Pop3("127.0.0.1", self.cluster.srv.ports["pop3s"], context=self.cluster.ctx, timeout=30)

    def login(self) -> None:
        self.conn.user(f"bob@{D}")
        self.conn.pass_(self.cluster.users[f"bob@{D}"])

    def step(self) -> None:
        c = self.conn
        count = c.stat()[0]
        chosen = self.rng.sample(range(1, count + 1), min(3, count))
        picked: list[Msg] = []
        try:
            for n in chosen:
                found = MSGID.search(b"\r\n".join(c.top(n, 0)[1]))
                m = self.ledger.msgs.get(found.group(1).decode()) if found else None
                if m is None or m.busy or m.present != "yes":
                    continue
                with self.ledger.lock:
                    m.busy = True
                picked.append(m)
                assert c.dele(n).startswith(b"+OK")
                with self.ledger.lock:
                    m.present = "maybe"
            resp = c.quit()  # RFC 1939 §6: the UPDATE state removes them
            self.conn = None
            assert resp.startswith(b"+OK"), resp
            for m in picked:
                self.ledger.ack(m, present="no")
            if not picked:
                self.stop.wait(0.05)  # pacing: nothing of ours to delete yet
        finally:
            for m in picked:
                self.ledger.done(m)


class _Pop3(poplib.POP3_SSL):
    """POP3_SSL that closes its socket when the greeting fails (poplib's constructor leaves it open)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            for part in (getattr(self, "file", None), getattr(self, "sock", None)):
                if part is not None:
                    part.close()
            raise


class JmapWriter(Writer):
    """erin over JMAP (aiohttp, bearer token): upload + Email/import (created id), Email/set destroy."""

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import aiohttp

        while not self.stop.is_set():
            try:
                url = f"http://127.0.0.1:{self.cluster.srv.ports['jmap']}"
                hdr = {"Authorization": f"Bearer {self.cluster.token}"}
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                    async with http.get(url + "/jmap/session", headers=hdr) as r:
                        assert r.status == 200, r.status
                        acct = (await r.json())["primaryAccounts"]["urn:ietf:params:jmap:mail"]
                    got = await self._call(http, url, hdr, ["Mailbox/get", {"accountId": acct}, "m"])
                    inbox = next(x["id"] for x in got[0][1]["list"] if x["role"] == "inbox")
                    while not self.stop.is_set():
                        await self._step(http, url, hdr, acct, inbox)
            except (TimeoutError, OSError, AssertionError, aiohttp.ClientError, KeyError) as exc:
                self.errors += 1
                self.last_error = repr(exc)
                # back-off before reconnecting to a server that may be restarting; ends at once on stop
                await asyncio.to_thread(self.stop.wait, 0.05)

    @staticmethod
    async def _call(http: Any, url: str, hdr: dict[str, str], *calls: list[Any]) -> list[Any]:
        using = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]
        async with http.post(url + "/jmap/api", json={"using": using, "methodCalls": list(calls)},
                             headers=hdr) as r:
            assert r.status == 200, r.status
            return list((await r.json())["methodResponses"])

    async def _step(self, http: Any, url: str, hdr: dict[str, str], acct: str, inbox: str) -> None:
        victim = self.ledger.pick("erin", need_uid=False) if self.rng.random() < 0.25 else None
        if victim is not None and victim.jmap_id:
            try:
                with self.ledger.lock:
                    victim.present = "maybe"
                got = await self._call(http, url, hdr, ["Email/set", {"accountId": acct,
                                                                      "destroy": [victim.jmap_id]}, "d"])
                assert got[0][1]["destroyed"] == [victim.jmap_id], got
                self.ledger.ack(victim, present="no")
            finally:
                self.ledger.done(victim)
            return
        if victim is not None:
            self.ledger.done(victim)
        m = self.ledger.new(("erin",))
        async with http.post(f"{url}/jmap/upload/{acct}/", data=m.raw,
                             headers={**hdr, "Content-Type": "message/rfc822"}) as r:
            assert r.status == 201, r.status
            blob = (await r.json())["blobId"]
        got = await self._call(http, url, hdr, ["Email/import", {"accountId": acct, "emails": {
            "k": {"blobId": blob, "mailboxIds": {inbox: True}}}}, "i"])
        created = got[0][1].get("created") or {}
        assert "k" in created, got
        self.ledger.ack(m, present="yes", jmap_id=created["k"]["id"])


# --- verification -----------------------------------------------------------------------------------------


def imap_login(cluster: Any, account: str) -> imaplib.IMAP4_SSL:
    c = imaplib.IMAP4_SSL("127.0.0.1", cluster.srv.ports["imaps"], ssl_context=cluster.ctx, timeout=60)
    c.login(f"{account}@{D}", cluster.users[f"{account}@{D}"])
    return c


LISTED = re.compile(rb'\(([^)]*)\) (?:"."|NIL) (.+)$')


@dataclass
class Seen:
    """One account's mail as a verification read it: (folder, uid, mid, size, flags, body sha) per message."""

    rows: list[tuple[str, int, str, int, str, str]]
    folders: dict[str, Folder]


def read_account(cluster: Any, account: str) -> Seen:
    """Every folder of ``account`` over IMAP: its status and every message (one read-only pass)."""
    c = imap_login(cluster, account)
    rows: list[tuple[str, int, str, int, str, str]] = []
    folders: dict[str, Folder] = {}
    try:
        typ, listed = c.list()
        assert typ == "OK"
        for line in listed:
            attrs, name = LISTED.match(line).groups()  # type: ignore[union-attr]
            if b"\\noselect" in attrs.lower():
                continue
            name = name.strip(b'"').decode()
            typ, _ = c.select(f'"{name}"', readonly=True)
            assert typ == "OK", (account, name)
            uids: dict[int, str] = {}
            typ, data = c.uid("FETCH", "1:*", "(UID RFC822.SIZE FLAGS BODY.PEEK[])")
            assert typ == "OK", (account, name, data)
            for part in data:
                if not isinstance(part, tuple):
                    continue
                meta, raw = part[0], bytes(part[1])
                uid = int(re.search(rb"UID (\d+)", meta).group(1))  # type: ignore[union-attr]
                size = int(re.search(rb"RFC822\.SIZE (\d+)", meta).group(1))  # type: ignore[union-attr]
                flags = (re.search(rb"FLAGS \(([^)]*)\)", meta) or re.search(rb"()", b"")).group(1).decode()  # type: ignore[union-attr]
                found = MSGID.search(raw[:raw.find(BLANK)])
                mid = found.group(1).decode() if found else f"?{uid}"
                assert size == len(raw), (account, name, uid, size, len(raw))
                rows.append((name, uid, mid, size, flags, body_hash(raw) if BLANK in raw else ""))
                uids[uid] = mid
            typ, st = c.status(f'"{name}"', "(UIDVALIDITY UIDNEXT HIGHESTMODSEQ)")
            assert typ == "OK", st
            vals = dict(re.findall(rb"(UIDVALIDITY|UIDNEXT|HIGHESTMODSEQ) (\d+)", st[0]))
            folders[name] = Folder(int(vals[b"UIDVALIDITY"]), int(vals[b"UIDNEXT"]), int(vals[b"HIGHESTMODSEQ"]),
                                   uids)
    finally:
        c.logout()
    return Seen(rows, folders)


def search_gaps(cluster: Any, account: str, seen: Seen, rng: random.Random) -> list[str]:
    """Messages of ours that SEARCH BODY does not find (the index has not caught up, or lost them)."""
    gaps: list[str] = []
    c = imap_login(cluster, account)
    try:
        for name, folder in seen.folders.items():
            ours = {u for u, mid in folder.uids.items() if not mid.startswith("?")}
            if not ours:
                continue
            assert c.select(f'"{name}"', readonly=True)[0] == "OK"
            typ, data = c.uid("SEARCH", "BODY", WORD)
            assert typ == "OK"
            found = {int(x) for x in data[0].split()}
            if found != ours:
                gaps.append(f"{account}/{name}: SEARCH BODY {WORD} missed {sorted(ours - found)} "
                            f"extra {sorted(found - ours)}")
            for uid in rng.sample(sorted(ours), min(3, len(ours))):  # the message's own word, a few per folder
                typ, data = c.uid("SEARCH", "BODY", folder.uids[uid])
                if typ != "OK" or [int(x) for x in data[0].split()] != [uid]:
                    gaps.append(f"{account}/{name}: SEARCH BODY {folder.uids[uid]} -> {data} not [{uid}]")
    finally:
        c.logout()
    return gaps


def quota_of(cluster: Any, account: str) -> tuple[int, int]:
    """(STORAGE in KiB, MESSAGE) of the account's own quota root (GETQUOTAROOT INBOX)."""
    c = imap_login(cluster, account)
    try:
        typ, data = c.getquotaroot("INBOX")
        assert typ == "OK", data
        text = b" ".join(x for x in data[1] if isinstance(x, bytes))
        got = dict(re.findall(rb"(STORAGE|MESSAGE) (\d+) \d+", text))
        return int(got[b"STORAGE"]), int(got[b"MESSAGE"])
    finally:
        c.logout()


def domain_usage(cfg: Path) -> tuple[int, int]:
    """(storage, messages) of domain D as ``mailsrv quota show`` reports it."""
    got = json.loads(cli(cfg, "quota", "show", D, "--json"))
    return int(got["storage"]), int(got["messages"])


def check_uids(ledger: Ledger, account: str, seen: Seen, problems: list[str]) -> None:
    """UIDVALIDITY kept; UIDNEXT and HIGHESTMODSEQ never back; a UID seen before names the same message or
    nothing; a UID not seen before is at or above the UIDNEXT of the last verification."""
    for name, now in seen.folders.items():
        before = ledger.seen.get((account, name))
        if before is None:
            continue
        where = f"{account}/{name}"
        if now.uidvalidity != before.uidvalidity:
            problems.append(f"{where}: UIDVALIDITY {before.uidvalidity} -> {now.uidvalidity}")
            continue
        if now.uidnext < before.uidnext:
            problems.append(f"{where}: UIDNEXT went back {before.uidnext} -> {now.uidnext}")
        if now.modseq < before.modseq:
            problems.append(f"{where}: HIGHESTMODSEQ went back {before.modseq} -> {now.modseq}")
        for uid, mid in now.uids.items():
            if uid in before.uids and before.uids[uid] != mid:
                problems.append(f"{where}: UID {uid} was {before.uids[uid]}, now {mid} (UID reused)")
            elif uid not in before.uids and uid < before.uidnext:
                problems.append(f"{where}: UID {uid} ({mid}) is new but below the last UIDNEXT {before.uidnext}")
        if now.uids and max(now.uids) >= now.uidnext:
            problems.append(f"{where}: UID {max(now.uids)} at or above UIDNEXT {now.uidnext}")


def check_messages(ledger: Ledger, seen: dict[str, Seen], problems: list[str]) -> None:
    """Every acknowledged message exactly once, in a folder it may be in, with its body and UID; every
    acknowledged delete gone; an unacknowledged one at most once; nothing that was never sent."""
    where: dict[tuple[str, str], list[tuple[str, int, str, str]]] = {}
    for account, s in seen.items():
        for name, uid, mid, _size, flags, sha in s.rows:
            where.setdefault((account, mid), []).append((name, uid, flags, sha))
            if mid not in ledger.msgs:
                problems.append(f"{account}/{name}: UID {uid} {mid} was never sent")
    for m in ledger.msgs.values():
        for account in m.accounts:
            got = where.get((account, m.mid), [])
            tag = f"{account}: {m.mid} ({m.present}, {sorted(m.folders)})"
            if m.present == "yes" and len(got) != 1:
                problems.append(f"{tag}: acknowledged, found {len(got)} times {got}")
            elif m.present == "no" and got:
                problems.append(f"{tag}: deletion acknowledged, found {got}")
            elif m.present == "maybe" and len(got) > 1:
                problems.append(f"{tag}: found {len(got)} times {got}")
            for name, uid, flags, sha in got:
                if name not in m.folders:
                    problems.append(f"{tag}: found in {name}")
                if sha != m.sha:
                    problems.append(f"{tag}: body changed in {name} UID {uid}")
                known = m.uids.get((account, name))
                if known is not None and known != uid:
                    problems.append(f"{tag}: UID {known} acknowledged, now {uid} in {name}")
                if m.flagged and m.present == "yes" and "\\Flagged" not in flags:
                    problems.append(f"{tag}: \\Flagged acknowledged, flags now ({flags})")


def settle(ledger: Ledger, seen: dict[str, Seen]) -> None:
    """After a verification that passed: what it saw becomes what is known (a lost answer's outcome
    resolved), so the next round's writers act on certain messages and its checks compare with this."""
    by: dict[tuple[str, str], tuple[str, int]] = {}
    for account, s in seen.items():
        for name, uid, mid, *_ in s.rows:
            by[(account, mid)] = (name, uid)
        for name, folder in s.folders.items():
            ledger.seen[(account, name)] = folder
    with ledger.lock:
        for m in ledger.msgs.values():
            if not m.accounts:
                continue
            places = [by.get((a, m.mid)) for a in m.accounts]
            if m.present == "maybe":
                m.present = "yes" if all(places) else "no" if not any(places) else "maybe"
            if m.present == "yes" and len(m.accounts) == 1 and places[0]:
                name, uid = places[0]
                m.folders = {name}
                m.uids = {(m.accounts[0], name): uid}


def start_writers(cluster: Any, ledger: Ledger, stop: threading.Event, seed: int) -> list[Writer]:
    def args(name: str, n: int) -> tuple[str, Any, Ledger, threading.Event, int]:
        return (name, cluster, ledger, stop, seed * 100 + n)

    writers: list[Writer] = [
        SmtpPipelined(*args("smtp-bob", 1), rcpts=(f"bob@{D}",), accounts=("bob",)),
        SmtpPipelined(*args("smtp-group", 2), rcpts=(GROUP,), accounts=MEMBERS),
        SmtpRelay(*args("smtp-relay", 3)),
        ImapWriter(*args("imap-alice", 4)),
        Pop3Writer(*args("pop3-bob", 5)),
        JmapWriter(*args("jmap-erin", 6)),
    ]
    for w in writers:
        w.start()
    return writers
