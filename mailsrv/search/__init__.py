"""Search engine: per-mailbox roaring-bitmap indexes for IMAP SEARCH/SORT and JMAP Email/query.

Public API (docs/search-api.md): :class:`SearchService`, :class:`MailboxIndex`,
the query AST of :mod:`mailsrv.search.query`, :class:`SortKey`, and the
text helpers :func:`normalize` and :func:`tokenize`.
"""

from __future__ import annotations

from mailsrv._speedups.tokenize import normalize
from mailsrv._speedups.tokenize import terms as tokenize
from mailsrv.config import SearchConfig
from mailsrv.search.extract import Document, extract
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
    SortKey,
    Text,
    Time,
    Uids,
)
from mailsrv.search.scan import matches
from mailsrv.search.service import Columns, MailboxIndex, SearchService

__all__ = [
    "All",
    "And",
    "Columns",
    "Day",
    "Document",
    "Flag",
    "HasAttachment",
    "Header",
    "MailboxIndex",
    "ModSeq",
    "Not",
    "Or",
    "Query",
    "SearchConfig",
    "SearchError",
    "SearchService",
    "Size",
    "SortKey",
    "Text",
    "Time",
    "Uids",
    "extract",
    "matches",
    "normalize",
    "tokenize",
]
