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


class _Sasl:
    def __init__(self, mechs: list[str]) -> None:
        self.mechs = mechs

    def mechanisms(self, *, tls: bool, client_ip: str, channel_binding: bool = False) -> list[str]:
        return self.mechs if tls else self.mechs[:1]

    def sasl(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("not used")


async def test_ehlo_replies_are_the_formatted_extension_lists() -> None:
    """The EHLO reply, its extension lines made once per kind, is the list formatted each time."""
    from mailsrv.config import SmtpConfig
    from mailsrv.smtp.backend import SessionInfo

    session._EHLO_TAILS.clear()
    for _ in range(2):  # made, then remembered
        for listener, tls, starttls, mechs, size in [("smtp", {}, True, [], 1000), ("smtp", {"tls": "TLSv1.3"}, True, [], 1000),
                                                    ("submission", {"tls": "TLSv1.3"}, True, ["PLAIN", "LOGIN"], 5),
                                                    ("submission", {}, False, ["PLAIN", "LOGIN"], 5),
                                                    ("smtp", {}, False, [], 77)]:
            info = SessionInfo(sid="s", hostname="mx.test", listener=listener, peer_ip="192.0.2.1", tls=dict(tls))
            sess = session.Session(info, SmtpConfig(max_message_size=size), None, _Sasl(mechs),  # type: ignore[arg-type]
                                   starttls_available=starttls, plaintext_auth_ok=True)
            step = await sess.command(b"EHLO client.test\r\n")
            ext = ["mx.test Hello client.test", "PIPELINING", f"SIZE {size}", "8BITMIME", "SMTPUTF8",
                   "ENHANCEDSTATUSCODES", "DSN", "CHUNKING"]
            if starttls and not tls:
                ext.append("STARTTLS")
            shown = (mechs if tls else mechs[:1]) if listener == "submission" else []
            if shown:
                ext.append("AUTH " + " ".join(shown))
            assert step.reply == reply(250, None, ext)
    assert len(session._EHLO_TAILS) == 5
