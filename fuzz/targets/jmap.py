"""JMAP: the API request as the server reads it (RFC 8620 §3): JSON, the Request object, method
calls with result references, and the methods' argument parsers (filters, sorts, patches, creates)
over an in-memory account. A method that fails with serverFail is a bug: it raises here."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fuzz.harness import Target, raise_logged
from mailsrv.config import JmapConfig
from mailsrv.jmap import core
from mailsrv.jmap import server as _server  # noqa: F401  (registers every method)
from mailsrv.jmap.errors import RequestError
from mailsrv.jmap.memory import MemoryBackend
from mailsrv.jmap.server import parse_json
from mailsrv.jmap.session import SERVER_CAPABILITIES

_LOOP = asyncio.new_event_loop()
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission"]


#: Methods whose state lives in the account's mail (the rest need the server's object store, a
#: principal and a submitter; the end-to-end tests cover them).
MAIL_METHODS = ("Core/", "Mailbox/", "Email/", "Thread/", "SearchSnippet/")


def _request(data: bytes) -> None:
    raise_logged(core)
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


# --- structured: the bytes choose method calls and their arguments (JSON that parses) ----------

METHODS = ["Core/echo", "Mailbox/get", "Mailbox/set", "Mailbox/query", "Mailbox/changes", "Mailbox/queryChanges",
           "Email/get", "Email/set", "Email/query", "Email/changes", "Email/queryChanges", "Email/copy",
           "Email/import", "Email/parse", "Thread/get", "Thread/changes", "SearchSnippet/get"]
KEYS = ["accountId", "ids", "#ids", "properties", "bodyProperties", "filter", "sort", "create", "update", "destroy",
        "sinceState", "sinceQueryState", "maxChanges", "position", "anchor", "anchorOffset", "limit",
        "calculateTotal", "collapseThreads", "fetchTextBodyValues", "fetchAllBodyValues", "maxBodyValueBytes",
        "emails", "blobIds", "emailIds", "onDestroyRemoveEmails", "ifInState", "fromAccountId", "upToId",
        "sortAsTree", "filterAsTree", "onSuccessDestroyOriginal"]
WORDS = ["a1", "M1", "T1", "#m", "#e", "e", "m", "0", "1", "", "inbox", "INBOX", "$seen", "keywords/$seen",
         "mailboxIds/M1", "mailboxIds", "keywords", "name", "parentId", "role", "subject", "from", "to",
         "receivedAt", "size", "text", "body", "header", "after", "before", "minSize", "inMailbox",
         "inMailboxOtherThan", "hasKeyword", "operator", "AND", "OR", "NOT", "conditions", "property",
         "isAscending", "collation", "i;unicode-casemap", "resultOf", "path", "/ids", "/ids/*", "/list/*/id",
         "/created/m/id", "bodyValues", "textBody", "htmlBody", "attachments", "partId", "blobId", "type",
         "text/plain", "header:From:asAddresses:all", "header:Subject:asText", "email", "value",
         "2020-01-01T00:00:00Z", "2020-13-45T99:99:99Z", "sortOrder", "isSubscribed", "threadId"]


class _Reader:
    """Reads small choices from the fuzzer's bytes (zeros once they run out)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1] if self.pos <= len(self.data) else 0

    def value(self, depth: int) -> Any:
        kind = self.byte() % (10 if depth < 4 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return bool(self.byte() & 1)
        if kind == 2:
            return int.from_bytes(bytes(self.byte() for _ in range(1 + self.byte() % 8)), "little", signed=True)
        if kind == 3:
            return (self.byte() - 128) / 7
        if kind in (4, 5):
            return WORDS[self.byte() % len(WORDS)]
        n = self.byte() % 4
        if kind in (6, 7):
            return [self.value(depth + 1) for _ in range(n)]
        return {(KEYS + WORDS)[self.byte() % (len(KEYS) + len(WORDS))]: self.value(depth + 1) for _ in range(n)}


def _methods(data: bytes) -> None:
    r = _Reader(data)
    calls = []
    for i in range(1 + r.byte() % 4):
        name = METHODS[r.byte() % len(METHODS)]
        args: dict[str, Any] = {"accountId": "a1"}
        for _ in range(r.byte() % 6):
            args[KEYS[r.byte() % len(KEYS)]] = r.value(0)
        calls.append([name, args, str(i)])
    _request(json.dumps({"using": USING, "methodCalls": calls}).encode())


TARGETS.append(Target("jmap_methods", _methods, lambda: [bytes(range(i, 256, 7)) for i in range(7)], (RequestError,),
                      max_len=1024))
