"""Every query node against the brute-force reference over a generated mailbox (property tests)."""

from __future__ import annotations

import asyncio
import datetime
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroaring import BitMap
from search.searchbox import Box, open_index

from mailsrv.config import SearchConfig
from mailsrv.search import (
    All,
    And,
    Day,
    Flag,
    HasAttachment,
    Header,
    MailboxIndex,
    ModSeq,
    Not,
    Or,
    Query,
    SearchService,
    Size,
    SortKey,
    Text,
    Time,
    Uids,
    matches,
)
from mailsrv.search.generate import CJK, KEYWORDS, LATIN, SYSTEM_FLAGS

N = 160


class Env:
    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.box = Box(N, seed=11)
        self.svc = SearchService(SearchConfig(snapshot_every=40))
        self.idx: MailboxIndex = open_index(self.svc, self.box, tmp)
        self.texts = [t for d in self.box.docs.values() for t in d.text.values() if t]

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def reference(self, q: Query) -> BitMap:
        b = self.box
        return BitMap(m.uid for m in b.view.messages if matches(q, b.docs[m.uid], m))

    def close(self) -> None:
        self.run(self.svc.close())
        self.loop.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("engine"))
    yield e
    e.close()


def _substring(rng: random.Random, texts: list[str]) -> str:
    t = rng.choice(texts)
    i = rng.randrange(len(t))
    return t[i : i + rng.randrange(1, 14)]


class _SubstringOf:
    """A random substring of one of the mailbox's texts (short repr for hypothesis)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def __call__(self, seed: int) -> str:
        return _substring(random.Random(seed), self.texts)

    def __repr__(self) -> str:
        return "substring_of_mailbox_text"


def _slice(w: str, i: int, n: int) -> str:
    return w[i % len(w) : i % len(w) + n].upper()


def text_values(texts: list[str]) -> st.SearchStrategy[str]:
    pick = _SubstringOf(texts)
    return st.one_of(
        st.sampled_from(LATIN),
        st.sampled_from(CJK),
        st.builds(_slice, st.sampled_from(LATIN), st.integers(0, 20), st.integers(1, 6)),
        st.text(min_size=0, max_size=4),
        st.integers(0, 2**32).map(pick),
        st.integers(0, 2**32).map(pick),
        st.integers(0, 2**32).map(pick),
    )


def leaves(texts: list[str]) -> st.SearchStrategy[Query]:
    day = st.dates(datetime.date(2016, 6, 1), datetime.date(2026, 6, 1))
    ts = st.floats(1.47e9, 1.8e9)
    return st.one_of(
        st.just(All()),
        st.sampled_from([*SYSTEM_FLAGS, *KEYWORDS, "\\SEEN", "$forwarded", "nope"]).map(Flag),
        st.lists(st.integers(1, N * 2), max_size=40).map(lambda xs: Uids(BitMap(xs))),
        st.builds(
            Text,
            st.sampled_from(["from", "to", "cc", "bcc", "subject", "message-id", "body", "text", "headers"]),
            text_values(texts),
        ),
        st.builds(
            Header,
            st.sampled_from(["Subject", "from", "X-Priority", "message-id", "Date", "X-None", "content-type"]),
            text_values(texts) | st.just(""),
        ),
        st.builds(Day, st.sampled_from(["internal", "sent"]), st.sampled_from(["before", "on", "since"]), day),
        st.builds(Time, st.sampled_from(["internal", "sent"]), st.sampled_from(["before", "after"]), ts),
        st.builds(Size, st.sampled_from(["larger", "smaller"]), st.integers(0, 20000)),
        st.integers(0, N + 5).map(ModSeq),
        st.just(HasAttachment()),
    )


def queries(texts: list[str]) -> st.SearchStrategy[Query]:
    return st.recursive(
        leaves(texts),
        lambda kids: st.one_of(
            st.lists(kids, min_size=1, max_size=4).map(lambda xs: And(*xs)),
            st.lists(kids, min_size=1, max_size=4).map(lambda xs: Or(*xs)),
            kids.map(Not),
        ),
        max_leaves=8,
    )




def test_every_leaf_kind_has_hits_and_misses(env: Env) -> None:
    """The generated mailbox is rich enough that each key class can both match and fail."""
    probes: list[Query] = [
        Flag("\\Seen"),
        Text("subject", "report"),
        Text("body", "季度报告"),
        Text("from", "müller"),
        Text("body", "strasse"),
        Header("X-Priority", ""),
        Day("sent", "since", datetime.date(2020, 1, 1)),
        Size("larger", 3000),
        HasAttachment(),
    ]
    for q in probes:
        got = env.run(env.idx.search(q, env.box.view))
        assert got == env.reference(q), q
        assert 0 < len(got) < N, (q, len(got))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_index_equals_brute_force(env: Env, data: st.DataObject) -> None:
    q = data.draw(queries(env.texts))
    got = env.run(env.idx.search(q, env.box.view))
    assert got == env.reference(q), q


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sort_equals_reference(env: Env, data: st.DataObject) -> None:
    cols = ["arrival", "date", "size", "from", "to", "cc", "displayfrom", "displayto", "subject", "keyword:\\seen"]
    keys = data.draw(
        st.lists(st.builds(SortKey, st.sampled_from(cols), st.booleans()), min_size=1, max_size=3)
    )
    q = data.draw(leaves(env.texts))
    from mailsrv.search import service as service_mod

    cached = data.draw(st.booleans())  # also through the cached whole-mailbox order
    saved = service_mod.SORT_CACHE_MIN
    service_mod.SORT_CACHE_MIN = 0 if cached else saved
    try:
        got = env.run(env.idx.sort(q, keys, env.box.view))
    finally:
        service_mod.SORT_CACHE_MIN = saved
    box = env.box
    infos = {m.uid: m for m in box.view.messages}

    def value(uid: int, col: str):  # type: ignore[no-untyped-def]
        d, m = box.docs[uid], infos[uid]
        return {
            "arrival": m.internal_date,
            "date": d.sent_date if d.sent_date is not None else m.internal_date,
            "size": m.size,
            "from": d.from_addr,
            "to": d.to_addr,
            "cc": d.cc_addr,
            "displayfrom": d.from_display,
            "displayto": d.to_display,
            "subject": d.subject,
            "keyword:\\seen": "\\Seen" not in m.flags,
        }[col]

    expected = sorted(env.reference(q))
    for k in reversed(keys):
        expected.sort(key=lambda u, c=k.column: value(u, c), reverse=k.reverse)  # type: ignore[misc]
    assert got == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_messages_over_the_term_limit_are_still_found(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """A field with more than MAX_TERMS distinct terms is not term-indexed but always confirmed."""
    e = _overflow_env(tmp_path_factory)
    q = data.draw(queries(e.texts))
    assert e.run(e.idx.search(q, e.box.view)) == e.reference(q), q


_OVERFLOW: list[Env] = []


def _overflow_env(factory: pytest.TempPathFactory) -> Env:
    if not _OVERFLOW:
        from mailsrv.search import index as index_mod

        saved = index_mod.MAX_TERMS
        index_mod.MAX_TERMS = 40  # most bodies and many header blocks overflow
        try:
            e = Env(factory.mktemp("overflow"))
            e.run(e.idx.search(All(), e.box.view))  # index everything under the low limit
        finally:
            index_mod.MAX_TERMS = saved
        assert e.idx.core.overflow["body"] and e.idx.core.overflow["headers"]
        assert len(e.idx.core.overflow["body"]) < N  # and some are still term-indexed
        _OVERFLOW.append(e)
    return _OVERFLOW[0]


@pytest.fixture(scope="module", autouse=True)
def _close_overflow_env() -> Iterator[None]:
    yield
    while _OVERFLOW:
        _OVERFLOW.pop().close()
