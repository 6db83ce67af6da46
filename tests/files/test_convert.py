"""[files] convert_over: big attachments of a message become links (mailsrv.files.convert)."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import time
from pathlib import Path

import aiohttp
from filetest import LinkServer, message

from mailsrv.config import FilesConfig
from mailsrv.files import FileLinks
from mailsrv.files.convert import convert, converted


async def test_a_big_attachment_becomes_a_link_that_downloads(server: LinkServer,
                                                              http: aiohttp.ClientSession) -> None:
    big = bytes(range(256)) * 400  # 102 400 octets, ~138 000 in base64
    raw = message(big)
    done = await convert(raw, 100_000, server.links, "1", "alice@example.test", server.url)
    assert done is not None
    pieces, made = done
    out = b"".join(bytes(p) for p in pieces)
    msg = email.message_from_bytes(out, policy=email.policy.default)
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/plain", "application/octet-stream",
                                                     "message/rfc822"]
    note = parts[1].get_content()
    assert '"数据.bin" (100.0 KB) was sent as a link' in note
    url = next(line for line in note.splitlines() if line.startswith("http"))
    async with http.get(url) as r:  # pending until its message is accepted: nobody downloads it
        assert r.status == 404
    await server.links.settle(made, keep=True)
    async with http.get(url) as r:
        assert r.status == 200 and await r.read() == big
    # the small attachment and the attached message (with its own big part) are unchanged
    assert parts[2].get_content() == b"small"
    assert b"inner.bin" in out and base64.b64encode(big[:300])[:60] in out
    assert len(out) < len(raw) - 100_000
    (link,) = server.rows()
    assert link.sha256 == hashlib.sha256(big).hexdigest() and link.owner == "1"


async def test_lf_messages_the_threshold_and_quota(tmp_path: Path) -> None:
    links = FileLinks(FilesConfig(quota=50_000), tmp_path / "files")
    try:
        raw = message(b"y" * 40_000, eol="\n")
        assert await convert(raw, 0, links, "1", "a", "https://x") is None  # off
        assert await convert(raw, 10_000_000, links, "1", "a", "https://x") is None  # nothing that big
        done = await convert(raw, 20_000, links, "1", "a", "https://x")
        assert done is not None
        out = b"".join(bytes(p) for p in done[0])
        assert b"\r\n" not in out and b"https://x/f/" in out
        # over the sender's quota: the attachment stays
        assert await convert(raw, 20_000, links, "1", "a", "https://x") is None
    finally:
        links.close()


async def test_corpus_message_with_an_attachment(corpus: Path, tmp_path: Path) -> None:
    raw = (corpus / "mime4j" / "mimetools-testmsgs" / "twopart.msg").read_bytes()
    links = FileLinks(FilesConfig(), tmp_path / "files")
    try:
        done = await convert(raw, 10_000, links, "1", "a", "https://mail.example.test")
        assert done is not None
        out = b"".join(bytes(p) for p in done[0])
        msg = email.message_from_bytes(out, policy=email.policy.default)
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/plain"]
        assert links.store.list() == []  # pending: not a live link yet
        await links.settle(done[1], keep=True)
        (link,) = links.store.list()
        assert link.name == "uk7200_110_6.jpg" and link.type == "image/jpeg"
        assert links.store.data_path(link.id).read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG, decoded
    finally:
        links.close()


async def test_converted_is_the_new_message_or_none_to_send_it_as_written(tmp_path: Path) -> None:
    raw = message(b"z" * 40_000)
    links = FileLinks(FilesConfig(), tmp_path / "files")
    try:
        assert await converted(raw, links, 10_000_000, "1", "a", "https://x") is None  # nothing that big
        out = await converted(raw, links, 20_000, "1", "a", "https://x")
        assert out is not None and b"https://x/f/" in out.data and len(out.data) < len(raw) - 40_000
        assert len(out.links) == 1 and links.store.get(out.links[0]).state == "pending"  # type: ignore[union-attr]
        await links.settle(out.links, keep=True)
        assert [link.id for link in links.store.list()] == out.links
    finally:
        links.close()
    # the links' pool is gone (a failure of any kind): the message goes as written, nothing raised
    assert await converted(raw, links, 20_000, "1", "a", "https://x") is None


async def test_links_of_a_message_not_accepted_go_and_unsettled_ones_are_swept(tmp_path: Path) -> None:
    from mailsrv.files.links import PENDING_AGE

    raw = message(b"q" * 40_000)
    links = FileLinks(FilesConfig(quota=100_000), tmp_path / "files")
    try:
        # refused after the conversion: its link and file go at once, its quota is free again
        out = await converted(raw, links, 20_000, "1", "a", "https://x")
        assert out is not None and await links.used("1") == 40_000
        (lid,) = out.links
        assert links.store.data_path(lid).exists()
        await links.settle(out.links, keep=False)
        assert links.store.get(lid) is None and not links.store.data_path(lid).exists()
        assert await links.used("1") == 0
        # never settled (its process died): kept while young, then swept with its file
        out = await converted(raw, links, 20_000, "1", "a", "https://x")
        assert out is not None
        (lid,) = out.links
        assert links.store.sweep() == (0, 0) and links.store.get(lid) is not None
        assert links.store.sweep(now=time.time() + PENDING_AGE + 1) == (1, 40_000)
        assert links.store.get(lid) is None and not links.store.data_path(lid).exists()
        await links.settle(out.links, keep=True)  # too late: nothing to make live (logged)
        assert links.store.list() == []
    finally:
        links.close()
