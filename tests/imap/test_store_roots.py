"""Over a real server and store (issue 3): RFC 9208 quota roots (the user's "" and the domain's), and
QRESYNC from a modseq older than the pruned expunge history (RFC 7162 §3.2.5.2)."""

from __future__ import annotations

import imaplib
import re
from pathlib import Path
from typing import Any

from imaptest import Raw, serve_real_store

from mailsrv.config import AuthConfig, StoreConfig

AUTH = AuthConfig(allow_plaintext_loopback=True, argon2_time_cost=1, argon2_memory_kib=256)
MSG = b"From: a@example.test\r\nSubject: q\r\n\r\n" + b"x" * 3000 + b"\r\n"


def serve(tmp_path: Path, store_config: StoreConfig | None = None,
          domain_storage: int | None = None) -> Any:
    """alice and bob of example.test (8 KiB quota each) on a real directory, store and IMAP listener."""
    return serve_real_store(tmp_path, store_config=store_config, quota_bytes=8 * 1024,
                            users=("alice@example.test", "bob@example.test"), domain_storage=domain_storage)


def test_getquotaroot_names_the_domain_root_and_append_respects_it(tmp_path: Path) -> None:
    with serve(tmp_path, domain_storage=10 * 1024) as handle:
        bob = imaplib.IMAP4(handle.host, handle.port, timeout=20)
        bob.login("bob@example.test", "wonderland")
        assert bob.append("INBOX", None, None, MSG)[0] == "OK"
        c = imaplib.IMAP4(handle.host, handle.port, timeout=20)
        c.login("alice@example.test", "wonderland")
        assert c.append("INBOX", None, None, MSG)[0] == "OK"
        typ, data = c.getquotaroot("INBOX")
        assert typ == "OK"
        roots, quotas = data
        assert roots == [b'INBOX "" example.test']
        assert quotas == [b'"" (STORAGE 3 8)', b"example.test (STORAGE 6 10)"]
        assert c.getquota("example.test") == ("OK", [b"example.test (STORAGE 6 10)"])
        assert c.getquota('"other.test"')[0] == "NO"
        # alice's own quota has room for one more, the domain's (10 KiB) does too ...
        assert c.append("INBOX", None, None, MSG)[0] == "OK"
        # ... then bob's own quota has room, the domain root refuses (RFC 9208 §4.1 OVERQUOTA)
        typ, data = bob.append("INBOX", None, None, MSG)
        assert typ == "NO" and b"OVERQUOTA" in data[0]
        assert bob.append("INBOX", None, None, b"Subject: s\r\n\r\nsmall\r\n")[0] == "OK"
        bob.logout()
        c.logout()


def test_qresync_from_before_the_expunge_history(tmp_path: Path) -> None:
    with serve(tmp_path, StoreConfig(expunge_history=2)) as handle:
        a = imaplib.IMAP4(handle.host, handle.port, timeout=20)
        a.login("alice@example.test", "wonderland")
        for i in range(8):
            a.append("INBOX", None, None, b"Subject: m%d\r\n\r\nbody\r\n" % i)
        a.select("INBOX")
        a.uid("STORE", "1", "+FLAGS.SILENT", "(\\Deleted)")
        a.expunge()  # before the client's state: it knows 1 is gone
        # the client's state: (UIDVALIDITY, HIGHESTMODSEQ) as STATUS reports them
        status = a.status("INBOX", "(UIDVALIDITY HIGHESTMODSEQ)")[1][0]
        uidvalidity, hms = (int(x) for x in re.findall(rb"(?:UIDVALIDITY|HIGHESTMODSEQ) (\d+)", status))
        for uid in (2, 4, 5, 6, 7):  # one by one: the store forgets the oldest of these expunges
            a.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
            a.expunge()
        # the server cannot name the expunges since hms any more: it reports every UID that is not
        # there (RFC 7162 §3.2.5.2), a superset of what this client must forget (1 was gone before)
        raw = Raw(handle.host, handle.port)
        raw.cmd(b"q0 LOGIN alice@example.test wonderland")
        raw.cmd(b"q1 ENABLE QRESYNC")
        lines = raw.cmd(b"q4 SELECT INBOX (QRESYNC (%d %d))" % (uidvalidity, hms))
        assert b"* VANISHED (EARLIER) 1:2,4:7\r\n" in lines
        assert lines[-1].startswith(b"q4 OK")
        raw.close()
        a.logout()
