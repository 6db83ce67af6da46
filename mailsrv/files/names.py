"""File names of links: what an uploader's name becomes, and the Content-Disposition it is served with."""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

#: Longest stored name in UTF-8 octets (most file systems' limit, so a download saves as named).
MAX_NAME = 255
DEFAULT_NAME = "file"


def clean_name(name: str) -> str:
    """A safe display and save-as name: the last path component, no control or format characters,
    no leading/trailing dots or spaces, at most :data:`MAX_NAME` octets (cut at a character, the
    extension kept when it is short); ``"file"`` when nothing is left."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp"))
    name = name.strip(" .\t")
    if len(name.encode("utf-8")) > MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        ext = dot + ext if dot and stem and len(ext.encode("utf-8")) <= 16 else ""
        body = name[: len(name) - len(ext)]
        room = MAX_NAME - len(ext.encode("utf-8"))
        body = body.encode("utf-8")[:room].decode("utf-8", "ignore")
        name = (body + ext).strip(" .\t")
    return name or DEFAULT_NAME


def content_disposition(name: str) -> str:
    """RFC 6266 §4.3 with RFC 8187: an ASCII ``filename`` for old clients, ``filename*`` in UTF-8."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
