"""The UID map file, in Dovecot's ``dovecot-uidlist`` format (version 3, also reads 1).

Pure parser and formatter. Version 3::

    3 V<uidvalidity> N<nextuid> G<guid>
    <uid> [<ext> ...] :<filename base>

where ext fields are a letter and a value (``S<size>``, ``W<vsize>``, ...).
Version 1 is ``1 <uidvalidity> <nextuid>`` then ``<uid> <filename>``.
mailsrv appends lines as it assigns UIDs; a later line for the same base
wins, and the next UID is never below the largest UID listed plus one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class UidlistError(ValueError):
    """The header cannot be read: the UID map is unusable."""


@dataclass
class Uidlist:
    uidvalidity: int
    nextuid: int
    guid: str = ""
    #: filename base -> uid
    uids: dict[str, int] = field(default_factory=dict)
    #: base -> size from an S field, when present
    sizes: dict[str, int] = field(default_factory=dict)
    #: lines that could not be parsed (skipped)
    bad_lines: int = 0

    @property
    def effective_nextuid(self) -> int:
        top = max(self.uids.values(), default=0)
        return max(self.nextuid, top + 1, 1)


def parse(data: bytes) -> Uidlist:
    """Parse a uidlist. A broken header raises UidlistError; broken entry lines are counted and skipped.

    A last line without its newline (torn append) is ignored.
    """
    lines = data.split(b"\n")
    if not data.endswith(b"\n"):
        lines = lines[:-1] if len(lines) > 1 else lines
    else:
        lines = lines[:-1]
    if not lines:
        raise UidlistError("empty uidlist")
    head = lines[0].split()
    if not head:
        raise UidlistError("empty header")
    if head[0] == b"1":
        if len(head) < 3 or not head[1].isdigit() or not head[2].isdigit():
            raise UidlistError("bad version 1 header")
        result = Uidlist(int(head[1]), int(head[2]))
        for line in lines[1:]:
            uid_s, _, name = line.partition(b" ")
            if not uid_s.isdigit() or not name or int(uid_s) == 0:
                result.bad_lines += 1
                continue
            base = name.decode("utf-8", "surrogateescape").partition(":2,")[0]
            result.uids[base] = int(uid_s)
        return result
    if head[0] != b"3":
        raise UidlistError(f"unsupported uidlist version {head[0]!r}")
    uidvalidity = nextuid = None
    guid = ""
    for item in head[1:]:
        tag, val = item[:1], item[1:]
        if tag == b"V" and val.isdigit():
            uidvalidity = int(val)
        elif tag == b"N" and val.isdigit():
            nextuid = int(val)
        elif tag == b"G":
            guid = val.decode("ascii", "replace")
    if uidvalidity is None or nextuid is None or uidvalidity == 0:
        raise UidlistError("version 3 header without V or N")
    result = Uidlist(uidvalidity, nextuid, guid)
    for line in lines[1:]:
        before, sep, base_b = line.partition(b" :")
        if not sep:
            if line.startswith(b":") or not line.strip():
                result.bad_lines += 1
                continue
            # "<uid> :base" always has " :"; tolerate "<uid> base" (v1 style)
            before, _, base_b = line.partition(b" ")
        fields = before.split()
        if not fields or not fields[0].isdigit() or int(fields[0]) == 0 or not base_b:
            result.bad_lines += 1
            continue
        base = base_b.decode("utf-8", "surrogateescape").partition(":2,")[0]
        uid = int(fields[0])
        result.uids[base] = uid
        for ext in fields[1:]:
            if ext[:1] == b"S" and ext[1:].isdigit():
                result.sizes[base] = int(ext[1:])
    return result


def format_header(uidvalidity: int, nextuid: int, guid: str) -> bytes:
    return f"3 V{uidvalidity} N{nextuid} G{guid}\n".encode("ascii")


def format_entry(uid: int, base: str, size: int | None = None) -> bytes:
    ext = f" S{size}" if size is not None else ""
    return f"{uid}{ext} :{base}\n".encode("utf-8", "surrogateescape")
