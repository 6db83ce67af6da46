"""Archiving rules (journaling, docs/archive.md): which messages get one copy in an auditor's archive
account, delivered in the same durable step as the message itself, and the retention sweeper.

Invariants:

- With no ``[archive.rule.*]`` nothing changes: :meth:`ArchiveRules.plan` answers None after one check.
- One copy per archive account and folder per message, however many recipients and rules match
  (a 5 000-member group makes one copy); a recipient that is itself an archive account gets no
  archive copy of it; a retried archive copy (:meth:`ArchiveRules.retried`) makes no other copy.
- Archived once, at acceptance: a local recipient queued after its message was archived (a copy that
  tempfailed and is retried by the queue, a JMAP submission held until sendAt) is queued with the ORCPT
  of :meth:`ArchiveRules.archived_orcpt`; its delivery through our MTA makes no archive copy
  (:meth:`ArchiveRules.archived`).
- The markers (ORCPT) that skip or redirect archiving carry an HMAC-SHA-256 over the marker, the
  envelope sender and the recipient, keyed by ``data_dir/archive.key`` (:func:`marker_key`): only
  mailsrv's queue and JMAP submission can make one; a marker without a valid MAC is ignored. Markers
  of queue entries older than the key (written before the MAC) are signed once by the master at start
  (:func:`sign_old_markers`).
- An archive copy (only it) starts with the transaction's envelope (:func:`envelope_block`: sender and
  every recipient as received, Bcc included) after its Return-Path line; a retried copy is queued as
  that file and delivered as is (one block).
- Messages with a null reverse-path (bounces, DSNs) are not archived; recall notices are local
  deliveries without a plan and are not archived either.
- The retention sweep runs in one process (the ``archive`` singleton of mailsrv.master) and removes
  copies through ``Account.expunge``, the path of IMAP EXPUNGE.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mailsrv import log
from mailsrv.config import ArchiveConfig, Config, ConfigError
from mailsrv.delivery.local import LocalDelivery, ResolveCache
from mailsrv.directory import Account, Kind
from mailsrv.store import MailboxNotFound
from mailsrv.util.fsio import fsync_dir, unique_name
from mailsrv.util.runloop import run_until_signalled

logger = log.get("archive")

#: Seconds between two looks at the directory's change stamp: a new group member or a deleted
#: archive account is seen within this time (the rules' addresses are resolved again then).
REFRESH_INTERVAL = 1.0
#: Kinds of a ``match`` address whose account counts (a group's or department's members count too).
_ACCOUNT_KINDS = (Kind.USER, Kind.ALIAS, Kind.DISABLED)
DAY = 86400.0
#: Flags of an archive copy: read, so that a recall (mailsrv.recall takes back unread copies only)
#: never removes it, and the archive's unread count means nothing anyway.
COPY_FLAGS = frozenset({"\\Seen"})
#: RFC 3461 §4.2 ORCPT address type that marks a retried archive copy in our own queue:
#: ``x-mailsrv-archive;MAC;FOLDER`` (see :meth:`ArchiveRules.retry_orcpt`, :meth:`ArchiveRules.retried`).
RETRY_ORCPT = "x-mailsrv-archive"
#: ORCPT address type of a local recipient queued after its message was archived at acceptance:
#: ``x-mailsrv-archived;MAC;ORIGINAL`` wraps the recipient's own ORCPT ("-": none); mailsrv.queue.dsn
#: shows the original one (every ``x-mailsrv-*`` type wraps it after its MAC).
ARCHIVED_ORCPT = "x-mailsrv-archived"
#: The markers' key, in the data directory: 32 random bytes made on first use (mode 600, fsync'd).
KEY_FILE = "archive.key"
KEY_BYTES = 32
#: hex digits of a marker's MAC (HMAC-SHA-256 cut to 128 bits)
MAC_HEX = 32
_RETRY_PREFIX = RETRY_ORCPT + ";"
_ARCHIVED_PREFIX = ARCHIVED_ORCPT + ";"
#: Written in the data directory once the queue's markers from before the MAC were signed (:func:`sign_old_markers`).
SIGNED_STAMP = "archive.markers-signed"
_HEX = frozenset("0123456789abcdef")


def marker_key(data_dir: Path) -> bytes:
    """Blocking: the markers' key in ``data_dir/archive.key``, made on first use. The new key is written
    to a temporary file, fsync'd and hard-linked into place, so two processes making it at once both
    end up reading the one that got there first. Raises OSError."""
    path = Path(data_dir) / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        tmp = path.with_name(f".{KEY_FILE}.{unique_name()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.write(fd, secrets.token_bytes(KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):  # another process made it first: theirs counts
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
        fsync_dir(path.parent)
        key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise OSError(f"{path}: shorter than {KEY_BYTES} bytes")
    return key


def marker_mac(key: bytes, atype: str, sender: str, rcpt: str, inner: str) -> str:
    """The MAC of a marker of type ``atype`` wrapping ``inner``, for that sender and recipient."""
    msg = "\0".join((atype, sender.lower(), rcpt.lower(), inner)).encode("utf-8", "surrogatepass")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:MAC_HEX]


def sign_legacy(key: bytes, sender: str, rcpt: str, orcpt: str | None) -> str | None:
    """The marker ``orcpt`` as this version writes it, when it is one written before markers had a MAC
    (``x-mailsrv-archived;ORIGINAL``, ``x-mailsrv-archive;FOLDER``); None for anything else (no marker,
    or one with a MAC already)."""
    if orcpt is None:
        return None
    for atype in (ARCHIVED_ORCPT, RETRY_ORCPT):
        if orcpt.startswith(atype + ";"):
            rest = orcpt[len(atype) + 1:]
            mac, semi, _ = rest.partition(";")
            if semi and len(mac) == MAC_HEX and set(mac) <= _HEX:
                return None  # signed already
            return f"{atype};{marker_mac(key, atype, sender, rcpt, rest)};{rest}"
    return None


def sign_old_markers(data_dir: Path, rewrite: Any) -> int | None:
    """Blocking, once per data directory (then :data:`SIGNED_STAMP` says it is done): sign the markers of
    queue entries made by a version before the MAC (docs/archive.md), so that their delivery makes no
    second archive copy. Only entries created before the key (the key file's mtime) count: a marker
    without a MAC in a younger entry was not written by us and stays ignored. ``rewrite(fn, before)``
    is the queue's :meth:`~mailsrv.queue.store.QueueDir.rewrite_orcpts`. Returns the recipients signed,
    or None when it had been done. Raises OSError."""
    stamp = Path(data_dir) / SIGNED_STAMP
    if stamp.exists():
        return None
    key = marker_key(data_dir)
    born = (Path(data_dir) / KEY_FILE).stat().st_mtime
    n: int = rewrite(lambda sender, rcpt, orcpt: sign_legacy(key, sender, rcpt, orcpt), born)
    fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{n}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(stamp.parent)
    logger.info("archive.markers_signed", recipients=n)
    return n


@dataclass(frozen=True, slots=True)
class _Rule:
    """A rule with its addresses resolved: account ids (users, aliases, current group members) and domains."""

    name: str
    inbound: bool
    outbound: bool
    archive: Account
    folder: str
    ids: frozenset[int]
    domains: frozenset[str]

    def matches(self, acct: Account) -> bool:
        return acct.id in self.ids or acct.domain in self.domains


def envelope_block(sender: str, rcpts: Iterable[str]) -> bytes:
    """The header lines an archive copy starts with (docs/archive.md): the envelope sender and every
    envelope recipient of the transaction as received. They passed the SMTP grammar (RFC 5321 paths
    hold no CR, LF or NUL); a stray one would end the header, so it is dropped here all the same."""
    def clean(a: str) -> bytes:
        return a.encode("utf-8", "replace").translate(None, b"\r\n\0")

    out = [b"X-Mailsrv-Envelope-From: <" + clean(sender) + b">\r\n"]
    out += [b"X-Mailsrv-Envelope-To: <" + clean(r) + b">\r\n" for r in rcpts]
    return b"".join(out)


class ArchivePlan:
    """One message's archive copies: out-rules decided from the sender, in-rules from each local
    recipient account that :class:`~mailsrv.delivery.local.LocalDelivery` meets (groups expanded).
    ``envelope``: the :func:`envelope_block` the copies start with (empty: they are the message's own
    file, as for a retried copy, whose file has its block already)."""

    __slots__ = ("_owner", "_inbound", "_hit", "_skip", "envelope")

    def __init__(self, owner: ArchiveRules, inbound: list[_Rule], hit: Iterable[_Rule]) -> None:
        self.envelope = b""
        self._owner = owner
        self._inbound = inbound
        self._hit: dict[tuple[int, str], _Rule] = {}
        self._skip: set[int] = set()
        for r in hit:
            self._hit.setdefault((r.archive.id, r.folder), r)

    def saw(self, acct: Account) -> None:
        """A local recipient account of the message (called once per account)."""
        if acct.id in self._owner.archive_ids:
            self._skip.add(acct.id)  # mail to an archive account (a retried copy) is not archived again
            return
        if not self._inbound:
            return
        hits = [r for r in self._inbound if r.matches(acct)]
        if hits:
            for r in hits:
                self._hit.setdefault((r.archive.id, r.folder), r)
            self._inbound = [r for r in self._inbound if r not in hits]

    async def see(self, directory: Any, recipients: Iterable[tuple[str, Any]]) -> None:
        """Let the in-rules meet ``recipients`` ((address, resolution) of kind local or group; a group's
        current members) without delivering to them: a JMAP submission held until sendAt is archived
        at acceptance, its recipients' copies come later (their ORCPT says so: :meth:`ArchiveRules.archived_orcpt`)."""
        for _, res in recipients:
            if res.kind == Kind.GROUP and res.group is not None:
                async for member in directory.expand(res.group):
                    if member.account is not None:
                        self.saw(member.account)
            elif res.account is not None:
                self.saw(res.account)

    async def targets(self, local: LocalDelivery) -> list[tuple[str, Account, str, frozenset[str]]]:
        """(address, account, folder, flags) of each archive copy to add to the delivery; folders other
        than INBOX are created on first use (the store would put a copy for a missing one in INBOX)."""
        out = []
        for (aid, folder), rule in self._hit.items():
            if aid in self._skip:
                continue
            await local.ensure_folder(rule.archive, folder, "archive.folder_created")
            out.append((rule.archive.address, unlimited(rule.archive), folder, COPY_FLAGS))
        return out


def unlimited(acct: Account) -> Account:
    """The archive account as its copies see it: written regardless of its own quota (an archive must
    not lose mail because someone set a quota on it; the domain's quota still counts)."""
    if acct.quota_bytes is None and acct.quota_messages is None:
        return acct
    return replace(acct, quota_bytes=None, quota_messages=None)


class ArchiveRules:
    """Per worker: the configured rules, resolved against the directory and kept current with its
    change stamp. ``directory`` is a mailsrv.directory.Directory."""

    def __init__(self, config: ArchiveConfig, directory: Any, key: bytes | None = None) -> None:
        self.config = config
        self.directory = directory
        self.enabled = bool(config.rule)
        #: the markers' key (:func:`marker_key`); None: one of this process's own (its markers count only
        #: in this process: a marker it cannot check means one more archive copy, never one less)
        self._key = key if key is not None else secrets.token_bytes(KEY_BYTES)
        self.archive_ids: frozenset[int] = frozenset()
        self._rules: tuple[_Rule, ...] = ()
        self._stamp: object = None
        self._looked = float("-inf")
        self._loaded = False
        self._refresh: asyncio.Future[None] | None = None
        self._senders = ResolveCache(directory)  # a sender's account: no directory query per message

    # --- markers (docs/archive.md): made by our queue's producers, honoured only with their MAC -----

    def _mac(self, atype: str, sender: str, rcpt: str, inner: str) -> str:
        return marker_mac(self._key, atype, sender, rcpt, inner)

    def _marked(self, atype: str, sender: str, rcpt: str, orcpt: str | None) -> str | None:
        """What the marker ``orcpt`` of type ``atype`` wraps, if its MAC is valid for this sender and
        recipient; None otherwise (no marker, another type, a forged or replayed one)."""
        if orcpt is None or not orcpt.startswith(atype + ";"):
            return None
        mac, semi, inner = orcpt[len(atype) + 1:].partition(";")
        # bytes: compare_digest refuses str with non-ASCII characters (any a client sends in xtext)
        if not semi or not hmac.compare_digest(mac.encode("utf-8", "surrogatepass"),
                                               self._mac(atype, sender, rcpt, inner).encode()):
            return None
        return inner

    def archived_orcpt(self, sender: str, rcpt: str, orcpt: str | None) -> str:
        """The ORCPT of local recipient ``rcpt`` queued once its message from ``sender`` is archived (its
        own ``orcpt`` inside, after the MAC)."""
        inner = orcpt or "-"
        return f"{ARCHIVED_ORCPT};{self._mac(ARCHIVED_ORCPT, sender, rcpt, inner)};{inner}"

    def retry_orcpt(self, sender: str, rcpt: str, folder: str) -> str:
        """The ORCPT of a failed archive copy for archive account ``rcpt`` queued for retry: its rule's
        folder travels with it."""
        return f"{RETRY_ORCPT};{self._mac(RETRY_ORCPT, sender, rcpt, folder)};{folder}"

    def retry_folder(self, peer_ip: str, sender: str, rcpt: str, orcpt: str | None) -> str | None:
        """The folder of a retried archive copy's marker that our queue sent (loopback, valid MAC), else None."""
        if orcpt is None or not orcpt.startswith(_RETRY_PREFIX) or not _loopback(peer_ip):
            return None
        return self._marked(RETRY_ORCPT, sender, rcpt, orcpt)

    async def plan(self, sender: str, account: Account | None, *, local: bool) -> ArchivePlan | None:
        """What a message from ``sender`` (``account`` when the session authenticated) needs; None if
        nothing can match. ``local``: the message has local recipients (in-rules may match them)."""
        if not self.enabled or not sender:  # no rules; bounces and DSNs are not archived
            return None
        rules = await self._current()
        if not rules:
            return None
        if account is None:
            res = await self._senders.resolve(sender)
            account = res.account if res.kind in _ACCOUNT_KINDS else None
        out: list[_Rule] = []
        if account is not None and account.id not in self.archive_ids:
            out = [r for r in rules if r.outbound and r.matches(account)]
        inbound = [r for r in rules if r.inbound] if local else []
        if not out and not inbound:
            return None
        return ArchivePlan(self, inbound, out)

    async def retried(self, peer_ip: str, sender: str,
                      rcpts: list[tuple[Account | None, str, str | None]]) -> ArchivePlan | None:
        """A transaction of retried archive copies only (our queue, from a loopback address: each
        recipient an archive account with the ORCPT of :meth:`retry_orcpt`, its MAC valid, naming one of
        its rules' folders): the plan that delivers exactly those copies, into their folders, and no
        other (a retried copy makes no further archive copy). None otherwise: the transaction is
        ordinary mail. ``rcpts``: (resolved account, address, ORCPT) of each local recipient."""
        if not rcpts or not all(o is not None and o.startswith(_RETRY_PREFIX) for _, _, o in rcpts) \
                or not _loopback(peer_ip):
            return None  # ordinary mail (one look at each recipient's ORCPT)
        rules = {(r.archive.id, r.folder): r for r in await self._current()}
        hit = []
        for acct, address, orcpt in rcpts:
            folder = self._marked(RETRY_ORCPT, sender, address, orcpt)
            rule = rules.get((acct.id, folder)) if acct is not None and folder is not None else None
            if rule is None or acct is None:
                return None
            hit.append(replace(rule, archive=acct))  # its quota as the directory says now
        return ArchivePlan(self, [], hit)

    def archived(self, peer_ip: str, sender: str, rcpts: list[tuple[str, str | None]]) -> bool:
        """A transaction from our queue (a loopback address) whose every local recipient carries the
        ORCPT of :meth:`archived_orcpt` with a valid MAC: its message was archived when it was accepted,
        so its delivery makes no archive copy. ``rcpts``: (address, ORCPT) of each local recipient."""
        return bool(rcpts) and all(o is not None and o.startswith(_ARCHIVED_PREFIX) for _, o in rcpts) \
            and _loopback(peer_ip) and all(self._marked(ARCHIVED_ORCPT, sender, a, o) is not None for a, o in rcpts)

    async def _current(self) -> tuple[_Rule, ...]:
        """The rules, resolved; looked at again once per REFRESH_INTERVAL when the directory changed.
        Only the first load is waited for: later ones run beside the deliveries, which keep the
        rules they had until it ends (a large group's expansion stays off their path)."""
        now = time.monotonic()
        if now - self._looked < REFRESH_INTERVAL and self._loaded:
            return self._rules
        self._looked = now
        stamp_of = getattr(self.directory, "change_stamp", None)
        stamp = stamp_of() if stamp_of is not None else object()
        if self._loaded and stamp == self._stamp:
            return self._rules
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._reload(stamp))
        if not self._loaded:
            await asyncio.shield(self._refresh)
        return self._rules

    async def _reload(self, stamp: object) -> None:
        try:
            rules = await self._compile()
        except Exception as exc:  # keep the rules we had (the directory will answer again)
            logger.exception("archive.rules_failed", exc)
            return
        self._rules = rules
        self.archive_ids = frozenset(r.archive.id for r in rules)
        self._stamp = stamp
        self._loaded = True

    async def _compile(self) -> tuple[_Rule, ...]:
        rules = []
        for name, rc in self.config.rule.items():
            res = await self.directory.resolve(rc.to)
            if res.kind != Kind.USER or res.account is None:
                logger.error("archive.no_account", rule=name, to=rc.to, kind=str(res.kind))
                continue  # start-up checked it: the account was removed or disabled since
            ids: set[int] = set()
            domains: set[str] = set()
            for m in rc.match:
                if m.startswith("@"):
                    domains.add(m[1:].lower())
                    continue
                mres = await self.directory.resolve(m)
                if mres.kind in _ACCOUNT_KINDS and mres.account is not None:
                    ids.add(mres.account.id)
                elif mres.kind == Kind.GROUP and mres.group is not None:
                    async for member in self.directory.expand(mres.group):
                        if member.account is not None:
                            ids.add(member.account.id)
                else:
                    logger.warning("archive.match_unknown", rule=name, match=m, kind=str(mres.kind))
            rules.append(_Rule(name, rc.direction in ("in", "both"), rc.direction in ("out", "both"),
                               res.account, rc.folder, frozenset(ids), frozenset(domains)))
        return tuple(rules)


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


# --- start-up check -------------------------------------------------------------------


def check(cfg: Config) -> None:
    """Every rule's archive account exists and its match entries are local: ConfigError naming the key.

    Blocking (SQLite); the master calls it before it forks, and closes the connection again."""
    if not cfg.archive.rule:
        return
    from mailsrv.directory import open_sync

    d = open_sync(cfg.directory, cfg.server.data_dir)
    try:
        for name, rule in cfg.archive.rule.items():
            key = f"archive.rule.{name}"
            res = d.resolve(rule.to)
            if res.kind != Kind.USER:
                raise ConfigError(cfg.source, f"{key}.to", f"{rule.to} is not an active local account ({res.kind})")
            if res.account is not None and (res.account.quota_bytes is not None
                                            or res.account.quota_messages is not None):
                logger.warning("archive.quota_ignored", rule=name, to=rule.to,
                               note="archive copies are written regardless of the account's quota")
            for m in rule.match:
                if m.startswith("@"):
                    if not d.is_local_domain(m[1:].lower()):
                        raise ConfigError(cfg.source, f"{key}.match", f"{m}: not a local domain")
                elif d.resolve(m).kind not in (*_ACCOUNT_KINDS, Kind.GROUP):
                    raise ConfigError(cfg.source, f"{key}.match", f"{m} is not a local user, alias, group or "
                                      "department")
    finally:
        d.close()


# --- retention ------------------------------------------------------------------------


def retention(config: ArchiveConfig) -> dict[tuple[str, str], float]:
    """(archive address, folder) -> seconds kept, for folders with a limit; the longest rule wins and
    a rule that keeps for ever (0) keeps the folder for ever."""
    days: dict[tuple[str, str], int] = {}
    for rule in config.rule.values():
        key = (rule.to.lower(), rule.folder)
        prev = days.get(key)
        days[key] = 0 if rule.retention_days == 0 or prev == 0 else max(prev or 0, rule.retention_days)
    return {k: d * DAY for k, d in days.items() if d}


async def sweep(config: ArchiveConfig, local: LocalDelivery, *, now: float | None = None) -> int:
    """One retention pass: expunge archived copies whose internal date is older than their folder's
    retention, at most ``config.sweep_batch`` per expunge (each one a store pool job). Returns the
    number removed."""
    now = time.time() if now is None else now
    removed = 0
    for (to, folder), keep in retention(config).items():
        res = await local.directory.resolve(to)
        if res.kind != Kind.USER or res.account is None:
            logger.error("archive.no_account", to=to)
            continue
        sacct = await local.store_account(res.account)
        try:
            view = await sacct.open_mailbox(folder)
        except MailboxNotFound:
            continue
        cutoff = now - keep
        old = [m.uid for m in view.messages if m.internal_date < cutoff]
        for i in range(0, len(old), config.sweep_batch):
            done = await sacct.expunge(folder, old[i:i + config.sweep_batch], only_deleted=False)
            removed += len(done)
        if old:
            logger.info("archive.expunged", account=to, folder=folder, removed=len(old))
    return removed


async def run_sweeper(cfg: Config, stop: asyncio.Event) -> None:
    """Sweep at start, then every ``sweep_interval`` seconds, until ``stop`` is set."""
    from mailsrv.directory import open_directory
    from mailsrv.store import Store

    if not retention(cfg.archive):
        await stop.wait()  # nothing to sweep: stay, as the master expects of a singleton
        return
    directory = open_directory(cfg.directory, cfg.server.data_dir)
    store = Store(cfg.store, cfg.server.data_dir, hostname=cfg.server.hostname, mime=cfg.mime)
    local = LocalDelivery(directory, store, cfg.server.data_dir)
    try:
        while not stop.is_set():
            try:
                n = await sweep(cfg.archive, local)
                logger.info("archive.swept", removed=n)
            except Exception as exc:  # the next pass tries again
                logger.exception("archive.sweep_failed", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), cfg.archive.sweep_interval)
    finally:
        await store.close()
        await directory.close()


def main(cfg: Config) -> int:
    """Entry point of the ``archive`` singleton process (mailsrv.master.SINGLETONS)."""
    log.configure(cfg.server.log_level)
    run_until_signalled(lambda stop: run_sweeper(cfg, stop))
    return 0
