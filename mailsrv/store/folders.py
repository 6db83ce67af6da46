"""Folders of an account's Maildir++ tree: discovery, adoption of existing folders, create/rename/delete,
subscriptions. Functions over an :class:`mailsrv.store.engine.Engine` (same locking rules, see there).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mailsrv.store import maildir, uidlist
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
        with eng._write() as res:
            os.rename(eng.root / mb.dir, eng.root / ndir)
            eng.db.execute("UPDATE mailboxes SET name=?, dir=? WHERE id=?", (new, ndir, mb.id))
            for cname, cdir in children:
                nname = new + cname[len(mb.name):]
                cnew = maildir.folder_dir(nname)
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


def folder_new_dirs(eng: Engine) -> list[Path]:
    with eng.lock:
        return [(eng.root / d if d else eng.root) / "new"
                for (d,) in eng.db.execute("SELECT dir FROM mailboxes")]
