"""The parsed structure of one message: part tree, header fields, section addressing, cache form.

A :class:`MessageStructure` wraps the scanner's tuple tree (see
``mailsrv/_speedups/mime_py.py``); :class:`Part` objects are made on demand.
It never holds the message bytes: functions that need them take ``raw``.
"""

from __future__ import annotations

import datetime
import email.utils
import marshal
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from mailsrv._speedups.mime import parse_params
from mailsrv.mime import imap
from mailsrv.mime.headers import (
    Address,
    decode_words,
    merge_params,
    message_ids,
    mime_token,
    parse_addresses,
    parse_params_lenient,
    unfold,
)

__all__ = ["CACHE_VERSION", "MessageStructure", "Part"]

#: First byte of :meth:`MessageStructure.to_cache`; bump on any layout or content change
#: (2: RFC 2231 ``boundary*=`` splits the multipart; 3: MIME-Version kept, a header cut
#: by a delimiter ends before the delimiter's line end).
CACHE_VERSION = 3
_ZLIB_FLAG = 0x80
#: Cache blobs above this size are zlib-compressed (big headers, many parts).
_COMPRESS_ABOVE = 1024

# indexes into a scanner part tuple
_ADDRESS_FIELDS = frozenset((b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc"))
_HSTART, _BSTART, _BEND, _LINES, _TYPE, _SUB, _PARAMS, _FIELDS, _KIDS, _FLAGS = range(10)

_T = TypeVar("_T")


class cached_property(Generic[_T]):
    """``functools.cached_property`` without its lock (Python 3.11 takes an RLock at every first
    access: 28 k of the 283 k instructions of a 4 KB message's search extraction). A Part belongs to
    one thread; two threads computing the same value at once both store an equal one."""

    def __init__(self, func: Callable[[Any], _T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> _T:
        if obj is None:
            return self  # type: ignore[return-value]
        value = obj.__dict__[self.name] = self.func(obj)
        return value


def imap_params(raw: tuple | list) -> list[tuple[bytes, bytes]]:
    """RFC 2231 continuations joined, the rest as written (see Part.raw_params)."""
    plain: list[tuple[bytes, bytes]] = []
    ext: dict[bytes, list[tuple[int, bool, bytes]]] = {}
    for name, value in raw:
        star = name.find(b"*")
        if star < 0:
            plain.append((name, value))
            continue
        base, rest = name[:star], name[star + 1 :]
        encoded = rest.endswith(b"*") or rest == b""
        num = rest.rstrip(b"*")
        idx = int(num) if num.isdigit() and len(num) < 6 else 0
        ext.setdefault(base.lower(), []).append((idx, encoded, value))
    for base in sorted(ext):
        secs = sorted(ext[base], key=lambda x: x[0])
        enc = any(e for _, e, _ in secs)
        plain.append((base + b"*" if enc else base, b"".join(v for _, _, v in secs)))
    return plain


class Part:
    """One MIME entity: a message (root or embedded), a multipart or a leaf.

    ``section`` is its IMAP part specifier (RFC 3501 §6.4.5): ``""`` for the
    root message, ``"1.2"`` for a part. The body of a message/rfc822 leaf is
    the embedded message, :attr:`message`.
    """

    __slots__ = ("_t", "section", "parent_digest", "is_message", "__dict__")

    def __init__(self, t: tuple, section: str, parent_digest: bool, is_message: bool) -> None:
        self._t = t
        self.section = section
        self.parent_digest = parent_digest
        self.is_message = is_message

    # --- offsets into raw -------------------------------------------------
    @property
    def header_start(self) -> int:
        return self._t[_HSTART]

    @property
    def body_start(self) -> int:
        """Also the end of the header block (its empty line included)."""
        return self._t[_BSTART]

    @property
    def body_end(self) -> int:
        return self._t[_BEND]

    @property
    def size(self) -> int:
        """Octets of the (still encoded) body: IMAP body-fld-octets."""
        return self._t[_BEND] - self._t[_BSTART]

    @property
    def lines(self) -> int:
        """IMAP body-fld-lines (LFs in the body); 0 where IMAP shows none (multipart, non-text)."""
        return self._t[_LINES]

    @property
    def truncated(self) -> bool:
        """True when a parser limit stopped descending into this part."""
        return bool(self._t[_FLAGS] & 1)

    # --- header fields ------------------------------------------------------
    def field(self, name: bytes) -> bytes | None:
        """Raw value (after the colon, folding kept) of a structural header field."""
        for n, v in self._t[_FIELDS]:
            if n == name:
                return v
        return None

    def field_all(self, name: bytes) -> list[bytes]:
        """Every occurrence of a structural header field, in order."""
        return [v for n, v in self._t[_FIELDS] if n == name]

    def fields(self) -> dict[bytes, bytes]:
        """First occurrence of each structural field; address fields joined over
        all occurrences (as Dovecot builds ENVELOPE)."""
        out: dict[bytes, bytes] = {}
        for n, v in self._t[_FIELDS]:
            if n not in out:
                out[n] = v
            elif n in _ADDRESS_FIELDS:
                out[n] = out[n] + b"," + v
        return out

    # --- content type -------------------------------------------------------
    def raw_type(self) -> tuple[bytes, bytes]:
        """(type, subtype) as written, or the RFC 2045 §5.2 / RFC 2046 §5.1.5 default.

        An invalid Content-Type gives ``(b"", b"")`` (what Dovecot reports).
        """
        t = self._t
        if t[_FLAGS] & 2:
            return b"", b""
        if t[_FLAGS] & 1 and not t[_KIDS]:
            # a container a limit kept us from parsing is opaque data (as Dovecot shows it)
            return b"application", b"octet-stream"
        if t[_TYPE]:
            return t[_TYPE], t[_SUB]
        if self.parent_digest:
            return b"message", b"rfc822"
        return b"text", b"plain"

    @cached_property
    def type(self) -> str:
        """Lower-case media type; text for a missing or invalid Content-Type (RFC 2045 §5.2)."""
        return self.raw_type()[0].decode("latin-1").lower() or "text"

    @cached_property
    def subtype(self) -> str:
        return self.raw_type()[1].decode("latin-1").lower() or "plain"

    @property
    def mime_type(self) -> str:
        return f"{self.type}/{self.subtype}"

    @property
    def is_multipart(self) -> bool:
        return self.type == "multipart"

    def raw_params(self) -> list[tuple[bytes, bytes]]:
        """Content-Type parameters for IMAP body-fld-param, as Dovecot shows them.

        Plain parameters in order, then RFC 2231 ones sorted by name with
        their sections joined (``name*`` keeps the still-encoded value); RFC
        2045 §5.2: a text part without a charset gets ``charset us-ascii``.
        """
        t = self._t
        if t[_FLAGS] & 2:
            return []
        if not t[_TYPE]:
            return [] if self.parent_digest else [(b"charset", b"us-ascii")]
        params = imap_params(t[_PARAMS])
        if t[_TYPE].lower() == b"text" and not any(k.lower() == b"charset" for k, _ in params):
            params.append((b"charset", b"us-ascii"))
        return params

    @cached_property
    def params(self) -> dict[str, str]:
        """Decoded Content-Type parameters (RFC 2231 merged), lower-case names.

        Read leniently (:func:`~mailsrv.mime.headers.parse_params_lenient`:
        ``name=my file.pdf`` is ``my file.pdf``), unlike :meth:`raw_params`.
        """
        v = self.field(b"content-type")
        if v is None or b";" not in v:
            return {}
        return dict(merge_params(parse_params_lenient(unfold(v))))

    @property
    def charset(self) -> str | None:
        """The declared charset, or us-ascii for text without one (RFC 2045 §5.2)."""
        cs = self.params.get("charset")
        if cs:
            return cs
        return "us-ascii" if self.type == "text" else None

    @cached_property
    def encoding(self) -> str:
        """Content-Transfer-Encoding (its token, lower case, as Dovecot decodes it);
        ``7bit`` when absent. A value that is no token comes back as written."""
        v = self.field(b"content-transfer-encoding")
        if v is None:
            return "7bit"
        v = unfold(v)
        token, _ = mime_token(v)
        return (token or v.strip(b" \t")).lower().decode("latin-1") or "7bit"

    # --- disposition and friends ------------------------------------------
    def raw_disposition(self) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
        """(value, params) of Content-Disposition (RFC 2183), None when absent or empty."""
        v = self.field(b"content-disposition")
        if v is None:
            return None
        v = unfold(v)
        semi = v.find(b";")
        value = (v if semi < 0 else v[:semi]).strip(b" \t")
        if not value:
            return None
        params = imap_params(parse_params(v, semi)) if semi >= 0 else []
        return value, params

    @cached_property
    def disposition(self) -> str | None:
        d = self.raw_disposition()
        return d[0].decode("latin-1").lower() if d else None

    @cached_property
    def disposition_params(self) -> dict[str, str]:
        d = self.raw_disposition()
        if not d:
            return {}
        return dict(
            merge_params(parse_params_lenient(unfold(self.field(b"content-disposition") or b"")))
        )

    @property
    def filename(self) -> str | None:
        """RFC 2183 filename, else the Content-Type name parameter (RFC 2231 / 2047 decoded)."""
        return self.disposition_params.get("filename") or self.params.get("name") or None

    def bare_text(self) -> bool:
        """True for a text/plain leaf (Content-Type absent or text/plain) without Content-Disposition
        and without a ``name`` parameter: a part whose :attr:`filename` and :attr:`disposition` are
        None and whose text is all there is to it (most mail is one such part). Looks at the scanned
        fields only, without the cached properties of a walk; False says nothing."""
        t = self._t
        if t[_FLAGS] or t[_KIDS] or self.parent_digest:
            return False
        if t[_TYPE] and (t[_TYPE].lower() != b"text" or t[_SUB].lower() != b"plain"):
            return False
        for n, v in t[_FIELDS]:
            if n == b"content-disposition" or (n == b"content-type" and b";" in v and "name" in self.params):
                return False
        return True

    def _text(self, name: bytes) -> str | None:
        v = self.field(name)
        return None if v is None else decode_words(unfold(v).strip(b" \t"))

    @property
    def content_id(self) -> str | None:
        v = self.field(b"content-id")
        if v is None:
            return None
        ids = message_ids(v)
        return ids[0] if ids else unfold(v).strip().decode("utf-8", "replace") or None

    @property
    def description(self) -> str | None:
        return self._text(b"content-description")

    @property
    def language(self) -> list[str] | None:
        v = self.field(b"content-language")
        if v is None:
            return None
        return [w.decode("latin-1") for w in unfold(v).replace(b",", b" ").split()] or None

    @property
    def location(self) -> str | None:
        return self._text(b"content-location")

    # --- tree -------------------------------------------------------------
    @cached_property
    def children(self) -> list[Part]:
        """Parts of a multipart (empty for anything else)."""
        if not self.is_multipart:
            return []
        digest = self.subtype == "digest"
        prefix = self.section + "." if self.section else ""
        return [Part(k, f"{prefix}{i}", digest, False) for i, k in enumerate(self._t[_KIDS], 1)]

    @cached_property
    def message(self) -> Part | None:
        """The embedded message of a message/rfc822 (or message/global) part."""
        if self.type != "message" or not self._t[_KIDS]:
            return None
        # RFC 3501 §6.4.5: a top-level message/rfc822 body is part 1
        return Part(self._t[_KIDS][0], self.section or "1", False, True)

    def walk(self) -> Iterator[Part]:
        """This part and every part below it, depth first (embedded messages included)."""
        yield self
        if self.message is not None:
            yield from self.message.walk()
        for k in self.children:
            yield from k.walk()

    # --- IMAP ---------------------------------------------------------------
    def imap_envelope(self) -> bytes:
        """RFC 3501 ENVELOPE of this message (root or embedded)."""
        return imap.envelope(self.fields())

    def imap_bodystructure(self, extended: bool = True) -> bytes:
        return imap.bodystructure(self, extended)

    def __repr__(self) -> str:
        return f"<Part {self.section or 'root'} {self.mime_type} {self.size}B>"


class MessageStructure:
    """The structure of one message (see the package docstring for the API)."""

    __slots__ = ("tree", "__dict__")

    def __init__(self, tree: tuple) -> None:
        self.tree = tree

    @cached_property
    def root(self) -> Part:
        return Part(self.tree, "", False, True)

    def scanned_fields(self) -> tuple:
        """The top-level header's structural fields as the scanner kept them: (lower-case name, raw
        value with its folding) pairs, in order, every occurrence."""
        return self.tree[_FIELDS]

    # --- cache ------------------------------------------------------------
    def to_cache(self) -> bytes:
        """Compact, versioned bytes for the mailbox index (see :meth:`from_cache`)."""
        blob = marshal.dumps(self.tree, 4)
        if len(blob) > _COMPRESS_ABOVE:
            packed = zlib.compress(blob, 1)
            if len(packed) < len(blob):
                return bytes((CACHE_VERSION | _ZLIB_FLAG,)) + packed
        return bytes((CACHE_VERSION,)) + blob

    @classmethod
    def from_cache(cls, data: bytes) -> MessageStructure:
        """Inverse of :meth:`to_cache`. Raises ValueError on a blob of another version."""
        if not data or data[0] & 0x7F != CACHE_VERSION:
            raise ValueError("MIME cache entry of an unknown version: re-parse the message")
        body = data[1:]
        try:
            if data[0] & _ZLIB_FLAG:
                body = zlib.decompress(body)
            tree = marshal.loads(body)
        except (EOFError, ValueError, TypeError, zlib.error) as exc:
            raise ValueError(f"corrupt MIME cache entry: {exc}") from None
        if not isinstance(tree, tuple) or len(tree) != 10:
            raise ValueError("corrupt MIME cache entry")
        return cls(tree)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MessageStructure) and other.tree == self.tree

    def __hash__(self) -> int:
        return hash(self.tree)

    # --- sizes and offsets --------------------------------------------------
    @property
    def size(self) -> int:
        return self.tree[_BEND]

    @property
    def header_end(self) -> int:
        """Offset of the body: BODY[HEADER] is ``raw[:header_end]``."""
        return self.tree[_BSTART]

    # --- header fields ------------------------------------------------------
    def field(self, name: bytes) -> bytes | None:
        return self.root.field(name)

    @property
    def subject(self) -> str | None:
        v = self.root.field(b"subject")
        return None if v is None else decode_words(unfold(v).strip(b" \t"))

    @property
    def date(self) -> str | None:
        """The Date field as written (parse with email.utils.parsedate_to_datetime)."""
        v = self.root.field(b"date")
        return None if v is None else unfold(v).strip().decode("latin-1")

    @property
    def sent_at(self) -> datetime.datetime | None:
        """RFC 5322 §3.6.1 Date as an aware datetime (JMAP sentAt); None if absent or unparsable."""
        v = self.date
        if not v:
            return None
        try:
            dt = email.utils.parsedate_to_datetime(v)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if dt.tzinfo is None:  # "-0000": RFC 5322 §3.3 unknown zone, taken as UTC
            dt = dt.replace(tzinfo=datetime.UTC)
        return dt

    def addresses(self, name: bytes) -> list[Address]:
        """Address list of ``from``/``sender``/``reply-to``/``to``/``cc``/``bcc``, raw (IMAP) form."""
        v = self.root.field(name)
        return [] if v is None else parse_addresses(v)

    @property
    def message_id(self) -> str | None:
        v = self.root.field(b"message-id")
        ids = message_ids(v) if v is not None else []
        return ids[0] if ids else None

    @property
    def in_reply_to(self) -> list[str]:
        v = self.root.field(b"in-reply-to")
        return message_ids(v) if v is not None else []

    @property
    def references(self) -> list[str]:
        v = self.root.field(b"references")
        return message_ids(v) if v is not None else []

    # --- IMAP -------------------------------------------------------------
    def imap_envelope(self) -> bytes:
        """RFC 3501 §7.4.2 ENVELOPE, exact wire bytes (Dovecot-compatible)."""
        return self.root.imap_envelope()

    def imap_bodystructure(self, extended: bool = True) -> bytes:
        """BODYSTRUCTURE (``extended=True``) or BODY, exact wire bytes."""
        return self.root.imap_bodystructure(extended)

    def parts(self) -> Iterator[Part]:
        return self.root.walk()

    def part(self, section: str) -> Part | None:
        """The part for an IMAP section number like ``"1.2"`` (RFC 3501 §6.4.5); None if absent.

        ``""`` is the root message. Inside a message/rfc822 part, numbers
        address the embedded message's parts; part 1 of a non-multipart
        message is its body.
        """
        node = self.root
        if not section:
            return node
        for tok in section.split("."):
            if not (tok.isascii() and tok.isdigit()) or len(tok) > 9:  # "²".isdigit(), int() refuses it
                return None
            n = int(tok)
            if not node.is_message and node.message is not None:
                node = node.message
            if node.is_multipart:
                kids = node.children
                if not 1 <= n <= len(kids):
                    return None
                node = kids[n - 1]
            elif n == 1 and node.is_message:
                node = Part(
                    node._t, node.section + ("." if node.section else "") + "1", False, False
                )
            else:
                return None
        return node

    def section_range(self, spec: str) -> tuple[int, int] | None:
        """Byte range in raw of a BODY[...] section without HEADER.FIELDS (RFC 3501 §6.4.5).

        ``spec`` is e.g. ``""``, ``"HEADER"``, ``"TEXT"``, ``"1.2"``,
        ``"1.2.MIME"``, ``"2.HEADER"``, ``"2.TEXT"`` (case-insensitive).
        Returns None when the section does not exist. Use
        :func:`mailsrv.mime.header_fields` for HEADER.FIELDS.
        """
        nums, _, what = _split_section(spec)
        if nums is None:
            return None
        if not nums and not what:
            return 0, self.size
        part = self.part(nums)
        if part is None:
            return None
        if what == "":
            return part.body_start, part.body_end
        if what == "MIME":
            if not nums:
                return None
            return part.header_start, part.body_start
        msg = part if part.is_message else part.message
        if msg is None:
            return None
        if what in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            return msg.header_start, msg.body_start
        if what == "TEXT":
            return msg.body_start, msg.body_end
        return None


def _split_section(spec: str) -> tuple[str | None, str, str]:
    """``"1.2.HEADER"`` -> ("1.2", ".", "HEADER"); numbers None when malformed."""
    spec = spec.strip()
    nums: list[str] = []
    rest = spec.split(".")
    i = 0
    while i < len(rest) and rest[i].isascii() and rest[i].isdigit():
        if rest[i] == "0" or len(rest[i]) > 9:
            return None, "", ""
        nums.append(rest[i])
        i += 1
    what = ".".join(rest[i:]).upper()
    if what not in ("", "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return None, "", ""
    if spec == "":
        return "", "", ""
    return ".".join(nums), ".", what
