"""DATA transparency: the compiled ``_speedups.dotstuff_c`` loads when required and agrees with its twin
``mailsrv.smtp.dotstuff_py`` (the specification) on every stream, split anywhere."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.speedups import selected

from mailsrv.smtp.dotstuff import stuff

pytestmark = pytest.mark.speedups

TWIN = importlib.import_module("mailsrv.smtp.dotstuff_py")
CODE = "import mailsrv.smtp.dotstuff as d; print(d.IMPLEMENTATION, d.DotDecoder.__module__)"


def _selected(**env: str) -> str:
    """``IMPLEMENTATION module`` as a fresh interpreter picks them under ``env``."""
    return selected(CODE, **env)


def test_compiled_module_loads_and_the_switch_forces_the_twin() -> None:
    assert _selected(MAILSRV_NO_SPEEDUPS="1") == "py mailsrv.smtp.dotstuff_py"
    if os.environ.get("MAILSRV_NO_SPEEDUPS", "") in ("", "0"):
        # MAILSRV_REQUIRE_SPEEDUPS=1: a compiled module that does not import is an error, not a fallback
        assert _selected(MAILSRV_REQUIRE_SPEEDUPS="1") == "c mailsrv._speedups.dotstuff_c"


@pytest.fixture(params=["c", "py"], scope="module")
def impl(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "py" or os.environ.get("MAILSRV_NO_SPEEDUPS", "") not in ("", "0"):
        return TWIN
    return importlib.import_module("mailsrv._speedups.dotstuff_c")


def _run(mod: ModuleType, stream: bytes, cuts: list[int]) -> tuple[list[tuple[bytes, int]], bool, bool, int]:
    """Every feed's (payload, consumed) and the decoder's final state, ``stream`` fed in pieces."""
    dec = mod.DotDecoder()
    outs = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        outs.append(dec.feed(stream[prev:cut]))
        prev = cut
    return outs, dec.done, dec.bare_newline, dec.size


def test_examples(impl: ModuleType) -> None:
    stream = b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n"
    assert _run(impl, stream, []) == ([(b"Subject: x\r\n\r\n.dot\r\n", len(stream) - 6)], True, False, 20)
    # the end marker split after its dot and after its CR: held back, then found
    assert _run(impl, b"a\r\n.\r\n", [4]) == ([(b"a\r\n", 4), (b"", 2)], True, False, 3)
    assert _run(impl, b"a\r\n.\r\n", [5]) == ([(b"a\r\n", 5), (b"", 1)], True, False, 3)
    # smuggling: LF.LF, LF.CRLF and CR.CR are data, and bare
    assert _run(impl, b"a\n.\nb\r\n.\r\n", [])[1:] == (True, True, 7)
    assert _run(impl, b"a\r.\rb\r\n.\r\n", [])[1:] == (True, True, 7)
    assert _run(impl, b"a\r\n.\nRCPT\r\n.\r\n", [])[0][0][0] == b"a\r\n\nRCPT\r\n"
    # a CR at the end of a piece is held until the next shows whether an LF follows
    assert _run(impl, b"a\rb\r\n.\r\n", [2]) == ([(b"a", 2), (b"\rb\r\n", 6)], True, True, 5)
    assert _run(impl, b"a\r\nb\r\n.\r\n", [2]) == ([(b"a", 2), (b"\r\nb\r\n", 7)], True, False, 6)
    assert _run(impl, b".\r\n", []) == ([(b"", 3)], True, False, 0)
    assert _run(impl, b"", []) == ([(b"", 0)], False, False, 0)
    # after the end nothing more is taken
    dec = impl.DotDecoder()
    assert dec.feed(b"x\r\n.\r\nNOOP\r\n") == (b"x\r\n", 6)
    assert dec.feed(b"more") == (b"", 0)


def test_a_large_message_in_chunks(impl: ModuleType) -> None:
    body = b"".join(b"%s line %d\r\n" % (b"." if i % 7 == 0 else b"x", i) for i in range(20000))
    stream = stuff(body) + b"QUIT\r\n"
    outs, done, bare, size = _run(impl, stream, list(range(0, len(stream), 65536)))
    assert done and not bare and b"".join(p for p, _ in outs) == body and size == len(body)
    assert sum(c for _, c in outs) == len(stream) - len(b"QUIT\r\n")


TOKENS = [b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b".\r\n", b"\r\n.\r\n", b"..", b"\x00", b"\xff"]


@given(st.lists(st.sampled_from(TOKENS), max_size=24), st.lists(st.integers(0, 80), max_size=4))
def test_compiled_and_twin_agree(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    cuts = [c for c in cuts if c <= len(stream)]
    want = _run(TWIN, stream, cuts)
    for mod in _impls():
        assert _run(mod, stream, cuts) == want


@given(st.binary(max_size=64))
def test_split_at_every_byte_gives_the_same_message(stream: bytes) -> None:
    whole = _run(TWIN, stream, [])
    for mod in _impls():
        for i in range(len(stream) + 1):
            outs, done, bare, size = _run(mod, stream, [i])
            assert (b"".join(p for p, _ in outs), sum(c for _, c in outs), done, bare, size) == \
                (b"".join(p for p, _ in whole[0]), sum(c for _, c in whole[0]), *whole[1:])


def _compiled() -> bool:
    return os.environ.get("MAILSRV_NO_SPEEDUPS", "") in ("", "0")


def _impls() -> list[ModuleType]:
    return [TWIN, importlib.import_module("mailsrv._speedups.dotstuff_c")] if _compiled() else [TWIN]
