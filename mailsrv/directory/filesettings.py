"""Per-domain and per-user file-link settings (docs/files.md "Per domain and per user"): the
``convert_over`` threshold of a domain or a user, overriding ``[files] convert_over`` (user over
domain over the setup-wide value).

Blocking, mixed into :class:`~mailsrv.directory.manage.SyncDirectory`. The table is additive and
made on the first change (``CREATE TABLE IF NOT EXISTS``), so a directory made before it needs no
migration: reads of a directory without it answer "no settings". Rows go with their user or domain
(``ON DELETE CASCADE``).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from mailsrv.directory import addresses as A
from mailsrv.directory.types import DirectoryError, NotFound

DDL = """
CREATE TABLE IF NOT EXISTS file_settings (
    user_id INTEGER UNIQUE REFERENCES users(id) ON DELETE CASCADE,
    domain_id INTEGER UNIQUE REFERENCES domains(id) ON DELETE CASCADE,
    convert_over INTEGER NOT NULL CHECK (convert_over >= 0),
    CHECK ((user_id IS NULL) != (domain_id IS NULL))
)
"""


def _missing_table(exc: sqlite3.OperationalError) -> bool:
    return "no such table" in str(exc)


class FileSettings:
    """``convert_over`` per domain and per user. Needs ``self.db`` and ``self._tx()`` (SqliteCore)."""

    db: sqlite3.Connection
    _tx: Any
    _domain_row: Any

    def convert_settings(self) -> tuple[dict[int, int], dict[str, int]]:
        """(account id -> threshold, domain name -> threshold) of every override; 0 = never convert."""
        try:
            users = self.db.execute("SELECT user_id, convert_over FROM file_settings"
                                    " WHERE user_id IS NOT NULL").fetchall()
            domains = self.db.execute("SELECT d.name, f.convert_over FROM file_settings f"
                                      " JOIN domains d ON d.id = f.domain_id").fetchall()
        except sqlite3.OperationalError as exc:
            if _missing_table(exc):
                return {}, {}
            raise
        return dict(users), dict(domains)

    def list_convert_settings(self) -> list[dict[str, Any]]:
        """Every override as ``{"scope": domain or user address, "convert_over": N}``, domains first."""
        try:
            rows = self.db.execute(
                "SELECT d.name, f.convert_over, 0 FROM file_settings f JOIN domains d ON d.id = f.domain_id"
                " UNION ALL SELECT u.address, f.convert_over, 1 FROM file_settings f"
                " JOIN users u ON u.id = f.user_id ORDER BY 3, 1").fetchall()
        except sqlite3.OperationalError as exc:
            if _missing_table(exc):
                return []
            raise
        return [{"scope": s, "convert_over": n} for s, n, _ in rows]

    def set_convert_over(self, scope: str, value: int | None) -> dict[str, Any]:
        """Set the threshold of ``scope`` (a local domain, or a user's address) to ``value`` bytes (0: never
        convert their mail), or remove it (None: the domain's, else ``[files] convert_over``, applies).
        Raises NotFound for an unknown domain or user, DirectoryError for a bad value."""
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise DirectoryError("convert_over must be a whole number of bytes >= 0")
        scope = A.normalise(scope)
        with self._tx() as db:
            if "@" in scope:
                row = db.execute("SELECT id, address FROM users WHERE address = ?", (scope,)).fetchone()
                if row is None:
                    raise NotFound(f"no user {scope}")
                col = "user_id"
            else:
                row = self._domain_row(scope)
                if row is None:
                    raise NotFound(f"no domain {scope}")
                col = "domain_id"
            db.execute(DDL)
            db.execute(f"DELETE FROM file_settings WHERE {col} = ?", (row[0],))
            if value is not None:
                db.execute(f"INSERT INTO file_settings ({col}, convert_over) VALUES (?, ?)", (row[0], value))
        return {"scope": row[1], "convert_over": value}
