"""ENVELOPE, BODY and BODYSTRUCTURE against what Dovecot 2.3 (Debian) answers for the corpus.

fixtures/dovecot.json was produced by make_dovecot_fixtures.py from the corpus and
the generated messages of samples.py.
"""

from __future__ import annotations

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
