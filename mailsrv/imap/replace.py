"""REPLACE and UID REPLACE (RFC 8508): a message of the selected mailbox swapped for a new one.

A mixin of :class:`mailsrv.imap.session.Session`. The new message is appended as APPEND would
(the same code: flags, date-time, spooled literals, quota, a shared folder's rights), and only once
it is durable is the old one expunged: a crash between the two leaves both, never neither.

Invariants:
- Rights (RFC 8508 §4.4, RFC 4314 §4): ``i`` on the target mailbox, ``t`` and ``e`` on the selected
  one (the old message is in effect flagged \\Deleted and expunged); a mailbox selected read-only
  (EXAMINE, or a share without a write right) is NO [READ-ONLY] before anything is stored.
- Quota (as Dovecot): when the new message goes into the account of the old one, the old one's
  octets and its message count are credited (the store checks usage + new <= limit + old, for the
  account's and the domain's root), so a replacement no larger than what it replaces always fits.
- ``*`` (RFC 8508 §6 ``seq-number``) names the last message (REPLACE) or the highest UID (UID REPLACE).
- Replies (RFC 8508 §3.1): ``* OK [APPENDUID v uid]`` first (the tagged OK may carry other codes),
  then the EXPUNGE (VANISHED under QRESYNC, RFC 7162 §3.2.10) and, when the target is the selected
  mailbox, the EXISTS, both through the session's ordinary refresh after the command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailsrv.imap.errors import ImapError
from mailsrv.imap.grammar import Command
from mailsrv.imap.seqset import STAR

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mailsrv.imap.sharing import Place


class ReplaceCommands:
    """REPLACE / UID REPLACE; see the module docstring."""

    view: Any
    acct: Any

    if TYPE_CHECKING:

        def w(self, data: bytes) -> None: ...

        def _seq_of(self, uid: int) -> int: ...

        def _store_error(self, exc: BaseException) -> ImapError: ...

        def _require_writable(self, rights: str = "") -> None: ...

        async def _append_target(self, mailbox: bytes) -> tuple[Place, Any]: ...

        async def _append_messages(self, place: Place, messages: Sequence[Any], credit: int = 0) -> list[int]: ...

    async def cmd_replace(self, cmd: Command) -> str:
        return await self._replace(cmd, uid=False)

    async def cmd_uid_replace(self, cmd: Command) -> str:
        return await self._replace(cmd, uid=True)

    async def _replace(self, cmd: Command, *, uid: bool) -> str:
        # RFC 8508 §4.4: "t" and "e" on the mailbox the message leaves (NOPERM, READ-ONLY otherwise)
        self._require_writable("te")
        old, old_size = self._old_message(cmd.args["number"], uid=uid)
        place, info = await self._append_target(cmd.args["mailbox"])  # "i" there; TRYCREATE
        # durable before the old message goes: the store fsyncs the new one before it answers
        (new,) = await self._append_messages(place, cmd.args["messages"],
                                             credit=old_size if place.acct is self.acct else 0)
        # RFC 8508 §3.1: the new message's UID in an untagged OK, before the expunge is reported
        self.w(b"* OK [APPENDUID %d %d] Replacement Message ID\r\n" % (info.uidvalidity, new))
        try:
            # RFC 8508 §3.3: the old message is removed whatever its flags (another session may
            # have expunged it meanwhile: nothing to remove, the replacement stands)
            await self.acct.expunge(self.view.name, [old], only_deleted=False)
        except Exception as exc:
            # the replacement is stored and was announced; the old message stays: the client sees
            # both and may expunge the old one itself (no message is lost either way)
            raise self._store_error(exc) from None
        return f"{'UID ' if uid else ''}REPLACE completed"

    def _old_message(self, number: int, *, uid: bool) -> tuple[int, int]:
        """The UID and size of the message REPLACE names (a sequence number, or a UID under UID
        REPLACE; ``STAR`` (0) for ``*``: the last message)."""
        messages = self.view.messages
        if number == STAR:
            # RFC 9051 §9: "*" is the largest number in use: the last message, the highest UID
            if not messages:
                if uid:  # as a UID that names no message (RFC 8508 §3.3)
                    raise ImapError("NO", "No such message", "NONEXISTENT")
                raise ImapError("BAD", "No message in the mailbox", "CLIENTBUG")
            last = messages[-1]
            return int(last.uid), int(last.size)
        if not uid:
            if number > len(messages):
                # RFC 9051 §9: a sequence number must be in the mailbox
                raise ImapError("BAD", "Invalid message sequence number", "CLIENTBUG")
            m = messages[number - 1]
            return int(m.uid), int(m.size)
        seq = self._seq_of(number)
        if not seq:
            # RFC 8508 §3.3: nothing to replace; nothing is appended either
            raise ImapError("NO", "No such message", "NONEXISTENT")
        return number, int(messages[seq - 1].size)
