"""A 25 MB 8-bit message through the queue owner: DKIM signed and 8BITMIME-downgraded in bounded memory."""

from __future__ import annotations

import asyncio
import binascii
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import dkim

from mailsrv.queue.dkim import Signer, keygen
from mailsrv.queue.enqueue import Enqueuer
from mailsrv.queue.runner import QueueRunner
from mailsrv.queue.store import QRcpt, queue_dir

from .conftest import local_example, make_config, wait_for

SIZE = 25 * 1024 * 1024
LINE = "Grüße, 你好 — line of an 8-bit body with some   spaces \t and = signs\r\n".encode()
#: What the queue owner may allocate at peak for this message (the message is 25 MB).
PEAK_LIMIT = 4 * 1024 * 1024


def _write_message(path: Path) -> int:
    head = (b"From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
    block = LINE * (1024 * 1024 // len(LINE))
    with open(path, "wb") as fh:
        fh.write(head)
        written = len(head)
        while written < SIZE:
            fh.write(block)
            written += len(block)
    return written


def test_25mb_downgraded_and_signed_in_bounded_memory(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _, record = keygen(data_dir, "example.test", "mail")
    spool = tmp_path / "spool"
    size = _write_message(spool)
    out = tmp_path / "received"
    out.mkdir()
    sink = subprocess.Popen([sys.executable, str(Path(__file__).parent / "sink_process.py"), str(out), "8BITMIME"],
                            stdout=subprocess.PIPE, text=True)
    with sink:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        cfg = make_config(data_dir, {"remote.test": port})

        async def scenario() -> tuple[int, float]:
            runner = QueueRunner(cfg, is_local=local_example, signer=Signer.from_config(cfg))
            stop = asyncio.Event()
            task = asyncio.ensure_future(runner.run(stop))
            try:
                await Enqueuer(cfg.server.data_dir).enqueue(spool, "alice@example.test", [QRcpt("bob@remote.test")],
                                                            body="8BITMIME")
                started = time.monotonic()
                tracemalloc.start()
                await wait_for(lambda: queue_dir(data_dir).ids() == [], limit=240)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                return peak, time.monotonic() - started
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)

        try:
            peak, took = asyncio.run(scenario())
        finally:
            sink.terminate()
            sink.wait(30)
    print(f"25 MB 8-bit message, downgrade + DKIM + send: {took:.1f} s, traced peak {peak / 1e6:.2f} MB")
    assert peak < PEAK_LIMIT, f"queue owner peak {peak} bytes for a {size} byte message"
    got = (out / "1.eml").read_bytes()
    assert got.isascii() and len(got) > size  # quoted-printable is larger
    txt = record.split('"')[1].encode()
    assert dkim.verify(got, dnsfunc=lambda name, timeout=5: txt)
    original = spool.read_bytes().split(b"\r\n\r\n", 1)[1]
    assert binascii.a2b_qp(got.split(b"\r\n\r\n", 1)[1]) == original  # the same text, losslessly
