"""The RFC 8620 API request engine: envelope validation, result references, dispatch.

``process(body, ctx)`` takes the parsed JSON of one API request and returns
the Response object. Request-level problems raise :class:`RequestError`;
everything a single method call does wrong becomes an ``error`` response for
that call and the request goes on (RFC 8620 §3.6.2).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mailsrv import log
from mailsrv.config import JmapConfig
from mailsrv.jmap import pointer
from mailsrv.jmap.errors import (
    MethodError,
    invalid_arguments,
    limit,
    not_request,
    unknown_capability,
)

logger = log.get("jmap")

CORE = "urn:ietf:params:jmap:core"
MAIL = "urn:ietf:params:jmap:mail"

#: RFC 8620 §1.2: an Id is 1-255 octets of URL-safe base64 characters.
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def is_id(value: Any) -> bool:
    return isinstance(value, str) and ID_RE.match(value) is not None


@dataclass
class RequestContext:
    """What one API request's method calls share."""

    config: JmapConfig
    username: str
    accounts: dict[str, Any]  # accountId -> backend (mailsrv.jmap.backend.MailBackend)
    capabilities: frozenset[str]  # what this server supports
    using: frozenset[str] = frozenset()
    created_ids: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # blob store, push hub, ...
    responses: list[list[Any]] = field(default_factory=list)
    #: accounts shared with the caller read-only (a grant in the directory)
    read_only: frozenset[str] = frozenset()
    #: accountId -> the capabilities it supports; an account not named here supports every one
    account_capabilities: dict[str, frozenset[str]] = field(default_factory=dict)

    def account(self, args: dict[str, Any], capability: str = MAIL) -> Any:
        """The backend named by ``args["accountId"]``. Raises accountNotFound."""
        account_id = args.get("accountId")
        if not isinstance(account_id, str):
            raise invalid_arguments("accountId must be a String")
        backend = self.accounts.get(account_id)
        if backend is None:
            raise MethodError("accountNotFound")
        return backend

    def resolve_id(self, value: str) -> str | None:
        """An Id, or a ``#creationId`` reference to one created earlier (RFC 8620 §5.3)."""
        if value.startswith("#"):
            return self.created_ids.get(value[1:])
        return value

    def emit(self, name: str, args: dict[str, Any], call_id: str) -> None:
        """Add an implicit response (e.g. the Email/set after onSuccessUpdateEmail)."""
        self.responses.append([name, args, call_id])


Handler = Callable[[RequestContext, dict[str, Any], str], Awaitable[dict[str, Any]]]

#: methods that change the account named by ``accountId`` (for /copy: the destination)
WRITE_SUFFIXES = ("/set", "/import", "/copy")
WRITE_METHODS = frozenset({"Blob/upload"})


@dataclass(frozen=True)
class Method:
    name: str
    capability: str
    handler: Handler


class Registry:
    """Method name -> handler, with the capability that must be in ``using``."""

    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}

    def add(self, name: str, capability: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.methods[name] = Method(name, capability, fn)
            return fn

        return deco


registry = Registry()


@registry.add("Core/echo", CORE)
async def core_echo(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    # RFC 8620 §4: returns exactly the same arguments as it is given.
    return args


def parse_request(body: Any, ctx: RequestContext) -> tuple[list[list[Any]], dict[str, str] | None]:
    """Validate the Request object (RFC 8620 §3.3). Returns (method calls, createdIds)."""
    if not isinstance(body, dict):
        raise not_request("the request must be a JSON object")
    unknown = set(body) - {"using", "methodCalls", "createdIds"}
    if unknown:
        raise not_request(f"unknown request properties: {sorted(unknown)}")
    using = body.get("using")
    calls = body.get("methodCalls")
    if not isinstance(using, list) or not all(isinstance(u, str) for u in using):
        raise not_request("using must be an array of strings")
    if not isinstance(calls, list):
        raise not_request("methodCalls must be an array")
    for c in using:
        if c not in ctx.capabilities:
            raise unknown_capability(f"unknown capability {c!r}")
    if len(calls) > ctx.config.max_calls_in_request:
        raise limit("maxCallsInRequest", f"more than {ctx.config.max_calls_in_request} method calls")
    for inv in calls:
        # RFC 8620 §3.2: Invocation = [String name, String[*] arguments, String methodCallId]
        if (
            not isinstance(inv, list)
            or len(inv) != 3
            or not isinstance(inv[0], str)
            or not isinstance(inv[1], dict)
            or not isinstance(inv[2], str)
        ):
            raise not_request("each method call must be [name, arguments, methodCallId]")
    created = body.get("createdIds")
    if created is not None:
        if not isinstance(created, dict) or not all(isinstance(v, str) for v in created.values()):
            raise not_request("createdIds must map creation ids to ids")
    ctx.using = frozenset(using)
    return calls, created


def check_account(ctx: RequestContext, method: Method, args: dict[str, Any]) -> None:
    """The rights of a shared account, for every method at one place (RFC 8620 §3.6.2):
    accountNotSupportedByMethod, accountReadOnly. An unknown accountId is left to the handler."""
    aid = args.get("accountId")
    if not isinstance(aid, str) or aid not in ctx.accounts:
        return
    caps = ctx.account_capabilities.get(aid)
    if caps is not None and method.capability != CORE and method.capability not in caps:
        raise MethodError("accountNotSupportedByMethod", f"{method.name} is not available on account {aid}")
    if aid in ctx.read_only and (method.name.endswith(WRITE_SUFFIXES) or method.name in WRITE_METHODS):
        raise MethodError("accountReadOnly", f"account {aid} is shared with you read-only")


def resolve_references(args: dict[str, Any], responses: list[list[Any]]) -> dict[str, Any]:
    """Replace ``#name`` ResultReference arguments by their values (RFC 8620 §3.7).

    Raises MethodError ``invalidArguments`` when both ``name`` and ``#name`` are
    given and ``invalidResultReference`` when a reference does not resolve.
    """
    if not any(k.startswith("#") for k in args):
        return args
    out: dict[str, Any] = {}
    for key, value in args.items():
        if not key.startswith("#"):
            out[key] = value
            continue
        name = key[1:]
        if name in args:
            raise invalid_arguments(f"both {name!r} and {key!r} given")
        if (
            not isinstance(value, dict)
            or set(value) != {"resultOf", "name", "path"}
            or not all(isinstance(value[k], str) for k in ("resultOf", "name", "path"))
        ):
            raise MethodError("invalidResultReference", f"{key} is not a ResultReference")
        # The first response with that call id; its name must match.
        for resp in responses:
            if resp[2] == value["resultOf"]:
                if resp[0] != value["name"]:
                    raise MethodError("invalidResultReference", f"{value['resultOf']} answered {resp[0]}, not {value['name']}")
                try:
                    out[name] = pointer.evaluate(resp[1], value["path"])
                except pointer.PointerError as exc:
                    raise MethodError("invalidResultReference", str(exc)) from None
                break
        else:
            raise MethodError("invalidResultReference", f"no response for call {value['resultOf']!r}")
    return out


async def process(body: Any, ctx: RequestContext, session_state: str) -> dict[str, Any]:
    """Run one API request; returns the Response object (RFC 8620 §3.4)."""
    calls, created = parse_request(body, ctx)
    if created is not None:
        ctx.created_ids = dict(created)
    ctx.responses = []
    for name, args, call_id in calls:
        method = registry.methods.get(name)
        mark = len(ctx.responses)
        try:
            if method is None or method.capability not in ctx.using:
                # RFC 8620 §3.6.2: also when its capability was not in "using".
                raise MethodError("unknownMethod", f"unknown method {name!r}")
            resolved = resolve_references(args, ctx.responses)
            check_account(ctx, method, resolved)
            result = await method.handler(ctx, resolved, call_id)
        except MethodError as exc:
            del ctx.responses[mark:]
            ctx.responses.append(["error", exc.to_json(), call_id])
            continue
        except Exception as exc:  # a bug: one call fails, the request and the worker go on
            logger.exception("jmap.method.crash", exc, method=name)
            del ctx.responses[mark:]
            ctx.responses.append(["error", {"type": "serverFail", "description": "internal error"}, call_id])
            continue
        # The call's own response comes before any implicit one it emitted.
        ctx.responses.insert(mark, [name, result, call_id])
    response: dict[str, Any] = {"methodResponses": ctx.responses, "sessionState": session_state}
    if created is not None:
        response["createdIds"] = ctx.created_ids
    return response
