"""FETCH FLAGS lines: the compiled ``_speedups.flaglines_c`` loads when required and agrees with
its twin ``mailsrv.imap.flaglines_py`` (the specification)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.speedups import selected

from mailsrv.imap.memory import MessageInfo

pytestmark = pytest.mark.speedups

TWIN = importlib.import_module("mailsrv.imap.flaglines_py")
CODE = "import mailsrv.imap.flaglines as f; print(f.IMPLEMENTATION, f.fetch_flags_lines.__module__)"
FLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Forwarded", "work", "\u4e2d\u6587", ""]


def _selected(**env: str) -> str:
    """``IMPLEMENTATION module`` as a fresh interpreter picks them under ``env``."""
    return selected(CODE, **env)


def test_compiled_module_loads_and_the_switch_forces_the_twin() -> None:
    assert _selected(MAILSRV_NO_SPEEDUPS="1") == "py mailsrv.imap.flaglines_py"
    if os.environ.get("MAILSRV_NO_SPEEDUPS", "") in ("", "0"):
        # MAILSRV_REQUIRE_SPEEDUPS=1: a compiled module that does not import is an error, not a fallback
        assert _selected(MAILSRV_REQUIRE_SPEEDUPS="1") == "c mailsrv._speedups.flaglines_c"


@pytest.fixture(params=["c", "py"], scope="module")
def impl(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "py" or os.environ.get("MAILSRV_NO_SPEEDUPS", "") not in ("", "0"):
        return TWIN
    return importlib.import_module("mailsrv._speedups.flaglines_c")


def _infos(rows: list[tuple[int, int, frozenset[str]]]) -> tuple[list[int], list[MessageInfo]]:
    seqs, infos = [], []
    for seq, uid, flags in rows:
        seqs.append(seq)
        infos.append(MessageInfo(uid, f"k{uid}", flags, 1, 1.7e9, 1.7e9, 1, "E", ""))
    return seqs, infos


ROWS = st.lists(st.tuples(st.integers(1, 2**32), st.integers(0, 2**32), st.frozensets(st.sampled_from(FLAGS))),
                max_size=40)


@given(rows=ROWS, with_uid=st.booleans(), recent_pick=st.sets(st.integers(0, 39)))
def test_compiled_and_twin_agree(impl: ModuleType, rows: list[tuple[int, int, frozenset[str]]], with_uid: bool,
                                 recent_pick: set[int]) -> None:
    seqs, infos = _infos(rows)
    recent = {infos[i].uid for i in recent_pick if i < len(infos)}
    want = TWIN.fetch_flags_lines(seqs, infos, with_uid, {}, recent)
    cache: dict[frozenset[str], bytes] = {}
    assert impl.fetch_flags_lines(seqs, infos, with_uid, cache, recent) == want
    assert impl.fetch_flags_lines(seqs, infos, with_uid, cache, recent) == want  # warm cache
    for info in infos:
        assert impl.flags_text(info.flags, True) == TWIN.flags_text(info.flags, True)


def test_known_lines(impl: ModuleType) -> None:
    seqs, infos = _infos([(1, 10, frozenset({"\\Seen", "\\Answered"})), (2, 11, frozenset())])
    assert impl.fetch_flags_lines(seqs, infos, True, {}, {11}) == (
        b"* 1 FETCH (UID 10 FLAGS (\\Answered \\Seen))\r\n* 2 FETCH (UID 11 FLAGS (\\Recent))\r\n")
    assert impl.fetch_flags_lines(range(5, 7), infos, False, {}, set()) == (
        b"* 5 FETCH (FLAGS (\\Answered \\Seen))\r\n* 6 FETCH (FLAGS ())\r\n")
    with pytest.raises(ValueError):
        impl.fetch_flags_lines([1], infos, True, {}, set())


@given(flag_sets=st.lists(st.frozensets(st.sampled_from(FLAGS)), max_size=60), flag=st.sampled_from(FLAGS),
       want=st.booleans(), uid=st.booleans(), first_uid=st.integers(0, 2**40))
def test_flag_search_agrees(impl: ModuleType, flag_sets: list[frozenset[str]], flag: str, want: bool, uid: bool,
                            first_uid: int) -> None:
    _, infos = _infos([(k + 1, first_uid + 3 * k, flags) for k, flags in enumerate(flag_sets)])
    positions = TWIN.flag_positions(infos, flag, want)
    assert positions == [k for k, flags in enumerate(flag_sets) if (flag in flags) == want]
    assert impl.flag_positions(infos, flag, want) == positions
    text = TWIN.search_numbers(infos, positions, uid)
    assert text == b"".join(b" %d" % (infos[k].uid if uid else k + 1) for k in positions)
    assert impl.search_numbers(infos, positions, uid) == text


def test_known_search_numbers(impl: ModuleType) -> None:
    _, infos = _infos([(1, 7, frozenset({"\\Seen"})), (2, 9, frozenset()), (3, 4294967295, frozenset())])
    assert impl.flag_positions(infos, "\\Seen", False) == [1, 2]
    assert impl.flag_positions(infos, "\\Seen", True) == [0]
    assert impl.search_numbers(infos, [1, 2], True) == b" 9 4294967295"
    assert impl.search_numbers(infos, [1, 2], False) == b" 2 3"
    assert impl.search_numbers(infos, [], False) == b""


@given(rows=ROWS, with_uid=st.booleans(), start=st.integers(1, 2**32), step=st.integers(1, 3))
def test_a_range_of_sequence_numbers_agrees(impl: ModuleType, rows: list[tuple[int, int, frozenset[str]]],
                                            with_uid: bool, start: int, step: int) -> None:
    """``1:*`` passes a range (the compiled loop counts it instead of indexing it)."""
    _, infos = _infos(rows)
    seqs = range(start, start + step * len(infos), step)
    want = TWIN.fetch_flags_lines(list(seqs), infos, with_uid, {}, set())
    assert impl.fetch_flags_lines(seqs, infos, with_uid, {}, set()) == want
