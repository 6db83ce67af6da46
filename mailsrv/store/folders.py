"""Folders of an account's Maildir++ tree: discovery, adoption of existing folders, create/rename/delete,
subscriptions. Functions over an :class:`mailsrv.store.engine.Engine` (same locking rules, see there).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mailsrv.store import maildir, metadata, uidlist
from mailsrv.store.types import (
    SPECIAL_USE,
    BadMailboxName,
    MailboxExists,
    MailboxInfo,
    StoreError,
)
from mailsrv.util import fsio

if TYPE_CHECKING:
    from mailsrv.store.engine import Engine

from mailsrv import log

logger = log.get("store")

UIDLIST_NAME = "mailsrv-uidlist"
DOVECOT_UIDLIST = "dovecot-uidlist"
SUBSCRIPTIONS = "subscriptions"
#: directory beside new accounts where their skeletons are built (make_skeleton); never an account
STAGING = ".mailsrv-new"
#: a build in STAGING older than this (seconds) was abandoned by a crashed creator
STAGING_MAX_AGE = 3600.0


def make_folder_dir(eng: Engine, dirname: str) -> None:
    """Build ``.name/{cur,new,tmp}`` in tmp/ and rename it into place (atomic)."""
    build = eng.root / "tmp" / f"mkdir.{fsio.unique_name(eng.hostname)}"
    build.mkdir()
    for sub in ("cur", "new", "tmp"):
        (build / sub).mkdir()
    target = eng.root / dirname
    try:
        os.rename(build, target)
    except OSError as exc:
        shutil.rmtree(build, ignore_errors=True)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise MailboxExists(dirname) from None
        raise
    fsio.fsync_dir(eng.root)


@dataclass(frozen=True)
class FolderSeed:
    """A folder of a new account's skeleton, as its index row needs it (see :func:`make_skeleton`)."""

    name: str
    dirname: str
    uidvalidity: int
    guid: str
    #: bytes of its ``mailsrv-uidlist`` (the header) and the mtime of its empty ``cur/``
    uidlist_size: int
    cur_mtime: int


def _mkdirs(path: Path) -> list[Path]:
    """mkdir -p; the directories it made, outermost first."""
    made: list[Path] = []
    for d in (*reversed(path.parents), path):
        try:
            d.mkdir()
            made.append(d)
        except FileExistsError:
            pass
    return made


def _clean_staging(staging: Path) -> None:
    """Remove builds abandoned by a crashed creator (older than STAGING_MAX_AGE; a live build takes ms)."""
    limit = time.time() - STAGING_MAX_AGE
    with os.scandir(staging) as it:
        for entry in it:
            try:
                if entry.stat(follow_symlinks=False).st_mtime < limit:
                    logger.warning("account.orphan_removed", path=entry.path)
                    shutil.rmtree(entry.path, ignore_errors=True)
            except FileNotFoundError:
                pass  # another process removed it meanwhile


class _SharedSyncfs:
    """Concurrent account creations in this process share syncfs calls (one file system each).

    A caller needs a syncfs that *started* after its files were written; one running when
    it arrives does not count, the next one (started by whichever waiter comes first) does.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        #: st_dev -> (syncfs calls started, the last one finished, one running now)
        self._state: dict[int, tuple[int, int, bool]] = {}

    def sync(self, path: Path) -> None:
        dev = os.stat(path).st_dev
        with self._cond:
            started, done, running = self._state.get(dev, (0, 0, False))
            need = started + 1
            while True:
                started, done, running = self._state.get(dev, (0, 0, False))
                if done >= need:
                    return
                if not running:
                    mine = started + 1
                    self._state[dev] = (mine, done, True)
                    break
                self._cond.wait()
        ok = False
        try:
            fsio.syncfs(path)
            ok = True
        finally:
            with self._cond:
                started, done, _ = self._state[dev]
                # a failed syncfs covers no one: the waiters try their own
                self._state[dev] = (started, max(done, mine) if ok else done, False)
                self._cond.notify_all()


_syncfs = _SharedSyncfs()


def _after_fork() -> None:
    global _syncfs
    _syncfs = _SharedSyncfs()  # a lock held by a thread of the parent would never be released


os.register_at_fork(after_in_child=_after_fork)


def make_skeleton(root: Path, hostname: str, make_index: Callable[[Path, list[FolderSeed]], None], *,
                  use_syncfs: bool = True) -> bool:
    """Create a new account's whole tree at ``root`` at once; False if another process made it first.

    INBOX and the special-use folders (``cur/ new/ tmp/`` each, an empty ``mailsrv-uidlist``),
    the notify file and the index (``make_index(build_dir, seeds)`` writes it, no sync needed)
    are built in ``STAGING/<unique>`` beside ``root``, made durable at once (one ``syncfs``, or
    an fsync of each file and directory when ``use_syncfs`` is false or there is no syncfs),
    then renamed into place and the parent fsync'd. A crash leaves no account or a complete
    one; an abandoned build stays in the staging directory (never an account) and is removed
    by a later creation. Two creators race on the rename: exactly one wins, the loser removes
    its build. Raises OSError.
    """
    staging = root.parent / STAGING
    made = _mkdirs(staging)
    if not made:
        _clean_staging(staging)
    build = staging / f"{root.name}.{fsio.unique_name(hostname)}"
    try:
        seeds = _build_tree(build)
        make_index(build, seeds)
        if use_syncfs and fsio.have_syncfs():
            _syncfs.sync(build)
        else:
            for seed in seeds:
                folder = build / seed.dirname if seed.dirname else build
                fsio.fsync_file(folder / UIDLIST_NAME)
                fsio.fsync_dir(folder)
            for entry in os.scandir(build):  # the index (an empty file is whole with its entry)
                if (entry.name != UIDLIST_NAME and entry.is_file(follow_symlinks=False)
                        and entry.stat().st_size):
                    fsio.fsync_file(entry.path)
        os.rename(build, root)
    except OSError as exc:
        shutil.rmtree(build, ignore_errors=True)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and root.is_dir():
            return False  # another process created the account meanwhile: use theirs
        raise
    fsio.fsync_dir(root.parent)
    for d in made:
        if d != staging:  # a new domain directory: its entry must survive too
            fsio.fsync_dir(d.parent)
    return True


def _build_tree(build: Path) -> list[FolderSeed]:
    """The directories and uidlists of a new account's skeleton under ``build`` (no syncs)."""
    seeds: list[FolderSeed] = []
    uv = int(time.time())
    build.mkdir()
    for name in SPECIAL_USE:
        dirname = "" if name == "INBOX" else maildir.folder_dir(name)
        folder = build / dirname if dirname else build
        if dirname:
            folder.mkdir()
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir()
        guid = secrets.token_hex(16)
        header = uidlist.format_header(uv, 1, guid)
        fd = os.open(folder / UIDLIST_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, header)
        finally:
            os.close(fd)
        seeds.append(FolderSeed(name, dirname, uv, guid, len(header), os.stat(folder / "cur").st_mtime_ns))
    return seeds


def discover(eng: Engine) -> None:
    """Make the rows match the folder directories on disk (new ones adopted, gone ones dropped)."""
    on_disk: dict[str, str] = {"INBOX": ""}
    for entry in os.scandir(eng.root):
        if entry.name.startswith(".") and entry.is_dir():
            name = maildir.dir_to_name(entry.name)
            if name is not None and os.path.isdir(os.path.join(entry.path, "cur")):
                on_disk[name] = entry.name
    rows = {r[0]: (r[1], r[2], r[3], r[4]) for r in
            eng.db.execute("SELECT name, dir, id, storage, messages FROM mailboxes")}
    for name, dirname in on_disk.items():
        if name not in rows or rows[name][0] != dirname:
            adopt_folder(eng, name, dirname)
    gone = [n for n in rows if n not in on_disk]
    if gone:
        with eng._write() as res:
            for n in gone:
                _, mid, storage, messages = rows[n]
                drop_rows(eng, mid, storage, messages)
                res.changed = True


def drop_rows(eng: Engine, mid: int, storage: int, messages: int) -> None:
    db = eng.db
    sizes = [r[0] for r in db.execute("SELECT size FROM messages WHERE mailbox=?", (mid,))]
    eng._quota_apply(sizes, -1)
    for table in ("messages", "expunged", "mailboxes"):
        db.execute(f"DELETE FROM {table} WHERE {'id' if table == 'mailboxes' else 'mailbox'}=?", (mid,))


def read_uidlist(eng: Engine, folder: Path) -> uidlist.Uidlist | None:
    for fname in (UIDLIST_NAME, DOVECOT_UIDLIST):
        try:
            data = (folder / fname).read_bytes()
        except FileNotFoundError:
            continue
        try:
            return uidlist.parse(data)
        except uidlist.UidlistError as exc:
            logger.error("uidlist.unreadable", account=eng.account_id, path=str(folder / fname), error=str(exc))
    return None


def adopt_folder(eng: Engine, name: str, dirname: str) -> None:
    """Insert the row of a folder found on disk; its uidlist (ours or Dovecot's) gives UIDVALIDITY."""
    folder = eng.root / dirname if dirname else eng.root
    with eng._write() as res:
        if eng.db.execute("SELECT 1 FROM mailboxes WHERE name=? AND dir=?", (name, dirname)).fetchone():
            return
        old = eng.db.execute("SELECT id, storage, messages FROM mailboxes WHERE name=?", (name,)).fetchone()
        if old:
            drop_rows(eng, *old)
        ul = read_uidlist(eng, folder)
        own = (folder / UIDLIST_NAME).exists()
        if ul is None or not own:
            if ul is None:
                uv = int(time.time())
                # a lost UID map: a new UIDVALIDITY, so clients resynchronise
                ul = uidlist.Uidlist(uv, 1, secrets.token_hex(16))
                if any((folder / "cur").iterdir()):
                    logger.warning("uidlist.missing", account=eng.account_id, mailbox=name, uidvalidity=uv)
            guid = ul.guid if len(ul.guid) >= 8 else secrets.token_hex(16)
            body = bytearray(uidlist.format_header(ul.uidvalidity, ul.effective_nextuid, guid))
            for base, uid in sorted(ul.uids.items(), key=lambda kv: kv[1]):
                body += uidlist.format_entry(uid, base, ul.sizes.get(base), ul.meta.get(base))
            fsio.durable_write(folder / UIDLIST_NAME, bytes(body), tmp_dir=folder / "tmp")
            ul.guid = guid
        special = SPECIAL_USE.get(name)
        # modseqs start at the clock (ms) so that a rebuilt index never goes below one a client holds;
        # no expunge before it is known (vanished_floor: changes_since below it is truncated)
        start = int(time.time() * 1000)
        eng.db.execute(
            "INSERT INTO mailboxes (guid, name, dir, special_use, uidvalidity, uidnext, highestmodseq,"
            " uidlist_size, cur_mtime, vanished_floor) VALUES (?, ?, ?, ?, ?, ?, ?, 0, -1, ?)",
            ("M" + ul.guid[:24], name, dirname, special, ul.uidvalidity, ul.effective_nextuid, start, start),
        )
        res.changed = True
    mb = eng._row(name)
    eng._sync(mb, full_uidlist=ul)


def list_mailboxes(eng: Engine) -> list[MailboxInfo]:
    with eng.lock:
        discover(eng)
        subs = subscriptions(eng)
        out = []
        for (name,) in eng.db.execute("SELECT name FROM mailboxes ORDER BY name").fetchall():
            mb = eng._row(name)
            out.append(eng._mailbox_info(mb, mb.messages, None, name in subs))
        return out


def create_mailbox(eng: Engine, name: str, special_use: str | None) -> MailboxInfo:
    try:
        name = maildir.normalize_name(name)
        dirname = maildir.folder_dir(name)
    except maildir.NameError_ as exc:
        raise BadMailboxName(str(exc)) from None
    with eng.lock:
        if name == "INBOX" or eng.db.execute("SELECT 1 FROM mailboxes WHERE name=?", (name,)).fetchone():
            raise MailboxExists(name)
        make_folder_dir(eng, dirname)
        adopt_folder(eng, name, dirname)
        if special_use:
            with eng._write():
                eng.db.execute("UPDATE mailboxes SET special_use=? WHERE name=?", (special_use, name))
        return eng.status(name)


def rename_mailbox(eng: Engine, old: str, new: str) -> None:
    with eng.lock:
        mb = eng._row(old)
        try:
            new = maildir.normalize_name(new)
            ndir = maildir.folder_dir(new)
        except maildir.NameError_ as exc:
            raise BadMailboxName(str(exc)) from None
        if mb.name == "INBOX":
            raise StoreError("renaming INBOX is not supported")
        if new == "INBOX" or eng.db.execute("SELECT 1 FROM mailboxes WHERE name=?", (new,)).fetchone():
            raise MailboxExists(new)
        children = [(n, d) for n, d in eng.db.execute("SELECT name, dir FROM mailboxes WHERE name LIKE ?",
                                                      (mb.name.replace("%", "\\%") + "/%",))]
        try:  # every new name checked (e.g. too long once stored) before anything moves
            moves = [(cname, cdir, new + cname[len(mb.name):], maildir.folder_dir(new + cname[len(mb.name):]))
                     for cname, cdir in children]
        except maildir.NameError_ as exc:
            raise BadMailboxName(str(exc)) from None
        # the messages' data durable before their folder moves: a delivery acknowledged through the
        # delivery journal (store/journal.py) has its blocks on disk only at the journal's next
        # checkpoint, and after a power cut its replay looks for the folder under the old name
        if fsio.have_syncfs():
            fsio.syncfs(eng.root)
        with eng._write() as res:
            os.rename(eng.root / mb.dir, eng.root / ndir)
            eng.db.execute("UPDATE mailboxes SET name=?, dir=? WHERE id=?", (new, ndir, mb.id))
            for cname, cdir, nname, cnew in moves:
                os.rename(eng.root / cdir, eng.root / cnew)
                eng.db.execute("UPDATE mailboxes SET name=?, dir=? WHERE name=?", (nname, cnew, cname))
            fsio.fsync_dir(eng.root)
            res.changed = True
        subs = subscriptions(eng)
        if old in subs:
            subs.discard(old)
            subs.add(new)
            write_subscriptions(eng, subs)


def delete_mailbox(eng: Engine, name: str) -> None:
    with eng.lock:
        mb = eng._row(name)
        if mb.name == "INBOX":
            raise StoreError("INBOX cannot be deleted")
        with eng._write() as res:
            trash = eng.root / "tmp" / f"deleted.{fsio.unique_name(eng.hostname)}"
            os.rename(eng.root / mb.dir, trash)
            fsio.fsync_dir(eng.root)
            drop_rows(eng, mb.id, mb.storage, mb.messages)
            res.changed = True
        metadata.forget(eng.root, str(mb.guid))  # its METADATA entries, on every delete path (IMAP, JMAP)
        shutil.rmtree(trash, ignore_errors=True)


def subscriptions(eng: Engine) -> set[str]:
    try:
        data = (eng.root / SUBSCRIPTIONS).read_text("utf-8", "replace")
    except FileNotFoundError:
        return set(SPECIAL_USE)
    return {line.strip() for line in data.splitlines() if line.strip()}


def write_subscriptions(eng: Engine, subs: set[str]) -> None:
    body = "".join(f"{s}\n" for s in sorted(subs)).encode("utf-8")
    fsio.durable_write(eng.root / SUBSCRIPTIONS, body, tmp_dir=eng.root / "tmp")
    eng._touch()


def subscribe(eng: Engine, name: str, on: bool) -> None:
    with eng.lock:
        subs = subscriptions(eng)
        name = maildir.normalize_name(name)
        (subs.add if on else subs.discard)(name)
        write_subscriptions(eng, subs)


def folder_path(eng: Engine, name: str) -> Path:
    with eng.lock:
        return eng._folder(eng._row(name))


def folder_new_dirs(eng: Engine) -> list[str]:
    # strings, not Paths: every IMAP SELECT asks (the notifier keys its watches by str anyway)
    root = str(eng.root)
    with eng.lock:
        return [os.path.join(root, d, "new") if d else os.path.join(root, "new")
                for (d,) in eng.db.execute("SELECT dir FROM mailboxes")]
