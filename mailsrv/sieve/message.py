"""What a Sieve script sees of one message (mailsrv.sieve.interp runs scripts on it): its header
fields, envelope and size, its body and MIME parts for the body test and RFC 5703, the environment."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailsrv import __version__, mime
from mailsrv.mime.body import part_text
from mailsrv.mime.headers import decode_words, parse_addresses, unfold
from mailsrv.mime.structure import Part
from mailsrv.sieve.mimeparts import html_text
from mailsrv.sieve.verdicts import Values

#: Header fields a MessageView keeps, and the bytes of each value (a hostile header block is cut, not run)
MAX_FIELDS = 1000
MAX_FIELD = 16 * 1024
#: Octets of a part's decoded text a body test looks at (the delivery side also bounds the message it
#: gives: mailsrv.delivery.sieve.BODY_MAX)
MAX_BODY_TEXT = 1 << 20


def environment(host: str) -> dict[str, str]:
    """RFC 5183 §4.1 items at delivery on the server ``host`` (its domain: what follows the first dot)."""
    return {"name": "mailsrv", "version": __version__, "host": host, "domain": host.partition(".")[2] or host,
            "location": "MS", "phase": "during"}  # a mail store, during delivery


@dataclass(frozen=True)
class MessageView:
    """What a script sees of one message: its header fields (raw, unfolded, and decoded), the
    envelope (RFC 5228 §5.4: from = the reverse path, "" for the null one; to = this recipient)
    and its size in octets."""

    fields: tuple[tuple[str, bytes], ...]  # (lower-cased name, raw value)
    envelope_from: str
    envelope_to: str
    size: int
    #: the message (its start, bounded by the caller) for the body test (RFC 5173); None: no body
    message: bytes | None = None
    #: the recipient's folder names, for mailboxexists (RFC 5490 §3.1); None: not known (false)
    mailboxes: frozenset[str] | None = None
    #: POSIX time of the delivery, for currentdate (RFC 5260 §5); 0: now
    now: float = 0.0
    #: RFC 5235 spamtest / virustest values (mailsrv.sieve.verdicts; the default: not tested)
    verdicts: Values = Values()
    #: RFC 7352: key -> whether the account saw it within its period (None: nothing seen); it may
    #: block (the delivery runs a script with duplicate in its I/O pool)
    duplicate: Callable[[str], bool] | None = None
    #: RFC 5183 environment items (:func:`environment`)
    environment: Mapping[str, str] = field(default_factory=lambda: environment(""))
    _decoded: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)
    _index: dict[str, list[bytes]] = field(default_factory=dict, compare=False, repr=False)
    _addresses: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict, compare=False, repr=False)
    #: RFC 5703: the parsed MIME structure of ``message`` and each part's header fields (by section)
    _mime: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, head: bytes, *, envelope_from: str, envelope_to: str, size: int) -> MessageView:
        """From the header block (``head`` may hold the body too: it stops at the first empty line)."""
        return cls(tuple(header_fields(head)), envelope_from, envelope_to, size)

    def raw(self, name: str) -> list[bytes]:
        index = self._index
        if not index and self.fields:
            for k, v in self.fields:
                index.setdefault(k, []).append(v)
        return index.get(name, [])

    def decoded(self, name: str) -> tuple[str, ...]:
        """RFC 5228 §5.7: unfolded, RFC 2047 decoded, leading and trailing white space removed."""
        got = self._decoded.get(name)
        if got is None:
            got = tuple(decode_words(unfold(v)).strip() for v in self.raw(name))
            self._decoded[name] = got
        return got

    def addresses(self, name: str) -> tuple[tuple[str, str], ...]:
        """(local part, domain) of each mailbox in the field's occurrences (RFC 5228 §5.1: a group gives
        its members)."""
        got = self._addresses.get(name)
        if got is None:
            got = self._addresses[name] = tuple(addresses_of(self.raw(name)))
        return got

    def body_values(self, transform: str, types: tuple[str, ...]) -> list[str]:
        """RFC 5173 §5: the values a body test matches (cached per transform)."""
        key = f"\0body:{transform}:{' '.join(types)}"
        got = self._decoded.get(key)
        if got is None:
            got = tuple(_body(self.message, transform, types)) if self.message is not None else ()
            self._decoded[key] = got
        return list(got)

    def has(self, name: str) -> bool:
        return bool(self.raw(name))

    def root(self) -> Part | None:
        """RFC 5703: the message's MIME structure (None without the message's bytes)."""
        if self.message is None:
            return None
        got = self._mime.get("")
        if got is None:
            got = self._mime[""] = mime.parse(self.message).root
        return got

    def part_fields(self, part: Part) -> list[tuple[str, bytes]]:
        """The header fields of ``part`` (the message's own, edits included, for the root)."""
        if not part.section and not part.is_message:
            return list(self.fields)
        key = f"{'m' if part.is_message else 'p'}{part.section}"
        got = self._mime.get(key)
        if got is None:
            assert self.message is not None
            got = self._mime[key] = header_fields(self.message[part.header_start:part.body_start])
        return got


def header_fields(head: bytes) -> list[tuple[str, bytes]]:
    """RFC 5322 §2.2 fields of a header block, in order (continuation lines joined), up to MAX_FIELDS;
    a value is cut at MAX_FIELD bytes."""
    out: list[tuple[str, bytes]] = []
    name: str | None = None
    val: list[bytes] = []
    size = 0
    end = head.find(b"\n\r\n")  # the empty line: only the header block is split
    if end < 0:
        end = head.find(b"\n\n")
    if end >= 0:
        head = head[:end + 1]
    elif head[:1] in (b"\n", b"\r"):
        return out
    for line in head.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if name is not None and size < MAX_FIELD:
                val.append(b"\r\n" + line)
                size += len(line) + 2
            continue
        if name is not None:
            out.append((name, b"".join(val)[:MAX_FIELD]))
            if len(out) >= MAX_FIELDS:
                return out
        colon = line.find(b":")
        if colon <= 0:
            name = None  # not a field (an mbox "From " line): skipped
            continue
        name = line[:colon].strip().decode("latin-1").lower()
        val = [line[colon + 1:]]
        size = len(line)
    if name is not None and len(out) < MAX_FIELDS:
        out.append((name, b"".join(val)[:MAX_FIELD]))
    return out



def addresses_of(raws: list[bytes]) -> list[tuple[str, str]]:
    """(local part, domain) of each mailbox in the field values ``raws`` (a group gives its members)."""
    return [(decode_words(a.mailbox) if "=?" in a.mailbox else a.mailbox, a.host)
            for raw in raws for a in parse_addresses(raw, limit=256) if a.mailbox is not None and a.host is not None]


def _body(raw: bytes, transform: str, types: tuple[str, ...]) -> list[str]:
    structure = mime.parse(raw)
    if transform == "raw":  # RFC 5173 §5.1: the body as it is, one value
        return [raw[structure.root.body_start:].decode("utf-8", "replace")]
    out = []
    for p in structure.parts():
        if p.is_multipart or p.message is not None:
            continue
        if transform == "text":  # RFC 5173 §5.3: the text parts, as text
            wanted = p.type == "text"
        else:  # RFC 5173 §5.2: "" every part, "text" a type, "text/html" a type and subtype
            wanted = any(t == "" or t == p.type or t == f"{p.type}/{p.subtype}" for t in types)
        if not wanted:
            continue
        text = part_text(raw, p, MAX_BODY_TEXT)
        if transform == "text" and p.subtype == "html":
            text = html_text(text)
        out.append(text)
    return out
