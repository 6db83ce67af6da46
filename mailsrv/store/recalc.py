"""Rebuild per-domain quota usage from the per-account indexes (``mailsrv quota recalc``).

Never walks a maildir: each account's usage is the sum over its index rows (an index
that is missing or corrupt is rebuilt by opening it, as any worker would).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mailsrv.store.engine import Engine
from mailsrv.store.types import QuotaUsage
from mailsrv.store.usage import Report, UsageBook


def recount_account(account_id: str, root: Path) -> tuple[str, int, int, int] | None:
    """(epoch, generation, storage, messages) of one account, or None if it has no mail store yet."""
    if not root.is_dir():
        return None
    eng = Engine(account_id, root)
    try:
        eng.open()
        return eng.recount_quota()
    finally:
        eng.close()


def recalc_domain(book: UsageBook, domain: str, accounts: Iterable[tuple[str, Path]]) -> QuotaUsage:
    """Replace the domain's usage with the sum over ``accounts`` (account id, maildir root)."""
    rows: dict[str, Report] = {}
    for account_id, root in accounts:
        got = recount_account(account_id, root)
        epoch, gen, storage, messages = got if got is not None else ("", 0, 0, 0)
        rows[account_id] = (domain, epoch, gen, storage, messages)
    book.replace_domain(domain, rows)
    return book.domain_usage(domain)
