"""Multi-line response byte-stuffing: the compiled module loads when required and agrees with its twin."""

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

CODE = "import mailsrv._speedups.linestuff as s; print(s.IMPLEMENTATION, s.stuff.__module__)"

TWIN = importlib.import_module("mailsrv._speedups.linestuff_py")


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSRV_")}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_compiled_linestuff_loads_when_required() -> None:
    if os.environ.get("MAILSRV_NO_SPEEDUPS", "") not in ("", "0"):
        assert _run({"MAILSRV_NO_SPEEDUPS": "1"}).split()[0] == "py"
        return
    assert _run({"MAILSRV_REQUIRE_SPEEDUPS": "1"}).split()[0] == "c"


def test_no_speedups_forces_the_twin() -> None:
    assert _run({"MAILSRV_NO_SPEEDUPS": "1"}) == "py mailsrv._speedups.linestuff_py"


def _impls() -> list[ModuleType]:
    out = [TWIN]
    if os.environ.get("MAILSRV_NO_SPEEDUPS", "") in ("", "0"):
        out.append(importlib.import_module("mailsrv._speedups.linestuff_c"))
    return out


@pytest.fixture(params=_impls(), ids=lambda m: m.__name__.rsplit("_", 1)[-1])
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
    assert len({m.stuff(data, line_start) for m in _impls()}) == 1


@given(st.lists(st.sampled_from([b"\r\n", b".", b"\r", b"\n", b"a", b"..", b"\r\n."]), max_size=60), st.booleans())
def test_stuff_agrees_on_line_structure(parts: list[bytes], line_start: bool) -> None:
    data = b"".join(parts)
    assert len({m.stuff(data, line_start) for m in _impls()}) == 1
