"""RFC 4314 rights and the "Other Users" namespace (RFC 2342) over the directory's shares.

Pure: no store, no directory, no I/O. The session (``sharing.py``) asks the directory for the
grants; this module says what they allow, what a SETACL asks for, and how a shared mailbox is named.

Two kinds of entries give a grantee rights on an owner's folder (docs/shared-mailboxes.md):

- an account grant (``mailsrv share grant OWNER GRANTEE --rights read|write``), the ACL of every
  folder that has no entry of its own: ``read`` = ``lr``, ``write`` = ``lrswite``;
- a per-folder entry (SETACL, ``mailsrv share grant --folder``): any subset of ``lrswipkxtea`` on one
  folder, which overrides the account grant there (``""``: nothing on that folder).

The owner always holds every right, ``lrswipkxtea``. MYRIGHTS / GETACL also carry the obsolete
virtual rights (§2.1.1): ``c`` with ``k``, ``d`` with ``t`` or ``e``. Without ``s`` a grantee's FETCH
of a body does not set \\Seen; without any of ``i e s t w`` the folder is selected READ-ONLY (§5.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailsrv.directory import rights

#: RFC 2342 §5: the prefix of the "Other Users" namespace; a shared folder is
#: ``Other Users/<owner address>/<owner's folder name>``. Thunderbird, mutt, Apple Mail and Outlook
#: read the prefix from NAMESPACE; a readable English label, as Dovecot's ``Shared/`` or Stalwart's
#: ``Shared Folders/``, chosen to say whose folders they are.
OTHER_USERS = "Other Users"
DELIM = "/"

#: RFC 4314 §2.1: every right this server knows (RIGHTS=texk names those the first ACL spec lacked)
ALL_RIGHTS = rights.ALL
OWNER_RIGHTS = ALL_RIGHTS
READ_RIGHTS = rights.READ
WRITE_RIGHTS = rights.WRITE
grant_letters = rights.grant_letters
canonical = rights.canonical
OwnerShare = rights.OwnerShare
shares_by_owner = rights.shares_by_owner
#: rights a SETACL may name: the real ones and the obsolete virtual ``c`` (= ``k``) and ``d`` (= ``te``)
_VIRTUAL = {"c": "k", "d": "te"}


class BadRights(ValueError):
    """A rights string with an unknown or uppercase right: the command's answer is BAD (RFC 4314 §3.1)."""


def with_virtual(rights: str) -> str:
    """``rights`` as MYRIGHTS and ACL show them: with ``c`` when ``k`` is there, ``d`` when any of
    ``t`` ``e`` is (RFC 4314 §2.1.1: for clients of the first ACL spec)."""
    out = rights
    if "k" in rights:
        out += "c"
    if "t" in rights or "e" in rights:
        out += "d"
    return out


def read_write(letters: str) -> bool:
    """RFC 4314 §5.2: does SELECT answer READ-WRITE with these rights?"""
    return rights.may_change(letters)


def parse_modification(spec: str) -> tuple[str, frozenset[str]]:
    """A SETACL rights argument: (mode "+", "-" or "=", the rights, virtual ones expanded).

    RFC 4314 §3.1: an unrecognised right MUST be answered BAD, never ignored.
    """
    mode = "="
    if spec[:1] in ("+", "-"):
        mode, spec = spec[0], spec[1:]
    out: set[str] = set()
    for ch in spec:
        if ch in _VIRTUAL:
            out.update(_VIRTUAL[ch])
        elif ch in ALL_RIGHTS:
            out.add(ch)
        else:
            raise BadRights(f"The {ch!r} right is not supported (rights: {ALL_RIGHTS}cd)")
    return mode, frozenset(out)


def modified(current: str, mode: str, rights: frozenset[str]) -> frozenset[str]:
    """The rights after a SETACL of ``mode`` and ``rights`` onto ``current``."""
    if mode == "+":
        return frozenset(current) | rights
    if mode == "-":
        return frozenset(current) - rights
    return rights


#: RFC 4314 §3.7 LISTRIGHTS for a user other than the owner: nothing always granted, then each right
#: on its own (the virtual ``c`` and ``d`` last, as Dovecot answers)
LISTRIGHTS_OTHERS = ("", *ALL_RIGHTS, "c", "d")


def stored_entry(wanted: str, account: str) -> str | None:
    """What a per-folder entry must hold for a grantee to end with ``wanted`` when the account grant
    gives ``account``: None (no entry: the account grant already gives it) or the letters."""
    return None if wanted == account else wanted


def store_rights(flags: frozenset[str], mode: str) -> str:
    """RFC 4314 §4: the rights a STORE of ``flags`` needs: ``s`` for \\Seen, ``t`` for \\Deleted,
    ``w`` for any other flag; a replace ("=") changes every flag, so it needs all three."""
    if mode == "replace":
        return "stw"
    need = ""
    if "\\Seen" in flags:
        need += "s"
    if "\\Deleted" in flags:
        need += "t"
    if any(f not in ("\\Seen", "\\Deleted") for f in flags):
        need += "w"
    return need


def allowed_flags(flags: frozenset[str], rights: str) -> frozenset[str]:
    """RFC 4314 §4: the flags an APPEND or COPY keeps (without the right, a flag is dropped, the
    message still stored)."""
    return frozenset(f for f in flags if (("s" if f == "\\Seen" else "t" if f == "\\Deleted" else "w") in rights))


@dataclass(frozen=True, slots=True)
class SharedName:
    """A client's mailbox name inside the "Other Users" namespace."""

    owner: str  # the owner's address as the client wrote it ("" for the namespace node itself)
    mailbox: str  # the owner's folder ("" for the namespace or owner node)


def split_shared(name: str) -> SharedName | None:
    """``Other Users/alice@example.com/Sent`` -> SharedName("alice@example.com", "Sent"); None when
    ``name`` is not in the namespace. The owner's INBOX is case-insensitive, as the client's own."""
    if name == OTHER_USERS:
        return SharedName("", "")
    if not name.startswith(OTHER_USERS + DELIM):
        return None
    owner, _, rest = name[len(OTHER_USERS) + 1 :].partition(DELIM)
    if rest.upper() == "INBOX" or rest.upper().startswith("INBOX" + DELIM):
        rest = "INBOX" + rest[5:]
    return SharedName(owner, rest)


def shared_name(owner: str, mailbox: str = "") -> str:
    """The client's name of ``owner``'s ``mailbox`` (of the owner's node when ``mailbox`` is empty)."""
    base = OTHER_USERS + DELIM + owner
    return base + DELIM + mailbox if mailbox else base
