"""Rendered ENVELOPE / BODYSTRUCTURE / BODY bytes of messages, kept per store and worker process.

A message never changes once delivered (RFC 9051 §2.3.1.1: a UID names one message for
the life of its UIDVALIDITY), so what FETCH renders from its cached MIME structure can be
kept: a repeated ``FETCH 1:1000 (ENVELOPE BODYSTRUCTURE)`` then neither reads the
structures from the index nor parses an address again. Entries are keyed by account,
mailbox id (a random GUID, or an adopted Dovecot one), UIDVALIDITY, UID and the session's
UTF-8 mode (today's renderings are the same with and without UTF8=ACCEPT / IMAP4rev2; a
renderer that made them differ would need nothing more here). The cache holds at most
:data:`RENDER_CACHE_BYTES`, least recently used out first. Event-loop only (no locks).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

#: bytes of rendered items kept per store and process (~100 000 messages of ~330 bytes)
RENDER_CACHE_BYTES = 32 * 1024 * 1024
#: what one entry costs besides its bytes (key tuple, dict, bytes headers): counted in the bound
ENTRY_OVERHEAD = 200

#: ``key_prefix(...) + str(uid)``: a string, not a tuple, so that a full cache adds no objects the
#: garbage collector tracks (str keys, bytes values, dicts of those are all untracked): a worker
#: with a 100 000-message view selected pays ~90 ms per full collection
Key = str


def key_prefix(account: str, mailbox_id: str, uidvalidity: int, utf8: bool) -> str:
    """The part of the key shared by one FETCH's messages; append the UID."""
    return f"{account}\0{mailbox_id}\0{uidvalidity}\0{int(utf8)}\0"


class RenderCache:
    """An LRU map of message key -> {item name: rendered bytes}, bounded in bytes."""

    def __init__(self, max_bytes: int = RENDER_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[Key, dict[str, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> dict[str, bytes] | None:
        """The items rendered for ``key`` (do not modify), marking it recently used; None if none."""
        got = self._entries.get(key)
        if got is not None:
            self._entries.move_to_end(key)
        return got

    def put(self, key: Key, item: str, value: bytes) -> None:
        """Keep ``value`` as ``key``'s rendered ``item``, dropping the least recently used beyond the bound."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = {}
            self.size += ENTRY_OVERHEAD
        else:
            self._entries.move_to_end(key)
            old = entry.get(item)
            if old is not None:
                self.size -= len(old)
        entry[item] = value
        self.size += len(value)
        while self.size > self.max_bytes and self._entries:
            _, dropped = self._entries.popitem(last=False)
            self.size -= ENTRY_OVERHEAD + sum(len(v) for v in dropped.values())


_caches: weakref.WeakKeyDictionary[Any, RenderCache] = weakref.WeakKeyDictionary()


def for_store(store: Any) -> RenderCache:
    """The process's cache for ``store`` (one per store object; it goes with the store)."""
    cache = _caches.get(store)
    if cache is None:
        cache = _caches[store] = RenderCache()
    return cache
