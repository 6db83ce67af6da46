"""What a command's failure looks like inside the IMAP session, and small helpers shared by its parts."""

from __future__ import annotations

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}


class ImapError(Exception):
    """A command failed: ``status`` NO or BAD, optional response ``code``."""

    def __init__(self, status: str, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code


class Bye(Exception):
    """End the session after sending ``* BYE text``."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


def norm_flag(flag: bytes) -> str:
    """A flag from the client: system flags in their canonical case (RFC 9051 §2.3.2), keywords as sent."""
    text = flag.decode("utf-8", "replace")
    return _SYSTEM_LOWER.get(text.lower(), text)


def store_error_name(exc: BaseException) -> str:
    """The store's errors are told apart by class name (mailsrv.store or the in-memory twin)."""
    return type(exc).__name__
