"""IMAP SEARCH keys -> the search index's query AST (docs/search-api.md "IMAP key mapping").

Keys answered from the session's own state (sequence sets, ``$``, \\Recent,
SAVEDATE, object ids) become :class:`Uids` sets computed over the view; the
rest map one to one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pyroaring import BitMap

from mailsrv.imap.grammar import SearchKey
from mailsrv.imap.search import Message, matcher
from mailsrv.search import All, And, Day, Flag, Header, ModSeq, Not, Or, Size, Text, Time, Uids

_FLAGS = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft", "FLAGGED": "\\Flagged",
          "SEEN": "\\Seen"}
_TEXT = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject", "BODY": "body", "TEXT": "text"}


def to_query(key: SearchKey, metadata: Callable[[SearchKey], BitMap]) -> Any:
    """The index query for ``key``; ``metadata(k)`` evaluates a key the index has no column for."""
    op, args = key.op, key.args
    if op == "ALL" or op == "SAVEDATESUPPORTED":
        return All()
    if op == "AND":
        return And(*(to_query(k, metadata) for k in args))
    if op == "OR":
        return Or(to_query(args[0], metadata), to_query(args[1], metadata))
    if op == "NOT":
        return Not(to_query(args[0], metadata))
    if op in _FLAGS:
        return Flag(_FLAGS[op])
    if op.startswith("UN") and op[2:] in _FLAGS:
        return Not(Flag(_FLAGS[op[2:]]))
    if op == "KEYWORD":
        return Flag(args[0].decode("utf-8", "replace"))
    if op == "UNKEYWORD":
        return Not(Flag(args[0].decode("utf-8", "replace")))
    if op in _TEXT:
        return Text(_TEXT[op], args[0].decode("utf-8", "replace"))
    if op == "HEADER":
        return Header(args[0].decode("utf-8", "replace"), args[1].decode("utf-8", "replace"))
    if op in ("BEFORE", "ON", "SINCE"):
        return Day("internal", op.lower(), args[0])  # type: ignore[arg-type]
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        return Day("sent", op[4:].lower(), args[0])  # type: ignore[arg-type]
    if op == "LARGER":
        return Size("larger", args[0])
    if op == "SMALLER":
        return Size("smaller", args[0])
    if op == "MODSEQ":
        return ModSeq(args[0])
    if op == "OLDER":
        return Time("internal", "before", time.time() - args[0] + 1)
    if op == "YOUNGER":
        return Time("internal", "after", time.time() - args[0])
    # SEQ, UID, RECENT/NEW/OLD, SAVED*, EMAILID, THREADID: from the session's view
    return Uids(metadata(key))


def metadata_evaluator(view: Any, *, saved: list[int], recent: set[int]) -> Callable[[SearchKey], BitMap]:
    messages = view.messages
    largest_uid = messages[-1].uid if messages else 0

    def evaluate(key: SearchKey) -> BitMap:
        match = matcher(key, largest_seq=len(messages), largest_uid=largest_uid, saved=saved, now=time.time(),
                        recent=recent)
        return BitMap(m.uid for i, m in enumerate(messages) if match(Message(i + 1, m, None)))

    return evaluate
