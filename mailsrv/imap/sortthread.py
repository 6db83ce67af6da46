"""SORT and THREAD (RFC 5256; DISPLAYFROM/DISPLAYTO of RFC 5957): keys, base subjects, threading.

Pure functions over :class:`Item` (a message's number, metadata and parsed
header values); the session collects the items.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header

from mailsrv.mime.headers import BASE_SUBJECT_MAX

_SUBJ_TRAILER = re.compile(r"(?:\s*\(fwd\)\s*)$", re.I)
_SUBJ_LEADER = re.compile(r"^(?:\s*(?:re|fwd?)\s*(?:\[[^\[\]]*\]\s*)*:\s*|\s*\[[^\[\]]*\]\s*)", re.I)
_FWD_WRAP = re.compile(r"^\[fwd:\s*(.*)\]$", re.I | re.S)


def decode(value: bytes | None) -> str:
    if value is None:
        return ""
    text = value.decode("utf-8", "replace")
    try:
        return str(make_header(decode_header(text)))
    except Exception:
        return text


def base_subject(subject: str) -> str:
    """RFC 5256 §2.1: strip Re:/Fwd:/[blob] leaders, (fwd) trailers and [Fwd: ...] wrappers."""
    s = " ".join(subject[:BASE_SUBJECT_MAX].split())
    while True:
        before = s
        while True:
            t = _SUBJ_TRAILER.sub("", s)
            if t == s:
                break
            s = t
        while True:
            m = _SUBJ_LEADER.match(s)
            if not m or m.end() == 0:
                break
            rest = s[m.end():]
            # (5) a [blob] is removed only if something remains
            if m.group(0).strip().startswith("[") and not rest.strip():
                break
            s = rest
        m = _FWD_WRAP.match(s)
        if m:
            s = m.group(1)
        if s == before:
            return s.casefold()


def _first_address(value: bytes | None, display: bool = False) -> str:
    if value is None:
        return ""
    addrs = email.utils.getaddresses([decode(value)])
    if not addrs:
        return ""
    name, addr = addrs[0]
    if display:
        return (name or addr).casefold()
    return addr.split("@", 1)[0].casefold()


def _date(value: bytes | None, fallback: float) -> float:
    if value is None:
        return fallback
    try:
        return email.utils.parsedate_to_datetime(value.decode("ascii", "replace")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return fallback


@dataclass
class Item:
    num: int  # the number reported (sequence number or UID)
    seq: int
    internal_date: float
    size: int
    headers: dict[bytes, bytes]  # lower-case name -> raw value (first occurrence)

    def header(self, name: bytes) -> bytes | None:
        return self.headers.get(name)

    @property
    def sent(self) -> float:
        # RFC 5256 §3: a message without a valid Date: sorts by its internal date
        return _date(self.header(b"date"), self.internal_date)


def sort_key(item: Item, criterion: str) -> object:
    if criterion == "ARRIVAL":
        return item.internal_date
    if criterion == "DATE":
        return item.sent
    if criterion == "SIZE":
        return item.size
    if criterion == "SUBJECT":
        return base_subject(decode(item.header(b"subject")))
    if criterion in ("FROM", "TO", "CC"):
        return _first_address(item.header(criterion.lower().encode()))
    if criterion == "DISPLAYFROM":
        return _first_address(item.header(b"from"), display=True)
    if criterion == "DISPLAYTO":
        return _first_address(item.header(b"to"), display=True)
    raise ValueError(criterion)


def sort(items: list[Item], criteria: list[tuple[bool, str]]) -> list[int]:
    """RFC 5256 §3: sort by each criterion in turn; ties by sequence number."""
    ordered = sorted(items, key=lambda i: i.seq)
    for reverse, criterion in reversed(criteria):
        ordered.sort(key=lambda i, c=criterion: sort_key(i, c), reverse=reverse)  # type: ignore[misc,arg-type]
    return [i.num for i in ordered]


# --- THREAD ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    item: Item | None = None
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)

    def date(self) -> float:
        if self.item is not None:
            return self.item.sent
        return min((c.date() for c in self.children), default=0.0)

    def seq(self) -> int:
        if self.item is not None:
            return self.item.seq
        return min((c.seq() for c in self.children), default=0)


def _ids(value: bytes | None) -> list[str]:
    return re.findall(r"<[^<>\s]+>", value.decode("ascii", "replace")) if value else []


def _is_ancestor(a: Node, b: Node) -> bool:
    """True when a is b or an ancestor of b."""
    n: Node | None = b
    while n is not None:
        if n is a:
            return True
        n = n.parent
    return False


def _link(parent: Node, child: Node) -> None:
    if child.parent is parent or _is_ancestor(child, parent):
        return
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def thread_references(items: list[Item]) -> list[Node]:
    """RFC 5256 §2.2 (the "REFERENCES" algorithm, after JWZ)."""
    table: dict[str, Node] = {}
    for item in sorted(items, key=lambda i: i.seq):
        ids = _ids(item.header(b"message-id"))
        mid = ids[0] if ids else None
        if mid is None or (mid in table and table[mid].item is not None):
            mid = f"<dup-{item.seq}@mailsrv.invalid>"  # (1A) unique id for missing/duplicate
        node = table.setdefault(mid, Node())
        node.item = item
        refs = _ids(item.header(b"references")) or _ids(item.header(b"in-reply-to"))[:1]
        prev: Node | None = None
        for ref in refs:
            ref_node = table.setdefault(ref, Node())
            if prev is not None and ref_node.parent is None:
                _link(prev, ref_node)
            prev = ref_node
        # (1C) the message's parent is the last reference
        if node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
        if prev is not None and prev is not node:
            _link(prev, node)
    roots = [n for n in table.values() if n.parent is None]
    roots = _prune(roots, top=True)
    # (5) group root threads with the same base subject
    by_subject: dict[str, Node] = {}
    merged: list[Node] = []
    for root in sorted(roots, key=lambda r: (r.date(), r.seq())):
        first = root.item or (root.children[0].item if root.children else None)
        subject = base_subject(decode(first.header(b"subject"))) if first is not None else ""
        if not subject:
            merged.append(root)
            continue
        other = by_subject.get(subject)
        if other is None:
            by_subject[subject] = root
            merged.append(root)
            continue
        if other.item is None:
            # the earlier thread is a dummy: the new one becomes its child
            root.parent = other
            other.children.append(root)
        else:
            holder = Node(None, None, [other, root])
            other.parent = root.parent = holder
            merged[merged.index(other)] = holder
            by_subject[subject] = holder
    _sort_children(merged)
    merged.sort(key=lambda r: (r.date(), r.seq()))
    return merged


def _prune(nodes: list[Node], top: bool) -> list[Node]:
    """(3) drop empty containers: childless ones vanish, others give their children up."""
    out: list[Node] = []
    for n in nodes:
        n.children = _prune(n.children, top=False)
        for c in n.children:
            c.parent = n
        if n.item is None:
            if not n.children:
                continue
            if not top or len(n.children) == 1:
                for c in n.children:
                    c.parent = n.parent
                out.extend(n.children)
                continue
        out.append(n)
    return out


def _sort_children(nodes: list[Node]) -> None:
    for n in nodes:
        n.children.sort(key=lambda c: (c.date(), c.seq()))
        _sort_children(n.children)


def thread_orderedsubject(items: list[Item]) -> list[Node]:
    """RFC 5256 §2.1: group by base subject, sort by sent date; every other message is a child of the first."""
    groups: dict[str, list[Item]] = {}
    for item in sorted(items, key=lambda i: (i.sent, i.seq)):
        groups.setdefault(base_subject(decode(item.header(b"subject"))), []).append(item)
    roots = []
    for members in groups.values():
        root = Node(members[0])
        root.children = [Node(m, root) for m in members[1:]]
        roots.append(root)
    roots.sort(key=lambda r: (r.date(), r.seq()))
    return roots


def format_threads(roots: list[Node]) -> bytes:
    """RFC 5256 §4: ``(a b (c)(d e))``."""
    def node(n: Node) -> str:
        head = str(n.item.num) if n.item is not None else ""
        if not n.children:
            return head
        if len(n.children) == 1:
            child = node(n.children[0])
            return f"{head} {child}".strip() if n.item is not None else f"({child})"
        kids = "".join(f"({node(c)})" for c in n.children)
        return f"{head} {kids}" if head else kids

    return "".join(f"({node(r)})" for r in roots).encode()
