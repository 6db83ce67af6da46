"""[store] sqlite_memory_mib: SQLite's soft heap limit bounds the page caches of every open account together.

Each case runs in a child process: the limit and SQLite's memory counter are process-wide, and the
test process holds connections of its own.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from mailsrv.config import StoreConfig
from mailsrv.util import sqlitemem

ACCOUNTS = 60
#: rows of ~500 bytes written then read back per account: ~1.2 MB of pages, within the default cache
#: (cache_size -2000, ~2 MB), so without a limit each account keeps them all
ROWS = 2000

CHILD = """
import json, sys
from pathlib import Path
from mailsrv.store.engine import Engine
from mailsrv.util import sqlitemem

root, mib, accounts, rows = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
limit = sqlitemem.set_soft_heap_limit(mib)
engines, peak = [], 0
for i in range(accounts):
    eng = Engine(f"u{i}", root / f"u{i}", syncfs=False)
    eng.open()
    engines.append(eng)
    with eng.lock:
        conn = eng.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE fill (k INTEGER PRIMARY KEY, v BLOB)")
        conn.executemany("INSERT INTO fill VALUES (?, randomblob(500))", [(k,) for k in range(rows)])
        conn.execute("COMMIT")
        assert conn.execute("SELECT count(*), sum(length(v)) FROM fill").fetchone() == (rows, rows * 500)
    peak = max(peak, sqlitemem.memory_used())
for eng in engines:  # the first accounts again: they still work, reading back what was recycled
    with eng.lock:
        assert eng.conn.execute("SELECT sum(length(v)) FROM fill").fetchone()[0] == rows * 500
    peak = max(peak, sqlitemem.memory_used())
seen = engines[-1].conn.execute("PRAGMA soft_heap_limit").fetchone()[0]
print(json.dumps({"limit": limit, "seen": seen, "peak": peak, "end": sqlitemem.memory_used()}))
"""


def _child(root: Path, mib: int, rows: int = ROWS) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(mib), str(ACCOUNTS), str(rows)],
                         capture_output=True, text=True, timeout=300, check=True)
    figures: dict[str, int] = json.loads(out.stdout)
    return figures


def test_soft_heap_limit_bounds_sqlite_memory_across_many_accounts(tmp_path: Path) -> None:
    mib = 2
    limit = mib * sqlitemem.MIB
    # what 60 open accounts hold whatever the limit (schema, statements, a few pages each: ~160 KB)
    floor = _child(tmp_path / "floor", 0, rows=1)["peak"]
    bounded = _child(tmp_path / "bounded", mib)
    # set on one connection, read back on another (an account's index): process-wide
    assert bounded["limit"] == bounded["seen"] == limit
    unbounded = _child(tmp_path / "unbounded", 0)
    assert unbounded["limit"] == unbounded["seen"] == 0
    # without a limit every account keeps its pages: over 60 MB above the floor
    assert unbounded["peak"] - floor > ACCOUNTS * ROWS * 500, (floor, unbounded)
    # with it, the caches recycle their pages: less than twice the limit above the floor
    assert bounded["peak"] - floor < 2 * limit, (floor, bounded)


def test_set_soft_heap_limit_reads_back_and_zero_lifts_it() -> None:
    conn = sqlite3.connect(":memory:")
    try:
        assert sqlitemem.set_soft_heap_limit(3) == 3 * sqlitemem.MIB
        assert conn.execute("PRAGMA soft_heap_limit").fetchone()[0] == 3 * sqlitemem.MIB
        # the library is found (the worker's tracemalloc dumps read it too): an open connection counts
        assert sqlitemem.memory_used() > 0
    finally:
        assert sqlitemem.set_soft_heap_limit(0) == 0
        conn.close()


def test_default_is_bounded() -> None:
    assert StoreConfig().sqlite_memory_mib == 256
