"""LIST and LSUB (RFC 9051 §6.3.9, RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154, RFC 3348,
RFC 8440 LIST-MYRIGHTS).

Hierarchy delimiter "/", a personal namespace with an empty prefix and the "Other Users" one
(RFC 2342): for each grant the user holds, ``Other Users`` and ``Other Users/<owner>`` (\\Noselect)
and the owner's folders under them, without their special-use attributes, always subscribed.
RFC 4314 §4: LIST needs "l", which every grant gives.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mailsrv.imap import acl
from mailsrv.imap.grammar import Command

if TYPE_CHECKING:
    from mailsrv.imap.session import Session
    from mailsrv.imap.sharing import Place

DELIMITER = "/"


#: wildcards a LIST pattern may have and still be matched with a regular expression: each ``*`` is a
#: ``.*`` that backtracks, so k of them cost up to len(name)**k per name ("*a*a*a*a*a*a*b" against
#: a 200-character name held the worker's loop for minutes); beyond two, :class:`WildcardMatcher`
REGEX_WILDCARDS = 2


def pattern_regex(pattern: str) -> re.Pattern[str] | WildcardMatcher:
    """``*`` matches anything, ``%`` anything but the delimiter (RFC 9051 §6.3.9); ``.match(name)``."""
    if sum(1 for i, ch in enumerate(pattern) if ch in "*%" and (i == 0 or pattern[i - 1] not in "*%")) > REGEX_WILDCARDS:
        return WildcardMatcher(pattern)
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append("[^/]*")
        else:
            out.append(re.escape(ch))
    body = "".join(out)
    # INBOX is case-insensitive, also as the first component of a pattern.
    if pattern.upper().startswith("INBOX"):
        body = "(?i:INBOX)" + "".join(out[5:]) if len(pattern) >= 5 else body
    return re.compile(body + r"\Z", re.S)


_STAR, _PERCENT = 0, 1


class WildcardMatcher:
    """A LIST pattern matched without backtracking: the set of pattern positions reached so far,
    advanced one character of the name at a time (at most len(name) * len(pattern) steps)."""

    __slots__ = ("tokens",)

    def __init__(self, pattern: str) -> None:
        fold = pattern.upper().startswith("INBOX")
        tokens: list[str | int] = []
        for i, ch in enumerate(pattern):
            if ch in "*%":
                kind = _STAR if ch == "*" else _PERCENT
                if tokens and isinstance(tokens[-1], int):  # "**", "*%", "%*" are "*"; "%%" is "%"
                    tokens[-1] = min(tokens[-1], kind)
                else:
                    tokens.append(kind)
            else:  # a literal: the characters it matches (INBOX in any case)
                tokens.append(ch.upper() + ch.lower() if fold and i < 5 else ch)
        self.tokens = tokens

    def _close(self, states: set[int]) -> set[int]:
        # a wildcard may match nothing: the position after it is reached too (never two wildcards in a row)
        n = len(self.tokens)
        return states | {i + 1 for i in states if i < n and isinstance(self.tokens[i], int)}

    def match(self, name: str) -> bool:
        tokens, n = self.tokens, len(self.tokens)
        states = self._close({0})
        for ch in name:
            step = set()
            for i in states:
                if i == n:
                    continue
                t = tokens[i]
                if t == _STAR or (t == _PERCENT and ch != "/"):
                    step.add(i)
                elif isinstance(t, str) and ch in t:
                    step.add(i + 1)
            if not step:
                return False
            states = self._close(step)
        return n in states


async def run_list(session: Session, cmd: Command, *, lsub: bool = False) -> None:
    from mailsrv.imap.session import ImapError

    args = cmd.args
    select = set(args["select"])
    returns: dict[str, Any] = args["returns"]
    extended = args["extended"]
    for opt in select:
        if opt not in ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"):
            raise ImapError("BAD", f"Unknown LIST selection option {opt}", "CLIENTBUG")
    if select == {"RECURSIVEMATCH"}:
        # RFC 5258 §3: RECURSIVEMATCH alone is an error
        raise ImapError("BAD", "RECURSIVEMATCH needs another selection option", "CLIENTBUG")
    reference = session._name_in(args["reference"]) if args["reference"] else ""
    patterns = [reference + session._name_in(p) for p in args["patterns"]]
    if not lsub and len(patterns) == 1 and patterns[0] == reference == "" and args["patterns"][0] == b"":
        # RFC 9051 §6.3.9: LIST "" "" returns the delimiter and the root
        session.w(b'* LIST (\\Noselect) "/" ""\r\n')
        return
    # own folders named like the namespace are shadowed by it (CREATE refuses such names)
    boxes = [b for b in await session.home.list_mailboxes() if acl.split_shared(b.name) is None]
    by_name = {b.name: b for b in boxes}
    places: dict[str, Place] = {}
    nodes: set[str] = set()
    for client, place in await session.shared_boxes():
        if place is None:
            nodes.add(client)
        else:
            places[client] = place
    names = set(by_name) | set(places) | nodes
    subscribed = {b.name for b in boxes if b.subscribed} | set(places)
    regexes = [pattern_regex(p) for p in patterns]
    candidates = set(names)
    if "SUBSCRIBED" in select or lsub:
        candidates = set(subscribed) | (names & subscribed)
    want_children = True
    want_special = True
    status_items = returns.get("STATUS")
    out_names = sorted(n for n in candidates if any(r.match(n) for r in regexes))
    # RFC 3501 §6.3.8 / RFC 9051 §6.3.9: with "%" last, levels of hierarchy above matching
    # mailboxes are returned even when they do not exist (\Noselect / \NonExistent).
    percent = [r for p, r in zip(patterns, regexes, strict=True) if p.endswith("%")]
    if percent and not lsub:
        parents = {n.rsplit(DELIMITER, k)[0] for n in candidates for k in range(1, n.count(DELIMITER) + 1)}
        ghosts = {p for p in parents - names if any(r.match(p) for r in percent)}
        out_names = sorted(set(out_names) | ghosts)
    # RFC 5258 §3.5: with (SUBSCRIBED RECURSIVEMATCH), a mailbox that matches the pattern but
    # not the selection, and has a descendant that does, is returned with CHILDINFO.
    childinfo: set[str] = set()
    if "RECURSIVEMATCH" in select and "SUBSCRIBED" in select:
        parents = {n.rsplit(DELIMITER, k)[0] for n in subscribed for k in range(1, n.count(DELIMITER) + 1)}
        childinfo = {p for p in parents if p not in subscribed and any(r.match(p) for r in regexes)}
        out_names = sorted(set(out_names) | childinfo)
    # every name with a child, in one pass (a test per pair of names was ~60 % of a LIST of 750 names)
    parents_of_any = {n.rsplit(DELIMITER, k)[0] for n in names for k in range(1, n.count(DELIMITER) + 1)}
    for name in sorted(out_names, key=lambda n: (n != "INBOX", n)):
        info = by_name.get(name)
        place = places.get(name)
        exists = info is not None or place is not None
        attrs: list[str] = []
        has_children = name in parents_of_any
        if name in nodes:
            attrs.append("\\Noselect")  # RFC 2342 §3: the namespace's levels above the folders
        elif not exists:
            # RFC 9051 §7.3.1: \NonExistent implies \Noselect; rev1 clients know only \Noselect
            attrs.append("\\NonExistent" if (extended or session.rev2) else "\\Noselect")
        if want_children and not lsub and (exists or has_children or name in nodes):
            attrs.append("\\HasChildren" if has_children else "\\HasNoChildren")
        if (extended and ("SUBSCRIBED" in select or returns.get("SUBSCRIBED"))) and name in subscribed:
            attrs.append("\\Subscribed")
        if want_special and info is not None and info.special_use and not lsub:
            attrs.append(info.special_use)
        if "SPECIAL-USE" in select and (info is None or not info.special_use):
            continue
        verb = b"LSUB" if lsub else b"LIST"
        extra = b' ("CHILDINFO" ("SUBSCRIBED"))' if name in childinfo else b""
        session.w(b"* " + verb + b" (" + " ".join(attrs).encode() + b') "/" ' + session._name_out(name)
                  + extra + b"\r\n")
        if returns.get("MYRIGHTS") and exists:
            # RFC 8440 §3: a MYRIGHTS response for each selectable mailbox listed, as MYRIGHTS answers it
            rights = place.rights if place is not None else acl.OWNER_RIGHTS
            session.w(b"* MYRIGHTS " + session._name_out(name) + b" " + acl.with_virtual(rights).encode() + b"\r\n")
        if status_items and exists:
            try:
                items = await session.status_items(place or await session._place(name), status_items)
            except ImapError:
                continue
            session.w(b"* STATUS " + session._name_out(name) + b" " + items + b"\r\n")
