"""SQLite's process-wide memory: the soft heap limit that bounds every connection's page cache, and the
library's own count of the memory it holds (which tracemalloc does not see).

SQLite keeps one counter and one limit per process, shared by all its connections (the account
indexes, the directory, search, metadata...). Past the soft limit a connection that needs another page
recycles the least recently used one of its own cache instead of allocating (nothing fails, statements
only read again what was dropped), so the caches of many open accounts together stay near the limit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sqlite3

MIB = 1024 * 1024


def set_soft_heap_limit(mib: int) -> int:
    """Set SQLite's soft heap limit for this whole process to ``mib`` MiB (0 = none); returns the
    limit read back, in bytes. A fork inherits it; call it once at a process's start, before its work."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"PRAGMA soft_heap_limit = {int(mib) * MIB}")
        return int(conn.execute("PRAGMA soft_heap_limit").fetchone()[0])
    finally:
        conn.close()


def memory_used() -> int:
    """sqlite3_memory_used(): the page caches and statements of every connection in this process;
    -1 when the library cannot be found."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        return int(lib.sqlite3_memory_used())
    except (OSError, AttributeError):
        return -1
