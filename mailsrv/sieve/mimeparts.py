"""RFC 5703 (MIME part tests, iteration, extraction): the compiled nodes of ``foreverypart``, ``break``
and ``extracttext``, the ``:mime`` options of ``header``, ``address`` and ``exists``, and what a run
reads of a MIME part (its header fields, the values the options take from them, its text).

Parts come from our MIME parser (mailsrv.mime) over the message's first bytes the delivery gives
(mailsrv.delivery.sieve.BODY_MAX); its limits bound the nesting and number of parts. ``replace`` and
``enclose`` (RFC 5703 §5, §6) are mailsrv.sieve.mimeedit's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from mailsrv.mime.body import _html_to_text, part_text
from mailsrv.mime.headers import decode_words, merge_params, parse_params_lenient, unfold
from mailsrv.mime.structure import Part

#: MIME parts one run may visit in its foreverypart loops, all loops together (more is a runtime
#: error: the message is kept)
MAX_PARTS_VISITED = 256
#: RFC 5703 §4.1 MIME-OPTS
MIME_OPTIONS = ("type", "subtype", "contenttype", "param")


@dataclass(frozen=True)
class MimeOpts:
    """RFC 5703 §4: ``:mime`` on header, address or exists: the fields of the current part (or,
    ``anychild``, of every part within it); ``option``: "" (the field's value), "type", "subtype",
    "contenttype" or "param" (the values of the parameters ``params``, lower case)."""

    anychild: bool = False
    option: str = ""
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForEveryPart:
    """RFC 5703 §3: run ``body`` with each MIME part as the current one; ``name`` for ``break``."""

    name: str | None
    body: tuple[object, ...]  # the block's compiled actions (mailsrv.sieve.nodes.Action)


@dataclass(frozen=True)
class Break:
    """RFC 5703 §3: end the innermost loop (``name``: the innermost of that name)."""

    name: str | None


@dataclass(frozen=True)
class ExtractText:
    """RFC 5703 §7: the current part's text (its first ``first`` characters, 0: all) into variable
    ``name`` (lower case), after the set modifiers ``modifiers`` (in the order they apply)."""

    name: str
    first: int
    modifiers: tuple[str, ...]


class LoopBreak(Exception):
    """Unwinds to the loop ``break`` names (None: the innermost)."""

    def __init__(self, name: str | None) -> None:
        super().__init__(name)
        self.name = name


def loop_parts(root: Part, current: Part | None) -> list[Part]:
    """RFC 5703 §3: the parts a loop visits, depth first: every part of the message, itself first
    (``current`` None: the outermost loop), else every part within ``current`` (a nested loop; none
    for a leaf)."""
    if current is None:
        return list(root.walk())
    return list(current.walk())[1:]


def scope(root: Part, current: Part | None, anychild: bool) -> Iterator[Part]:
    """RFC 5703 §4.1: the parts a ``:mime`` test reads: the current one (the message outside a loop),
    or with ``:anychild`` every part within it (every part of the message outside a loop)."""
    if not anychild:
        yield current or root
    elif current is None:
        yield from root.walk()
    else:
        yield from list(current.walk())[1:]


def option_values(part: Part, name: str, raws: list[bytes], opts: MimeOpts) -> list[str]:
    """RFC 5703 §4.1: what a ``header :mime`` test matches of field ``name``'s occurrences ``raws`` in
    ``part``: the decoded values, or the type, subtype, type/subtype or named parameters of each
    (Content-Type's with its RFC 2045 default when absent; RFC 2231 parameters decoded)."""
    if not opts.option:
        return [decode_words(unfold(v)).strip() for v in raws]
    if name == "content-type":  # the parser's reading: defaults, RFC 2231, a digest's parts
        kinds = [(part.type, part.subtype, part.params)]
    else:
        kinds = []
        for v in raws:
            value = unfold(v)
            token = value.split(b";", 1)[0].decode("latin-1").strip().lower()
            typ, _, sub = token.partition("/")
            kinds.append((typ, sub, dict(merge_params(parse_params_lenient(value))) if b";" in value else {}))
    out: list[str] = []
    for typ, sub, params in kinds:
        if opts.option == "type":
            out.append(typ)
        elif opts.option == "subtype":
            out.append(sub)
        elif opts.option == "contenttype":
            out.append(f"{typ}/{sub}" if typ else "")
        else:
            out += [params[p] for p in opts.params if p in params]
    return out


def text_of(raw: bytes, part: Part, limit: int) -> str:
    """RFC 5703 §7: a text part's content, decoded (transfer encoding and charset; HTML as text), at
    most ``limit`` octets of it read; "" for any other part."""
    if part.type != "text" or part.is_multipart:
        return ""
    text = part_text(raw, part, limit)
    return html_text(text) if part.subtype == "html" else text


def html_text(html: str) -> str:
    """An HTML part's text as body and extracttext see it: tags become spaces, runs of them one."""
    return " ".join(_html_to_text(html).split())
