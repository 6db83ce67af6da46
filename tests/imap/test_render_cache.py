"""A repeated FETCH of ENVELOPE / BODYSTRUCTURE / BODY answers from the render cache (no store job,
no address parsing) with the bytes a fresh render gives; the cache stays within its byte bound."""

from __future__ import annotations

import gc
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from imaptest import Raw, ServerHandle

from mailsrv.imap import rendercache
from mailsrv.imap.rendercache import ENTRY_OVERHEAD, RenderCache, key_prefix
from mailsrv.mime import parse

NAMES = ("msg_02.txt", "msg_07.txt", "msg_10.txt", "msg_16.txt", "msg_41.txt", "msg_45.txt")


def _crlf(raw: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", raw)


def _session(h: ServerHandle, *enable: bytes) -> Raw:
    c = Raw(h.host, h.port)
    assert c.cmd(b"l LOGIN alice@example.test wonderland")[-1].startswith(b"l OK")
    for cap in enable:
        assert c.cmd(b"e ENABLE " + cap)[-1].startswith(b"e OK")
    return c


def _fetch(c: Raw, items: bytes) -> list[bytes]:
    out = c.cmd(b"f FETCH 1:* " + items)
    assert out[-1].startswith(b"f OK")
    return out[:-1]


def test_repeated_fetch_is_served_from_the_cache(real_store: ServerHandle, jobs: list[Any], corpus: Path) -> None:
    messages = [_crlf((corpus / "cpython-test_email" / n).read_bytes()) for n in NAMES]
    writer = _session(real_store)
    for msg in messages:
        writer.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
        assert writer.until(b"a")[-1].startswith(b"a OK")
    rev1, rev2 = _session(real_store), _session(real_store, b"IMAP4rev2", b"UTF8=ACCEPT")
    for c in (rev1, rev2):
        assert c.cmd(b"s SELECT INBOX")[-1].startswith(b"s OK")
    cache = rendercache.for_store(real_store.store)
    before = len(cache)
    first = _fetch(rev1, b"(ENVELOPE BODYSTRUCTURE)")
    assert len(first) == len(messages) and len(cache) == before + len(messages)
    # what the renderers give for each message, parsed afresh
    for seq, msg in enumerate(messages, 1):
        st_ = parse(msg)
        assert first[seq - 1] == (b"* %d FETCH (ENVELOPE " % seq + st_.imap_envelope() + b" BODYSTRUCTURE "
                                  + st_.imap_bodystructure(True) + b")\r\n")
    jobs.clear()
    assert _fetch(rev1, b"(ENVELOPE BODYSTRUCTURE)") == first
    assert jobs == []  # no structures read, no refresh either
    # the other UTF-8 mode is its own entry (renders the same bytes today)
    assert _fetch(rev2, b"(ENVELOPE BODYSTRUCTURE)") == first
    assert len(cache) == before + 2 * len(messages)
    jobs.clear()
    body = _fetch(rev1, b"(BODY)")  # an item not rendered yet: the structures are read once
    assert len(jobs) == 1
    assert body == [b"* %d FETCH (BODY " % seq + parse(msg).imap_bodystructure(False) + b")\r\n"
                    for seq, msg in enumerate(messages, 1)]
    jobs.clear()
    assert _fetch(rev1, b"(BODY ENVELOPE)") == [
        b"* %d FETCH (BODY " % seq + parse(msg).imap_bodystructure(False) + b" ENVELOPE "
        + parse(msg).imap_envelope() + b")\r\n" for seq, msg in enumerate(messages, 1)]
    assert jobs == []
    for c in (writer, rev1, rev2):
        c.close()


def _k(uid: int) -> str:
    return key_prefix("a", "m", 1, False) + str(uid)


def test_the_cache_is_bounded_in_bytes() -> None:
    cache = RenderCache(max_bytes=3 * (ENTRY_OVERHEAD + 100))
    for uid in range(1, 5):
        cache.put(_k(uid), "ENVELOPE", b"x" * 100)
    assert len(cache) == 3 and cache.get(_k(1)) is None
    assert cache.get(_k(2)) == {"ENVELOPE": b"x" * 100}  # now the most recent
    cache.put(_k(5), "ENVELOPE", b"y" * 100)
    assert cache.get(_k(3)) is None and cache.get(_k(2)) is not None
    assert cache.size == 3 * (ENTRY_OVERHEAD + 100)
    # nothing for the garbage collector to walk: a full collection costs ~90 ms beside a big view
    assert not any(gc.is_tracked(e) or gc.is_tracked(k) for k, e in cache._entries.items())


@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["ENVELOPE", "BODY"]), st.integers(0, 300),
                          st.booleans()), max_size=60))
def test_the_cache_agrees_with_an_lru_model(ops: list[tuple[int, str, int, bool]]) -> None:
    bound = 1000
    cache = RenderCache(max_bytes=bound)
    model: OrderedDict[int, dict[str, bytes]] = OrderedDict()

    def size() -> int:
        return sum(ENTRY_OVERHEAD + sum(map(len, e.values())) for e in model.values())

    for uid, item, n, read in ops:
        key = key_prefix("acct", "box", 7, False) + str(uid)
        if read:
            got = cache.get(key)
            assert got == model.get(uid)
            if uid in model:
                model.move_to_end(uid)
            continue
        model.setdefault(uid, {})[item] = bytes(n)
        model.move_to_end(uid)
        while size() > bound and model:
            model.popitem(last=False)
        cache.put(key, item, bytes(n))
        assert cache.size == size() <= bound
        assert len(cache) == len(model)
