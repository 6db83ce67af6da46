"""Several processes writing the directory at once (workers, CLI, admin API): nothing is lost or refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from mailsrv.directory import SyncDirectory

WRITER = textwrap.dedent("""
    import sys
    from mailsrv.directory import SyncDirectory
    d = SyncDirectory(sys.argv[1])
    tag = sys.argv[2]
    for i in range(40):
        d.add_user(f"{tag}-{i}@example.test")
        d.add_member("all@example.test", f"{tag}-{i}@example.test")
        d.record_failure("ip:192.0.2.1", now=1000.0, window=900, threshold=10**6, lock_time=1, lock_max=1)
    d.close()
""")


def test_concurrent_writers(db_path: Path, sd: SyncDirectory) -> None:
    sd.add_group("all@example.test")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db_path), f"w{n}"], stderr=subprocess.PIPE, text=True)
             for n in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert len(sd.list_users("example.test")) == 160
    assert len(sd.expand_accounts("all@example.test", 0, 1000)) == 160
    st = sd.failure_state("ip:192.0.2.1")
    assert st is not None and st.count == 160
