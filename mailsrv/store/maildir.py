"""Maildir++ names: message file names with their ``:2,`` flags, and folder directory names.

Pure functions, no I/O. Message files are ``<key>:2,<flags>`` where ``key``
is the unique base (``<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>``) and the flag
letters are those of the maildir spec (cr.yp.to/proto/maildir.html), sorted:
D Draft, F Flagged, P Passed, R Replied, S Seen, T Trashed. Folders are
``.<name>`` directories under the root with ``.`` as the on-disk hierarchy
separator (Maildir++); names are modified UTF-7 on disk (RFC 3501 §5.1.3) as
Dovecot and Courier write them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

#: maildir info letter <-> IMAP system flag
LETTER_TO_FLAG = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
FLAG_TO_LETTER = {v.lower(): k for k, v in LETTER_TO_FLAG.items()}
SYSTEM_FLAGS = frozenset(LETTER_TO_FLAG.values())
#: IMAP hierarchy delimiter seen by clients
DELIMITER = "/"
#: longest directory name (Linux NAME_MAX): a Maildir++ folder is one directory, its whole path in the name
NAME_MAX = 255


class NameError_(ValueError):
    """A mailbox name that cannot be stored."""


def split_filename(name: str) -> tuple[str, str]:
    """``"key:2,FS"`` -> (``"key"``, ``"FS"``); a name without info -> (name, "")."""
    key, sep, info = name.partition(":2,")
    if not sep:
        # some tools use ";" or "!" instead of ":" on file systems without ':'
        key, sep, info = name.partition(";2,")
    return key, info


def size_from_key(key: str) -> int | None:
    """The ``,S=<size>`` field of a file key (Dovecot, mailsrv), or None."""
    for part in key.split(",")[1:]:
        if part.startswith("S=") and part[2:].isdigit():
            return int(part[2:])
    return None


def info_to_flags(info: str, letters: Mapping[str, str] | None = None) -> frozenset[str]:
    """Maildir info letters -> IMAP flags: system flags, and keywords by ``letters`` (a-z -> name,
    from ``dovecot-keywords``). Unknown letters are ignored."""
    out = {LETTER_TO_FLAG[c] for c in info if c in LETTER_TO_FLAG}
    if letters:
        out.update(letters[c] for c in info if c in letters)
    return frozenset(out)


def flags_to_info(flags: frozenset[str] | set[str], keywords: Mapping[str, str] | None = None) -> str:
    """IMAP flags -> maildir info letters in ASCII order; keywords need a letter in ``keywords``."""
    out = {FLAG_TO_LETTER[f.lower()] for f in flags if f.lower() in FLAG_TO_LETTER}
    if keywords:
        out.update(keywords[f] for f in flags if f in keywords)
    return "".join(sorted(out))


def filename(key: str, flags: frozenset[str] | set[str], keywords: Mapping[str, str] | None = None) -> str:
    return f"{key}:2,{flags_to_info(flags, keywords)}"


def parse_keywords(data: bytes) -> dict[str, str]:
    """Dovecot's ``dovecot-keywords`` (lines ``<n> <name>``, n = 0..25) -> name -> letter a-z."""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        num, _, name = line.partition(" ")
        if num.isdigit() and int(num) < 26 and name and " " not in name and name not in out:
            out[name] = chr(ord("a") + int(num))
    return out


def format_keywords(keywords: Mapping[str, str]) -> bytes:
    return "".join(f"{ord(letter) - ord('a')} {name}\n" for name, letter in
                   sorted(keywords.items(), key=lambda kv: kv[1])).encode("utf-8")


def canonical_flag(flag: str) -> str:
    """System flags in their canonical spelling (``\\seen`` -> ``\\Seen``); keywords as given."""
    if flag.startswith("\\"):
        for f in SYSTEM_FLAGS:
            if f.lower() == flag.lower():
                return f
    return flag


def merge_flags(old: frozenset[str], info: str, letters: Mapping[str, str] | None = None) -> frozenset[str]:
    """What a file name's info says, plus the keywords of ``old`` that have no letter (index only)."""
    lettered = set(letters.values()) if letters else set()
    return frozenset(f for f in old if f not in SYSTEM_FLAGS and f not in lettered) | info_to_flags(info, letters)


# --- folder names ---------------------------------------------------------


def _mutf7_encode(text: str) -> str:
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E and ch not in "./":
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def _mutf7_decode(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i)
        if end < 0:
            raise NameError_(f"unterminated modified UTF-7 in {text!r}")
        chunk = text[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            try:
                out.append(base64.b64decode(b64, validate=True).decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                raise NameError_(f"bad modified UTF-7 in {text!r}") from None
        i = end + 1
    return "".join(out)


def normalize_name(name: str) -> str:
    """Check a client's mailbox name; INBOX (any case) -> ``"INBOX"``. Raises NameError_."""
    if not name or name.startswith(DELIMITER) or name.endswith(DELIMITER) or "//" in name:
        raise NameError_(f"bad mailbox name {name!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise NameError_(f"control character in mailbox name {name!r}")
    head, sep, rest = name.partition(DELIMITER)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def folder_dir(name: str) -> str:
    """Mailbox name -> directory under the root (``""`` is the root = INBOX)."""
    name = normalize_name(name)
    if name == "INBOX":
        return ""
    out = "." + ".".join(_mutf7_encode(part) for part in name.split(DELIMITER))
    if len(out.encode()) > NAME_MAX:  # else the mkdir fails with ENAMETOOLONG (an I/O error, "try again")
        raise NameError_(f"mailbox name longer than {NAME_MAX - 1} octets once stored")
    return out


def dir_to_name(dirname: str) -> str | None:
    """Directory under the root -> mailbox name, or None if it is not a Maildir++ folder."""
    if dirname == "":
        return "INBOX"
    if not dirname.startswith(".") or dirname in (".", "..") or dirname.startswith(".."):
        return None
    try:
        parts = [_mutf7_decode(p) for p in dirname[1:].split(".")]
    except NameError_:
        return None
    if any(p == "" for p in parts):
        return None
    name = DELIMITER.join(parts)
    try:
        return normalize_name(name)
    except NameError_:
        return None
