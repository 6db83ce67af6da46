"""The mail store: Maildir++ trees, per-account index, quota, cross-process notification.

Public API: docs/store-api.md. Protocols import only from this package root.
"""

from __future__ import annotations

from mailsrv.store.account import Account, MailboxView
from mailsrv.store.notify import Watch
from mailsrv.store.store import Store, account_root
from mailsrv.store.types import (
    SPECIAL_USE,
    BadMailboxName,
    Changes,
    ChangesSince,
    DeliveryResult,
    DeliveryTarget,
    MailboxExists,
    MailboxInfo,
    MailboxNotFound,
    MessageGone,
    MessageInfo,
    OverQuota,
    QuotaLimits,
    QuotaUsage,
    StoreError,
    StoreObserver,
    TemporaryFailure,
)

__all__ = [
    "SPECIAL_USE",
    "Account",
    "BadMailboxName",
    "Changes",
    "ChangesSince",
    "DeliveryResult",
    "DeliveryTarget",
    "MailboxExists",
    "MailboxInfo",
    "MailboxNotFound",
    "MailboxView",
    "MessageGone",
    "MessageInfo",
    "OverQuota",
    "QuotaLimits",
    "QuotaUsage",
    "Store",
    "StoreError",
    "StoreObserver",
    "TemporaryFailure",
    "Watch",
    "account_root",
]
