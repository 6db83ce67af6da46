"""JMAP: the API request as the server reads it (RFC 8620 §3): JSON, the Request object, method
calls with result references, and the methods' argument parsers (filters, sorts, patches, creates)
over an in-memory account. A method that fails with serverFail is a bug: it raises here."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fuzz.harness import Target
from mailsrv.config import JmapConfig
from mailsrv.jmap import core
from mailsrv.jmap import server as _server  # noqa: F401  (registers every method)
from mailsrv.jmap.errors import RequestError
from mailsrv.jmap.memory import MemoryBackend
from mailsrv.jmap.server import parse_json
from mailsrv.jmap.session import SERVER_CAPABILITIES


class _Raise:
    """Stands in for core's logger: a method's crash propagates with its traceback."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def exception(self, event: str, exc: BaseException, **fields: Any) -> None:
        raise exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


core.logger = _Raise(core.logger)  # type: ignore[assignment]
_LOOP = asyncio.new_event_loop()
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission"]


#: Methods whose state lives in the account's mail (the rest need the server's object store, a
#: principal and a submitter; the end-to-end tests cover them).
MAIL_METHODS = ("Core/", "Mailbox/", "Email/", "Thread/", "SearchSnippet/")


def _request(data: bytes) -> None:
    body = parse_json(data)
    if isinstance(body, dict) and isinstance(body.get("methodCalls"), list):
        body["methodCalls"] = [c for c in body["methodCalls"]
                               if not (isinstance(c, list) and c and isinstance(c[0], str))
                               or c[0].startswith(MAIL_METHODS)]
    ctx = core.RequestContext(JmapConfig(), "u", {"a1": MemoryBackend("a1")}, SERVER_CAPABILITIES,
                              extra={"uploads": None})
    out = _LOOP.run_until_complete(core.process(body, ctx, "s"))
    # the response is JSON (as the server sends it)
    assert isinstance(json.loads(json.dumps(out))["methodResponses"], list)


def _req(*calls: list[Any]) -> bytes:
    return json.dumps({"using": USING, "methodCalls": list(calls)}).encode()


SEEDS = [
    _req(["Core/echo", {"a": [1, None, True, 1.5, "x"]}, "0"]),
    _req(["Mailbox/set", {"accountId": "a1", "create": {"m": {"name": "Box", "parentId": None}}}, "0"],
         ["Mailbox/get", {"accountId": "a1", "#ids": {"resultOf": "0", "name": "Mailbox/set", "path": "/created/m/id"}}, "1"]),
    _req(["Email/set", {"accountId": "a1", "create": {"e": {"mailboxIds": {"#m": True}, "subject": "hi",
                                                              "from": [{"name": "A", "email": "a@b.example"}],
                                                              "bodyValues": {"1": {"value": "x"}},
                                                              "textBody": [{"partId": "1", "type": "text/plain"}],
                                                              "keywords": {"$seen": True}}}}, "0"],
         ["Email/set", {"accountId": "a1", "update": {"#e": {"keywords/$flagged": True, "mailboxIds/x": None}}}, "1"]),
    _req(["Email/query", {"accountId": "a1", "filter": {"operator": "OR", "conditions": [
        {"text": "x", "after": "2020-01-01T00:00:00Z"}, {"operator": "NOT", "conditions": [{"hasKeyword": "$seen"}]}]},
        "sort": [{"property": "receivedAt", "isAscending": False}], "position": 0, "limit": 10,
        "collapseThreads": True}, "0"],
         ["Email/get", {"accountId": "a1", "#ids": {"resultOf": "0", "name": "Email/query", "path": "/ids/*"},
                        "properties": ["subject", "header:From:asAddresses:all", "bodyValues"],
                        "fetchTextBodyValues": True, "maxBodyValueBytes": 5}, "1"]),
    _req(["Email/changes", {"accountId": "a1", "sinceState": "0", "maxChanges": 5}, "0"],
         ["Thread/get", {"accountId": "a1", "ids": ["T1"]}, "1"],
         ["SearchSnippet/get", {"accountId": "a1", "filter": {"body": "x"}, "emailIds": ["M1"]}, "2"]),
    _req(["Mailbox/query", {"accountId": "a1", "filter": {"role": "inbox", "hasAnyRole": True},
                            "sort": [{"property": "name"}], "sortAsTree": True, "filterAsTree": True}, "0"],
         ["Mailbox/queryChanges", {"accountId": "a1", "sinceQueryState": "x", "maxChanges": 1}, "1"]),
    b'{"using": [], "methodCalls": [], "createdIds": {"a": "b"}}',
]

TARGETS = [
    Target("jmap_request", _request,
           lambda: SEEDS,
           (RequestError,), max_len=8192),
]
