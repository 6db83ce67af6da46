"""JSON export and import of the whole directory (backup, provisioning, migration from other servers).

The format (``"format": "mailsrv-directory/1"``) holds domains, users with
their password hashes (argon2id, or legacy schemes such as
``{SHA512-CRYPT}`` that are upgraded at the next login), aliases, groups,
departments, administrators, per-domain/user file settings (``file_settings``: convert_over) and
the shares (docs/shared-mailboxes.md): account grants (``grants``), per-folder ACL entries
(``folder_rights``, ``""`` = no rights there) and ``anyone`` / ``authenticated`` entries
(``anyone_rights``), by address and folder name.
Tokens and lockout counters are not exported.
Import runs in one transaction: all of it or nothing.
"""

from __future__ import annotations

from typing import Any

from mailsrv.directory.manage import SyncDirectory
from mailsrv.directory.types import Conflict, DirectoryError

FORMAT = "mailsrv-directory/1"


def export(d: SyncDirectory) -> dict[str, Any]:
    db = d.db
    out: dict[str, Any] = {"format": FORMAT, "domains": [], "users": [], "groups": [], "admins": []}
    for dom in d.list_domains():
        out["domains"].append({k: dom[k] for k in ("name", "max_users", "max_storage", "networks", "aliases", "catchall")})
    for row in db.execute(
        "SELECT u.address, u.display_name, g.address, u.title, u.phone, u.state, u.quota_bytes, u.quota_messages,"
        " u.may_send_outside, u.networks, u.store, u.password_hash, u.scram FROM users u"
        " LEFT JOIN groups g ON g.id = u.dept_id ORDER BY u.id"
    ):
        addr = row[0]
        aliases = [r[0] for r in db.execute(
            "SELECT a.address FROM aliases a JOIN users u ON u.id = a.user_id WHERE u.address = ? ORDER BY 1", (addr,))]
        out["users"].append({
            "address": addr, "display_name": row[1], "dept": row[2], "title": row[3], "phone": row[4],
            "state": row[5], "quota_bytes": row[6], "quota_messages": row[7], "may_send_outside": bool(row[8]),
            "networks": [n for n in row[9].split(",") if n], "store": row[10], "password_hash": row[11],
            "scram": row[12], "aliases": aliases,
        })
    # departments parents first (path order), then groups
    for g in sorted(d.list_groups(), key=lambda g: (g["kind"] != "dept", (g["path"] or "").count("/"))):
        info = d.group_info(g["address"])
        out["groups"].append({k: info[k] for k in ("address", "name", "kind", "post_policy", "parent", "members",
                                                    "senders", "send_as")})
    for a in d.list_admins():
        out["admins"].append({"user": a.user, "scope": a.scope, "target": a.domain or a.dept})
    out["file_settings"] = d.list_convert_settings()  # docs/files.md: convert_over per domain and user
    out.update(_shares(d))
    return out


def _shares(d: SyncDirectory) -> dict[str, list[dict[str, str]]]:
    """The account grants and folder ACL entries, owners and grantees by address."""
    return {
        "grants": [{"owner": g.owner.address, "grantee": g.grantee.address, "rights": g.rights}
                   for g in d.list_grants()],
        "folder_rights": [{"owner": e.owner.address, "mailbox": e.mailbox, "grantee": e.grantee.address,
                           "rights": e.rights} for e in d.all_folder_rights()],
        "anyone_rights": [{"owner": a.owner.address, "mailbox": a.mailbox, "identifier": a.identifier,
                           "rights": a.rights} for a in d.anyone_rights()],
    }


def import_(d: SyncDirectory, data: dict[str, Any], *, hash_check: Any = None) -> dict[str, int]:
    """Add everything in ``data`` (made by :func:`export` or a provisioning script).

    ``hash_check(str) -> bool`` rejects password hashes in unknown formats.
    Raises :class:`DirectoryError` naming the first bad entry; nothing is kept then.
    """
    if data.get("format") != FORMAT:
        raise DirectoryError(f'not a mailsrv directory export (expected "format": "{FORMAT}")')
    counts = {"domains": 0, "users": 0, "aliases": 0, "groups": 0, "members": 0, "admins": 0, "grants": 0,
              "folder_rights": 0}
    with d._tx():
        try:
            for dom in data.get("domains", []):
                # limits last (below): a domain may hold more users than a max_users lowered later
                d.add_domain(dom["name"], networks=tuple(dom.get("networks", ())))
                for alias in dom.get("aliases", []):
                    d.add_domain_alias(alias, dom["name"])
                counts["domains"] += 1
            groups = data.get("groups", [])
            for g in groups:
                if g.get("kind") == "dept":
                    d.add_dept(g["address"], name=g.get("name", ""), parent=g.get("parent"),
                               post_policy=g.get("post_policy", "domain"))
                else:
                    d.add_group(g["address"], name=g.get("name", ""), post_policy=g.get("post_policy", "anyone"))
                counts["groups"] += 1
            for u in data.get("users", []):
                pw = u.get("password_hash", "")
                if hash_check is not None and not hash_check(pw):
                    raise DirectoryError(f"{u.get('address')}: password hash format not supported")
                d.add_user(u["address"], password_hash=pw, scram=u.get("scram", ""),
                           display_name=u.get("display_name", ""), dept=u.get("dept"), title=u.get("title", ""),
                           phone=u.get("phone", ""), quota_bytes=u.get("quota_bytes"),
                           quota_messages=u.get("quota_messages"), may_send_outside=u.get("may_send_outside", True),
                           networks=tuple(u.get("networks", ())), state=u.get("state", "active"), store=u.get("store"))
                counts["users"] += 1
                for alias in u.get("aliases", []):
                    d.add_alias(alias, u["address"])
                    counts["aliases"] += 1
            for g in groups:
                for m in g.get("members", []):
                    d.add_member(g["address"], m)
                    counts["members"] += 1
                for s in g.get("senders", []):
                    d.add_sender(g["address"], s)
                for s in g.get("send_as", []):
                    d.grant_send_as(g["address"], s)
            for dom in data.get("domains", []):
                limits = {k: dom[k] for k in ("max_users", "max_storage") if dom.get(k) is not None}
                if dom.get("catchall"):
                    limits["catchall"] = dom["catchall"]
                if limits:
                    d.set_domain(dom["name"], **limits)
            for a in data.get("admins", []):
                d.grant_admin(a["user"], a["scope"], a.get("target"))
                counts["admins"] += 1
            for f in data.get("file_settings", []):
                d.set_convert_over(f["scope"], f["convert_over"])
            for g in data.get("grants", []):
                d.grant(g["owner"], g["grantee"], g["rights"])
                counts["grants"] += 1
            for e in data.get("folder_rights", []):
                d.set_folder_rights(e["owner"], e["grantee"], e["mailbox"], e["rights"])
                counts["folder_rights"] += 1
            for a in data.get("anyone_rights", []):
                d.set_anyone_rights(a["owner"], a["identifier"], a["mailbox"], a["rights"])
                counts["folder_rights"] += 1
        except KeyError as exc:
            raise DirectoryError(f"import: missing field {exc}") from None
        except Conflict as exc:
            # an operator restoring a backup over the live directory lands here first
            raise Conflict(f"{exc}: an import adds to the directory and merges nothing; restore a backup into"
                           " an empty one (a new server.data_dir, or directory.sqlite3 moved away)") from None
    return counts
