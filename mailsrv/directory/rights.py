"""What a grantee may do in an owner's folders: RFC 4314 rights over the directory's shares.

Pure (no I/O): IMAP (``mailsrv.imap.acl``) and JMAP (Mailbox ``myRights``) read the same answer.
An account grant (``read`` / ``write``) is the ACL of every folder without an entry of its own; a
per-folder entry (:class:`~mailsrv.directory.types.FolderRights`) overrides it on that folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mailsrv.directory.types import FOLDER_RIGHTS

#: RFC 4314 §2.1: every right (RIGHTS=texk names those the first ACL spec lacked)
ALL = FOLDER_RIGHTS
#: the rights of the two account grants
READ = "lr"
WRITE = "lrswite"


def grant_letters(rights: str) -> str:
    """The RFC 4314 rights of an account grant (``read`` / ``write``)."""
    return WRITE if rights == "write" else READ


def may_change(letters: str) -> bool:
    """RFC 4314 §5.2: do these rights change anything (a folder selected READ-WRITE)?"""
    return any(r in letters for r in "iestw")


def canonical(rights: frozenset[str] | str) -> str:
    """``rights`` in the order of :data:`ALL` (how entries are stored and shown)."""
    return "".join(r for r in ALL if r in rights)


@dataclass(slots=True)
class OwnerShare:
    """What one owner shares with the user: the account grant's rights (``""``: no account grant), the
    per-folder entries naming the user, which override it, and the ``anyone`` / ``authenticated``
    entries, which apply where neither of the others does (the more specific wins, as in Dovecot)."""

    owner: Any  # the owner's directory account (``mailsrv.directory.Account``)
    account: str = ""
    folders: dict[str, str] = field(default_factory=dict)
    anyone: dict[str, str] = field(default_factory=dict)

    def rights(self, mailbox: str) -> str:
        """The user's rights on the owner's ``mailbox``."""
        if mailbox in self.folders:
            return self.folders[mailbox]
        return self.account or self.anyone.get(mailbox, "")

    def _all(self) -> list[str]:
        return [self.account, *self.folders.values(), *self.anyone.values()]

    def changes_any(self) -> bool:
        """Does any folder of the owner's allow a change (JMAP: the account is not read-only)? Its
        messages (RFC 4314 §5.2's ``iestw``) or the folders themselves (``k`` create, ``x`` delete)."""
        return any(may_change(r) or "k" in r or "x" in r for r in self._all())

    def lists_any(self) -> bool:
        """Can any folder of the owner's be listed (``l``)? Else the owner stays out of LIST."""
        return any("l" in r for r in self._all())


def shares_by_owner(grants: Iterable[Any], entries: Iterable[Any], anyone: Iterable[Any] = ()) -> dict[str, OwnerShare]:
    """owner address (lower case) -> :class:`OwnerShare`, from the directory's account grants
    (``Grant``: owner, rights), per-folder entries (``FolderRights``: owner, mailbox, rights) and
    ``anyone`` entries (``AnyoneRights``; ``anyone`` and ``authenticated`` add up: both are every user)."""
    out: dict[str, OwnerShare] = {}
    for g in grants:
        out.setdefault(g.owner.address.lower(), OwnerShare(g.owner)).account = grant_letters(g.rights)
    for e in entries:
        out.setdefault(e.owner.address.lower(), OwnerShare(e.owner)).folders[e.mailbox] = e.rights
    for a in anyone:
        share = out.setdefault(a.owner.address.lower(), OwnerShare(a.owner))
        share.anyone[a.mailbox] = canonical(share.anyone.get(a.mailbox, "") + a.rights)
    return out
