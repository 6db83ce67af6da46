"""Quota accounting: the compiled module loads when required and agrees with its pure-Python twin."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.speedups

CODE = "import mailsrv._speedups.quota as q; print(q.IMPLEMENTATION, q.check.__module__)"

TWIN = importlib.import_module("mailsrv._speedups.quota_py")


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSRV_")}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_compiled_quota_loads_when_required() -> None:
    if os.environ.get("MAILSRV_NO_SPEEDUPS", "") not in ("", "0"):
        assert _run({"MAILSRV_NO_SPEEDUPS": "1"}).split()[0] == "py"
        return
    assert _run({"MAILSRV_REQUIRE_SPEEDUPS": "1"}).split()[0] == "c"


def test_no_speedups_forces_the_twin() -> None:
    assert _run({"MAILSRV_NO_SPEEDUPS": "1"}) == "py mailsrv._speedups.quota_py"


def _impls() -> list[ModuleType]:
    out = [TWIN]
    if os.environ.get("MAILSRV_NO_SPEEDUPS", "") in ("", "0"):
        out.append(importlib.import_module("mailsrv._speedups.quota_c"))
    return out


@pytest.fixture(params=_impls(), ids=lambda m: m.__name__.rsplit("_", 1)[-1])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param


def test_examples(impl: ModuleType) -> None:
    assert impl.check(0, 0, 10, 1, -1, -1) == impl.OK
    assert impl.check(90, 0, 10, 1, 100, -1) == impl.OK
    assert impl.check(91, 0, 10, 1, 100, -1) == impl.OVER_STORAGE
    assert impl.check(0, 5, 1, 1, -1, 5) == impl.OVER_MESSAGES
    assert impl.check(200, 9, 0, 0, 100, 5) == impl.OK  # adding nothing is always allowed
    assert impl.apply(100, 3, [10, 20], 1) == (130, 5)
    assert impl.apply(100, 3, [10, 20], -1) == (70, 1)
    assert impl.apply(5, 1, [10, 20], -1) == (0, 0)  # drifted index: clamps at zero
    assert impl.storage_units(0) == 0 and impl.storage_units(1) == 1 and impl.storage_units(1024) == 1
    assert impl.storage_units(1025) == 2
    with pytest.raises(OverflowError):
        impl.check(-1, 0, 0, 0, -1, -1)
    with pytest.raises(OverflowError):
        impl.apply(0, 0, [impl.MAX_VALUE, 1], 1)
    with pytest.raises(ValueError):
        impl.apply(0, 0, [], 0)
    # several quota roots (user, domain): the first one exceeded is named
    assert impl.check_roots([(0, 0), (90, 9)], [(-1, -1), (100, 10)], 10, 1) == (-1, impl.OK)
    assert impl.check_roots([(0, 0), (91, 9)], [(-1, -1), (100, 10)], 10, 1) == (1, impl.OVER_STORAGE)
    assert impl.check_roots([(0, 5), (91, 9)], [(-1, 5), (100, 10)], 10, 1) == (0, impl.OVER_MESSAGES)
    assert impl.check_roots([], [], 10, 1) == (-1, impl.OK)
    with pytest.raises(ValueError):
        impl.check_roots([(0, 0)], [], 1, 1)


values = st.integers(min_value=0, max_value=(1 << 62) - 1)
small = st.integers(min_value=0, max_value=1 << 40)
limits = st.integers(min_value=-1, max_value=1 << 41)
anyint = st.integers(min_value=-(1 << 64), max_value=1 << 64)


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(*args))
    except (OverflowError, ValueError) as exc:
        return ("err", type(exc).__name__)


@given(small, small, small, small, limits, limits)
def test_check_agrees(us: int, um: int, a_s: int, a_m: int, ls: int, lm: int) -> None:
    results = {_outcome(m.check, us, um, a_s, a_m, ls, lm) for m in _impls()}
    assert len(results) == 1


@given(anyint, anyint, anyint, anyint, anyint, anyint)
def test_check_agrees_on_bad_input(us: int, um: int, a_s: int, a_m: int, ls: int, lm: int) -> None:
    results = {_outcome(m.check, us, um, a_s, a_m, ls, lm) for m in _impls()}
    assert len(results) == 1


@given(values, values, st.lists(st.one_of(small, values, anyint), max_size=20), st.sampled_from([1, -1, 0, 2]))
def test_apply_agrees(us: int, um: int, sizes: list[int], sign: int) -> None:
    results = {_outcome(m.apply, us, um, sizes, sign) for m in _impls()}
    assert len(results) == 1


@given(anyint)
def test_storage_units_agrees(n: int) -> None:
    results = {_outcome(m.storage_units, n) for m in _impls()}
    assert len(results) == 1


pairs = st.tuples(st.one_of(small, anyint), st.one_of(small, anyint))


@given(st.lists(st.tuples(pairs, st.tuples(limits, limits)), max_size=4), st.one_of(small, anyint), small,
       st.booleans())
def test_check_roots_agrees(roots: list[tuple[tuple[int, int], tuple[int, int]]], a_s: int, a_m: int,
                            mismatch: bool) -> None:
    usages = [u for u, _ in roots]
    lims = [lim for _, lim in roots] + ([(-1, -1)] if mismatch else [])
    results = {_outcome(m.check_roots, usages, lims, a_s, a_m) for m in _impls()}
    assert len(results) == 1
    if not mismatch and all(0 <= v < 1 << 41 for u in usages for v in u) and 0 <= a_s < 1 << 41:
        # the same as check() on each root in turn
        want = next(((i, c) for i, (u, lim) in enumerate(roots) if (c := TWIN.check(*u, a_s, a_m, *lim))),
                    (-1, TWIN.OK))
        assert results == {("ok", want)}
