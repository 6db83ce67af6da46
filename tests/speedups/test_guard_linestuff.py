"""Multi-line response byte-stuffing: the compiled module loads when required and agrees with its twin."""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st
from speedups.guard import implementations, selector_output, speedups_off

pytestmark = pytest.mark.speedups

CODE = "import mailsrv._speedups.linestuff as s; print(s.IMPLEMENTATION, s.stuff.__module__)"
IMPLS = implementations("linestuff")


def test_compiled_linestuff_loads_when_required() -> None:
    if speedups_off():
        assert selector_output(CODE, {"MAILSRV_NO_SPEEDUPS": "1"}).split()[0] == "py"
        return
    assert selector_output(CODE, {"MAILSRV_REQUIRE_SPEEDUPS": "1"}) == "c mailsrv._speedups.linestuff_c"


def test_no_speedups_forces_the_twin() -> None:
    assert selector_output(CODE, {"MAILSRV_NO_SPEEDUPS": "1"}) == "py mailsrv._speedups.linestuff_py"


@pytest.fixture(params=IMPLS, ids=lambda m: m.__name__.rsplit("_", 1)[-1])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return request.param


def test_examples(impl: ModuleType) -> None:
    # RFC 1939 §3: a line starting with "." gets one more; only after CR LF, or at a line start
    assert impl.stuff(b"a\r\n.b\r\n..c\r\n.\r\n", False) == b"a\r\n..b\r\n...c\r\n..\r\n"
    assert impl.stuff(b".a\r\n", True) == b"..a\r\n"
    assert impl.stuff(b".a\r\n", False) == b".a\r\n"  # the chunk goes on a line begun before it
    assert impl.stuff(b"a\n.b\r.c\r\n", False) == b"a\n.b\r.c\r\n"  # a bare LF or CR starts no line here
    assert impl.stuff(b"", True) == b"" and impl.stuff(b".", True) == b".."
    assert impl.stuff(b"a\r\n", False) == b"a\r\n" and impl.stuff(b"a\r\n.", False) == b"a\r\n.."
    assert impl.stuff(bytearray(b"x\r\n.y"), False) == b"x\r\n..y"
    plain = b"no dot starts a line here.\r\n" * 50
    assert impl.stuff(plain, True) is plain  # nothing to stuff: no copy


@given(st.binary(), st.booleans())
def test_stuff_agrees(data: bytes, line_start: bool) -> None:
    assert len({m.stuff(data, line_start) for m in IMPLS}) == 1


@given(st.lists(st.sampled_from([b"\r\n", b".", b"\r", b"\n", b"a", b"..", b"\r\n."]), max_size=60), st.booleans())
def test_stuff_agrees_on_line_structure(parts: list[bytes], line_start: bool) -> None:
    data = b"".join(parts)
    assert len({m.stuff(data, line_start) for m in IMPLS}) == 1
