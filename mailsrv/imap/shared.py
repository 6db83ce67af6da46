"""Sessions that have the same mailbox selected share its messages' MessageInfo objects (one per process).

Each session's view of a mailbox is its own list (sequence numbers are per session), but the
entries are immutable: a refresh or SELECT in one session builds new objects that are equal to those
another session of the same mailbox holds already. With thousands of IDLE sessions on a few mailboxes
every wake round made one copy per session of each new message (~1.2 MiB per round with 2 000
sessions); interned here, a round costs one object per mailbox plus a list slot per session.

Only an *equal* object is ever substituted (dataclass equality: every field), so sharing can never
show a session a state it did not read itself, even when two stores' mailboxes meet under one key.
"""

from __future__ import annotations

from typing import Any


class SharedMessages:
    """uid -> the MessageInfo the sessions of one mailbox share, while at least one has it selected."""

    __slots__ = ("key", "users", "by_uid")

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key
        self.users = 0
        self.by_uid: dict[int, Any] = {}

    def share(self, m: Any) -> Any:
        """The shared object equal to ``m`` (``m`` itself, now shared, when there is none or it is older)."""
        cur = self.by_uid.get(m.uid)
        if cur is m:
            return m
        if cur is not None and cur == m:
            return cur
        if cur is None or m.modseq >= cur.modseq:
            self.by_uid[m.uid] = m
        return m

    def share_view(self, view: Any, positions: range | list[int]) -> None:
        """Replace ``view.messages[i]`` for each ``i`` in ``positions`` with the shared equal object (the
        store's view adopts it with its uid, so the session's own uid ints go too)."""
        messages = view.messages
        adopt = getattr(view, "adopt", None)  # a store MailboxView; test models hold a plain list
        for i in positions:
            m = messages[i]
            s = self.share(m)
            if s is not m:
                if adopt is not None:
                    adopt(i, s)
                else:
                    messages[i] = s

    def forget(self, uids: list[int]) -> None:
        for uid in uids:
            self.by_uid.pop(uid, None)


#: mailbox key -> its shared messages; per process (one loop per worker; tests may run several loops:
#: only equal objects are ever exchanged, and dict operations are atomic under the GIL)
_TABLES: dict[tuple[Any, ...], SharedMessages] = {}


def acquire(view: Any, account: str = "") -> SharedMessages | None:
    """The table of ``view``'s mailbox for a session that just selected it; None: the view cannot be shared.

    ``account``: the store account the mailbox is in (the owner's, for a shared mailbox selected by a
    grantee: the owner's sessions and the grantees' share one table).

    The view's own messages are not looked at: a SELECT's snapshot is a clone of the account's cached
    one (Account.open_mailbox), whose objects the other sessions got too. What a refresh brings is
    shared through :func:`after_refresh`, so the table holds what changed while the mailbox was selected.
    """
    mid = getattr(view, "id", None)
    if not mid:
        return None
    key = (account, mid, view.uidvalidity)
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = SharedMessages(key)
    table.users += 1
    return table


def release(table: SharedMessages) -> None:
    """The session no longer has the mailbox selected; the last one drops the table."""
    table.users -= 1
    if table.users <= 0 and _TABLES.get(table.key) is table:
        del _TABLES[table.key]


def after_refresh(table: SharedMessages, view: Any, changes: Any) -> None:
    """Share what a refresh brought: the added messages (at the end of the list) and the changed ones.

    Only while another session has the mailbox selected too: a mailbox selected once (the usual
    case, one client per user) keeps no table entries (at most one per message of the mailbox else).
    """
    if changes.expunged:
        table.forget(changes.expunged)
    if table.users < 2:
        return
    n = len(view.messages)
    positions: list[int] = list(range(n - len(changes.added), n))
    for m in changes.flags:
        seq = view.seq_of(m.uid) if hasattr(view, "seq_of") else None
        if seq:
            positions.append(seq - 1)
    if positions:
        table.share_view(view, positions)
