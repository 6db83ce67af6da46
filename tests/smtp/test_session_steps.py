"""The session's cache of accepted-RCPT replies: the same reply as formatting it each time, and bounded
whatever texts a backend returns."""

from __future__ import annotations

from mailsrv.smtp import session
from mailsrv.smtp.grammar import reply


def test_cached_steps_are_the_formatted_replies_and_stay_bounded() -> None:
    session._STEPS.clear()
    first = session._step(250, "2.1.5", "Recipient OK")
    assert first.reply == reply(250, "2.1.5", "Recipient OK") == b"250 2.1.5 Recipient OK\r\n"
    assert session._step(250, "2.1.5", "Recipient OK") is first  # made once
    for i in range(5 * session.MAX_STEPS):  # a backend that puts the address in its text
        step = session._step(251, "2.1.5", f"User not local; will forward to <u{i}@example.test>")
        assert step.reply == f"251 2.1.5 User not local; will forward to <u{i}@example.test>\r\n".encode()
        assert len(session._STEPS) <= session.MAX_STEPS
