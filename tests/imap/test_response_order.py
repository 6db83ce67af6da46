"""RFC 9051 response order over a real socket (no imaptest here: Debian ships none, and the
Dovecot source it builds from is not available offline; this walks the rules instead).

- untagged responses come before the tagged completion of their command (§2.2.2, §7);
- no EXPUNGE while answering FETCH, STORE or SEARCH, which use sequence numbers (§7.5.1);
  their UID forms, NOOP and CHECK may carry them;
- OK [CLOSED] first when SELECT replaces a mailbox (§6.3.2, RFC 7162 §3.2.11);
- OK [HIGHESTMODSEQ] once CONDSTORE is on (RFC 7162 §3.1.2.1), FLAGS and OK [PERMANENTFLAGS];
- VANISHED instead of EXPUNGE under QRESYNC (RFC 7162 §3.2.10).
"""

from __future__ import annotations

from imaptest import Raw, ServerHandle

MSG = b"From: a@example.test\r\nSubject: order\r\n\r\nbody\r\n"


def _fill(server: ServerHandle, n: int) -> None:
    async def go() -> None:
        acct = await server.store.account("1")
        for _ in range(n):
            await acct.append("INBOX", MSG)

    server.call(go())


def _expunge_elsewhere(server: ServerHandle, uids: list[int]) -> None:
    async def go() -> None:
        acct = await server.store.account("1")
        await acct.expunge("INBOX", uids, only_deleted=False)

    server.call(go())


def _tagged_last(out: list[bytes], tag: bytes) -> None:
    assert out[-1].startswith(tag + b" ") and not any(ln.startswith(tag + b" ") for ln in out[:-1])


def test_no_expunge_while_answering_fetch_store_search(server: ServerHandle, raw: Raw) -> None:
    _fill(server, 3)
    raw.cmd(b"a LOGIN alice wonderland")
    raw.cmd(b"s SELECT INBOX")
    _expunge_elsewhere(server, [2])
    # sequence numbers stay those the client knows: message 2 is still number 2, no EXPUNGE
    out = raw.cmd(b"f FETCH 1:* (UID)")
    assert out == [b"* 1 FETCH (UID 1)\r\n", b"* 2 FETCH (UID 2)\r\n", b"* 3 FETCH (UID 3)\r\n",
                   b"f OK FETCH completed\r\n"]
    out = raw.cmd(b"t STORE 3 +FLAGS (\\Flagged)")
    assert out[0].startswith(b"* 3 FETCH (FLAGS (\\Flagged") and not any(b"EXPUNGE" in ln for ln in out)
    _tagged_last(out, b"t")
    out = raw.cmd(b"q SEARCH ALL")
    assert out == [b"* SEARCH 1 2 3\r\n", b"q OK SEARCH completed\r\n"]
    # a UID command may carry it, after its own responses and before its tagged reply
    out = raw.cmd(b"u UID SEARCH ALL")
    assert out == [b"* SEARCH 1 2 3\r\n", b"* 2 EXPUNGE\r\n", b"* 2 EXISTS\r\n", b"u OK UID SEARCH completed\r\n"]
    assert raw.cmd(b"n NOOP") == [b"n OK NOOP completed\r\n"]
    _expunge_elsewhere(server, [1])
    assert raw.cmd(b"c CHECK") == [b"* 1 EXPUNGE\r\n", b"* 1 EXISTS\r\n", b"c OK CHECK completed\r\n"]


def test_reselect_with_qresync_closes_first(server: ServerHandle, raw: Raw) -> None:
    _fill(server, 2)
    raw.cmd(b"a LOGIN alice wonderland")
    assert raw.cmd(b"e ENABLE QRESYNC") == [b"* ENABLED QRESYNC\r\n", b"e OK ENABLE completed\r\n"]
    out = raw.cmd(b"s SELECT INBOX")
    assert any(ln.startswith(b"* OK [HIGHESTMODSEQ ") for ln in out)
    out = raw.cmd(b"s2 SELECT Sent")
    assert out[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"
    assert out[1] == b"* 0 EXISTS\r\n"
    assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n" in out
    assert any(ln.startswith(b"* OK [PERMANENTFLAGS (") and b"\\*" in ln for ln in out)
    assert any(ln.startswith(b"* OK [HIGHESTMODSEQ ") for ln in out)
    _tagged_last(out, b"s2")
    assert out[-1] == b"s2 OK [READ-WRITE] SELECT completed\r\n"
    out = raw.cmd(b"x EXAMINE INBOX")
    assert out[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"
    assert b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n" in out
    assert out[-1] == b"x OK [READ-ONLY] EXAMINE completed\r\n"
    # QRESYNC: another session's expunge is a VANISHED, never an EXPUNGE
    _expunge_elsewhere(server, [1])
    assert raw.cmd(b"n NOOP") == [b"* VANISHED 1\r\n", b"* 1 EXISTS\r\n", b"n OK NOOP completed\r\n"]


def test_highestmodseq_only_with_condstore(server: ServerHandle, raw: Raw) -> None:
    raw.cmd(b"a LOGIN alice wonderland")
    out = raw.cmd(b"s SELECT INBOX")
    assert not any(b"HIGHESTMODSEQ" in ln for ln in out)
    out = raw.cmd(b"c SELECT INBOX (CONDSTORE)")
    hms = [ln for ln in out if ln.startswith(b"* OK [HIGHESTMODSEQ ")]
    assert len(hms) == 1
    _tagged_last(out, b"c")


def test_imap4rev2_select(server: ServerHandle, raw: Raw) -> None:
    _fill(server, 1)
    raw.cmd(b"a LOGIN alice wonderland")
    raw.cmd(b"e ENABLE IMAP4rev2")
    out = raw.cmd(b"s SELECT INBOX")
    # RFC 9051 §6.3.2: EXISTS, FLAGS, PERMANENTFLAGS, UIDVALIDITY, UIDNEXT and a LIST; no RECENT, no UNSEEN
    assert out[0] == b"* 1 EXISTS\r\n"
    assert b'* LIST () "/" INBOX\r\n' in out
    assert not any(b"RECENT" in ln or b"[UNSEEN " in ln for ln in out)
    assert out[-1] == b"s OK [READ-WRITE] SELECT completed\r\n"
