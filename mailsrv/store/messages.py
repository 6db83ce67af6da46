"""Message changes of an account: append, copy/move, flags, expunge. Functions over an Engine.

Same invariants and locking as :mod:`mailsrv.store.engine` (read its docstring):
the UID map is appended before any rename into cur/, renames and unlinks happen
before the commit, and each function takes ``eng.lock``.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsrv import log
from mailsrv._speedups import quota as quota_impl
from mailsrv.store import maildir
from mailsrv.store.rows import _MSG_COLS, Pending, SyncResult, _flags_text, _info
from mailsrv.store.types import MessageInfo, OverQuota, QuotaLimits
from mailsrv.util import fsio

if TYPE_CHECKING:
    from mailsrv.store.engine import Engine

logger = log.get("store")


def import_new(eng: Engine, name: str, src: Path, flags: frozenset[str], internal_date: float | None,
               pend: Pending, link: bool) -> tuple[int, SyncResult]:
    """Put a complete file into a mailbox with flags; durable on return.

    ``link``: hard-link ``src`` (a spool file) instead of renaming it (a tmp/ file of this folder).
    The file waits in tmp/ (which no one scans) until the write lock is held; then the UID map
    is appended, the file renamed into cur/, cur/ fsync'd, and the index committed.
    """
    with eng.lock:
        mb = eng._row(name)
        folder = eng._folder(mb)
        fsio.fsync_file(src)
        size = os.stat(src).st_size
        key = f"{fsio.unique_name(eng.hostname)},S={size}"
        staged = folder / "tmp" / key
        if internal_date is not None:
            os.utime(src, (internal_date, internal_date))
        if link:
            try:
                os.link(src, staged)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(src, staged)
                fsio.fsync_file(staged)
                if internal_date is not None:
                    os.utime(staged, (internal_date, internal_date))
        else:
            os.rename(src, staged)
        try:
            with eng._write() as res:
                mb = eng._row_by_id(mb.id)
                torn = eng._uidlist_floor(mb, folder)
                lines: list[bytes] = []
                if torn is not None:
                    eng._reconcile(mb, folder, lines, res, torn)
                st = os.stat(staged)
                info = eng._insert(mb, staged, key, flags, st.st_size, st.st_mtime, pend, lines, res)
                eng._flush_uidlist(mb, folder, lines)
                os.rename(staged, folder / "cur" / maildir.filename(key, flags, eng._kwmap(mb, flags)))
                fsio.fsync_dir(folder / "cur")
                mb.cur_mtime = os.stat(folder / "cur").st_mtime_ns
                eng._save(mb)
        finally:
            if staged.exists():
                staged.unlink()
        return info.uid, res


def current_file(folder: Path, key: str, fname: str) -> Path | None:
    """Where a message file is now: ``cur/fname``, else a file with the same base name in cur/ or new/.

    Another process (a worker's flag change, a refresh finishing a move out of new/, mutt)
    may have renamed the file since ``fname`` was read; the key (base name) never changes.
    """
    path = folder / "cur" / fname
    if os.path.lexists(path):
        return path
    from mailsrv.store.engine import glob_escape

    for sub in ("cur", "new"):
        for p in (folder / sub).glob(glob_escape(key) + "*"):
            if maildir.split_filename(p.name)[0] == key:
                return p
    return None


def _link_current(folder: Path, key: str, fname: str, dst: Path, op: Any = os.link) -> bool:
    """Hard-link (``op`` os.rename: move) a message file to ``dst``, following renames by other processes.
    False if it is gone."""
    for _attempt in range(3):
        src = current_file(folder, key, fname)
        if src is None:
            return False
        try:
            op(src, dst)
            return True
        except FileNotFoundError:
            continue  # renamed again between the lookup and the link
    return False


def _unlink_current(folder: Path, key: str, fname: str) -> None:
    """Remove a message file wherever it is now (a file left behind would be adopted again)."""
    for _attempt in range(3):
        path = current_file(folder, key, fname)
        if path is None:
            return
        try:
            os.unlink(path)
            return
        except FileNotFoundError:
            continue


def uid_for_key(eng: Engine, name: str, key: str) -> int | None:
    with eng.lock:
        mb = eng._row(name)
        r = eng.db.execute("SELECT uid FROM messages WHERE mailbox=? AND key=?", (mb.id, key)).fetchone()
        return None if r is None else r[0]


def store_flags(eng: Engine, name: str, uids: Sequence[int], flags: frozenset[str], mode: str,
                unchanged_since: int | None) -> tuple[list[MessageInfo], list[int], SyncResult]:
    flags = frozenset(maildir.canonical_flag(f) for f in flags)
    with eng.lock:
        mid = eng._row(name).id
    with eng.lock, eng._write() as res:
        mb = eng._row_by_id(mid)
        eng._catch_up_torn(mb, res)
        folder = eng._folder(mb)
        db = eng.db
        modified: list[MessageInfo] = []
        failed: list[int] = []
        renames: list[tuple[int, str, str]] = []
        for uid in sorted(set(uids)):
            r = db.execute(f"SELECT {_MSG_COLS}, fname FROM messages WHERE mailbox=? AND uid=?",
                           (mb.id, uid)).fetchone()
            if r is None:
                continue
            info, fname = _info(r), r[9]
            if unchanged_since is not None and info.modseq > unchanged_since:
                failed.append(uid)  # RFC 7162 §3.1.3
                continue
            if mode == "add":
                new = info.flags | flags
            elif mode == "remove":
                new = info.flags - flags
            else:
                new = flags
            if new == info.flags:
                continue
            mb.highestmodseq += 1
            nfname = maildir.filename(info.key, new, eng._kwmap(mb, new))
            if nfname != fname:
                renames.append((uid, fname, nfname))
            db.execute("UPDATE messages SET flags=?, modseq=?, fname=? WHERE mailbox=? AND uid=?",
                       (_flags_text(new), mb.highestmodseq, nfname, mb.id, uid))
            modified.append(MessageInfo(uid, info.key, new, mb.highestmodseq, info.internal_date,
                                        info.saved_date, info.size, info.email_id, info.thread_id))
        for uid, old, new_name in renames:
            key = maildir.split_filename(new_name)[0]
            for _attempt in range(3):
                src = current_file(folder, key, old)
                if src is None:
                    logger.warning("message.missing", account=eng.account_id, mailbox=name, uid=uid)
                    break
                try:
                    os.rename(src, folder / "cur" / new_name)
                    break
                except FileNotFoundError:
                    continue  # renamed by someone outside the lock (mutt): look again
        if renames:
            mb.cur_mtime = os.stat(folder / "cur").st_mtime_ns
        eng._save(mb)
        if modified:
            res.flags.setdefault(mb.guid, []).extend(modified)
            res.changed = True
        return modified, failed, res


def expunge(eng: Engine, name: str, uids: Sequence[int] | None, only_deleted: bool,
            unseen_only: bool = False) -> tuple[list[int], SyncResult]:
    with eng.lock:
        mid = eng._row(name).id
    with eng.lock, eng._write() as res:
        mb = eng._row_by_id(mid)
        eng._catch_up_torn(mb, res)
        folder = eng._folder(mb)
        db = eng.db
        if uids is None:
            rows = db.execute("SELECT uid, fname, flags, key FROM messages WHERE mailbox=?", (mb.id,)).fetchall()
        else:
            rows = []
            for uid in sorted(set(uids)):
                r = db.execute("SELECT uid, fname, flags, key FROM messages WHERE mailbox=? AND uid=?",
                               (mb.id, uid)).fetchone()
                if r is not None:
                    rows.append(r)
        victims = [r for r in rows if (not only_deleted or "\\Deleted" in r[2].split())
                   and not (unseen_only and "\\Seen" in r[2].split())]
        for _uid, fname, _, key in victims:
            _unlink_current(folder, key, fname)
        done = eng._delete_rows(mb, [r[0] for r in victims], res)
        if victims:
            mb.cur_mtime = os.stat(folder / "cur").st_mtime_ns
            eng._maybe_compact_uidlist(mb)
        eng._save(mb)
        return sorted(done), res


def _sync_sources(paths: list[Path]) -> None:
    """Blocking: make the data of the staged links durable before the copies are acknowledged. A
    delivery acknowledged through the delivery journal (store/journal.py) has its file's blocks on
    disk only after the journal's next checkpoint, and a replay after a power cut restores the
    delivered key, not a copy's new key (after a MOVE it finds the delivered key gone): without this a
    copy made in that window could be a name without its data. A fsync each (~80 us for a file
    already clean, measured on vda: a big COPY pays ~0.1 s per 1 000 messages), not one syncfs, whose
    wait grows with every other writer's dirty data on the file system (seconds under load)."""
    for p in paths:
        fsio.fsync_file(p)


def copy(eng: Engine, src: str, uids: Sequence[int], dst: str, *, move: bool,
         limits: QuotaLimits | None = None,
         domain_limits: QuotaLimits | None = None) -> tuple[list[tuple[int, int]], SyncResult]:
    with eng.lock:
        smb = eng._row(src)
        dmb = eng._row(dst)
        sfolder, dfolder = eng._folder(smb), eng._folder(dmb)
        db = eng.db
        rows = []
        for uid in sorted(set(uids)):
            r = db.execute(f"SELECT {_MSG_COLS}, fname, structure FROM messages WHERE mailbox=? AND uid=?",
                           (smb.id, uid)).fetchone()
            if r is not None:
                rows.append(r)
        if limits is not None and not move:
            code = eng.quota_check(sum(r[6] for r in rows), len(rows), limits, domain_limits)
            if code != quota_impl.OK:
                raise OverQuota("STORAGE" if code == quota_impl.OVER_STORAGE else "MESSAGE")
        # stage: hard links into dst tmp/, fsync'd, before the transaction
        staged: list[tuple[Sequence[Any], str, Path]] = []
        for r in rows:
            key = f"{fsio.unique_name(eng.hostname)},S={r[6]}"
            tmp = dfolder / "tmp" / key
            if not _link_current(sfolder, r[1], r[9], tmp):
                continue  # expunged meanwhile
            staged.append((r, key, tmp))
        if staged:
            _sync_sources([tmp for _r, _k, tmp in staged])
            fsio.fsync_dir(dfolder / "tmp")
        mapping: list[tuple[int, int]] = []
        try:
            with eng._write() as res:
                dmb = eng._row_by_id(dmb.id)
                smb = eng._row_by_id(smb.id)
                if move and smb.id != dmb.id:  # the source's expunge takes a modseq
                    eng._catch_up_torn(smb, res)
                torn = eng._uidlist_floor(dmb, dfolder)
                lines: list[bytes] = []
                if torn is not None:
                    eng._reconcile(dmb, dfolder, lines, res, torn)
                for r, key, tmp in staged:
                    info = _info(r)
                    pend = Pending(structure=r[10])
                    new = eng._insert(dmb, tmp, key, info.flags, info.size, info.internal_date, pend, lines,
                                       res, email_id=info.email_id, thread_id=info.thread_id)
                    mapping.append((info.uid, new.uid))
                eng._flush_uidlist(dmb, dfolder, lines)
                for r, key, tmp in staged:
                    kflags = frozenset(r[2].split())
                    dest = dfolder / "cur" / maildir.filename(key, kflags, eng._kwmap(dmb, kflags))
                    # a move renames the source's file itself: a kill -9 from here to the commit leaves
                    # each message in one mailbox (RFC 6851 §3.3), where a link + unlink left it in both
                    if not (move and smb.id != dmb.id and _link_current(sfolder, r[1], r[9], dest, os.rename)):
                        os.rename(tmp, dest)
                if staged:
                    fsio.fsync_dir(dfolder / "cur")
                if move and mapping:
                    for r, _key, _tmp in staged:
                        fresh = db.execute("SELECT fname FROM messages WHERE mailbox=? AND uid=?",
                                           (smb.id, r[0])).fetchone()  # a flag change may have renamed it
                        _unlink_current(sfolder, r[1], fresh[0] if fresh else r[9])
                    eng._delete_rows(smb, [m[0] for m in mapping], res)
                    smb.cur_mtime = os.stat(sfolder / "cur").st_mtime_ns
                    eng._maybe_compact_uidlist(smb)
                    eng._save(smb)
                dmb.cur_mtime = os.stat(dfolder / "cur").st_mtime_ns
                eng._save(dmb)
        finally:
            for _r, _k, tmp in staged:
                if tmp.exists():
                    tmp.unlink()
        return mapping, res
