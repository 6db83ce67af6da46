"""JSON Pointer (RFC 6901) with the JMAP '*' (RFC 8620 §3.7): RFC examples and hypothesis."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.jmap.pointer import PointerError, evaluate, parse

# RFC 6901 §5
DOC = {"foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3, "g|h": 4, "i\\j": 5, 'k"l': 6, " ": 7, "m~n": 8}


@pytest.mark.parametrize(
    ("ptr", "want"),
    [("", DOC), ("/foo", ["bar", "baz"]), ("/foo/0", "bar"), ("/", 0), ("/a~1b", 1), ("/c%d", 2), ("/e^f", 3),
     ("/g|h", 4), ("/i\\j", 5), ('/k"l', 6), ("/ ", 7), ("/m~0n", 8)],
)
def test_rfc6901_examples(ptr: str, want: Any) -> None:
    assert evaluate(DOC, ptr) == want


@pytest.mark.parametrize("ptr", ["foo", "/foo/2", "/foo/01", "/foo/-", "/nope", "/foo/0/x", "/m~2n", "/m~"])
def test_errors(ptr: str) -> None:
    with pytest.raises(PointerError):
        evaluate(DOC, ptr)


def test_star_maps_and_flattens() -> None:
    doc = {"list": [{"ids": ["a", "b"]}, {"ids": ["c"]}, {"ids": []}]}
    assert evaluate(doc, "/list/*/ids") == ["a", "b", "c"]
    assert evaluate(doc, "/list/*") == doc["list"]
    assert evaluate({"l": [{"x": 1}, {"x": 2}]}, "/l/*/x") == [1, 2]
    with pytest.raises(PointerError):
        evaluate({"l": {"*": 1, "x": 2}}, "/l/*/y")
    assert evaluate({"l": {"*": 1}}, "/l/*") == 1  # on an object "*" is an ordinary key


keys = st.text(max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)


def escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


@given(st.dictionaries(keys, json_values, min_size=1))
def test_every_member_is_reachable(doc: dict[str, Any]) -> None:
    for k, v in doc.items():
        assert evaluate(doc, "/" + escape(k)) == v
        assert parse("/" + escape(k)) == [k]


@given(st.text(max_size=30), json_values)
def test_never_crashes(ptr: str, doc: Any) -> None:
    try:
        evaluate(doc, ptr)
    except PointerError:
        pass
