"""Brute-force evaluation of a query on one message: the meaning of every node.

The index (``mailsrv.search.index``) must give exactly the same answers; the
tests and the benchmark compare the two. This is also the fallback for a
message the index cannot read.
"""

from __future__ import annotations

import datetime
from typing import Any

from mailsrv._speedups.tokenize import normalize
from mailsrv.search.extract import HEADER_SEP, Document
from mailsrv.search.query import (
    All,
    And,
    Day,
    Flag,
    HasAttachment,
    Header,
    ModSeq,
    Not,
    Or,
    Query,
    SearchError,
    Size,
    Text,
    Time,
    Uids,
)

__all__ = ["day_of", "header_prefix", "matches", "sent_or_internal"]


# RFC 9051 §6.4.4 SENTBEFORE/SENTON/SENTSINCE: the day of the Date: header as written
# ("disregarding time and timezone"); a message without a valid Date: uses its internal date.
# deviation (RFC 9051 §6.4.4 BEFORE/ON/SINCE): the store keeps internal dates as epoch
# seconds without their zone, so those keys use UTC days.
def day_of(ts: float) -> int:
    """Proleptic ordinal of the UTC day of ``ts`` (IMAP date keys ignore time and zone)."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).date().toordinal()


def header_prefix(name: str) -> str:
    return normalize(name.strip().lower()) + ":"


def sent_or_internal(doc: Document, info: Any) -> float:
    """The sent date (Date:), or the internal date when the message has no valid Date:."""
    return doc.sent_date if doc.sent_date is not None else float(info.internal_date)


def matches(q: Query, doc: Document, info: Any) -> bool:
    """True when the message (its Document and the store's MessageInfo) matches ``q``."""
    if isinstance(q, All):
        return True
    if isinstance(q, Flag):
        name = q.name.casefold()
        return any(f.casefold() == name for f in info.flags)
    if isinstance(q, Uids):
        return info.uid in q.uids
    if isinstance(q, Text):
        v = normalize(q.value)
        if q.field == "text":
            return v in doc.text.get("headers", "") or v in doc.text.get("body", "")
        return v in doc.text.get(q.field, "")
    if isinstance(q, Header):
        prefix = header_prefix(q.name)
        v = normalize(q.value)
        for line in doc.text.get("headers", "").split(HEADER_SEP):
            if line.startswith(prefix) and v in line[len(prefix) :]:
                return True
        return False
    if isinstance(q, Day):
        if q.column == "sent" and doc.sent_day is not None:
            d = doc.sent_day
        else:
            d = day_of(float(info.internal_date))
        o = q.day.toordinal()
        return d < o if q.op == "before" else d == o if q.op == "on" else d >= o
    if isinstance(q, Time):
        ts = float(info.internal_date) if q.column == "internal" else sent_or_internal(doc, info)
        return ts < q.ts if q.op == "before" else ts >= q.ts
    if isinstance(q, Size):
        return info.size > q.n if q.op == "larger" else info.size < q.n
    if isinstance(q, ModSeq):
        return info.modseq >= q.n
    if isinstance(q, HasAttachment):
        return doc.has_attachment
    if isinstance(q, And):
        return all(matches(i, doc, info) for i in q.items)
    if isinstance(q, Or):
        return any(matches(i, doc, info) for i in q.items)
    if isinstance(q, Not):
        return not matches(q.item, doc, info)
    raise SearchError(f"unknown query node {q!r}")
