"""Address syntax for the directory: normalise, split, validate (pure functions).

Local parts and domains are compared case-insensitively (lower case is the
stored form). RFC 5321 §2.4 lets the local part be case-sensitive; like
Postfix and Dovecot's defaults we do not, because people type addresses.
"""

from __future__ import annotations

import ipaddress
import re

# RFC 5321 §4.5.3.1.1 / §4.5.3.1.2: 64 octets of local part, 255 of domain.
MAX_LOCAL = 64
MAX_DOMAIN = 255

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")
# The local parts we create (users, aliases, groups): dot-atom text without
# the sub-address delimiter's friends that break shells and file names.
_LOCAL_NEW_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?$")
#: Names starting with this belong to the store (``mailsrv.store.folders.STAGING`` = ``.mailsrv-new`` sits
#: beside the accounts of a domain): never a local part nor a component of an account's store path.
RESERVED_PREFIX = ".mailsrv"
# Local parts we accept from outside (group members, senders): RFC 5322 atext.
_LOCAL_ANY_RE = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~.-]+$")


def normalise(address: str) -> str:
    """Lower case, surrounding space and angle brackets removed."""
    a = address.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1].strip()
    return a.lower()


def split(address: str) -> tuple[str, str]:
    """``"alice@example.test"`` -> ``("alice", "example.test")``; ValueError without "@"."""
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise ValueError(f"{address!r} is not an address (local@domain)")
    return local, domain


def strip_subaddress(local: str, delimiter: str) -> str:
    """``alice+tag`` -> ``alice`` (RFC 5233 style sub-addressing)."""
    if delimiter and delimiter in local:
        base = local.split(delimiter, 1)[0]
        return base or local
    return local


def valid_domain(domain: str) -> bool:
    return len(domain) <= MAX_DOMAIN and bool(_DOMAIN_RE.match(domain))


def check_new(address: str) -> str:
    """Validate an address we are about to create; returns it normalised or raises ValueError."""
    a = normalise(address)
    local, domain = split(a)
    if local.startswith(RESERVED_PREFIX):
        raise ValueError(f"{address!r}: local parts starting with {RESERVED_PREFIX!r} are reserved for the mail store")
    if len(local) > MAX_LOCAL or not _LOCAL_NEW_RE.match(local) or ".." in local:
        raise ValueError(f"{address!r}: local part may use a-z 0-9 . _ - (not at the ends), up to 64 characters")
    if not valid_domain(domain):
        raise ValueError(f"{address!r}: {domain!r} is not a domain name")
    return a


def check_store(path: str) -> str:
    """Validate an account's store path: relative to the data dir (``mail/example.com/alice``), or absolute
    for a maildir adopted where it lies (``/var/vmail/example.com/alice``, a Dovecot migration).

    Every component is a plain name: none empty, ``.`` or ``..``, none starting with a dot (Maildir++
    folders and the store's own ``.mailsrv*`` entries), no control characters or backslashes.
    Returns it unchanged or raises ValueError.
    """
    parts = path[1:].split("/") if path.startswith("/") else path.split("/")
    if (len(path) > 1024 or any(ord(c) < 0x20 or c in "\\\x7f" for c in path)
            or any(not p or p.startswith(".") for p in parts)):
        raise ValueError(f"store {path!r}: a directory path whose names do not start with '.' "
                         "(no '..', empty names or control characters)")
    return path


def check_any(address: str) -> str:
    """Validate an outside address (group member, listed sender); returns it normalised."""
    a = normalise(address)
    local, domain = split(a)
    if len(local) > MAX_LOCAL or not _LOCAL_ANY_RE.match(local):
        raise ValueError(f"{address!r}: not a valid local part")
    if not valid_domain(domain):
        raise ValueError(f"{address!r}: {domain!r} is not a domain name")
    return a


def check_networks(items: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """CIDR list -> canonical strings; ValueError names the bad entry."""
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network (CIDR)") from None
    return tuple(out)


def ip_in(ip: str, networks: tuple[str, ...]) -> bool:
    """True when ``ip`` is in one of ``networks`` (an IPv4-mapped IPv6 address counts as IPv4)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for n in networks:
        net = ipaddress.ip_network(n, strict=False)
        if addr.version == net.version and addr in net:
            return True
    return False
