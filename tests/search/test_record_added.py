"""A delivery's add record formatted directly (storage.encode_added) is byte for byte the journal's JSON
record (storage.encode_record) of the same dict, whatever the columns hold."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailsrv.search import storage

_ODD = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5) | st.lists(st.integers(), max_size=2)
#: sort columns as Document.columns() makes them, now and then a value of another type
_COLUMNS = st.tuples(
    st.none() | st.floats() | _ODD,
    *([st.text() | _ODD] * 6),
    st.booleans() | _ODD,
    st.none() | st.integers() | _ODD,
)


@given(st.integers(0, 2**40) | _ODD, st.integers(0, 2**40), st.integers(0, 2**31), _COLUMNS)
@example(7, 0, 40, (float("nan"), "a", "b", "c", "d", "e", "f", False, None))
@example(7, 0, 40, (-0.0, "\"\\\n\x00\x7f\u00e9\u4e2d\U0001f600", "", "", "", "", "", True, 739948))
@example(True, 0, 40, (1e300, "a", "b", "c", "d", "e", "f", 1, None))
def test_encode_added_is_encode_record(uid: object, off: int, length: int, columns: tuple) -> None:
    assert storage.encode_added(uid, off, length, columns) == storage.encode_record(  # type: ignore[arg-type]
        {"a": uid, "o": off, "l": length, "c": columns})


def test_a_delivery_record_is_formatted_without_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    want = storage.encode_record({"a": 9, "o": 12, "l": 300, "c": [1795870800.0, "ann", "ann smith", "bob", "bob",
                                                                   "", "budget", True, 739948]})
    monkeypatch.setattr(storage, "encode_record", lambda obj: b"")
    got = storage.encode_added(9, 12, 300, (1795870800.0, "ann", "ann smith", "bob", "bob", "", "budget", True, 739948))
    assert got == want
    assert storage.encode_added(9, 12, 300, (None, "a", "b", "c", "d", "e", "f", 1, None)) == b""  # 1: not a bool
