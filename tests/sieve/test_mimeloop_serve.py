"""RFC 5703 at delivery, under a real ``mailsrv serve``: a multipart message of the shared corpus (read,
never copied) sent with smtplib; the script walks its parts (foreverypart), tests their headers (:mime)
and extracts a text part's start (extracttext); the copies are looked at over IMAP. ManageSieve's
SIEVE capability announces the RFC 5703 extensions."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sievesink import Sink
from support.server import init_setup, serve_users
from test_delivery_serve import activate, add_users, imap

D = "example.test"
PW = "sieve mime loop test password"
CORPUS = Path("/work/shared/corpus/cpython-test_email/msg_22.txt")  # text, two JPEG attachments, text
SCRIPT = r'''require ["mime", "foreverypart", "fileinto", "variables", "extracttext"];
foreverypart :name "parts" {
    if header :mime :type "Content-Type" "image" {
        if header :mime :param "filename" :matches "Content-Disposition" "*.JPG" {
            fileinto "Pictures";
        }
    }
    if header :mime :contenttype "Content-Type" "text/plain" {
        extracttext :first 4 "start";
        break :name "parts";
    }
}
fileinto "Begins-${start}";
'''


def serve_script(tmp_path_factory: pytest.TempPathFactory, name: str, script: str) -> Iterator[Any]:
    """A ``mailsrv serve`` whose user una@example.test runs ``script`` (stopped after the tests)."""
    base = tmp_path_factory.mktemp(name)
    cfg = init_setup(base / "s", "--demo", workers=1)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    add_users(cfg, users, ("una",), PW)
    activate(cfg, {"una": script})
    srv = serve_users(cfg, users)
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Any]:
    yield from serve_script(tmp_path_factory, "sievemime", SCRIPT)


def messages(srv: Any, box: str) -> int:
    m = imap(srv, f"una@{D}")
    try:
        typ, data = m.select(f'"{box}"', readonly=True)
        return int(data[0]) if typ == "OK" else 0
    finally:
        m.logout()


def test_a_corpus_multipart_message_is_filed_by_its_parts(server: Any) -> None:
    raw = CORPUS.read_bytes()
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.sendmail("b@remote.test", [f"una@{D}"], raw.replace(b"\n", b"\r\n"))  # no bare LF on the wire
    # the first text part breaks the loop before the attachments: no Pictures copy yet
    assert messages(server, "Begins-Text") == 1
    assert messages(server, "Pictures") == 0
    assert messages(server, "INBOX") == 0  # fileinto cancels the implicit keep
    # the same parts in another order: the attachments come first
    first, _, rest = raw.partition(b"--============_-1208892523==_============\n")
    text, _, attachments = rest.partition(b"--============_-1208892523==_============\n")
    reordered = (first + b"--============_-1208892523==_============\n" + attachments.replace(
        b"--============_-1208892523==_============--", b"--============_-1208892523==_============\n"
        + text + b"--============_-1208892523==_============--"))
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.sendmail("b@remote.test", [f"una@{D}"], reordered.replace(b"\n", b"\r\n"))
    assert messages(server, "Pictures") == 1  # two JPEG parts, one copy (RFC 5228 §2.10.3)
    assert messages(server, "Begins-Text") == 2


def test_managesieve_announces_the_extensions(server: Any) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", server.ports["managesieve"]), timeout=30) as c:
        greeting = b""
        while not re.search(rb"^OK", greeting, re.M):
            chunk = c.recv(4096)
            assert chunk
            greeting += chunk
    line = re.search(rb'^"SIEVE" "([^"]*)"', greeting, re.M)
    assert line is not None
    announced = line.group(1).split()
    for ext in (b"foreverypart", b"mime", b"extracttext", b"replace", b"enclose"):
        assert ext in announced
