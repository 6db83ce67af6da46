"""Sieve mail filtering (RFC 5228) and its extensions: compile a user's script once, run it on
each delivered message (pure, bounded), and tell delivery what to do (mailsrv.delivery.sieve).

Interface: :func:`compile` (text -> :class:`Script`, or :class:`SieveError` with its line),
:data:`EXTENSIONS` (what ``require`` accepts; ManageSieve announces it), :func:`run`
(:class:`Script`, :class:`MessageView` -> :class:`Outcome`; :class:`SieveRuntimeError` means
"keep the message"). Storage of scripts is :mod:`mailsrv.sieve.scripts`.
"""

from __future__ import annotations

from mailsrv.sieve.grammar import MAX_SCRIPT_SIZE, SieveError
from mailsrv.sieve.interp import (
    KEEP,
    MAX_ACTIONS,
    MAX_REDIRECTS,
    Outcome,
    SieveRuntimeError,
    Target,
    Vacation,
    run,
)
from mailsrv.sieve.lang import EXTENSIONS, Script, compile
from mailsrv.sieve.message import MessageView, header_fields

__all__ = [
    "EXTENSIONS",
    "KEEP",
    "MAX_ACTIONS",
    "MAX_REDIRECTS",
    "MAX_SCRIPT_SIZE",
    "MessageView",
    "Outcome",
    "Script",
    "SieveError",
    "SieveRuntimeError",
    "Target",
    "Vacation",
    "compile",
    "header_fields",
    "run",
]
