"""Administrator scopes: who may change what (used by the CLI and the admin API before every change).

- super: everything;
- domain admin of D: every user, alias, group and department of D, and D's settings
  (not creating or deleting domains, not granting super);
- department admin of X: users whose department is X or below it, and the
  departments below X.
"""

from __future__ import annotations

from mailsrv.directory import addresses as A
from mailsrv.directory.sqlite import SqliteCore
from mailsrv.directory.types import AdminScope, PermissionDenied


class Actor:
    """The administrator a change is made for; ``Actor.operator()`` is the local root operator."""

    def __init__(self, name: str, scopes: list[AdminScope] | None) -> None:
        self.name = name
        self.scopes = scopes  # None: unrestricted operator

    @classmethod
    def operator(cls) -> Actor:
        return cls("operator", None)

    @classmethod
    def admin(cls, d: SqliteCore, address: str) -> Actor:
        scopes = d.admin_scopes(address)
        if not scopes:
            raise PermissionDenied(f"{A.normalise(address)} is not an administrator")
        return cls(A.normalise(address), scopes)

    @property
    def is_super(self) -> bool:
        return self.scopes is None or any(s.scope == "super" for s in self.scopes)

    def can_domain(self, d: SqliteCore, domain: str) -> bool:
        if self.is_super:
            return True
        assert self.scopes is not None
        row = d._domain_row(A.normalise(domain))
        canon = row[1] if row else A.normalise(domain)
        return any(s.scope == "domain" and s.domain == canon for s in self.scopes)

    def can_dept(self, d: SqliteCore, dept: str, *, strictly_below: bool = False) -> bool:
        canon = d.canonical(dept) or A.normalise(dept)
        if self.can_domain(d, A.split(canon)[1]):
            return True
        assert self.scopes is not None
        chain = d.dept_ancestors(canon)
        if strictly_below:
            chain = chain[1:]
        return any(s.scope == "dept" and s.dept in chain for s in self.scopes)

    def can_address(self, d: SqliteCore, address: str) -> bool:
        """A user, alias, group or department address (existing or to be created)."""
        canon = d.canonical(address) or A.normalise(address)
        try:
            domain = A.split(canon)[1]
        except ValueError:
            return False
        if self.can_domain(d, domain):
            return True
        kind = d.group_kind(canon)
        if kind is not None:
            return kind[0] == "dept" and self.can_dept(d, canon, strictly_below=True)
        dept = d.user_dept(canon)
        if dept is None:
            owner = d.db.execute("SELECT u.address FROM aliases a JOIN users u ON u.id = a.user_id"
                                 " WHERE a.address = ?", (canon,)).fetchone()
            dept = d.user_dept(owner[0]) if owner else None
        return dept is not None and self.can_dept(d, dept)

    # -- raising forms ------------------------------------------------------------------

    def require_super(self) -> None:
        if not self.is_super:
            raise PermissionDenied(f"{self.name}: only a super administrator may do this")

    def require_domain(self, d: SqliteCore, domain: str) -> None:
        if not self.can_domain(d, domain):
            raise PermissionDenied(f"{self.name}: domain {A.normalise(domain)} is not in your scope")

    def require_dept(self, d: SqliteCore, dept: str) -> None:
        if not self.can_dept(d, dept):
            raise PermissionDenied(f"{self.name}: department {A.normalise(dept)} is not in your scope")

    def require_address(self, d: SqliteCore, address: str) -> None:
        if not self.can_address(d, address):
            raise PermissionDenied(f"{self.name}: {A.normalise(address)} is not in your scope")
