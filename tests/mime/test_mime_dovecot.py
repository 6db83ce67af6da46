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

#: Corpus messages whose BODY/BODYSTRUCTURE differ from Dovecot, and why.
#: Everything else (197 of 198 corpus messages, all 9 generated samples including the
#: nesting limit, and every ENVELOPE) must be byte-identical.
DEVIATIONS = {
    # A base64 message/rfc822 part: Dovecot counts 2 more octets and 1 more line; not analysed.
    "stalwart-mail-parser/eml/rfc/008.eml": "encoded message/rfc822 size",
}


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
    # Not analysed: a part whose header is a lone junk line, and the epilogue/line-end
    # attribution of a multipart Dovecot ends 2 bytes later.
    ("cpython-test_email/msg_38.txt", "1"): "line end after a nested close delimiter",
    ("cpython-test_email/msg_38.txt", "1.2.MIME"): "header of a junk line",
    # Not analysed: a part header ending in a colon-less line right before a delimiter.
    ("mime4j/mimetools-testmsgs/double-bound.msg", "7.MIME"): "junk line before delimiter",
    # The base64 message/rfc822 of DEVIATIONS above (Dovecot parses it as a message anyway).
    ("stalwart-mail-parser/eml/rfc/008.eml", "2"): "encoded message/rfc822 size",
}

#: (message, section) of leaf parts whose BINARY.SIZE differs from Dovecot's.
BINARY_DEVIATIONS = {
    # Clean base64 that decodes to 2442 / 3272 octets (checked with the stdlib too);
    # Dovecot answers 1206 / 2930. Not analysed.
    ("mime4j/mimetools-testmsgs/multi-igor.msg", "2"): "Dovecot answer unexplained",
    ("mime4j/mimetools-testmsgs/multi-igor.msg", "3"): "Dovecot answer unexplained",
    ("mime4j/mimetools-testmsgs/multi-igor2.msg", "2"): "Dovecot answer unexplained",
    ("mime4j/mimetools-testmsgs/multi-igor2.msg", "3"): "Dovecot answer unexplained",
    # base64 message/rfc822: we decode it (RFC 2046 forbids the encoding; we are lenient)
    ("stalwart-mail-parser/eml/rfc/008.eml", "2"): "encoded message/rfc822",
}


def _digest(data: bytes) -> str:
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()[:16]}"


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
        for spec, exp in specs.items():
            if exp.get("body") is None:
                continue
            rng = s.section_range(spec)
            got = None if rng is None else _digest(raw[rng[0] : rng[1]])
            checked += 1
            if got != exp["body"]:
                bad.add((rel, spec))
    assert checked > 1000
    assert bad == set(SECTION_DEVIATIONS)


def test_binary_size_matches_dovecot(messages: dict[str, bytes], parse: Callable) -> None:
    """RFC 3516 BINARY.SIZE of every leaf part Dovecot could decode.

    Containers are not compared: Dovecot decodes the parts inside a multipart or
    message/rfc822 and rewrites their headers; binary_size gives their encoded size.
    """
    from mailsrv import mime

    bad = set()
    checked = 0
    for rel, specs in SECTIONS.items():
        raw = messages[rel]
        s = parse(raw)
        for spec, exp in specs.items():
            if exp.get("binary_size") is None:
                continue
            part = s.part(spec)
            assert part is not None, (rel, spec)
            if part.is_multipart or (part.message is not None):
                continue
            checked += 1
            if mime.binary_size(raw, part) != exp["binary_size"]:
                bad.add((rel, spec))
    assert checked > 250
    assert bad == set(BINARY_DEVIATIONS)
