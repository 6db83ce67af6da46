"""In-memory search index of one mailbox and the bitmap evaluation of queries.

Invariants:
* ``TermIndex.post[t]`` holds every indexed UID whose field has term ``t``
  (and possibly expunged UIDs: results are always masked by the view); a
  term of a single message holds that UID as an ``int`` (most terms are
  rare: this halves the memory of a large index).
* Narrowing only over-approximates; :meth:`Evaluator.eval` confirms against
  the cached normalised text wherever a term lookup is not exact, so the
  result equals :func:`mailsrv.search.scan.matches` on every message.

Nothing here does I/O except through the ``text_of`` callable given to the
Evaluator (reading cached text records).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pyroaring import BitMap

from mailsrv._speedups import search as hot
from mailsrv._speedups.tokenize import MAX_WORD, normalize, query_terms, terms
from mailsrv.search.extract import FIELDS, HEADER_SEP, Document
from mailsrv.search.query import (
    All,
    And,
    Day,
    Flag,
    HasAttachment,
    Header,
    ModSeq,
    Not,
    Or,
    Query,
    SearchError,
    Size,
    Text,
    Time,
    Uids,
)
from mailsrv.search.scan import day_of, header_prefix, matches

__all__ = ["Evaluator", "IndexCore", "TermIndex", "ViewState"]

#: a field with more distinct terms than this is not term-indexed for that message
#: (a long newsletter has ~3 000; base64 junk or a hostile message far more)
MAX_TERMS = 20_000

#: pseudo-field of header names (Header(name, "") is answered exactly from it)
HNAME = "hname"


class TermIndex:
    """Postings of one field: term -> UIDs, plus a lazily built n-gram dictionary."""

    __slots__ = ("post", "vocab", "grams")

    def __init__(self) -> None:
        self.post: dict[str, BitMap | int] = {}
        self.vocab: list[str] = []  # term id -> term
        self.grams: dict[str, BitMap] | None = {}  # trigram -> term ids; None = to rebuild

    def add(self, uid: int, terms: Iterable[str]) -> None:
        """Add ``uid`` under each of ``terms`` (repetitions are fine)."""
        for t in hot.add_postings(self.post, uid, terms, BitMap):
            self._new_term(t)

    def _new_term(self, t: str) -> None:
        tid = len(self.vocab)
        self.vocab.append(t)
        grams = self.grams
        if grams is not None and len(t) >= 3:
            for i in range(len(t) - 2):
                g = t[i : i + 3]
                bm = grams.get(g)
                if bm is None:
                    grams[g] = bm = BitMap()
                bm.add(tid)

    def build_grams(self) -> dict[str, BitMap]:
        grams: dict[str, BitMap] = {}
        for tid, t in enumerate(self.vocab):
            for i in range(len(t) - 2):
                g = t[i : i + 3]
                bm = grams.get(g)
                if bm is None:
                    grams[g] = bm = BitMap()
                bm.add(tid)
        self.grams = grams
        return grams

    def containing(self, w: str) -> BitMap:
        """UIDs having a term of which ``w`` is a substring."""
        if len(w) < 3:
            ids: Iterable[int] = hot.terms_containing(w, self.vocab)
        else:
            grams = self.grams if self.grams is not None else self.build_grams()
            sets = []
            for i in range(len(w) - 2):
                bm = grams.get(w[i : i + 3])
                if bm is None:
                    return BitMap()
                sets.append(bm)
            cand = BitMap.intersection(*sets) if len(sets) > 1 else sets[0]
            ids = hot.filter_containing(w, self.vocab, cand)
        post = self.post
        vocab = self.vocab
        bms: list[BitMap] = []
        single: list[int] = []
        for i in ids:
            v = post[vocab[i]]
            if isinstance(v, int):
                single.append(v)
            else:
                bms.append(v)
        if single:
            bms.append(BitMap(single))
        if not bms:
            return BitMap()
        return BitMap.union(*bms) if len(bms) > 1 else bms[0].copy()

    def exact(self, t: str) -> BitMap:
        v = self.post.get(t)
        if v is None:
            return BitMap()
        return BitMap([v]) if isinstance(v, int) else v.copy()

    def compact(self, live: BitMap) -> None:
        """Drop expunged UIDs and empty terms (term ids are renumbered)."""
        post: dict[str, BitMap | int] = {}
        for t, v in self.post.items():
            if isinstance(v, int):
                if v in live:
                    post[t] = v
                continue
            v &= live
            if len(v) > 1:
                post[t] = v
            elif v:
                post[t] = v.min()
        self.post = post
        self.vocab = list(post)
        self.build_grams()


class IndexCore:
    """Everything derived from message contents (the store gives flags, dates and sizes)."""

    def __init__(self) -> None:
        self.fields: dict[str, TermIndex] = {f: TermIndex() for f in (*FIELDS, HNAME)}
        self.indexed = BitMap()
        self.cols: dict[int, tuple] = {}  # uid -> Document.columns()
        self.sent_days: dict[int, BitMap] = {}  # UTC day ordinal -> UIDs (messages with a Date:)
        self.attach = BitMap()
        self.dated = BitMap()  # UIDs with a valid Date:
        #: bumped by every add/remove (cache stamps)
        self.version = 0
        #: per field, UIDs whose terms were not indexed (more than MAX_TERMS): always confirmed
        self.overflow: dict[str, BitMap] = {f: BitMap() for f in FIELDS}

    def add(self, uid: int, doc: Document) -> None:
        """Index one message (idempotent for a UID already indexed)."""
        if uid in self.indexed:
            return
        self.version += 1
        for f in FIELDS:
            text = doc.text.get(f, "")
            if text:
                uniq = set(terms(text))
                if len(uniq) > MAX_TERMS:
                    # bounded memory against hostile or machine-made text; searches read it
                    self.overflow[f].add(uid)
                else:
                    self.fields[f].add(uid, uniq)
        names = {
            line.partition(":")[0] for line in doc.text.get("headers", "").split(HEADER_SEP) if line
        }
        self.fields[HNAME].add(uid, names)
        self.cols[uid] = doc.columns()
        if doc.sent_day is not None:
            d = doc.sent_day
            bm = self.sent_days.get(d)
            if bm is None:
                self.sent_days[d] = bm = BitMap()
            bm.add(uid)
            self.dated.add(uid)
        if doc.has_attachment:
            self.attach.add(uid)
        self.indexed.add(uid)

    def remove(self, uids: Iterable[int]) -> None:
        """Forget expunged UIDs (term postings keep them until :meth:`compact`)."""
        gone = BitMap(uids)
        self.version += 1
        self.indexed -= gone
        self.attach -= gone
        self.dated -= gone
        for ov in self.overflow.values():
            ov -= gone
        for uid in gone:
            cols = self.cols.pop(uid, None)
            if cols is not None and cols[8] is not None:
                bm = self.sent_days.get(cols[8])
                if bm is not None:
                    bm.discard(uid)

    def compact(self) -> None:
        for ti in self.fields.values():
            ti.compact(self.indexed)
        for bm in self.overflow.values():
            bm &= self.indexed
        self.sent_days = {d: bm for d, bm in self.sent_days.items() if bm}


def _bucket(size: int) -> int:
    """Size bucket, monotone in ``size``: the bit length and the 7 leading bits (64 per octave)."""
    size = int(size)
    bl = size.bit_length()
    return (bl << 8) | (size >> (bl - 7) if bl > 7 else size)


class ViewState:
    """Flag, date, size and modseq columns of the session's view, kept incrementally."""

    def __init__(self) -> None:
        self.infos: dict[int, Any] = {}
        self.uids = BitMap()
        self.flags: dict[str, BitMap] = {}
        self.days: dict[int, BitMap] = {}  # internal date UTC day -> UIDs
        self.sizes: dict[int, BitMap] = {}  # bit_length(size) -> UIDs
        self.stamp: tuple = ()

    def sync(self, view: Any) -> None:
        """Bring the columns in step with ``view.messages`` (cheap when nothing changed)."""
        msgs = view.messages
        stamp = (len(msgs), view.highestmodseq, msgs[-1].uid if msgs else 0, id(msgs))
        if stamp == self.stamp:
            return
        infos = self.infos
        seen = BitMap()
        for m in msgs:
            uid = m.uid
            seen.add(uid)
            old = infos.get(uid)
            if old is m:
                continue
            if old is not None:
                if old == m:
                    infos[uid] = m
                    continue
                self._drop(old)
            self._put(m)
        for uid in self.uids - seen:
            self._drop(infos[uid])
        self.uids = seen
        self.stamp = stamp

    def _put(self, m: Any) -> None:
        uid = m.uid
        self.infos[uid] = m
        for f in m.flags:
            k = f.casefold()
            bm = self.flags.get(k)
            if bm is None:
                self.flags[k] = bm = BitMap()
            bm.add(uid)
        d = day_of(m.internal_date)
        bm = self.days.get(d)
        if bm is None:
            self.days[d] = bm = BitMap()
        bm.add(uid)
        b = _bucket(m.size)
        bm = self.sizes.get(b)
        if bm is None:
            self.sizes[b] = bm = BitMap()
        bm.add(uid)

    def _drop(self, m: Any) -> None:
        uid = m.uid
        del self.infos[uid]
        for f in m.flags:
            bm = self.flags.get(f.casefold())
            if bm is not None:
                bm.discard(uid)
        bm = self.days.get(day_of(m.internal_date))
        if bm is not None:
            bm.discard(uid)
        bm = self.sizes.get(_bucket(m.size))
        if bm is not None:
            bm.discard(uid)


def _days_where(days: dict[int, BitMap], pred: Callable[[int], bool]) -> BitMap:
    sel = [bm for d, bm in days.items() if pred(d)]
    if not sel:
        return BitMap()
    return BitMap.union(*sel) if len(sel) > 1 else sel[0].copy()


#: rough cost order of nodes inside an AND (cheap bitmap lookups first)
def _cost(q: Query) -> int:
    if isinstance(q, Uids | Flag | All | HasAttachment):
        return 0
    if isinstance(q, Day | Size):
        return 1
    if isinstance(q, Time | ModSeq):
        return 2
    if isinstance(q, Header):
        return 4
    if isinstance(q, Text):
        return 3 if q.field not in ("body", "text") else 5
    return 6


class Evaluator:
    """Evaluate a query as bitmap algebra over a core index and a view state."""

    def __init__(
        self,
        core: IndexCore,
        view: ViewState,
        text_of: Callable[[int], dict[str, str]],
        doc_of: Callable[[int], Document] | None = None,
        find: Callable[[BitMap, tuple[int, ...], bytes], list[int]] | None = None,
    ) -> None:
        self.core = core
        self.view = view
        self.text_of = text_of
        #: find(candidates, field indexes, utf-8 needle) -> matching UIDs (the mapped text cache)
        self.find = find
        #: optional: messages of the view not in the index are matched by scanning them
        self.doc_of = doc_of
        self.confirmed = 0  # statistics: texts read for confirmation

    def run(self, q: Query) -> BitMap:
        """UIDs of the view matching ``q``: bitmap algebra on indexed ones, a scan of the rest."""
        uids = self.view.uids
        indexed = uids & self.core.indexed
        out = self.eval(q, indexed)
        missing = uids - indexed
        if missing and self.doc_of is not None:
            infos = self.view.infos
            out |= BitMap(u for u in missing if matches(q, self.doc_of(u), infos[u]))
        return out

    def eval(self, q: Query, within: BitMap) -> BitMap:
        """UIDs of ``within`` that match ``q``."""
        if not within:
            return within
        if isinstance(q, All):
            return within
        if isinstance(q, Flag):
            return within & self.view.flags.get(q.name.casefold(), BitMap())
        if isinstance(q, Uids):
            return within & q.uids
        if isinstance(q, And):
            cur = within
            for item in sorted(q.items, key=_cost):
                cur = self.eval(item, cur)
                if not cur:
                    break
            return cur
        if isinstance(q, Or):
            acc = BitMap()
            rest = within
            for item in sorted(q.items, key=_cost):
                hit = self.eval(item, rest)
                acc |= hit
                rest = rest - hit
                if not rest:
                    break
            return acc
        if isinstance(q, Not):
            return within - self.eval(q.item, within)
        if isinstance(q, Size):
            return self._size(q, within)
        if isinstance(q, ModSeq):
            infos = self.view.infos
            return BitMap(u for u in within if infos[u].modseq >= q.n)
        if isinstance(q, Day):
            return self._day(q, within)
        if isinstance(q, Time):
            return self._time(q, within)
        if isinstance(q, HasAttachment):
            return within & self.core.attach
        if isinstance(q, Text):
            return self._text(q, within)
        if isinstance(q, Header):
            return self._header(q, within)
        raise SearchError(f"unknown query node {q!r}")

    # --- columns -------------------------------------------------------------

    def _size(self, q: Size, within: BitMap) -> BitMap:
        edge = _bucket(q.n)
        sizes = self.view.sizes
        if q.op == "larger":
            out = _days_where(sizes, lambda b: b > edge)
        else:
            out = _days_where(sizes, lambda b: b < edge)
        infos = self.view.infos
        border = within & sizes.get(edge, BitMap())
        n = q.n
        if q.op == "larger":
            out |= BitMap(u for u in border if infos[u].size > n)
        else:
            out |= BitMap(u for u in border if infos[u].size < n)
        return within & out

    def _sent_days(self, within: BitMap) -> tuple[dict[int, BitMap], BitMap]:
        """Sent-day buckets, and the UIDs of ``within`` that use the internal date instead."""
        return self.core.sent_days, within - self.core.dated

    def _day(self, q: Day, within: BitMap) -> BitMap:
        o = q.day.toordinal()
        if q.op == "before":
            pred: Callable[[int], bool] = lambda d: d < o  # noqa: E731
        elif q.op == "on":
            pred = lambda d: d == o  # noqa: E731
        else:
            pred = lambda d: d >= o  # noqa: E731
        if q.column == "internal":
            return within & _days_where(self.view.days, pred)
        days, fallback = self._sent_days(within)
        out = within & _days_where(days, pred)
        out -= fallback
        infos = self.view.infos
        out |= BitMap(u for u in fallback if pred(day_of(infos[u].internal_date)))
        return out

    def _time(self, q: Time, within: BitMap) -> BitMap:
        ts = q.ts
        edge = day_of(ts) if ts > -62135596800 else -(10**9)  # before year 1: below every day
        infos = self.view.infos
        before = q.op == "before"

        def exact(u: int, t: float) -> bool:
            return t < ts if before else t >= ts

        if q.column == "internal":
            days = self.view.days
            out = _days_where(days, (lambda d: d < edge) if before else (lambda d: d > edge))
            border = within & days.get(edge, BitMap())
            out |= BitMap(u for u in border if exact(u, infos[u].internal_date))
            return within & out
        # exact sent instants (no IMAP or JMAP key asks for them): a scan of ``within``
        cols = self.core.cols
        out = BitMap()
        for u in within:
            sent = cols[u][0]
            if exact(u, infos[u].internal_date if sent is None else sent):
                out.add(u)
        return out

    # --- text ----------------------------------------------------------------

    def _narrow(self, field: str, v: str) -> tuple[BitMap, bool]:
        """(candidates, exact): UIDs that may have ``v`` in ``field``; exact if no confirmation needed."""
        words, cjk = query_terms(v)
        ti = self.core.fields[field]
        cand: BitMap | None = None
        # the rarest-looking terms first: CJK bigrams are exact lookups
        for t in cjk:
            bm = ti.exact(t)
            cand = bm if cand is None else cand & bm
            if not cand:
                return cand, True
        for w in sorted(words, key=len, reverse=True):
            bm = ti.containing(w)
            cand = bm if cand is None else cand & bm
            if not cand:
                return cand, True
        if cand is None:
            return self.core.indexed.copy(), False
        exact = len(words) + len(cjk) == 1 and (v == (words or cjk)[0])
        # a single word longer than MAX_WORD was left out of the terms: not exact
        return cand, exact and len(v) <= MAX_WORD

    def _confirm(self, cand: BitMap, check: Callable[[dict[str, str]], bool]) -> BitMap:
        out = BitMap()
        text_of = self.text_of
        for u in cand:
            self.confirmed += 1
            if check(text_of(u)):
                out.add(u)
        return out

    def _text(self, q: Text, within: BitMap) -> BitMap:
        v = normalize(q.value)
        if not v:
            return within
        fields = ("headers", "body") if q.field == "text" else (q.field,)
        out = BitMap()
        for f in fields:
            cand, exact = self._narrow(f, v)
            cand &= within
            cand -= out
            ov = (self.core.overflow[f] & within) - out
            if ov:
                if exact:  # the term lookup is exact for the others: confirm only these
                    out |= cand - ov
                    cand = ov
                else:
                    cand |= ov
                exact = False
            if not exact and cand:
                if self.find is not None:
                    self.confirmed += len(cand)
                    cand = BitMap(self.find(cand, (FIELDS.index(f),), v.encode("utf-8")))
                else:
                    cand = self._confirm(cand, lambda t, f=f: v in t.get(f, ""))  # type: ignore[misc]
            out |= cand
        return out

    def _header(self, q: Header, within: BitMap) -> BitMap:
        prefix = header_prefix(q.name)
        name = prefix[:-1]
        v = normalize(q.value)
        cand = within & self.core.fields[HNAME].exact(name)
        if not v or not cand:
            return cand
        narrowed, _ = self._narrow("headers", v)
        cand &= narrowed | self.core.overflow["headers"]
        n = len(prefix)

        def check(t: dict[str, str]) -> bool:
            for line in t.get("headers", "").split(HEADER_SEP):
                if line.startswith(prefix) and v in line[n:]:
                    return True
            return False

        return self._confirm(cand, check)
