"""UIDLs survive a server restart and a rebuilt index (they come from the store's UIDVALIDITY/UID map)."""

from __future__ import annotations

from pathlib import Path

from pop3e2e import start
from support.server import ServerProcess

MSGS = [b"Subject: r%d\r\n\r\nbody %d\r\n" % (i, i) for i in range(5)]


def test_uidl_stable_across_restart_and_index_rebuild(tmp_path: Path) -> None:
    setup = start(tmp_path / "srv")
    try:
        addr = setup.add_user("restart", MSGS)
        c = setup.pop3(addr)
        c.dele(2)
        c.quit()
        c = setup.pop3(addr)
        before = c.uidl()[1]
        c.quit()
    finally:
        assert setup.server.stop() == 0
    assert len(before) == 4
    store_dir = setup.cfg.server.data_dir / setup.accounts[addr].store  # type: ignore[attr-defined]
    index = store_dir / "mailsrv-index.sqlite"
    assert index.exists()
    index.unlink()  # a cache: rebuilt from the maildir and its uidlist
    for extra in ("-wal", "-shm"):
        Path(str(index) + extra).unlink(missing_ok=True)
    setup.server = ServerProcess(setup.server.config).wait_ready()
    try:
        c = setup.pop3(addr)
        assert c.uidl()[1] == before
        c.quit()
    finally:
        assert setup.server.stop() == 0
