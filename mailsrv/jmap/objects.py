"""Small per-account JMAP object collections (Identity, EmailSubmission, VacationResponse).

One JSON file per account and type under ``<upload_dir>/<accountId>/``:
``{"modseq": n, "records": {id: obj}, "log": [[modseq, id, kind], ...]}``.
Every change is read-modify-write under an ``fcntl`` lock (workers share the
file), written temp -> fsync -> rename -> fsync dir, in the thread pool. The
state is the modseq; the log keeps the last ``LOG_KEEP`` changes for ``/changes``.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailsrv.jmap.backend import CannotCalculateChanges, ChangeSet
from mailsrv.util.fsio import FileIO, durable_write

LOG_KEEP = 1000


@functools.lru_cache(maxsize=1024)
def _paths(root: Path, account_id: str, type_: str) -> tuple[Path, Path]:
    """(the account's directory, the collection's file): an API request makes 2-3 Collections."""
    d = root / account_id
    return d, d / f"{type_}.json"


class Collection:
    def __init__(self, root: Path, io: FileIO, account_id: str, type_: str) -> None:
        self.dir, self.path = _paths(root, account_id, type_)
        self.io = io

    def _load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_bytes())
            return data
        except FileNotFoundError:
            return {"modseq": 0, "records": {}, "log": [], "next": 1}

    async def read(self) -> dict[str, Any]:
        return await self.io.run(self._load)

    async def state(self) -> str:
        return str((await self.read())["modseq"])

    async def records(self) -> dict[str, dict[str, Any]]:
        return dict((await self.read())["records"])

    async def change(self, fn: Callable[[dict[str, Any]], Any]) -> Any:
        """Run ``fn(data)`` under the lock; it edits ``data`` via :func:`put` / :func:`drop`. Durable on return."""

        def locked() -> Any:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / ".lock", "a+b") as lk:
                fcntl.flock(lk, fcntl.LOCK_EX)
                data = self._load()
                before = data["modseq"]
                result = fn(data)
                if data["modseq"] != before:
                    data["log"] = data["log"][-LOG_KEEP:]
                    durable_write(self.path, json.dumps(data).encode())
                return result

        return await self.io.run(locked)

    async def changes(self, since: str, max_changes: int | None) -> ChangeSet:
        data = await self.read()
        if not (since.isascii() and since.isdigit()) or len(since) > 20 or int(since) > data["modseq"]:
            raise CannotCalculateChanges(since)
        s = int(since)
        log = data["log"]
        if s < data["modseq"] and (not log or log[0][0] > s + 1):
            raise CannotCalculateChanges("too old")
        first: dict[str, str] = {}
        last: dict[str, str] = {}
        for m, i, kind in log:
            if m > s:
                first.setdefault(i, kind)
                last[i] = kind
        cs = ChangeSet(since, str(data["modseq"]), False)
        for i, k in first.items():
            if k == "created":
                if last[i] != "destroyed":
                    cs.created.append(i)
            elif last[i] == "destroyed":
                cs.destroyed.append(i)
            else:
                cs.updated.append(i)
        if max_changes is not None and len(cs.created) + len(cs.updated) + len(cs.destroyed) > max_changes:
            raise CannotCalculateChanges("more changes than maxChanges")
        return cs


def new_id(data: dict[str, Any], prefix: str) -> str:
    n = data.get("next", 1)
    data["next"] = n + 1
    return f"{prefix}{n}"


def put(data: dict[str, Any], id_: str, obj: dict[str, Any]) -> None:
    kind = "updated" if id_ in data["records"] else "created"
    data["modseq"] += 1
    data["records"][id_] = obj
    data["log"].append([data["modseq"], id_, kind])


def drop(data: dict[str, Any], id_: str) -> bool:
    if id_ not in data["records"]:
        return False
    data["modseq"] += 1
    del data["records"][id_]
    data["log"].append([data["modseq"], id_, "destroyed"])
    return True


def safe_remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
