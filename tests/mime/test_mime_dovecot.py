"""ENVELOPE, BODY and BODYSTRUCTURE against what Dovecot 2.3 (Debian) answers for the corpus.

fixtures/dovecot.json was produced by make_dovecot_fixtures.py from the corpus and
the generated messages of samples.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from samples import SAMPLES

pytestmark = pytest.mark.speedups

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "dovecot.json").read_text())["messages"]

#: Messages whose BODY/BODYSTRUCTURE differ from Dovecot, and why (every one analysed).
#: Everything else (the corpus, the generated samples including the nesting limit, and
#: every ENVELOPE) must be byte-identical.
DEVIATIONS = {
    # RFC 2046 §5.1.1: the CRLF before a delimiter line belongs to the delimiter. Dovecot
    # parses this base64 message/rfc822 as a message anyway; its base64 text is then a
    # header cut by the delimiter, and Dovecot counts that CRLF into the enclosing part
    # (2 octets, 1 line more; its own n.MIME of such a header leaves the CRLF out).
    # RFC 2046 §5.2.1 forbids the encoding; we keep the part opaque, as Dovecot shows it.
    "stalwart-mail-parser/eml/rfc/008.eml": "CRLF before a delimiter after a cut header",
    # RFC 2231 §3-4 (and RFC 2045 §5.1): boundary*= is the boundary parameter, encoded.
    # Dovecot 2.3 looks only for a plain "boundary" and shows one empty part.
    "cpython-test_email/msg_33.txt": "RFC 2231 boundary*=",
    "generated/rfc2231-boundary": "RFC 2231 boundary*0*= / boundary*1=",
}

#: A message of DEVIATIONS -> the same message with a plain boundary, whose parts
#: Dovecot shows as we show the original's.
SAME_PARTS_AS = {"generated/rfc2231-boundary": "generated/rfc2231-boundary-plain"}


@pytest.fixture(scope="module")
def messages(corpus_messages: dict[str, bytes]) -> dict[str, bytes]:
    """The corpus plus the generated samples (torture, CJK headers, RFC 2231, limits)."""
    return {**corpus_messages, **{f"generated/{k}": v for k, v in SAMPLES.items()}}


def test_fixtures_cover_the_corpus_and_samples(messages: dict[str, bytes]) -> None:
    assert set(FIXTURES) == set(messages)
    assert set(DEVIATIONS) <= set(FIXTURES)


def test_envelope_matches_dovecot(messages: dict[str, bytes], parse: Callable) -> None:
    bad = []
    for rel, raw in messages.items():
        if parse(raw).imap_envelope() != FIXTURES[rel]["ENVELOPE"].encode("latin-1"):
            bad.append(rel)
    assert bad == []


@pytest.mark.parametrize("extended", [False, True], ids=["BODY", "BODYSTRUCTURE"])
def test_bodystructure_matches_dovecot(
    messages: dict[str, bytes], parse: Callable, extended: bool
) -> None:
    item = "BODYSTRUCTURE" if extended else "BODY"
    bad = set()
    for rel, raw in messages.items():
        if parse(raw).imap_bodystructure(extended) != FIXTURES[rel][item].encode("latin-1"):
            bad.add(rel)
    assert bad == set(DEVIATIONS)


def _parts_only(bodystructure: bytes) -> bytes:
    """The parts of a multipart BODYSTRUCTURE, without the multipart's own fields."""
    return bodystructure[: bodystructure.rindex(b' "mixed"')]


@pytest.mark.parametrize("extended", [False, True], ids=["BODY", "BODYSTRUCTURE"])
def test_rfc2231_boundary_splits_like_a_plain_one(
    messages: dict[str, bytes], parse: Callable, extended: bool
) -> None:
    item = "BODYSTRUCTURE" if extended else "BODY"
    for rel, plain in SAME_PARTS_AS.items():
        ours = parse(messages[rel]).imap_bodystructure(extended)
        assert _parts_only(ours) == _parts_only(FIXTURES[plain][item].encode("latin-1"))
        assert ours.count(b'("text" "plain"') == 1
    msg33 = parse(messages["cpython-test_email/msg_33.txt"])
    assert [p.mime_type for p in msg33.root.children] == ["text/plain", "text/plain"]
    assert b'"quoted-printable" 8 1' in msg33.imap_bodystructure(extended)


def test_cache_round_trip_keeps_imap_output(messages: dict[str, bytes], parse: Callable) -> None:
    from mailsrv.mime import MessageStructure

    for raw in messages.values():
        s = parse(raw)
        back = MessageStructure.from_cache(s.to_cache())
        assert back == s
        assert back.imap_bodystructure() == s.imap_bodystructure()
        assert back.imap_envelope() == s.imap_envelope()


SECTIONS = json.loads((Path(__file__).parent / "fixtures" / "dovecot_sections.json").read_text())[
    "messages"
]

#: (message, section) whose BODY[section] bytes differ from Dovecot's, and why.
SECTION_DEVIATIONS = {
    # The quirk of 008.eml in DEVIATIONS: part 1.2's header ("and ") is cut by the
    # outer delimiter; Dovecot counts the CRLF before that delimiter into part 1
    # (RFC 2046 §5.1.1 gives it to the delimiter, as Dovecot's own 1.2.MIME does).
    ("cpython-test_email/msg_38.txt", "1"): "CRLF before a delimiter after a cut header",
    ("stalwart-mail-parser/eml/rfc/008.eml", "2"): "CRLF before a delimiter after a cut header",
}

#: Messages Dovecot does not split (RFC 2231 boundary): their parts are not compared,
#: or compared with the plain-boundary twin of SAME_PARTS_AS.
UNSPLIT = {"cpython-test_email/msg_33.txt", *SAME_PARTS_AS}


def _digest(data: bytes) -> str:
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()[:16]}"


def _expected(rel: str, spec: str) -> dict:
    if rel in SAME_PARTS_AS and spec[:1].isdigit():
        return SECTIONS[SAME_PARTS_AS[rel]][spec]
    return SECTIONS[rel][spec]


def test_section_bytes_match_dovecot(messages: dict[str, bytes], parse: Callable) -> None:
    """BODY[n], BODY[n.MIME], BODY[HEADER]/[TEXT], BODY[n.HEADER]/[n.TEXT] as Dovecot cuts them.

    Sections Dovecot answered with NIL or an error (it drops the connection on a
    few malformed messages) are not compared.
    """
    bad = set()
    checked = 0
    for rel, specs in SECTIONS.items():
        raw = messages[rel]
        s = parse(raw)
        for spec in specs:
            if rel == "cpython-test_email/msg_33.txt" and spec[:1].isdigit():
                continue
            exp = _expected(rel, spec)
            if exp.get("body") is None:
                continue
            rng = s.section_range(spec)
            got = None if rng is None else _digest(raw[rng[0] : rng[1]])
            checked += 1
            if got != exp["body"]:
                bad.add((rel, spec))
    assert checked > 1000
    assert bad == set(SECTION_DEVIATIONS)


#: (message, section) whose BINARY[section] Dovecot refuses, and why we answer.
BINARY_DOVECOT_FAILS = {
    # RFC 3516 §4.3 [UNKNOWN-CTE]: x-uuencode is no RFC 2045 encoding. Dovecot refuses;
    # mime.iter_binary gives such a part as is (the IMAP FETCH answers [UNKNOWN-CTE]).
    ("stalwart-mail-parser/eml/legacy/017.eml", "2"): "x-uuencode",
    ("stalwart-mail-parser/eml/legacy/017.eml", "3"): "x-uuencode",
    ("stalwart-mail-parser/eml/legacy/026.eml", "2"): "x-uuencode",
    ("stalwart-mail-parser/eml/legacy/048.eml", "2"): "x-uuencode",
    ("stalwart-mail-parser/eml/legacy/048.eml", "3"): "x-uuencode",
    ("stalwart-mail-parser/eml/legacy/048.eml", "4"): "x-uuencode",
    ("generated/cte-spellings", "3"): "x-foo",
    # base64 bodies holding text that is no base64 (placeholders such as "... base64-encoded
    # image data goes here ...", a mangled close delimiter): Dovecot answers "Invalid data
    # in MIME part"; RFC 2045 §6.8 says characters outside the alphabet are ignored, so we
    # decode what is left.
    ("cpython-test_email/msg_15.txt", "2"): "invalid base64",
    ("mime4j/mimetools-testmsgs/multi-frag.msg", "3"): "invalid base64 inside",
    ("mime4j/mimetools-testmsgs/multi-frag.msg", "3.2"): "invalid base64",
    ("stalwart-mail-parser/eml/rfc/000.eml", "3"): "invalid base64 inside",
    ("stalwart-mail-parser/eml/rfc/000.eml", "3.1"): "invalid base64",
    ("stalwart-mail-parser/eml/rfc/000.eml", "3.2"): "invalid base64",
}

#: (message, section) whose BINARY differs from Dovecot's.
BINARY_DEVIATIONS = {
    # base64 message/rfc822: RFC 3516 BINARY undoes the encoding; Dovecot (which parsed
    # it as a message) returns the encoded text.
    ("stalwart-mail-parser/eml/rfc/008.eml", "2"): "encoded message/rfc822",
    ("cpython-test_email/msg_38.txt", "1"): "CRLF before a delimiter after a cut header",
}


def _binary_answers(messages: dict[str, bytes], parse: Callable) -> dict:
    """(message, section) -> (our BINARY digest, our BINARY.SIZE, Dovecot's entry, container)."""
    from mailsrv import mime

    out = {}
    for rel, specs in SECTIONS.items():
        if rel == "cpython-test_email/msg_33.txt":
            continue
        raw = messages[rel]
        s = parse(raw)
        for spec in specs:
            if not spec[:1].isdigit() or spec.endswith(("MIME", "HEADER", "TEXT")):
                continue
            exp = _expected(rel, spec)
            if "error" in exp:  # Dovecot dropped the connection on this message
                continue
            part = s.part(spec)
            assert part is not None, (rel, spec)
            data = b"".join(mime.iter_binary(raw, part, chunk=1024))
            inner = part.is_multipart or part.message is not None
            out[rel, spec] = (_digest(data), mime.binary_size(raw, part), exp, inner)
    return out


def test_binary_matches_dovecot(messages: dict[str, bytes], parse: Callable) -> None:
    """RFC 3516 BINARY[n] of every part, containers included (their base64/QP parts
    decoded, headers rewritten to Content-Transfer-Encoding: binary, as Dovecot does)."""
    answers = _binary_answers(messages, parse)
    bad = set()
    refused = set()
    containers = 0
    for key, (digest, size, exp, inner) in answers.items():
        assert size == int(digest.split(":")[0]), key
        if exp["binary"] is None:
            refused.add(key)
            continue
        containers += inner
        if digest != exp["binary"]:
            bad.add(key)
    assert len(answers) > 500 and containers > 50
    assert refused == set(BINARY_DOVECOT_FAILS)
    assert bad == set(BINARY_DEVIATIONS)


def test_binary_size_is_the_length_of_binary(messages: dict[str, bytes], parse: Callable) -> None:
    """RFC 3516 §4.2: BINARY.SIZE is the size of what BINARY returns.

    Dovecot 2.3 answers BINARY.SIZE from a cached table that is wrong for some
    parts (multipart containers and a few base64 leaves): its BINARY.SIZE then
    differs from the length of its own BINARY. Ours always equals that length.
    """
    answers = _binary_answers(messages, parse)
    dovecot_wrong = 0
    for key, (_, size, exp, _inner) in answers.items():
        if exp["binary"] is None or key in BINARY_DEVIATIONS:
            continue
        length = int(exp["binary"].split(":")[0])
        assert size == length, key
        # None: Dovecot's BINARY.SIZE fails for the whole message when any part cannot
        # be decoded (it builds its table over every part)
        dovecot_wrong += exp["binary_size"] not in (None, length)
    assert dovecot_wrong == 20
