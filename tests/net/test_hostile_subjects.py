"""A hostile Subject (a header block may carry 256 KiB of it) against the four RFC 5256 base-subject
functions: their strip-and-repeat loops are quadratic, so they look at its first
``BASE_SUBJECT_MAX`` characters only ("Re: " 64 000 times cost minutes of CPU per message before)."""

from __future__ import annotations

import pytest

from mailsrv.imap import sortthread
from mailsrv.jmap import email_query
from mailsrv.mime.headers import BASE_SUBJECT_MAX
from mailsrv.search.extract import base_subject as search_base_subject
from mailsrv.store import headers

FUNCTIONS = [sortthread.base_subject, headers.base_subject, search_base_subject, email_query.base_subject]
HOSTILE = ["Re: " * 64_000 + "x", "x" + " (fwd)" * 40_000, "[a] " * 60_000 + "x", "Re: [fwd: " * 25_000 + "x"]


@pytest.mark.parametrize("base_subject", FUNCTIONS, ids=lambda f: f.__module__)
def test_only_the_first_characters_of_a_huge_subject_count(base_subject) -> None:  # type: ignore[no-untyped-def]
    for subject in HOSTILE:
        assert len(subject) > 200_000
        assert base_subject(subject) == base_subject(subject[:BASE_SUBJECT_MAX])
    # an ordinary subject is stripped as before
    assert base_subject("Re: Fwd: Meeting") == "meeting"
