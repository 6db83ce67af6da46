"""A message's ``250`` written from its delivery round's thread, on plaintext sessions.

The store's group-commit round calls a ``durable`` hook in its own thread right after its sync,
before it answers the event loop (:meth:`mailsrv.util.fsio._GroupCommit.run_synced`). When a
message's reply is known before delivery to be exactly "250 iff every copy of its one store call is
durable" (decided by the backend, ``mailsrv.smtp.wiring``), the hook sends that 250 on the client's
socket at once: the client does not wait for the loop thread's wake-up and the layers returning
(~60-75 us a message at one session on a 2-vCPU VM). The loop then does its bookkeeping without
replying again (:meth:`EarlyReply.take`).

Invariants (the connection loop, :mod:`mailsrv.smtp.server`, keeps the first two):

- Only offered when nothing else can be written meanwhile: plaintext (a uvloop SSL transport
  cannot be written from another thread), the transport's write buffer empty, no reply held.
  The loop writes nothing between a session's ``data_end`` call and its return.
- The loop reads :attr:`EarlyReply.sent` only after the store call returned: the round answers
  the loop (``call_soon_threadsafe``) after every hook of the round returned.
- The thread writes on a ``dup`` of the socket made for the session and closed by :meth:`close`
  under the lock the hook holds while it sends: the descriptor it writes to can never be one the
  kernel handed to another connection after the transport closed its own.
- A short or failed send sends nothing more from the thread; the loop writes exactly the rest.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from mailsrv import log
from mailsrv.smtp.grammar import reply

logger = log.get("smtp")

#: this worker's messages that ended on a session offering the early reply (``offered``), whose 250
#: went out whole from the round's thread (``early``) or in part (``partial``: the loop wrote the
#: rest), and whose hook was armed but sent nothing (``late``: a failed copy or sync, the hook not
#: handed down, EAGAIN): the loop replied to the others. For tests (the path taken) and the bench.
stats = {"offered": 0, "early": 0, "partial": 0, "late": 0}

_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL


class EarlyReply:
    """One session's channel for writing a message's 250 from a delivery round's thread.

    Made by the connection loop for a plaintext session; :meth:`offer` before each message's
    ``data_end``, :meth:`take` after it, :meth:`close` when the session ends (always)."""

    __slots__ = ("_transport", "_sock", "_lock", "_armed", "sent", "written_at", "_rec", "_made")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._sock: socket.socket | None = None  # the session's dup of the client socket, made lazily
        self._lock = threading.Lock()
        #: the reply the hook of the message in delivery may send (None: no hook handed out)
        self._armed: bytes | None = None
        #: bytes of the armed reply sent by the hook (read on the loop once the store call returned)
        self.sent = 0
        #: time.monotonic_ns of the hook's send (0: none)
        self.written_at = 0
        self._rec: dict[str, Any] | None = None  # the message's timeline record, when on
        #: the last reply armed, by (code, enh, text): a session's 250 names its id, the same every message
        self._made: tuple[tuple[int, str, str], bytes] = ((0, "", ""), b"")

    def open(self) -> bool:
        """On the loop, before a message's delivery: True when the hook may be handed out (the socket's
        dup exists; made at the first message). False when it cannot be made (the transport is closing,
        no socket, no descriptor left): the message takes the loop's path."""
        if self._sock is not None:
            return True
        transport = self._transport
        if transport.is_closing():
            return False
        raw = transport.get_extra_info("socket")
        if raw is None:
            return False
        try:
            self._sock = socket.socket(fileno=os.dup(raw.fileno()))
        except OSError:  # EMFILE: the loop's path
            return False
        return True

    def arm(self, code: int, enh: str, text: str,
            rec: dict[str, Any] | None = None) -> Callable[[Sequence[Any], OSError | None], None]:
        """On the loop (the backend, before its one store call): the store's ``durable`` hook that sends
        ``reply(code, enh, text)``, which must be exactly the reply the session would send when every
        result is ok. ``rec``: the message's timeline record (its ``written`` stamp is the send's)."""
        key = (code, enh, text)
        made = self._made
        if made[0] != key:
            made = self._made = (key, reply(code, enh, text))
        self._armed = made[1]
        self._rec = rec
        return self._durable

    def _durable(self, results: Sequence[Any], err: OSError | None) -> None:
        """In the round's thread, after its sync: the reply when every copy is durable. Never raises."""
        data = self._armed
        if data is None or err is not None or not results or any(r.status != "ok" for r in results):
            return
        with self._lock:
            sock = self._sock
            if sock is None:  # the session ended: its socket may be another connection's by now
                return
            try:
                n = sock.send(data, _FLAGS)
            except OSError:  # EAGAIN, EPIPE, ECONNRESET: the loop writes it (or finds the peer gone)
                return
            self.sent = n
            self.written_at = now = time.monotonic_ns()
        rec = self._rec
        if rec is not None:
            rec.setdefault("written", now)
            rec["early"] = 1

    def take(self, out: bytes) -> bytes:
        """On the loop, after the message's ``data_end`` (or its error): what the loop still writes of
        ``out``, the reply it would send. Disarms the hook. The whole reply when the hook sent nothing;
        only its unsent tail after a short send; b"" when it went out whole. A reply that differs from
        the one sent (a bug, or a failure after the store answered) is logged, not sent."""
        armed, sent = self._armed, self.sent
        self._armed, self.sent, self._rec = None, 0, None
        stats["offered"] += 1
        if armed is None:
            return out
        if not sent:
            stats["late"] += 1
            return out
        stats["early" if sent == len(armed) else "partial"] += 1
        if out != armed:  # the client has the 250: the loop sends no other reply for this message
            logger.error("smtp.early_reply_mismatch", sent=armed[:-2].decode("utf-8", "replace"),
                         reply=out[:-2].decode("utf-8", "replace"))
        return armed[sent:]

    def close(self) -> None:
        """The session ended: close the dup (after a send in progress; the hook then sends nothing)."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
