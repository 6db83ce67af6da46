"""IMAP MOVE and COPY into or out of Junk train the worker's policy (docs/policy.md, resources["policy"])."""

from __future__ import annotations

import imaplib
from pathlib import Path

from imaptest import ServerHandle
from test_real_store import real  # noqa: F401  (the fixture: IMAP over the real store)

from mailsrv.config import PolicyConfig
from mailsrv.net.dns import Resolver
from mailsrv.policy.pipeline import Policy
from mailsrv.policy.state import PolicyState

SPAM = b"From: s@spam.test\r\nTo: alice@example.test\r\nSubject: win\r\n\r\nyou won\r\n"
HAM = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: lunch\r\n\r\nat noon\r\n"


def test_move_and_copy_into_and_out_of_junk_train(real: ServerHandle, tmp_path: Path) -> None:  # noqa: F811
    state = PolicyState(tmp_path / "policy.db")
    policy = Policy(PolicyConfig(), hostname="mx.example.test", resolver=Resolver(["127.0.0.1:1"]), state=state)
    real.service.ctx.resources["policy"] = policy  # what the worker provides (the SMTP service builds it)
    try:
        c = imaplib.IMAP4(real.host, real.port, timeout=20)
        c.login("alice@example.test", "wonderland")
        for m in (SPAM, HAM, HAM.replace(b"lunch", b"dinner")):
            assert c.append("INBOX", None, None, m)[0] == "OK"
        c.select("INBOX")
        assert c.uid("MOVE", "1", "Junk")[0] == "OK"  # MOVE into Junk: spam
        assert real.call(state.training_counts("alice@example.test")) == {"spam": 1}
        assert c.uid("MOVE", "2", "Archive")[0] == "OK"  # not about Junk: nothing
        assert real.call(state.training_counts("alice@example.test")) == {"spam": 1}
        assert c.uid("COPY", "3", "Junk")[0] == "OK"  # COPY+EXPUNGE of clients without MOVE
        assert real.call(state.training_counts("alice@example.test")) == {"spam": 2}
        c.select("Junk")
        typ, data = c.uid("SEARCH", None, "SUBJECT", "dinner")
        assert c.uid("MOVE", data[0].decode(), "INBOX")[0] == "OK"  # out of Junk: she changed her mind
        assert real.call(state.training_counts("alice@example.test")) == {"spam": 1, "ham": 1}
        c.logout()
    finally:
        del real.service.ctx.resources["policy"]
        policy.close()
