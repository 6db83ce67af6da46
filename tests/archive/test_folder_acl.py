"""A folder made at delivery starts with its parent's ACL entries, as after IMAP CREATE
(docs/shared-mailboxes.md): archive rules and Sieve ``fileinto :create`` share
``LocalDelivery.ensure_folder``. Real directory, store and SMTP session (this directory's harness)."""

from __future__ import annotations

from typing import Any

from mailsrv.config import SieveConfig
from mailsrv.sieve.scripts import put_script, set_active
from mailsrv.smtp.wiring import DirectoryBackend
from mailsrv.store import account_root

from .conftest import D, rule

ALICE, BOB, CAROL, ARCHIVE = (f"{n}@{D}" for n in ("alice", "bob", "carol", "archive"))


def entries(site: Any, owner: str, mailbox: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(grantee, rights) of ``owner``'s ``mailbox`` entries, and its (identifier, rights) ``anyone`` ones."""
    return ([(e.grantee.address, e.rights) for e in site.sync.folder_rights_of(owner, mailbox)],
            [(a.identifier, a.rights) for a in site.sync.anyone_rights(owner=owner, mailbox=mailbox)])


def share_parent(site: Any, owner: str, parent: str, child: str) -> None:
    site.sync.set_folder_rights(owner, BOB, parent, "lrs")
    site.sync.set_folder_rights(owner, CAROL, parent, "")  # kept away from it, and so from its children
    site.sync.set_anyone_rights(owner, "anyone", parent, "l")
    site.sync.set_folder_rights(owner, BOB, child, "lrswipkxtea")  # left by a deleted folder of that name


def test_an_archive_rules_new_folder_copies_its_parents_entries(site: Any) -> None:
    share_parent(site, ARCHIVE, "Audit", "Audit/Mail")
    be = site.backend({"in": rule((f"dave@{D}",), "in", folder="Audit/Mail")})
    assert site.send(be, "x@remote.test", [f"dave@{D}"]).startswith(b"250 ")
    assert len(site.messages(ARCHIVE, "Audit/Mail")) == 1
    assert entries(site, ARCHIVE, "Audit/Mail") == ([(BOB, "lrs"), (CAROL, "")], [("anyone", "l")])
    site.sync.set_folder_rights(ARCHIVE, BOB, "Audit/Mail", "lr")  # an existing folder keeps its own
    assert site.send(be, "x@remote.test", [f"dave@{D}"]).startswith(b"250 ")
    assert entries(site, ARCHIVE, "Audit/Mail")[0] == [(BOB, "lr"), (CAROL, "")]


def test_sieve_fileinto_create_copies_the_parents_entries(site: Any) -> None:
    share_parent(site, ALICE, "Lists", "Lists/Weekly")
    info = site.sync.user_info(ALICE)
    root = account_root(site.data_dir, info["id"], info["store"])
    put_script(root, "main", 'require ["fileinto", "mailbox"];\nfileinto :create "Lists/Weekly";\n')
    set_active(root, "main")

    async def backend() -> DirectoryBackend:
        return DirectoryBackend(site.directory, site.store, site.data_dir, None, sieve=SieveConfig())

    be = site.loop.run(backend())
    assert site.send(be, "x@remote.test", [ALICE]).startswith(b"250 ")
    assert len(site.messages(ALICE, "Lists/Weekly")) == 1 and site.messages(ALICE) == []
    assert entries(site, ALICE, "Lists/Weekly") == ([(BOB, "lrs"), (CAROL, "")], [("anyone", "l")])
