"""Hypothesis on the request-level parsers: anything a client sends is an RFC error, never a crash."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mailsrv.config import JmapConfig
from mailsrv.jmap import core
from mailsrv.jmap.backend import CannotCalculateChanges
from mailsrv.jmap.errors import MethodError, RequestError
from mailsrv.jmap.memory import MemoryBackend
from mailsrv.jmap.server import parse_json
from mailsrv.jmap.session import SERVER_CAPABILITIES
from mailsrv.jmap.storebackend import decode_state

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=25,
)
names = st.sampled_from(["Core/echo", "Mailbox/get", "Mailbox/query", "Mailbox/set", "Email/get", "Email/query",
                         "Email/set", "Email/changes", "Thread/get", "Email/import", "Email/parse", "Nope/x",
                         "SearchSnippet/get", "Mailbox/changes", "Email/queryChanges"])
args = st.dictionaries(st.sampled_from(["accountId", "ids", "properties", "filter", "sort", "create", "update",
                                        "destroy", "sinceState", "#ids", "position", "limit", "anchor",
                                        "emails", "blobIds", "fetchAllBodyValues", "collapseThreads"]),
                       json_values | st.just("a1"), max_size=5).map(lambda d: {"accountId": "a1", **d})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parse_json_only_raises_not_json(data: bytes) -> None:
    try:
        parse_json(data)
    except RequestError as err:
        assert err.type.endswith("notJSON") and err.status == 400


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_request_gives_request_error_or_response(body: Any) -> None:
    ctx = core.RequestContext(JmapConfig(), "u", {"a1": MemoryBackend("a1")}, SERVER_CAPABILITIES, extra={})
    try:
        out = asyncio.run(core.process(body, ctx, "s"))
    except RequestError as err:
        assert err.status == 400
    else:
        assert isinstance(out["methodResponses"], list)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(names, args), max_size=4))
def test_method_calls_never_crash(calls: list[tuple[str, dict[str, Any]]]) -> None:
    be = MemoryBackend("a1")
    ctx = core.RequestContext(JmapConfig(), "u", {"a1": be}, SERVER_CAPABILITIES, extra={"uploads": None})
    body = {"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
            "methodCalls": [[n, a, str(i)] for i, (n, a) in enumerate(calls)]}
    out = asyncio.run(core.process(body, ctx, "s"))
    for name, result, _ in out["methodResponses"]:
        if name == "error":
            # a bug would show as serverFail
            assert result["type"] != "serverFail", result


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_decode_state_refuses_garbage_cleanly(state: str) -> None:
    try:
        decode_state(state)
    except CannotCalculateChanges:
        pass


def test_method_error_shape() -> None:
    assert MethodError("invalidArguments", "x").to_json() == {"type": "invalidArguments", "description": "x"}
