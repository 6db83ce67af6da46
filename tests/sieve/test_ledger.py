"""mailsrv.delivery.sieve_ledger: the key ignores what each attempt adds, rows expire and are bounded."""

from __future__ import annotations

from pathlib import Path

from mailsrv.delivery import sieve_ledger as sl
from mailsrv.sieve import header_fields

MSG = b"Message-ID: <1@x.test>\r\nFrom: a@x.test\r\nSubject: hi\r\n\r\nbody\r\n"


def key(raw: bytes, sender: str = "a@x.test") -> str:
    return sl.message_key(sender, header_fields(raw), raw)


def test_key_ignores_trace_and_verdict_fields() -> None:
    retried = b"Received: from b by c; Sat, 1 Jan 2000 00:00:00 +0000\r\nX-Spam-Score: 3.1\r\n" + MSG
    assert key(retried) == key(MSG)
    assert key(MSG.replace(b"body", b"bodY")) != key(MSG)
    assert key(MSG.replace(b"hi", b"ho")) != key(MSG)
    assert key(MSG, "b@x.test") != key(MSG)
    assert key(MSG.replace(b"\r\n", b"\n")) != key(MSG.replace(b"body", b"other").replace(b"\r\n", b"\n"))


def test_record_done_forget_and_expiry(tmp_path: Path) -> None:
    assert not sl.exists(tmp_path) and sl.done(tmp_path, "k") == set()
    sl.record(tmp_path, "k", "<1@x.test>", ["copy:A", "redirect:x@y.test"], now=1000.0)
    assert sl.exists(tmp_path)
    assert sl.has_rows(tmp_path, "<1@x.test>", now=1000.0) and not sl.has_rows(tmp_path, "<2@x.test>", now=1000.0)
    assert sl.done(tmp_path, "k", now=1000.0) == {"copy:A", "redirect:x@y.test"}
    assert sl.done(tmp_path, "k", now=1000.0 + sl.LEDGER_TTL + 1) == set()  # expired
    sl.forget(tmp_path, "k")
    assert sl.done(tmp_path, "k", now=1000.0) == set()


def test_rows_are_bounded(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sl, "LEDGER_ROWS", 3)
    for i in range(5):
        sl.record(tmp_path, f"k{i}", "", ["copy:A"], now=1000.0 + i)
    assert [bool(sl.done(tmp_path, f"k{i}", now=1010.0)) for i in range(5)] == [False, False, True, True, True]
