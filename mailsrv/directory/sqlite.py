"""The SQLite directory backend: every SQL statement of mailsrv lives in this package.

Blocking. One :class:`SyncDirectory` owns one connection and must be used by
one thread at a time (the async facade in ``aio.py`` gives each executor
thread its own). Safe with many processes: WAL journal, a busy timeout, and
every write in a ``BEGIN IMMEDIATE`` transaction, so writers queue instead of
failing and readers never block.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mailsrv.directory import addresses as A
from mailsrv.directory import schema
from mailsrv.directory.types import (
    Account,
    AdminScope,
    AnyoneRights,
    Credentials,
    DirectoryError,
    FailureState,
    FolderRights,
    Grant,
    Kind,
    LoginStamp,
    NotFound,
    Resolution,
    Token,
)

#: Seconds a statement waits for another process's write lock.
BUSY_TIMEOUT_MS = 15000
#: Longest lockout key stored (an address is at most 320 octets, RFC 5321 §4.5.3.1).
MAX_FAILURE_KEY = 400
#: One ``record_failure`` in this many also prunes expired counters.
PRUNE_ONE_IN = 256
POST_POLICIES = ("anyone", "members", "listed", "domain")
SCOPES = ("super", "domain", "dept")

_ACCOUNT_COLS = (
    "u.id, u.address, d.name, u.display_name, u.state, u.store, u.backend, u.quota_bytes,"
    " u.quota_messages, u.may_send_outside, gp.path, u.title, u.phone"
)
_ACCOUNT_FROM = "users u JOIN domains d ON d.id = u.domain_id LEFT JOIN groups gp ON gp.id = u.dept_id"

# The closure of a group: itself, its member groups (recursively), and for a
# department its sub-departments. UNION (not UNION ALL) makes cycles harmless.
_CLOSURE = """
WITH RECURSIVE g(id) AS (
    VALUES (:gid)
    UNION
    SELECT gm.member_group_id FROM group_members gm JOIN g ON gm.group_id = g.id
        WHERE gm.member_group_id IS NOT NULL
    UNION
    SELECT c.id FROM groups c JOIN g ON c.parent_id = g.id
)
"""


def _account(row: tuple[Any, ...]) -> Account:
    return Account(
        id=row[0], address=row[1], domain=row[2], display_name=row[3], state=row[4], store=row[5],
        backend=row[6], quota_bytes=row[7], quota_messages=row[8], may_send_outside=bool(row[9]),
        department=row[10] or None, title=row[11], phone=row[12],
    )


def _nets(text: str) -> tuple[str, ...]:
    return tuple(n for n in text.split(",") if n)


class SqliteCore:
    """Blocking directory lookups over one SQLite connection (writes are in ``manage.py``)."""

    def __init__(self, path: str | Path, *, store_root: str = "mail", recipient_delimiter: str = "+") -> None:
        self.path = Path(path)
        self.store_root = store_root.strip("/") or "mail"
        self.delimiter = recipient_delimiter
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread off only so that close() may run elsewhere; one thread uses it at a time.
        self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":  # pragma: no cover - only on file systems without shared memory
            raise DirectoryError(f"{self.path}: cannot use WAL journal (got {mode})")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        row = None
        with contextlib.suppress(sqlite3.OperationalError):
            row = self.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        if row is not None and int(row[0]) == schema.VERSION:
            return
        if row is not None and int(row[0]) > schema.VERSION:
            raise DirectoryError(f"{self.path}: made by a newer mailsrv (schema {row[0]})")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in schema.DDL.split(";"):
                if stmt.strip():
                    self.db.execute(stmt)
            self.db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('version', ?)", (str(schema.VERSION),)
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; the write lock is taken at the start (no upgrade deadlocks)."""
        if self.db.in_transaction:  # nested: part of the caller's transaction
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- lookups used by the protocols --------------------------------------------------

    def _domain_row(self, domain: str) -> tuple[int, str] | None:
        """(id, canonical name) of a domain or domain alias."""
        row = self.db.execute("SELECT id, name FROM domains WHERE name = ?", (domain,)).fetchone()
        if row is None:
            row = self.db.execute(
                "SELECT d.id, d.name FROM domain_aliases a JOIN domains d ON d.id = a.domain_id WHERE a.name = ?",
                (domain,),
            ).fetchone()
        return row

    def is_local_domain(self, domain: str) -> bool:
        return self._domain_row(A.normalise(domain)) is not None

    def domain_quota(self, domain: str) -> tuple[int | None, int | None]:
        """(storage octets, messages) limits of a whole domain (None = unlimited) for its quota root."""
        row = self.db.execute("SELECT max_storage FROM domains WHERE name = ?", (A.normalise(domain),)).fetchone()
        return (row[0] if row is not None else None), None

    # -- policy block/allow lists (issue 12; mailsrv.policy.lists defines scopes and entries) ----

    def policy_lists(self, scopes: Sequence[str]) -> list[tuple[str, str, str]]:
        """(scope, kind, entry) rows of ``scopes``, ordered by scope, kind and entry."""
        rows: list[tuple[str, str, str]] = []
        for scope in scopes:
            rows.extend(self.db.execute(
                "SELECT scope, kind, entry FROM policy_lists WHERE scope = ? ORDER BY kind, entry", (scope,)
            ).fetchall())
        return rows

    def policy_list_add(self, scope: str, kind: str, entry: str) -> bool:
        """Add an entry (already normalised by the caller); False when it was there."""
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO policy_lists (scope, kind, entry, created) VALUES (?, ?, ?, ?)",
                             (scope, kind, entry, time.time()))
            return cur.rowcount == 1

    def policy_list_del(self, scope: str, kind: str, entry: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM policy_lists WHERE scope = ? AND kind = ? AND entry = ?",
                             (scope, kind, entry))
            return cur.rowcount == 1

    def policy_list_all(self) -> list[tuple[str, str, str]]:
        return self.db.execute("SELECT scope, kind, entry FROM policy_lists ORDER BY scope, kind, entry").fetchall()

    def canonical(self, address: str) -> str | None:
        """Address with the canonical domain and no sub-address; None when the domain is not ours."""
        try:
            local, domain = A.split(A.normalise(address))
        except ValueError:
            return None
        row = self._domain_row(domain)
        if row is None:
            return None
        return f"{A.strip_subaddress(local, self.delimiter)}@{row[1]}"

    def account(self, account_id: int) -> Account | None:
        row = self.db.execute(f"SELECT {_ACCOUNT_COLS} FROM {_ACCOUNT_FROM} WHERE u.id = ?", (account_id,)).fetchone()
        return _account(row) if row else None

    def _user_by_exact(self, address: str) -> Account | None:
        row = self.db.execute(f"SELECT {_ACCOUNT_COLS} FROM {_ACCOUNT_FROM} WHERE u.address = ?", (address,)).fetchone()
        return _account(row) if row else None

    def account_by_address(self, address: str) -> Account | None:
        """The account whose primary address or alias this is (sub-address and domain alias allowed)."""
        res = self.resolve(address)
        return res.account if res.kind in (Kind.USER, Kind.ALIAS, Kind.DISABLED) else None

    def resolve(self, address: str) -> Resolution:
        a = A.normalise(address)
        try:
            local, domain = A.split(a)
        except ValueError:
            return Resolution(a, Kind.UNKNOWN)
        drow = self._domain_row(domain)
        if drow is None:
            return Resolution(a, Kind.OUTSIDE)
        domain_id, canon_domain = drow
        candidates = [f"{local}@{canon_domain}"]
        base = A.strip_subaddress(local, self.delimiter)
        if base != local:
            candidates.append(f"{base}@{canon_domain}")
        for cand in candidates:
            acct = self._user_by_exact(cand)
            if acct is not None:
                return Resolution(cand, Kind.USER if acct.active else Kind.DISABLED, acct)
            row = self.db.execute("SELECT user_id FROM aliases WHERE address = ?", (cand,)).fetchone()
            if row is not None:
                acct = self.account(row[0])
                assert acct is not None
                return Resolution(cand, Kind.ALIAS if acct.active else Kind.DISABLED, acct)
            row = self.db.execute("SELECT address FROM groups WHERE address = ?", (cand,)).fetchone()
            if row is not None:
                return Resolution(cand, Kind.GROUP, group=row[0])
        row = self.db.execute("SELECT catchall FROM domains WHERE id = ?", (domain_id,)).fetchone()
        if row and row[0] is not None:
            acct = self.account(row[0])
            if acct is not None and acct.active:
                return Resolution(candidates[-1], Kind.CATCHALL, acct)
        return Resolution(candidates[-1], Kind.UNKNOWN)

    def accounts_page(self, domain: str | None, after_id: int, limit: int) -> list[Account]:
        if domain is None:
            rows = self.db.execute(
                f"SELECT {_ACCOUNT_COLS} FROM {_ACCOUNT_FROM} WHERE u.id > ? ORDER BY u.id LIMIT ?", (after_id, limit)
            ).fetchall()
        else:
            rows = self.db.execute(
                f"SELECT {_ACCOUNT_COLS} FROM {_ACCOUNT_FROM} WHERE d.name = ? AND u.id > ? ORDER BY u.id LIMIT ?",
                (A.normalise(domain), after_id, limit),
            ).fetchall()
        return [_account(r) for r in rows]

    def may_send_as(self, account_id: int, address: str) -> bool:
        a = A.normalise(address)
        if a == "":
            return True  # RFC 5321 §4.5.5: the null reverse-path
        canon = self.canonical(a)
        if canon is None:
            return False
        row = self.db.execute("SELECT 1 FROM users WHERE id = ? AND address = ?", (account_id, canon)).fetchone()
        if row is None:
            row = self.db.execute("SELECT 1 FROM aliases WHERE user_id = ? AND address = ?", (account_id, canon)).fetchone()
        if row is None:
            row = self.db.execute(
                "SELECT 1 FROM group_send_as s JOIN groups g ON g.id = s.group_id WHERE s.user_id = ? AND g.address = ?",
                (account_id, canon),
            ).fetchone()
        return row is not None

    def _group_id(self, address: str) -> int:
        a = self.canonical(address) or A.normalise(address)
        row = self.db.execute("SELECT id FROM groups WHERE address = ?", (a,)).fetchone()
        if row is None:
            raise NotFound(f"no group or department {a}")
        return int(row[0])

    def may_post(self, group: str, sender: str) -> bool:
        gid = self._group_id(group)
        policy, gdomain = self.db.execute(
            "SELECT g.post_policy, d.name FROM groups g JOIN domains d ON d.id = g.domain_id WHERE g.id = ?", (gid,)
        ).fetchone()
        if policy == "anyone":
            return True
        s = A.normalise(sender)
        if not s:
            return False
        canon = self.canonical(s)
        if policy == "domain":
            return canon is not None and A.split(canon)[1] == gdomain
        if policy == "listed":
            return self.db.execute(
                "SELECT 1 FROM group_senders WHERE group_id = ? AND address IN (?, ?)", (gid, s, canon or s)
            ).fetchone() is not None
        # members
        acct = self.account_by_address(s) if canon else None
        if acct is not None:
            row = self.db.execute(
                _CLOSURE + "SELECT 1 FROM users u WHERE u.id = :uid AND (u.dept_id IN g OR u.id IN "
                "(SELECT user_id FROM group_members WHERE group_id IN g AND user_id IS NOT NULL))",
                {"gid": gid, "uid": acct.id},
            ).fetchone()
            return row is not None
        return self.db.execute(
            _CLOSURE + "SELECT 1 FROM group_members WHERE group_id IN g AND external = :ext",
            {"gid": gid, "ext": s},
        ).fetchone() is not None

    def expand_accounts(self, group: str, after_id: int, limit: int) -> list[Account]:
        """Active local members of a group's closure, ordered by id, after ``after_id`` (keyset page)."""
        gid = self._group_id(group)
        rows = self.db.execute(
            _CLOSURE + f"SELECT {_ACCOUNT_COLS} FROM {_ACCOUNT_FROM} WHERE u.state = 'active' AND u.id > :after"
            " AND (u.dept_id IN g OR u.id IN (SELECT user_id FROM group_members WHERE group_id IN g"
            " AND user_id IS NOT NULL)) ORDER BY u.id LIMIT :limit",
            {"gid": gid, "after": after_id, "limit": limit},
        ).fetchall()
        return [_account(r) for r in rows]

    def expand_outside(self, group: str, after: str, limit: int) -> list[str]:
        """Outside addresses of a group's closure, sorted, after ``after`` (keyset page)."""
        gid = self._group_id(group)
        rows = self.db.execute(
            _CLOSURE + "SELECT DISTINCT external FROM group_members WHERE group_id IN g AND external IS NOT NULL"
            " AND external > :after ORDER BY external LIMIT :limit",
            {"gid": gid, "after": after, "limit": limit},
        ).fetchall()
        return [r[0] for r in rows]

    # -- credentials, lockout counters, tokens (for mailsrv.auth) -------------------------

    def credentials(self, username: str) -> Credentials | None:
        """Login data for a primary address or alias; None when there is no such account."""
        acct = self.account_by_address(username)
        if acct is None:
            return None
        pw, scram, nets, dnets = self.db.execute(
            "SELECT u.password_hash, u.scram, u.networks, d.networks FROM users u JOIN domains d ON d.id = u.domain_id"
            " WHERE u.id = ?",
            (acct.id,),
        ).fetchone()
        return Credentials(acct, pw, scram, _nets(nets) or _nets(dnets))

    def set_secrets(self, account_id: int, password_hash: str, scram: str) -> None:
        with self._tx() as db:
            cur = db.execute("UPDATE users SET password_hash = ?, scram = ? WHERE id = ?", (password_hash, scram, account_id))
            if cur.rowcount != 1:
                raise NotFound(f"no account {account_id}")
            self._bump_generation(account_id)

    def _bump_generation(self, account_id: int) -> None:
        """Inside a write transaction: the account's login data changed (cached logins are stale)."""
        self.db.execute(
            "INSERT INTO credential_generations (user_id, generation) VALUES (?, 1)"
            " ON CONFLICT (user_id) DO UPDATE SET generation = generation + 1",
            (account_id,),
        )

    def login_stamp(self, account_id: int, now: float | None = None) -> LoginStamp | None:
        """One indexed query, no hashing: the account's credentials generation and whether it may log in
        now (active, not locked out). None when the account is gone."""
        row = self.db.execute(
            "SELECT COALESCE(g.generation, 0), u.state,"
            " (SELECT f.locked_until FROM auth_failures f WHERE f.key = 'acct:' || u.address)"
            " FROM users u LEFT JOIN credential_generations g ON g.user_id = u.id WHERE u.id = ?",
            (account_id,),
        ).fetchone()
        if row is None:
            return None
        locked = (row[2] or 0.0) > (time.time() if now is None else now)
        return LoginStamp(int(row[0]), row[1] == "active" and not locked)

    def _grants(self, where: str, params: tuple[Any, ...]) -> list[Grant]:
        rows = self.db.execute(
            f"SELECT owner_id, grantee_id, rights, created FROM grants WHERE {where} ORDER BY owner_id, grantee_id",
            params,
        ).fetchall()
        out = []
        for owner_id, grantee_id, rights, created in rows:
            owner, grantee = self.account(owner_id), self.account(grantee_id)
            if owner is not None and grantee is not None:
                out.append(Grant(owner, grantee, rights, created))
        return out

    def _id_of(self, who: int | str) -> int | None:
        """An account id as given, or the id of an address (None: unknown)."""
        return who if isinstance(who, int) else self._account_id(who)

    def grants_for(self, grantee: int | str) -> list[Grant]:
        """The accounts shared with ``grantee`` (an account id or address), by owner id."""
        gid = self._id_of(grantee)
        return [] if gid is None else self._grants("grantee_id = ?", (gid,))

    def _folder_rights(self, where: str, params: tuple[Any, ...]) -> list[FolderRights]:
        rows = self.db.execute(
            f"SELECT owner_id, grantee_id, mailbox, rights FROM folder_rights WHERE {where}"
            " ORDER BY owner_id, mailbox, grantee_id", params).fetchall()
        accounts: dict[int, Account | None] = {}
        out = []
        for owner_id, grantee_id, mailbox, rights in rows:
            for i in (owner_id, grantee_id):
                if i not in accounts:
                    accounts[i] = self.account(i)
            owner, grantee = accounts[owner_id], accounts[grantee_id]
            if owner is not None and grantee is not None:
                out.append(FolderRights(owner, grantee, mailbox, rights))
        return out

    def folder_rights_for(self, grantee: int | str) -> list[FolderRights]:
        """The per-folder ACL entries naming ``grantee`` (an account id or address)."""
        gid = self._id_of(grantee)
        return [] if gid is None else self._folder_rights("grantee_id = ?", (gid,))

    def folder_rights_of(self, owner: int | str, mailbox: str | None = None) -> list[FolderRights]:
        """The per-folder ACL entries of ``owner``'s folders (of ``mailbox`` only when given)."""
        oid = self._id_of(owner)
        if oid is None:
            return []
        if mailbox is None:
            return self._folder_rights("owner_id = ?", (oid,))
        return self._folder_rights("owner_id = ? AND mailbox = ?", (oid, mailbox))

    def all_folder_rights(self) -> list[FolderRights]:
        """Every per-folder ACL entry."""
        return self._folder_rights("1", ())

    def anyone_rights(self, *, owner: int | str | None = None, mailbox: str | None = None,
                      domain_of: int | None = None) -> list[AnyoneRights]:
        """``anyone`` / ``authenticated`` entries: of ``owner`` (an id or address; of its ``mailbox``),
        or those that reach user ``domain_of`` (the owners of their domain but themselves)."""
        where: list[str] = ["1"]
        params: list[Any] = []
        if owner is not None:
            oid = self._id_of(owner)
            if oid is None:
                return []
            where.append("a.owner_id = ?")
            params.append(oid)
        if mailbox is not None:
            where.append("a.mailbox = ?")
            params.append(mailbox)
        if domain_of is not None:
            where.append("a.owner_id != ? AND o.domain_id = (SELECT domain_id FROM users WHERE id = ?)")
            params += [domain_of, domain_of]
        rows = self.db.execute(
            "SELECT a.owner_id, a.identifier, a.mailbox, a.rights FROM folder_rights_anyone a"
            f" JOIN users o ON o.id = a.owner_id WHERE {' AND '.join(where)} ORDER BY a.owner_id, a.mailbox",
            params).fetchall()
        out = []
        for owner_id, identifier, name, rights in rows:
            acct = self.account(owner_id)
            if acct is not None:
                out.append(AnyoneRights(acct, identifier, name, rights))
        return out

    def shares_for(self, grantee: int, anyone: bool = False) -> tuple[list[Grant], list[FolderRights],
                                                                      list[AnyoneRights]]:
        """What is shared with ``grantee``: account grants, per-folder entries and (with ``anyone``)
        the ``anyone`` entries of the owners of their domain, in one pool call."""
        return (self.grants_for(grantee), self.folder_rights_for(grantee),
                self.anyone_rights(domain_of=grantee) if anyone else [])

    def list_grants(self, user: str | None = None) -> list[Grant]:
        """Every grant, or those where ``user`` is the owner or the grantee."""
        if user is None:
            return self._grants("1", ())
        uid = self._account_id(user)
        return [] if uid is None else self._grants("owner_id = ? OR grantee_id = ?", (uid, uid))

    def _account_id(self, address: str) -> int | None:
        acct = self.account_by_address(address)
        return None if acct is None else acct.id

    def failure_state(self, key: str) -> FailureState | None:
        row = self.db.execute(
            "SELECT key, count, window_start, locked_until, level FROM auth_failures WHERE key = ?",
            (key[:MAX_FAILURE_KEY],),
        ).fetchone()
        return FailureState(*row) if row else None

    def record_failure(self, key: str, *, now: float, window: float, threshold: int, lock_time: float,
                       lock_max: float) -> FailureState:
        """Count one failure for ``key`` atomically (across processes); lock it at ``threshold``.

        A lock lasts ``lock_time * 2**(level-1)`` seconds, capped at ``lock_max``,
        where level counts the locks since the last success.
        """
        key = key[:MAX_FAILURE_KEY]
        with self._tx() as db:
            if secrets.randbelow(PRUNE_ONE_IN) == 0:
                # Forget expired counters now and then, so sprayed user names cannot grow the table forever.
                db.execute("DELETE FROM auth_failures WHERE locked_until < ? AND window_start < ?",
                           (now, now - max(window, 86400.0)))
            row = db.execute(
                "SELECT count, window_start, locked_until, level FROM auth_failures WHERE key = ?", (key,)
            ).fetchone()
            count, start, locked, level = row if row else (0, now, 0.0, 0)
            if now - start > window:
                count, start = 0, now
            count += 1
            if count >= threshold:
                level += 1
                locked = now + min(lock_time * 2 ** (level - 1), lock_max)
                count, start = 0, now
            db.execute(
                "INSERT INTO auth_failures (key, count, window_start, locked_until, level) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET count = excluded.count, window_start = excluded.window_start,"
                " locked_until = excluded.locked_until, level = excluded.level",
                (key, count, start, locked, level),
            )
        return FailureState(key, count, start, locked, level)

    def clear_failures(self, key: str | None = None) -> int:
        """Forget the counters of ``key`` (all of them with None); returns how many."""
        with self._tx() as db:
            if key is None:
                return db.execute("DELETE FROM auth_failures").rowcount
            return db.execute("DELETE FROM auth_failures WHERE key = ?", (key,)).rowcount

    def list_failures(self) -> list[FailureState]:
        rows = self.db.execute(
            "SELECT key, count, window_start, locked_until, level FROM auth_failures ORDER BY key"
        ).fetchall()
        return [FailureState(*r) for r in rows]

    def add_token(self, digest: str, account_id: int, scopes: frozenset[str], label: str,
                  expires: float | None) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO tokens (digest, user_id, scopes, label, created, expires) VALUES (?, ?, ?, ?, ?, ?)",
                (digest, account_id, ",".join(sorted(scopes)), label, time.time(), expires),
            )
            return int(cur.lastrowid or 0)

    def token(self, digest: str) -> Token | None:
        """A live (not revoked, not expired) token by the SHA-256 digest of its secret."""
        row = self.db.execute(
            "SELECT id, user_id, scopes, label, created, expires FROM tokens WHERE digest = ? AND revoked = 0",
            (digest,),
        ).fetchone()
        if row is None or (row[5] is not None and row[5] < time.time()):
            return None
        acct = self.account(row[1])
        if acct is None:
            return None
        return Token(row[0], acct, frozenset(s for s in row[2].split(",") if s), row[3], row[4], row[5])

    def revoke_token(self, token_id: int) -> bool:
        with self._tx() as db:
            return db.execute("UPDATE tokens SET revoked = 1 WHERE id = ? AND revoked = 0", (token_id,)).rowcount == 1

    def list_tokens(self, user: str | None = None) -> list[dict[str, Any]]:
        sql = ("SELECT t.id, u.address, t.scopes, t.label, t.created, t.expires FROM tokens t JOIN users u"
               " ON u.id = t.user_id WHERE t.revoked = 0")
        args: tuple[Any, ...] = ()
        if user is not None:
            sql += " AND u.address = ?"
            args = (A.normalise(user),)
        rows = self.db.execute(sql + " ORDER BY t.id", args).fetchall()
        return [dict(zip(("id", "user", "scopes", "label", "created", "expires"), r, strict=True)) for r in rows]

    def token_owner(self, token_id: int) -> str | None:
        row = self.db.execute(
            "SELECT u.address FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.id = ?", (token_id,)
        ).fetchone()
        return row[0] if row else None

    def secret(self, name: str) -> bytes:
        """A random per-installation secret (created on first use, shared by every process)."""
        key = f"secret:{name}"
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            with self._tx() as db:
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, os.urandom(32).hex()))
                row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return bytes.fromhex(row[0])

    # -- administrators ------------------------------------------------------------------

    def admin_scopes(self, user: str) -> list[AdminScope]:
        rows = self.db.execute(
            "SELECT u.address, a.scope, d.name, g.address FROM admins a JOIN users u ON u.id = a.user_id"
            " LEFT JOIN domains d ON d.id = a.domain_id LEFT JOIN groups g ON g.id = a.dept_id"
            " WHERE u.address = ? ORDER BY a.id",
            (A.normalise(user),),
        ).fetchall()
        return [AdminScope(*r) for r in rows]

    def list_admins(self) -> list[AdminScope]:
        rows = self.db.execute(
            "SELECT u.address, a.scope, d.name, g.address FROM admins a JOIN users u ON u.id = a.user_id"
            " LEFT JOIN domains d ON d.id = a.domain_id LEFT JOIN groups g ON g.id = a.dept_id ORDER BY a.id"
        ).fetchall()
        return [AdminScope(*r) for r in rows]

    def dept_ancestors(self, dept_address: str) -> list[str]:
        """The department and every department above it (addresses), nearest first."""
        gid = self._group_id(dept_address)
        rows = self.db.execute(
            "WITH RECURSIVE up(id, n) AS (SELECT ?, 0 UNION SELECT g.parent_id, up.n + 1 FROM groups g JOIN up"
            " ON g.id = up.id WHERE g.parent_id IS NOT NULL) SELECT g.address FROM up JOIN groups g ON g.id = up.id"
            " ORDER BY up.n",
            (gid,),
        ).fetchall()
        return [r[0] for r in rows]

    def user_dept(self, address: str) -> str | None:
        row = self.db.execute(
            "SELECT g.address FROM users u JOIN groups g ON g.id = u.dept_id WHERE u.address = ?",
            (A.normalise(address),),
        ).fetchone()
        return row[0] if row else None

    def group_kind(self, address: str) -> tuple[str, str | None] | None:
        """(kind, parent department address) of a group or department."""
        row = self.db.execute(
            "SELECT g.kind, p.address FROM groups g LEFT JOIN groups p ON p.id = g.parent_id WHERE g.address = ?",
            (A.normalise(address),),
        ).fetchone()
        return (row[0], row[1]) if row else None
