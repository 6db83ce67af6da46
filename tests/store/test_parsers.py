"""Pure parsers of the store: maildir names, folder names, the uidlist, thread headers (hypothesis)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.store import headers, maildir, uidlist

FLAGS = sorted(maildir.SYSTEM_FLAGS)


@given(st.sets(st.sampled_from(FLAGS)), st.text(alphabet="abcdefMPQ0123456789.,=", min_size=1, max_size=40))
def test_filename_round_trip(flags: set[str], key: str) -> None:
    name = maildir.filename(key, frozenset(flags))
    k, info = maildir.split_filename(name)
    assert k == key
    assert maildir.info_to_flags(info) == frozenset(flags)
    assert list(info) == sorted(info)


def test_filename_examples() -> None:
    assert maildir.filename("k", frozenset({"\\Seen", "\\Flagged", "$Junk"})) == "k:2,FS"
    assert maildir.split_filename("a,S=10:2,RS") == ("a,S=10", "RS")
    assert maildir.split_filename("plain") == ("plain", "")
    assert maildir.size_from_key("1.M2P3.h,S=1234,W=1300") == 1234
    assert maildir.size_from_key("1.M2P3.h") is None
    assert maildir.info_to_flags("PSxT") == frozenset({"\\Seen", "\\Deleted"})
    assert maildir.canonical_flag("\\SEEN") == "\\Seen" and maildir.canonical_flag("$x") == "$x"


names = st.lists(
    st.text(alphabet=st.characters(min_codepoint=0x20, blacklist_characters="/", blacklist_categories=("Cs",)),
            min_size=1, max_size=12),
    min_size=1, max_size=4,
).map("/".join)


@given(names)
def test_folder_dir_round_trip(name: str) -> None:
    try:
        norm = maildir.normalize_name(name)
    except maildir.NameError_:
        return
    d = maildir.folder_dir(norm)
    assert "/" not in d and (d == "" or d.startswith("."))
    assert d == "" or ".." not in d  # no empty hierarchy levels on disk
    assert maildir.dir_to_name(d) == norm


def test_folder_examples() -> None:
    assert maildir.folder_dir("inbox") == ""
    assert maildir.folder_dir("Archive/2024") == ".Archive.2024"
    assert maildir.folder_dir("a.b") == ".a&AC4-b"
    assert maildir.folder_dir("Entwürfe") == ".Entw&APw-rfe"
    assert maildir.dir_to_name(".Entw&APw-rfe") == "Entwürfe"
    assert maildir.dir_to_name("..hidden") is None and maildir.dir_to_name("cur") is None
    for bad in ("", "/a", "a/", "a//b", "a\x00b"):
        with pytest.raises(maildir.NameError_):
            maildir.normalize_name(bad)


@given(st.binary(max_size=300))
def test_uidlist_never_crashes(data: bytes) -> None:
    try:
        ul = uidlist.parse(data)
    except uidlist.UidlistError:
        return
    assert ul.effective_nextuid >= 1
    assert all(u > 0 for u in ul.uids.values())


@given(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1),
       st.dictionaries(st.text(alphabet="0123456789.MPh,=S", min_size=1, max_size=30).filter(lambda s: ":" not in s),
                       st.integers(1, 2**32 - 1), max_size=20))
def test_uidlist_round_trip(uv: int, nxt: int, entries: dict[str, int]) -> None:
    data = uidlist.format_header(uv, nxt, "ab" * 16)
    for base, uid in entries.items():
        data += uidlist.format_entry(uid, base, len(base))
    ul = uidlist.parse(data)
    assert (ul.uidvalidity, ul.nextuid, ul.guid) == (uv, nxt, "ab" * 16)
    assert ul.uids == entries
    assert ul.effective_nextuid == max(nxt, max(entries.values(), default=0) + 1)


ids = st.one_of(st.none(), st.text(alphabet="ETabcdef0123456789", min_size=1, max_size=25))
dates = st.one_of(st.none(), st.floats(min_value=0, max_value=2e10, allow_nan=False))


@given(st.integers(1, 2**32 - 1), st.text(alphabet="0123456789.MPh,=S", min_size=1, max_size=30),
       ids, ids, dates)
def test_uidlist_ids_round_trip(uid: int, base: str, eid: str | None, tid: str | None,
                                saved: float | None) -> None:
    data = uidlist.format_header(1, 1, "g") + uidlist.format_entry(uid, base, 5, (eid, tid, saved))
    ul = uidlist.parse(data)
    assert ul.uids == {base: uid} and ul.sizes == {base: 5}
    want = (eid, tid, saved)
    assert ul.meta.get(base) == (want if want != (None, None, None) else None)
    # every split point of the line: a torn tail is ignored, never misread
    for cut in range(len(data)):
        part = uidlist.parse(data[:cut]) if cut > data.index(b"\n") else None
        if part is not None:
            assert part.meta.get(base) in (None, ul.meta.get(base))


def test_uidlist_ids_examples() -> None:
    line = uidlist.format_entry(7, "k1", 10, ("Eab12", "Tcd34", 1764201234.25))
    assert line == b"7 S10 eEab12 tTcd34 d1764201234.25 :k1\n"
    ul = uidlist.parse(b"3 V1 N9 G00\n" + line + b"8 W12 G0123 eE1 t! dnope d-1 :k2\n7 S10 :k1\n")
    assert ul.meta == {"k2": ("E1", None, None)}  # bad t/d values ignored; k1's later line has none
    # ids that are not plain ASCII letters and digits are left out rather than written
    assert uidlist.format_entry(1, "k", None, ("E 1", "T:2", None)) == b"1 :k\n"


def test_uidlist_torn_last_line_and_v1() -> None:
    ul = uidlist.parse(b"3 V5 N3 G00\n1 :a\n2 S10 :b\n7 :c")
    assert ul.uids == {"a": 1, "b": 2} and ul.sizes == {"b": 10}
    ul = uidlist.parse(b"1 99 4\n1 a:2,S\n3 b\n")
    assert (ul.uidvalidity, ul.uids) == (99, {"a": 1, "b": 3})
    with pytest.raises(uidlist.UidlistError):
        uidlist.parse(b"3 N4\n")


def test_thread_headers_examples() -> None:
    raw = (b"Subject: Re: [team] Fwd: Plan (fwd)\r\nMessage-ID: <x@y>\r\nReferences: <a@b>\r\n <c@d>\r\n"
           b"In-Reply-To: <c@d>\r\n\r\nReferences: <not@header>\r\n")
    th = headers.thread_headers(raw)
    assert th.message_id == "x@y"
    assert th.parents == ("a@b", "c@d")
    assert th.subject == "plan"
    assert headers.thread_headers(b"no headers at all").message_id is None


@given(st.binary(max_size=500))
def test_thread_headers_never_crash(raw: bytes) -> None:
    th = headers.thread_headers(raw)
    assert isinstance(th.subject, str)
    assert len(set(th.parents)) == len(th.parents)


@given(st.text(max_size=60))
def test_base_subject_idempotent(s: str) -> None:
    b = headers.base_subject(s)
    assert headers.base_subject(b) == b


@given(st.sets(st.sampled_from(FLAGS)), st.sets(st.sampled_from(["$a", "Work", "$Junk", "x"])))
def test_keywords_in_file_names_round_trip(flags: set[str], kws: set[str]) -> None:
    kwmap = {"$a": "a", "Work": "c", "$Junk": "b"}
    letters = {v: k for k, v in kwmap.items()}
    info = maildir.split_filename(maildir.filename("k", frozenset(flags | kws), kwmap))[1]
    assert list(info) == sorted(info)
    assert maildir.info_to_flags(info, letters) == frozenset(flags | (kws - {"x"}))
    # a keyword without a letter survives a merge; lettered ones follow the file name
    assert maildir.merge_flags(frozenset(kws), info, letters) == frozenset(flags | kws)
    assert maildir.merge_flags(frozenset(kws), "", letters) == frozenset(kws & {"x"})


def test_keywords_file() -> None:
    kw = maildir.parse_keywords(b"0 $Forwarded\n2 Work\nbad line\n30 Over\n1 two words\n")
    assert kw == {"$Forwarded": "a", "Work": "c"}
    assert maildir.parse_keywords(maildir.format_keywords(kw)) == kw


_NAMES = ["Subject", "Message-ID", "In-Reply-To", "References", "From", "X-Other", "subject", "REFERENCES"]
_VALUES = st.lists(st.sampled_from(["<a@b>", "<c@d>", "Re:", "[tag]", "Fwd:", "plan", "(fwd)", "x", "<e@f"]),
                   max_size=6)


@given(st.lists(st.tuples(st.sampled_from(_NAMES), st.lists(_VALUES, min_size=1, max_size=3),
                          st.sampled_from([" ", "\t"])), max_size=8),
       st.sampled_from(["\r\n", "\n"]))
def test_thread_headers_of_scanned_fields(hdrs: list[tuple[str, list[list[str]], str]], eol: str) -> None:
    """Delivery takes the thread headers from the MIME scan's fields: as thread_headers reads the raw
    message (first occurrence, folded values unfolded, either line end)."""
    from mailsrv import mime

    lines = []
    for name, pieces, fold in hdrs:
        lines.append(f"{name}: " + f"{eol}{fold}".join(" ".join(p) for p in pieces))
    raw = (eol.join(lines) + eol + eol + "References: <body@x>" + eol).encode()
    assert headers.thread_headers_of(mime.parse(raw).scanned_fields()) == headers.thread_headers(raw)


def test_thread_headers_of_corpus(corpus: Path) -> None:
    from mailsrv import mime

    paths = [p for p in corpus.rglob("*") if p.is_file() and p.suffix not in (".json", ".xml", ".out")]
    assert len(paths) > 100
    for p in paths:
        raw = p.read_bytes()
        assert headers.thread_headers_of(mime.parse(raw).scanned_fields()) == headers.thread_headers(raw), p


@given(st.lists(st.sampled_from(list("ReFwdSvAw ])x)\t\u00a0\x1c\u2028ſK1") + ["fwd", "re", "fwd)", "re ]"]), max_size=20).map("".join))
def test_base_subject_shortcut_is_the_steps(subject: str) -> None:
    """Only subjects the shortcut answers (no "[", ":" or "("; a subject with one runs the steps themselves,
    so comparing it would compare the steps with the steps): the steps give the same answer."""
    assert "[" not in subject and ":" not in subject and "(" not in subject
    assert headers.base_subject(subject) == headers._base_subject_steps(" ".join(subject.split()))


def test_base_subject_shortcut_of_corpus(corpus: Path) -> None:
    """Both base subjects (the store's threading, search's SORT SUBJECT) of every corpus Subject equal their steps'."""
    from mailsrv.search.extract import _base_subject_steps as search_steps
    from mailsrv.search.extract import base_subject as search_base

    seen = 0
    for p in sorted(corpus.rglob("*")):
        if not p.is_file() or p.suffix in (".json", ".xml", ".out", ".md"):
            continue
        value = headers.fields(headers.header_block(p.read_bytes()), {b"subject"}).get(b"subject")
        if value is None:
            continue
        subject = value.decode("utf-8", "replace")
        collapsed = " ".join(subject[:headers.BASE_SUBJECT_MAX].split())
        assert headers.base_subject(subject) == headers._base_subject_steps(collapsed), p
        assert search_base(subject) == search_steps(collapsed), p
        seen += 1
    assert seen > 100


@given(st.lists(st.sampled_from(["a", "Re:", "x", " ", "  ", "\t", "\r\n", "\x0b", "\x1c", "\x85", "\u00a0", "\u2003",
                                 "\u3000", "\u200b", "é"]), max_size=12).map("".join))
def test_base_subject_folds_whitespace_as_the_pattern(subject: str) -> None:
    """base_subject collapses whitespace with str.split (no pattern): the same as ``\\s+`` -> one space, stripped."""
    import re

    folded = re.sub(r"\s+", " ", subject).strip()
    steps = any(c in folded for c in "[:(")
    assert headers.base_subject(subject) == (headers._base_subject_steps(folded) if steps else folded.casefold())


def test_thread_headers_of_one_line_values() -> None:
    """A field of one line (its line end kept by the scanner, or none) is taken stripped; a folded one unfolded."""
    th = headers.thread_headers_of([(b"subject", b" Re:  a\tb \r\n"), (b"message-id", b" <m@x>"),
                                    (b"references", b" <a@x>\r\n\t<b@x> \r\n"), (b"in-reply-to", b"")])
    assert th == headers.ThreadHeaders("m@x", ("a@x", "b@x"), "a b")
    assert headers.thread_headers_of([]) == headers.ThreadHeaders(None, (), "")
