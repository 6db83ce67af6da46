"""JMAP errors: request-level problems (RFC 8620 §3.6.1) and method-level errors (§3.6.2).

Errors are typed and raised by the handlers; the API dispatcher (core.py) and
the HTTP layer (server.py) are the only places that turn them into responses.
"""

from __future__ import annotations

from typing import Any

URN_ERROR = "urn:ietf:params:jmap:error:"


class RequestError(Exception):
    """A request-level error: an RFC 7807 problem details document (RFC 8620 §3.6.1)."""

    def __init__(self, type_: str, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.type = type_
        self.status = status
        self.detail = detail
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        return {"type": self.type, "status": self.status, "detail": self.detail, **self.extra}


def not_json(detail: str) -> RequestError:
    return RequestError(URN_ERROR + "notJSON", 400, detail)


def not_request(detail: str) -> RequestError:
    return RequestError(URN_ERROR + "notRequest", 400, detail)


def unknown_capability(detail: str) -> RequestError:
    return RequestError(URN_ERROR + "unknownCapability", 400, detail)


def limit(name: str, detail: str) -> RequestError:
    # RFC 8620 §3.6.1: "limit" names the capability limit that was exceeded.
    return RequestError(URN_ERROR + "limit", 400, detail, limit=name)


class MethodError(Exception):
    """A method-level error (RFC 8620 §3.6.2): the call gets an ``error`` response."""

    def __init__(self, type_: str, description: str | None = None, **extra: Any) -> None:
        super().__init__(description or type_)
        self.type = type_
        self.description = description
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.description:
            out["description"] = self.description
        out.update(self.extra)
        return out


def invalid_arguments(description: str) -> MethodError:
    return MethodError("invalidArguments", description)


class SetError(Exception):
    """A per-object error in a /set, /copy or /import response (RFC 8620 §5.3)."""

    def __init__(self, type_: str, description: str | None = None, **extra: Any) -> None:
        super().__init__(description or type_)
        self.type = type_
        self.description = description
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.description:
            out["description"] = self.description
        out.update(self.extra)
        return out
