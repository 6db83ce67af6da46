"""Which corpus files are messages, and how a server normalises them on arrival."""

from __future__ import annotations

import re
from pathlib import Path

#: Message files by corpus folder (the .json/.xml/.out beside them are other parsers' output).
PATTERNS = (
    "cpython-test_email/msg_*.txt",
    "mime4j/testmsgs/*.msg",
    "mime4j/mimetools-testmsgs/*.msg",
    "stalwart-mail-parser/eml/legacy/*.eml",
    "stalwart-mail-parser/eml/rfc/*.eml",
    "stalwart-mail-parser/maildir/**/cur/*",
    "stalwart-mail-parser/maildir/**/new/*",
)


def message_paths(corpus: Path) -> list[str]:
    """Corpus-relative paths of every message file, sorted."""
    found: set[str] = set()
    for pattern in PATTERNS:
        for p in corpus.glob(pattern):
            if p.is_file():
                found.add(p.relative_to(corpus).as_posix())
    return sorted(found)


def normalise(raw: bytes) -> bytes:
    """Bare LF or CR -> CRLF, as SMTP DATA and IMAP APPEND deliver a message."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
