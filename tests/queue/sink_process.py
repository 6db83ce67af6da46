"""An aiosmtpd sink in its own process (so its buffering is not counted in the test's memory).

``python sink_process.py OUT_DIR [HIDE...]``: prints its port, writes each message
to OUT_DIR/<n>.eml (fsync'd, then renamed), hides the EHLO keywords given, stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP


class Handler:
    def __init__(self, out: Path, hide: set[str]) -> None:
        self.out = out
        self.hide = hide
        self.count = 0

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [r for r in responses if r[4:].split(" ")[0].upper() not in self.hide]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        await asyncio.get_running_loop().run_in_executor(None, self._store, self.count,
                                                         envelope.original_content or b"")
        return "250 2.0.0 stored"

    def _store(self, n: int, data: bytes) -> None:
        tmp = self.out / f"{n}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.rename(self.out / f"{n}.eml")


async def main() -> None:
    out = Path(sys.argv[1])
    handler = Handler(out, {h.upper() for h in sys.argv[2:]})
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="sink.test", data_size_limit=0),
                                      "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
