"""RFC 5703 §5 replace and §6 enclose at delivery, under a real ``mailsrv serve``: messages sent with
smtplib, the script replaces executable attachments (inside foreverypart) or encloses the message, files
the result, and the copies are read back over IMAP and parsed with mailsrv.mime."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from typing import Any

import pytest
from sievesink import Sink
from test_delivery_serve import imap
from test_mimeedit import EXE, texts
from test_mimeloop_serve import CORPUS, D, serve_script

from mailsrv import mime, sieve

SCRIPT = r'''require ["foreverypart", "mime", "replace", "enclose", "fileinto", "copy"];
if header :contains "subject" "invoice" {
    fileinto :copy "Original";
    foreverypart {
        if header :mime :param "filename" :matches "Content-Disposition" ["*.exe", "*.scr"] {
            replace "Executable attachment removed by user filter";
        }
    }
    fileinto "Cleaned";
} else {
    enclose :subject "Pictures held back" :headers ["X-Held: by your filter"]
        "This message carried pictures: it is attached.";
    if header :is "subject" "Pictures held back" { fileinto "Held"; }
}
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Any]:
    yield from serve_script(tmp_path_factory, "sievemimeedit", SCRIPT)


def fetch(srv: Any, box: str) -> list[bytes]:
    m = imap(srv, f"una@{D}")
    try:
        typ, _ = m.select(f'"{box}"', readonly=True)
        if typ != "OK":
            return []
        _, data = m.fetch("1:*", "(BODY.PEEK[])")
        return [d[1] for d in data if isinstance(d, tuple)]
    finally:
        m.logout()


def send(srv: Any, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        s.sendmail("m@remote.test", [f"una@{D}"], raw)


def test_replace_in_foreverypart_then_fileinto(server: Any) -> None:
    send(server, EXE)
    (cleaned,) = fetch(server, "Cleaned")
    assert b"MZ-" not in cleaned
    assert texts(cleaned) == ["see attached", "Executable attachment removed by user filter",
                              "Executable attachment removed by user filter"]
    (original,) = fetch(server, "Original")  # filed before the replace: as it came
    assert original.endswith(EXE[EXE.index(b"\r\n\r\n"):])
    assert fetch(server, "INBOX") == []


def test_enclose_with_subject_and_headers_then_fileinto(server: Any) -> None:
    raw = CORPUS.read_bytes().replace(b"\n", b"\r\n")
    send(server, raw)
    (held,) = fetch(server, "Held")
    s = mime.parse(held)
    assert (s.root.type, s.root.subtype) == ("multipart", "mixed")
    assert texts(held)[0] == "This message carried pictures: it is attached."
    inner = next(p for p in s.parts() if p.is_message and p.section == "2")
    body = raw[raw.index(b"\r\n\r\n"):]
    assert held[inner.header_start:].find(body) > 0  # the message whole inside
    fields = dict(sieve.header_fields(held))
    assert fields["subject"] == b" Pictures held back" and fields["x-held"] == b" by your filter"
    assert [p.subtype for p in s.parts() if p.type == "image"] == ["jpeg", "jpeg"]
