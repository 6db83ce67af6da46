"""Inbound load from real clients against `mailsrv serve`: Postfix's smtp-source, and a pipelining client.

Every message must land exactly once: smtp-source's ``-N`` gives each transaction its
own recipient (``<n>kept@example.test``, caught by the domain's catch-all), and our
``Received: ... for <rcpt>`` line names it, so a lost or doubled message shows up
as a missing or repeated number. smtp-source does not pipeline (its man page,
BUGS), so a small asyncio client here does: MAIL, RCPT and DATA in one write
(RFC 2920 §3.1), many sessions at once.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from support.server import ServerProcess, init_setup

from mailsrv.config import load
from mailsrv.directory import open_sync

pytestmark = pytest.mark.peer

FOR = re.compile(rb"\r\n\tfor <([^>]+)>;")


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = init_setup(tmp_path / "s", "--demo")
    conf = load(cfg)
    d = open_sync(conf.directory, conf.server.data_dir)
    try:
        d.set_domain("example.test", catchall="alice@example.test")
    finally:
        d.close()
    srv = ServerProcess(cfg).wait_ready()
    try:
        yield srv, tmp_path / "s"
    finally:
        srv.stop()


def _delivered(srv: ServerProcess, setup: Path) -> Counter[str]:
    """Recipient named in each delivered file's Received line -> number of files.

    Stops the server first: its background indexing moves files from new/ to cur/.
    """
    assert srv.stop() == 0
    files = [*setup.glob("data/mail/**/new/*"), *setup.glob("data/mail/**/cur/*")]
    out: Counter[str] = Counter()
    for f in files:
        m = FOR.search(f.read_bytes()[:4096])
        assert m is not None, f"{f} has no Received ... for <rcpt>"
        out[m.group(1).decode()] += 1
    return out


def _smtp_source(port: int, to: str, *args: str) -> None:
    exe = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    assert Path(exe).exists(), "smtp-source is needed (postfix package; `make peers`)"
    out = subprocess.run([exe, *args, "-N", "-f", "load@remote.test", "-t", to,
                          "-M", "client.test", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_smtp_source_every_message_exactly_once(served) -> None:  # type: ignore[no-untyped-def]
    srv, setup = served
    port = srv.ports["smtp"]
    # 20 parallel sessions, several messages per connection (-d), 4 KB each
    _smtp_source(port, "kept@example.test", "-s", "20", "-m", "400", "-d", "-l", "4096")
    # then a new connection for every message
    _smtp_source(port, "fresh@example.test", "-s", "10", "-m", "100", "-l", "512")
    got = _delivered(srv, setup)
    assert all(n == 1 for n in got.values()), [r for r, n in got.items() if n > 1][:5]
    for name, total in (("kept", 400), ("fresh", 100)):
        numbers = sorted(int(r.split(name + "@")[0]) for r in got if r.endswith(f"{name}@example.test"))
        # the sequence numbers smtp-source generated, each once, none missing
        assert len(numbers) == total and numbers == list(range(numbers[0], numbers[0] + total))
    assert len(got) == 500


async def _pipelined_session(port: int, first: int, count: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies: list[bytes] = []

    async def reply() -> bytes:
        while True:
            line = await asyncio.wait_for(reader.readline(), 30)
            assert line, "server closed the connection"
            if line[3:4] != b"-":
                replies.append(line)
                return line

    try:
        await reply()
        writer.write(b"EHLO pipeline.test\r\n")
        assert b"PIPELINING" in await _ehlo_text(reader)
        for i in range(first, first + count):
            # RFC 2920 §3.1: MAIL, RCPT and DATA in one group; the message after 354
            writer.write(f"MAIL FROM:<pipe@remote.test>\r\nRCPT TO:<p{i}@example.test>\r\nDATA\r\n".encode())
            codes = [(await reply())[:3] for _ in range(3)]
            assert codes == [b"250", b"250", b"354"], codes
            writer.write(f"Subject: pipelined {i}\r\n\r\nbody {i}\r\n.\r\n".encode())
            assert (await reply()).startswith(b"250")
        writer.write(b"QUIT\r\n")
        await reply()
    finally:
        writer.close()
        await writer.wait_closed()
    return replies


async def _ehlo_text(reader: asyncio.StreamReader) -> bytes:
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), 30)
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


def test_pipelined_sessions_every_message_exactly_once(served) -> None:  # type: ignore[no-untyped-def]
    srv, setup = served
    port = srv.ports["smtp"]

    async def run() -> None:
        await asyncio.gather(*(_pipelined_session(port, s * 25, 25) for s in range(16)))

    asyncio.run(run())
    got = _delivered(srv, setup)
    assert got == Counter({f"p{i}@example.test": 1 for i in range(400)})
