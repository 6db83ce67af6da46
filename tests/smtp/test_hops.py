"""mailsrv.mime.hops.received_count: the Received fields of the header block only, in any case."""

from __future__ import annotations

import mmap
from pathlib import Path

from mailsrv.mime.hops import MAX_HEAD, read_head, received_count, too_many_hops

TRACE = b"Received: from a.test by b.test; Sat, 28 Nov 2026 05:00:00 +0000\r\n"


def test_counts_the_header_block_only() -> None:
    body = TRACE * 5
    assert received_count(TRACE * 3 + b"Subject: x\r\n\r\n" + body) == 3
    assert received_count(b"Subject: x\r\n\r\n" + body) == 0
    assert received_count(b"Subject: x\r\n" + TRACE * 2) == 2  # no body: everything is header


def test_names_in_any_case_and_obsolete_space_before_colon() -> None:
    head = (b"received: from a\r\nRECEIVED: from b\r\nReceived : from c\r\nReceived\t: from d\r\n"
            b"X-Received: not one\r\nSubject: Received: nor this\r\n\tReceived: nor a folded line\r\n\r\n")
    assert received_count(head) == 4


def test_bare_lf_messages() -> None:
    msg = (TRACE * 2 + b"Subject: x\r\n\r\n" + TRACE).replace(b"\r\n", b"\n")
    assert received_count(msg) == 2


def test_bounded_by_max_head() -> None:
    # a header block past MAX_HEAD is counted over its start, where a loop's fields are
    msg = TRACE * 4 + b"X-Pad: " + b"p" * MAX_HEAD + b"\r\n" + TRACE * 3 + b"\r\nbody"
    assert received_count(msg) == 4


def test_over_an_mmap_and_a_file_head(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(TRACE * 7 + b"\r\n" + TRACE)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert received_count(mm) == 7  # type: ignore[arg-type]
    assert received_count(read_head(path)) == 7


def test_too_many_hops_at_the_limit_and_past_it() -> None:
    body = b"Subject: x\r\n\r\n" + TRACE * 9
    assert not too_many_hops(TRACE * 3 + body, 3)
    assert too_many_hops(TRACE * 4 + body, 3)
    # the word elsewhere in the header block passes the quick bound, not the count
    assert not too_many_hops(b"Subject: received received received received\r\n" + TRACE * 3 + body, 3)
    assert too_many_hops((TRACE * 4).lower() + body, 3)
