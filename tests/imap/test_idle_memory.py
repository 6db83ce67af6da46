"""What IDLE sessions hold across wake rounds: per session two watches (the selected mailbox's and the
IDLE's), per message one shared object and one list slot per session; nothing per round besides the
new message, and nothing once the sessions have logged out.

bench/idle.py measures the RSS; this checks the structures that make it up (RSS is too noisy to assert).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from imaptest import ServerHandle, login, ok, serve_real_store
from support.server import wait_until

from mailsrv.imap import shared
from mailsrv.imap.session import Session
from mailsrv.store import Store

MSG = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: round %d\r\n\r\nhello\r\n"
IDLERS = 12
ROUNDS = 6


def _state(h: ServerHandle) -> dict[str, Any]:
    """What the server holds for the account now (read on its loop)."""

    async def read() -> dict[str, Any]:
        store: Store = h.store
        notifier = store._notifier_for_loop()
        (acct_id,) = store._accounts
        tables = [t for key, t in shared._TABLES.items() if key[0] == acct_id]
        gc.collect()
        views = [s.view for s in gc.get_objects() if isinstance(s, Session) and s.view is not None]
        return {
            "watches": len(notifier._watches.get(acct_id, ())),
            "paths": len(notifier._key_paths.get(acct_id, ())),
            "tables": [(t.users, len(t.by_uid)) for t in tables],
            "views": views,
            "table": tables[0] if tables else None,
        }

    return h.call(read())


def test_idle_wake_rounds_hold_one_shared_object_per_message_and_nothing_per_round(tmp_path: Path) -> None:
    with serve_real_store(tmp_path) as h:
        writer = login(h, "alice@example.test")
        idlers = []
        for _ in range(IDLERS):
            c = login(h, "alice@example.test")
            ok(c, b"s SELECT INBOX")
            c.send(b"i IDLE\r\n")
            assert c.line() == b"+ idling\r\n"
            idlers.append(c)
        try:
            watched = _state(h)
            assert watched["watches"] == 2 * IDLERS and watched["tables"] == [(IDLERS, 0)]
            for r in range(1, ROUNDS + 1):
                msg = MSG % r
                writer.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
                assert writer.until(b"a")[-1].startswith(b"a OK")
                recent = 0
                for c in idlers:
                    assert c.line() == b"* %d EXISTS\r\n" % r
                    line = c.line()  # RFC 3501 §7.3.2: RECENT with EXISTS
                    assert line.startswith(b"* ") and line.endswith(b" RECENT\r\n"), line
                    recent += int(line.split()[1])
                assert recent == r  # RFC 3501 §2.3.2: each message is \Recent in exactly one session
                now = _state(h)
                # no watch, path or table entry per round: one shared object per message so far
                assert (now["watches"], now["paths"]) == (watched["watches"], watched["paths"])
                assert now["tables"] == [(IDLERS, r)]
                views = now["views"]
                assert len(views) == IDLERS and all(len(v.messages) == r for v in views)
                table = now["table"]
                for i, m in enumerate(views[0].messages):  # each session's slot holds the shared object
                    assert all(v.messages[i] is table.by_uid[m.uid] for v in views), (r, i)
            for c in idlers:
                c.send(b"DONE\r\n")
                assert c.until(b"i")[-1].startswith(b"i OK")
                ok(c, b"o LOGOUT")
        finally:
            for c in [writer, *idlers]:
                c.close()
        # every session gone: its watches, its share of the mailbox and the account's kernel watches too
        wait_until(lambda: _state(h)["views"] == [])
        assert {k: _state(h)[k] for k in ("watches", "paths", "tables")} == {"watches": 0, "paths": 0, "tables": []}
