"""Directory changes (domains, users, aliases, groups, departments, admins) and JSON export/import.

Blocking, like ``sqlite.py``. No scope checks here: callers acting for an
administrator check with ``scope.py`` first. Passwords arrive already hashed
(``mailsrv.auth.passwords``): the directory never sees a clear-text password.
"""

from __future__ import annotations

import time
from typing import Any

from mailsrv.directory import addresses as A
from mailsrv.directory.filesettings import FileSettings
from mailsrv.directory.sqlite import POST_POLICIES, SCOPES, SqliteCore
from mailsrv.directory.types import (
    FOLDER_RIGHTS,
    GRANT_RIGHTS,
    Account,
    Conflict,
    DirectoryError,
    NotFound,
)

USER_FIELDS = ("display_name", "title", "phone", "state", "quota_bytes", "quota_messages",
               "may_send_outside", "networks", "dept")


def _bad(exc: ValueError) -> DirectoryError:
    return DirectoryError(str(exc))


def _check_limits(**limits: Any) -> None:
    """A limit (max_users, max_storage, quota_bytes, quota_messages) is None (unlimited) or a count >= 0."""
    for key, value in limits.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise DirectoryError(f"{key} must be a whole number >= 0, or none for unlimited")


class SyncDirectory(FileSettings, SqliteCore):
    """Lookups plus every change an administrator can make."""

    # -- domains -------------------------------------------------------------------------

    def _domain_id(self, name: str) -> int:
        row = self.db.execute("SELECT id FROM domains WHERE name = ?", (A.normalise(name),)).fetchone()
        if row is None:
            raise NotFound(f"no domain {A.normalise(name)}")
        return int(row[0])

    def _address_taken(self, address: str) -> bool:
        for sql in ("SELECT 1 FROM users WHERE address = ?", "SELECT 1 FROM aliases WHERE address = ?",
                    "SELECT 1 FROM groups WHERE address = ?"):
            if self.db.execute(sql, (address,)).fetchone():
                return True
        return False

    def add_domain(self, name: str, *, max_users: int | None = None, max_storage: int | None = None,
                   networks: tuple[str, ...] = ()) -> None:
        n = A.normalise(name)
        if not A.valid_domain(n):
            raise DirectoryError(f"{name!r} is not a domain name")
        _check_limits(max_users=max_users, max_storage=max_storage)
        try:
            nets = A.check_networks(networks)
        except ValueError as exc:
            raise _bad(exc) from None
        with self._tx() as db:
            if self._domain_row(n) is not None:
                raise Conflict(f"domain {n} exists already")
            db.execute("INSERT INTO domains (name, max_users, max_storage, networks, created) VALUES (?, ?, ?, ?, ?)",
                       (n, max_users, max_storage, ",".join(nets), time.time()))

    def set_domain(self, name: str, **changes: Any) -> None:
        allowed = {"max_users", "max_storage", "networks", "catchall"}
        with self._tx() as db:
            did = self._domain_id(name)
            for key, value in changes.items():
                if key not in allowed:
                    raise DirectoryError(f"unknown domain field {key}")
                if key in ("max_users", "max_storage"):
                    _check_limits(**{key: value})
                if key == "networks":
                    try:
                        value = ",".join(A.check_networks(value))
                    except ValueError as exc:
                        raise _bad(exc) from None
                if key == "catchall" and value is not None:
                    acct = self._user_by_exact(A.normalise(value))
                    if acct is None or acct.domain != A.normalise(name):
                        raise NotFound(f"catch-all must be a user of {A.normalise(name)}")
                    value = acct.id
                db.execute(f"UPDATE domains SET {key} = ? WHERE id = ?", (value, did))

    def del_domain(self, name: str) -> None:
        with self._tx() as db:
            did = self._domain_id(name)
            if db.execute("SELECT 1 FROM users WHERE domain_id = ?", (did,)).fetchone():
                raise Conflict(f"domain {A.normalise(name)} still has users (delete them first)")
            db.execute("DELETE FROM groups WHERE domain_id = ? AND kind = 'group'", (did,))
            # departments: children before parents (ON DELETE RESTRICT on parent_id)
            while db.execute("DELETE FROM groups WHERE domain_id = ? AND id NOT IN "
                             "(SELECT parent_id FROM groups WHERE parent_id IS NOT NULL)", (did,)).rowcount:
                pass
            db.execute("DELETE FROM domains WHERE id = ?", (did,))

    def add_domain_alias(self, alias: str, target: str) -> None:
        a = A.normalise(alias)
        if not A.valid_domain(a):
            raise DirectoryError(f"{alias!r} is not a domain name")
        with self._tx() as db:
            did = self._domain_id(target)
            if self._domain_row(a) is not None:
                raise Conflict(f"domain {a} exists already")
            db.execute("INSERT INTO domain_aliases (name, domain_id) VALUES (?, ?)", (a, did))

    def del_domain_alias(self, alias: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM domain_aliases WHERE name = ?", (A.normalise(alias),)).rowcount != 1:
                raise NotFound(f"no domain alias {A.normalise(alias)}")

    def list_domains(self) -> list[dict[str, Any]]:
        out = []
        for did, name, mu, ms, nets, catch in self.db.execute(
            "SELECT d.id, d.name, d.max_users, d.max_storage, d.networks, u.address FROM domains d"
            " LEFT JOIN users u ON u.id = d.catchall ORDER BY d.name"
        ).fetchall():
            aliases = [r[0] for r in self.db.execute(
                "SELECT name FROM domain_aliases WHERE domain_id = ? ORDER BY name", (did,))]
            users = self.db.execute("SELECT count(*) FROM users WHERE domain_id = ?", (did,)).fetchone()[0]
            out.append({"name": name, "max_users": mu, "max_storage": ms, "networks": list(_split(nets)),
                        "catchall": catch, "aliases": aliases, "users": users})
        return out

    # -- users ----------------------------------------------------------------------------

    # A domain's max_storage is its own quota root (RFC 9208 §5; the store keeps the domain's total usage
    # and enforces it), and a user's quota_bytes is the user's root: both apply, independently, as
    # Stalwart's tenant and account quotas do. A user without a quota is legitimate under a domain limit
    # (the domain root alone applies), and quotas may add up to more than the domain's limit (the domain
    # root still stops the domain there). So no change here is refused for the sum of quotas, and an
    # export always imports again whatever order its limits were set in.

    def add_user(self, address: str, *, password_hash: str = "", scram: str = "", display_name: str = "",
                 dept: str | None = None, title: str = "", phone: str = "", quota_bytes: int | None = None,
                 quota_messages: int | None = None, may_send_outside: bool = True,
                 networks: tuple[str, ...] = (), state: str = "active", store: str | None = None) -> Account:
        _check_limits(quota_bytes=quota_bytes, quota_messages=quota_messages)
        try:
            a = A.check_new(address)
            nets = A.check_networks(networks)
            if store:
                A.check_store(store)
        except ValueError as exc:
            raise _bad(exc) from None
        local, domain = A.split(a)
        with self._tx() as db:
            did = self._domain_id(domain)
            if self._address_taken(a):
                raise Conflict(f"{a} is taken")
            max_users = db.execute("SELECT max_users FROM domains WHERE id = ?", (did,)).fetchone()[0]
            if max_users is not None:
                n = db.execute("SELECT count(*) FROM users WHERE domain_id = ?", (did,)).fetchone()[0]
                if n >= max_users:
                    raise Conflict(f"domain {domain} has its maximum of {max_users} mailboxes")
            dept_id = self._dept_id(dept, domain) if dept else None
            cur = db.execute(
                "INSERT INTO users (domain_id, address, display_name, dept_id, title, phone, state, quota_bytes,"
                " quota_messages, may_send_outside, networks, store, password_hash, scram, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (did, a, display_name, dept_id, title, phone, state, quota_bytes, quota_messages,
                 int(may_send_outside), ",".join(nets), store or f"{self.store_root}/{domain}/{local}",
                 password_hash, scram, time.time()),
            )
            acct = self.account(int(cur.lastrowid or 0))
        assert acct is not None
        return acct

    def _dept_id(self, dept: str, domain: str | None = None) -> int:
        d = self.canonical(dept) or A.normalise(dept)
        row = self.db.execute(
            "SELECT g.id, dm.name FROM groups g JOIN domains dm ON dm.id = g.domain_id WHERE g.address = ? AND g.kind = 'dept'",
            (d,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no department {d}")
        if domain is not None and row[1] != domain:
            raise DirectoryError(f"department {d} is not in domain {domain}")
        return int(row[0])

    def _user_id(self, address: str) -> int:
        acct = self._user_by_exact(self.canonical(address) or A.normalise(address))
        if acct is None:
            raise NotFound(f"no user {A.normalise(address)}")
        return acct.id

    def set_user(self, address: str, **changes: Any) -> Account:
        with self._tx() as db:
            uid = self._user_id(address)
            acct = self.account(uid)
            assert acct is not None
            for key, value in changes.items():
                if key not in USER_FIELDS:
                    raise DirectoryError(f"unknown user field {key}")
                col = key
                if key == "state" and value not in ("active", "suspended"):
                    raise DirectoryError("state is active or suspended")
                if key == "networks":
                    try:
                        value = ",".join(A.check_networks(value))
                    except ValueError as exc:
                        raise _bad(exc) from None
                if key in ("quota_bytes", "quota_messages"):
                    _check_limits(**{key: value})
                if key == "may_send_outside":
                    value = int(bool(value))
                if key == "dept":
                    col, value = "dept_id", (self._dept_id(value, acct.domain) if value else None)
                db.execute(f"UPDATE users SET {col} = ? WHERE id = ?", (value, uid))
            self._bump_generation(uid)  # state and networks decide logins: cached ones are re-checked
            out = self.account(uid)
        assert out is not None
        return out

    def del_user(self, address: str) -> None:
        with self._tx() as db:
            uid = self._user_id(address)
            db.execute("DELETE FROM admins WHERE user_id = ?", (uid,))
            db.execute("DELETE FROM users WHERE id = ?", (uid,))

    def user_info(self, address: str) -> dict[str, Any]:
        uid = self._user_id(address)
        acct = self.account(uid)
        assert acct is not None
        nets = self.db.execute("SELECT networks FROM users WHERE id = ?", (uid,)).fetchone()[0]
        aliases = [r[0] for r in self.db.execute("SELECT address FROM aliases WHERE user_id = ? ORDER BY address", (uid,))]
        groups = [r[0] for r in self.db.execute(
            "SELECT g.address FROM group_members m JOIN groups g ON g.id = m.group_id WHERE m.user_id = ? ORDER BY 1", (uid,))]
        dept = self.user_dept(acct.address)
        return {**account_dict(acct), "networks": list(_split(nets)), "aliases": aliases, "groups": groups,
                "dept": dept, "admin": [s.scope if s.scope == "super" else f"{s.scope}:{s.domain or s.dept}"
                                        for s in self.admin_scopes(acct.address)]}

    def list_users(self, domain: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.accounts_page(domain, after, 1000)
            if not page:
                return out
            out.extend(account_dict(a) for a in page)
            after = page[-1].id

    # -- aliases ----------------------------------------------------------------------------

    def add_alias(self, alias: str, user: str) -> None:
        try:
            a = A.check_new(alias)
        except ValueError as exc:
            raise _bad(exc) from None
        with self._tx() as db:
            uid = self._user_id(user)
            acct = self.account(uid)
            assert acct is not None
            if A.split(a)[1] != acct.domain:
                self._domain_id(A.split(a)[1])  # must be one of our domains
            if self._address_taken(a):
                raise Conflict(f"{a} is taken")
            db.execute("INSERT INTO aliases (address, user_id) VALUES (?, ?)", (a, uid))

    def del_alias(self, alias: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM aliases WHERE address = ?", (A.normalise(alias),)).rowcount != 1:
                raise NotFound(f"no alias {A.normalise(alias)}")

    def alias_owner(self, alias: str) -> str | None:
        row = self.db.execute("SELECT u.address FROM aliases a JOIN users u ON u.id = a.user_id WHERE a.address = ?",
                              (A.normalise(alias),)).fetchone()
        return row[0] if row else None

    def list_aliases(self, domain: str | None = None) -> list[dict[str, str]]:
        rows = self.db.execute(
            "SELECT a.address, u.address, d.name FROM aliases a JOIN users u ON u.id = a.user_id"
            " JOIN domains d ON d.id = u.domain_id ORDER BY a.address").fetchall()
        return [{"alias": a, "user": u} for a, u, d in rows if domain is None or d == A.normalise(domain)]

    # -- groups and departments -----------------------------------------------------------

    def add_group(self, address: str, *, name: str = "", post_policy: str = "anyone",
                  kind: str = "group", parent: str | None = None) -> None:
        if post_policy not in POST_POLICIES:
            raise DirectoryError(f"post policy is one of {', '.join(POST_POLICIES)}")
        try:
            a = A.check_new(address)
        except ValueError as exc:
            raise _bad(exc) from None
        local, domain = A.split(a)
        with self._tx() as db:
            did = self._domain_id(domain)
            if self._address_taken(a):
                raise Conflict(f"{a} is taken")
            parent_id, path = None, name or local
            if parent:
                parent_id = self._dept_id(parent, domain)
                ppath = db.execute("SELECT path FROM groups WHERE id = ?", (parent_id,)).fetchone()[0]
                path = f"{ppath}/{name or local}"
            db.execute("INSERT INTO groups (domain_id, address, name, kind, parent_id, path, post_policy)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (did, a, name or local, kind, parent_id, path if kind == "dept" else "", post_policy))

    def add_dept(self, address: str, *, name: str = "", parent: str | None = None,
                 post_policy: str = "domain") -> None:
        self.add_group(address, name=name, post_policy=post_policy, kind="dept", parent=parent)

    def move_dept(self, address: str, new_parent: str | None) -> None:
        with self._tx() as db:
            gid = self._dept_id(address)
            domain = A.split(A.normalise(address))[1]
            pid = self._dept_id(new_parent, domain) if new_parent else None
            if pid is not None and (pid == gid or address_in(self.dept_ancestors(new_parent or ""), address, self)):
                raise Conflict("a department cannot move below itself")
            db.execute("UPDATE groups SET parent_id = ? WHERE id = ?", (pid, gid))
            self._repath(gid)

    def _repath(self, gid: int) -> None:
        name, pid = self.db.execute("SELECT name, parent_id FROM groups WHERE id = ?", (gid,)).fetchone()
        path = name
        if pid is not None:
            path = self.db.execute("SELECT path FROM groups WHERE id = ?", (pid,)).fetchone()[0] + "/" + name
        self.db.execute("UPDATE groups SET path = ? WHERE id = ?", (path, gid))
        for (child,) in self.db.execute("SELECT id FROM groups WHERE parent_id = ?", (gid,)).fetchall():
            self._repath(child)

    def set_group(self, address: str, *, post_policy: str | None = None, name: str | None = None) -> None:
        with self._tx() as db:
            gid = self._group_id(address)
            if post_policy is not None:
                if post_policy not in POST_POLICIES:
                    raise DirectoryError(f"post policy is one of {', '.join(POST_POLICIES)}")
                db.execute("UPDATE groups SET post_policy = ? WHERE id = ?", (post_policy, gid))
            if name is not None:
                db.execute("UPDATE groups SET name = ? WHERE id = ?", (name, gid))
                if db.execute("SELECT kind FROM groups WHERE id = ?", (gid,)).fetchone()[0] == "dept":
                    self._repath(gid)

    def del_group(self, address: str) -> None:
        with self._tx() as db:
            gid = self._group_id(address)
            if db.execute("SELECT 1 FROM groups WHERE parent_id = ?", (gid,)).fetchone():
                raise Conflict(f"{A.normalise(address)} has sub-departments (move or delete them first)")
            db.execute("DELETE FROM admins WHERE dept_id = ?", (gid,))
            db.execute("DELETE FROM groups WHERE id = ?", (gid,))

    def add_member(self, group: str, member: str) -> str:
        """Add a user, group or outside address; returns what it was ("user", "group", "outside")."""
        m = A.normalise(member)
        with self._tx() as db:
            gid = self._group_id(group)
            res = self.resolve(m)
            value: int | str
            if res.kind in ("user", "alias", "disabled"):
                assert res.account is not None
                col, value, what = "user_id", res.account.id, "user"
            elif res.kind == "group":
                assert res.group is not None
                col, value, what = "member_group_id", self._group_id(res.group), "group"
                if value == gid:
                    raise Conflict("a group cannot contain itself")
            elif res.kind == "outside":
                try:
                    col, value, what = "external", A.check_any(m), "outside"
                except ValueError as exc:
                    raise _bad(exc) from None
            else:
                raise NotFound(f"no user or group {m} in our domains")
            if db.execute(f"SELECT 1 FROM group_members WHERE group_id = ? AND {col} = ?", (gid, value)).fetchone():
                raise Conflict(f"{m} is a member already")
            db.execute(f"INSERT INTO group_members (group_id, {col}) VALUES (?, ?)", (gid, value))
        return what

    def add_members_bulk(self, group: str, user_ids: list[int]) -> None:
        """Add many local users at once (provisioning, tests); duplicates are ignored."""
        with self._tx() as db:
            gid = self._group_id(group)
            db.executemany("INSERT OR IGNORE INTO group_members (group_id, user_id) VALUES (?, ?)",
                           [(gid, u) for u in user_ids])

    def del_member(self, group: str, member: str) -> None:
        m = A.normalise(member)
        with self._tx() as db:
            gid = self._group_id(group)
            res = self.resolve(m)
            n = 0
            if res.account is not None and res.kind != "catchall":
                n = db.execute("DELETE FROM group_members WHERE group_id = ? AND user_id = ?", (gid, res.account.id)).rowcount
            elif res.kind == "group" and res.group:
                n = db.execute("DELETE FROM group_members WHERE group_id = ? AND member_group_id = ?",
                               (gid, self._group_id(res.group))).rowcount
            else:
                n = db.execute("DELETE FROM group_members WHERE group_id = ? AND external = ?", (gid, m)).rowcount
            if n == 0:
                raise NotFound(f"{m} is not a member of {A.normalise(group)}")

    def add_sender(self, group: str, sender: str) -> None:
        """List a sender allowed to post to a group with post policy "listed"."""
        try:
            s = A.check_any(sender)
        except ValueError as exc:
            raise _bad(exc) from None
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO group_senders (group_id, address) VALUES (?, ?)", (self._group_id(group), s))

    def del_sender(self, group: str, sender: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM group_senders WHERE group_id = ? AND address = ?",
                          (self._group_id(group), A.normalise(sender))).rowcount != 1:
                raise NotFound(f"{A.normalise(sender)} is not a listed sender of {A.normalise(group)}")

    def revoke_send_as(self, group: str, user: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM group_send_as WHERE group_id = ? AND user_id = ?",
                          (self._group_id(group), self._user_id(user))).rowcount != 1:
                raise NotFound(f"{A.normalise(user)} may not send as {A.normalise(group)}")

    def grant_send_as(self, group: str, user: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO group_send_as (group_id, user_id) VALUES (?, ?)",
                       (self._group_id(group), self._user_id(user)))

    def group_info(self, address: str) -> dict[str, Any]:
        gid = self._group_id(address)
        addr, name, kind, policy, path, parent = self.db.execute(
            "SELECT g.address, g.name, g.kind, g.post_policy, g.path, p.address FROM groups g"
            " LEFT JOIN groups p ON p.id = g.parent_id WHERE g.id = ?", (gid,)).fetchone()
        members = [r[0] for r in self.db.execute(
            "SELECT coalesce(u.address, g.address, m.external) FROM group_members m LEFT JOIN users u ON u.id = m.user_id"
            " LEFT JOIN groups g ON g.id = m.member_group_id WHERE m.group_id = ? ORDER BY 1", (gid,))]
        senders = [r[0] for r in self.db.execute("SELECT address FROM group_senders WHERE group_id = ? ORDER BY 1", (gid,))]
        send_as = [r[0] for r in self.db.execute(
            "SELECT u.address FROM group_send_as s JOIN users u ON u.id = s.user_id WHERE s.group_id = ? ORDER BY 1", (gid,))]
        return {"address": addr, "name": name, "kind": kind, "post_policy": policy, "path": path or None,
                "parent": parent, "members": members, "senders": senders, "send_as": send_as}

    def list_groups(self, domain: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT g.address, g.name, g.kind, g.post_policy, g.path, p.address, d.name FROM groups g"
            " JOIN domains d ON d.id = g.domain_id LEFT JOIN groups p ON p.id = g.parent_id ORDER BY g.kind, g.path, g.address"
        ).fetchall()
        return [{"address": a, "name": n, "kind": k, "post_policy": pp, "path": path or None, "parent": par}
                for a, n, k, pp, path, par, d in rows
                if (domain is None or d == A.normalise(domain)) and (kind is None or k == kind)]

    # -- administrators -------------------------------------------------------------------

    def grant_admin(self, user: str, scope: str, target: str | None = None) -> None:
        if scope not in SCOPES:
            raise DirectoryError(f"scope is one of {', '.join(SCOPES)}")
        with self._tx() as db:
            uid = self._user_id(user)
            did = self._domain_id(target) if scope == "domain" and target else None
            dept = self._dept_id(target) if scope == "dept" and target else None
            if scope != "super" and did is None and dept is None:
                raise DirectoryError(f"a {scope} admin needs a target {scope}")
            if db.execute("SELECT 1 FROM admins WHERE user_id = ? AND scope = ? AND domain_id IS ? AND dept_id IS ?",
                          (uid, scope, did, dept)).fetchone():
                return
            db.execute("INSERT INTO admins (user_id, scope, domain_id, dept_id) VALUES (?, ?, ?, ?)",
                       (uid, scope, did, dept))

    def revoke_admin(self, user: str, scope: str | None = None, target: str | None = None) -> int:
        with self._tx() as db:
            uid = self._user_id(user)
            if scope is None:
                return db.execute("DELETE FROM admins WHERE user_id = ?", (uid,)).rowcount
            did = self._domain_id(target) if scope == "domain" and target else None
            dept = self._dept_id(target) if scope == "dept" and target else None
            return db.execute("DELETE FROM admins WHERE user_id = ? AND scope = ? AND domain_id IS ? AND dept_id IS ?",
                              (uid, scope, did, dept)).rowcount


    # -- shared access ---------------------------------------------------------------------

    def grant(self, owner: str, grantee: str, rights: str) -> bool:
        """Let ``grantee`` read (``"read"``) or read and change (``"write"``) ``owner``'s mail.
        Replaces an earlier grant between the two; True when something changed."""
        if rights not in GRANT_RIGHTS:
            raise DirectoryError(f"rights is one of {', '.join(GRANT_RIGHTS)}")
        with self._tx() as db:
            oid, gid = self._login_id(owner), self._login_id(grantee)
            if oid == gid:
                raise DirectoryError("a user cannot be granted their own account")
            row = db.execute("SELECT rights FROM grants WHERE owner_id = ? AND grantee_id = ?", (oid, gid)).fetchone()
            if row is not None and row[0] == rights:
                return False
            db.execute("INSERT INTO grants (owner_id, grantee_id, rights, created) VALUES (?, ?, ?, ?)"
                       " ON CONFLICT (owner_id, grantee_id) DO UPDATE SET rights = excluded.rights",
                       (oid, gid, rights, time.time()))
            return True

    def _login_id(self, address: str) -> int:
        """The account id of a user's address or alias (raises NotFound)."""
        uid = self._account_id(address)
        if uid is None:
            raise NotFound(f"no user {A.normalise(address)}")
        return uid

    def revoke(self, owner: str, grantee: str) -> bool:
        """End ``grantee``'s access to ``owner``'s mail (the account grant and every per-folder entry);
        False when there was none."""
        with self._tx() as db:
            oid, gid = self._login_id(owner), self._login_id(grantee)
            gone = db.execute("DELETE FROM grants WHERE owner_id = ? AND grantee_id = ?", (oid, gid)).rowcount
            # the account's and every folder's: after a revoke the grantee sees nothing of the owner's
            gone += db.execute("DELETE FROM folder_rights WHERE owner_id = ? AND grantee_id = ?", (oid, gid)).rowcount
            return gone > 0


    def set_folder_rights(self, owner: str, grantee: str, mailbox: str, rights: str | None) -> bool:
        """Set ``grantee``'s RFC 4314 rights on ``owner``'s folder ``mailbox`` (``""``: none there,
        whatever the account grant gives; None: remove the entry, the account grant applies again).
        True when something changed."""
        if rights is not None and (set(rights) - set(FOLDER_RIGHTS) or len(set(rights)) != len(rights)):
            raise DirectoryError(f"rights are letters among {FOLDER_RIGHTS}, each once")
        if not mailbox or len(mailbox) > 1000:
            raise DirectoryError("a folder name is 1 to 1000 characters")
        with self._tx() as db:
            oid, gid = self._login_id(owner), self._login_id(grantee)
            if oid == gid:
                raise DirectoryError("a user cannot be granted their own account")
            key = (oid, mailbox, gid)
            row = db.execute("SELECT rights FROM folder_rights WHERE owner_id = ? AND mailbox = ? AND grantee_id = ?",
                             key).fetchone()
            if rights is None:
                return row is not None and db.execute(
                    "DELETE FROM folder_rights WHERE owner_id = ? AND mailbox = ? AND grantee_id = ?", key).rowcount > 0
            rights = "".join(r for r in FOLDER_RIGHTS if r in rights)
            if row is not None and row[0] == rights:
                return False
            db.execute("INSERT INTO folder_rights (owner_id, mailbox, grantee_id, rights, created) VALUES (?, ?, ?, ?, ?)"
                       " ON CONFLICT (owner_id, mailbox, grantee_id) DO UPDATE SET rights = excluded.rights",
                       (*key, rights, time.time()))
            return True

    def set_anyone_rights(self, owner: str, identifier: str, mailbox: str, rights: str | None) -> bool:
        """Set (or remove, None / "") the ``anyone`` or ``authenticated`` entry of ``owner``'s folder
        ``mailbox``: rights of every user of the owner's domain. True when something changed."""
        if identifier not in ("anyone", "authenticated"):
            raise DirectoryError("the identifier is anyone or authenticated")
        if rights and (set(rights) - set(FOLDER_RIGHTS)):
            raise DirectoryError(f"rights are letters among {FOLDER_RIGHTS}")
        with self._tx() as db:
            key = (self._login_id(owner), mailbox, identifier)
            if not rights:
                return db.execute("DELETE FROM folder_rights_anyone WHERE owner_id = ? AND mailbox = ? AND"
                                  " identifier = ?", key).rowcount > 0
            rights = "".join(r for r in FOLDER_RIGHTS if r in rights)
            row = db.execute("SELECT rights FROM folder_rights_anyone WHERE owner_id = ? AND mailbox = ? AND"
                             " identifier = ?", key).fetchone()
            if row is not None and row[0] == rights:
                return False
            db.execute("INSERT INTO folder_rights_anyone (owner_id, mailbox, identifier, rights, created)"
                       " VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner_id, mailbox, identifier)"
                       " DO UPDATE SET rights = excluded.rights", (*key, rights, time.time()))
            return True

    def move_folder_rights(self, owner: int, old: str, new: str) -> int:
        """The owner renamed ``old`` (and its children) to ``new``: their ACL entries follow. Entries
        already at a new name (left by a deleted folder) are replaced."""
        moved = 0
        with self._tx() as db:
            prefix = old + "/"
            for table in _ACL_TABLES:
                rows = db.execute(f"SELECT DISTINCT mailbox FROM {table} WHERE owner_id = ? AND (mailbox = ? OR"
                                  " substr(mailbox, 1, ?) = ?)", (owner, old, len(prefix), prefix)).fetchall()
                names = {m for (m,) in rows if m == old or m.startswith(prefix)}
                for m in sorted(names):
                    target = new + m[len(old):]
                    db.execute(f"DELETE FROM {table} WHERE owner_id = ? AND mailbox = ?", (owner, target))
                    db.execute(f"UPDATE {table} SET mailbox = ? WHERE owner_id = ? AND mailbox = ?", (target, owner, m))
                moved += len(names)
        return moved

    def drop_folder_rights(self, owner: int, mailbox: str) -> int:
        """The owner deleted ``mailbox``: its ACL entries go (its children keep theirs, as IMAP DELETE
        keeps the children)."""
        with self._tx() as db:
            return sum(db.execute(f"DELETE FROM {table} WHERE owner_id = ? AND mailbox = ?", (owner, mailbox)).rowcount
                       for table in _ACL_TABLES)

    def folder_changed(self, owner: int, op: str, name: str, other: str = "") -> int:
        """The owner's folder ``name`` was created ("create", ``other``: its parent), deleted
        ("delete") or renamed to ``other`` ("rename"): its ACL entries follow (IMAP and JMAP call this)."""
        if op == "create":
            return self.inherit_folder_rights(owner, other, name)
        if op == "delete":
            return self.drop_folder_rights(owner, name)
        return self.move_folder_rights(owner, name, other)

    def inherit_folder_rights(self, owner: int, parent: str, child: str) -> int:
        """A new folder ``child`` gets a copy of ``parent``'s ACL entries (Dovecot's acl plugin does the
        same at CREATE), replacing any left at that name by a deleted folder."""
        now = time.time()
        with self._tx() as db:
            self.drop_folder_rights(owner, child)
            return db.execute(
                "INSERT INTO folder_rights (owner_id, mailbox, grantee_id, rights, created)"
                " SELECT owner_id, ?, grantee_id, rights, ? FROM folder_rights WHERE owner_id = ? AND mailbox = ?",
                (child, now, owner, parent)).rowcount + db.execute(
                "INSERT INTO folder_rights_anyone (owner_id, mailbox, identifier, rights, created)"
                " SELECT owner_id, ?, identifier, rights, ? FROM folder_rights_anyone WHERE owner_id = ? AND mailbox = ?",
                (child, now, owner, parent)).rowcount


#: the per-folder ACL tables (a folder's entries follow its renames in each)
_ACL_TABLES = ("folder_rights", "folder_rights_anyone")


def _split(text: str) -> tuple[str, ...]:
    return tuple(n for n in text.split(",") if n)


def address_in(items: list[str], address: str, d: SqliteCore) -> bool:
    target = d.canonical(address) or A.normalise(address)
    return target in items


def account_dict(a: Account) -> dict[str, Any]:
    return {"id": a.id, "address": a.address, "domain": a.domain, "display_name": a.display_name,
            "state": a.state, "store": a.store, "backend": a.backend, "quota_bytes": a.quota_bytes,
            "quota_messages": a.quota_messages, "may_send_outside": a.may_send_outside,
            "department": a.department, "title": a.title, "phone": a.phone}
