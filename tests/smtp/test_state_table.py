"""The dispatcher's state table: a verb is refused 503 5.5.1 at the call exactly in the states LEGAL does not
list it for (BDAT aside: it reads its chunk first), whatever the order of the states a session went through."""

from __future__ import annotations

import itertools

import pytest

from mailsrv.config import SmtpConfig
from mailsrv.smtp.backend import SessionInfo
from mailsrv.smtp.grammar import SmtpError
from mailsrv.smtp.session import LEGAL, Session, State


def _session() -> Session:
    return Session(SessionInfo("sid1", "mx.example.test", "smtp", "127.0.0.1"), SmtpConfig(), backend=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("verb", sorted(LEGAL))
def test_a_verb_is_refused_exactly_where_the_table_says(verb: str) -> None:
    session = _session()
    for state in itertools.chain(State, reversed(State)):  # each state, after every other
        session.state = state
        try:
            coro = session.command(f"{verb} x\r\n".encode())
        except SmtpError as exc:
            assert (exc.code, exc.enh) == (503, "5.5.1")
            assert state not in LEGAL[verb] and verb != "BDAT", (verb, state)
        else:
            coro.close()  # not run: only the dispatch is looked at
            assert state in LEGAL[verb] or verb == "BDAT", (verb, state)


def test_an_unknown_verb_is_500_in_every_state() -> None:
    session = _session()
    for state in State:
        session.state = state
        with pytest.raises(SmtpError) as err:
            session.command(b"XYZZY\r\n")
        assert (err.value.code, err.value.enh) == (500, "5.5.2")
