"""IMAP MOVE and COPY into or out of Junk train the worker's policy (docs/policy.md, resources["policy"])."""

from __future__ import annotations

import asyncio
import imaplib
from pathlib import Path
from typing import Any

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
    assert policy.trainer is not None
    try:
        c = imaplib.IMAP4(real.host, real.port, timeout=20)
        c.login("alice@example.test", "wonderland")
        for m in (SPAM, HAM, HAM.replace(b"lunch", b"dinner")):
            assert c.append("INBOX", None, None, m)[0] == "OK"
        c.select("INBOX")
        assert c.uid("MOVE", "1", "Junk")[0] == "OK"  # MOVE into Junk: spam
        real.call(policy.trainer.drain())  # learned in the background (docs/policy.md)
        assert real.call(state.training_counts("alice@example.test")) == {"spam": 1}
        assert c.uid("MOVE", "2", "Archive")[0] == "OK"  # not about Junk: nothing
        real.call(policy.trainer.drain())  # learned in the background (docs/policy.md)
        assert real.call(state.training_counts("alice@example.test")) == {"spam": 1}
        assert c.uid("COPY", "3", "Junk")[0] == "OK"  # COPY+EXPUNGE of clients without MOVE
        real.call(policy.trainer.drain())  # learned in the background (docs/policy.md)
        assert real.call(state.training_counts("alice@example.test")) == {"spam": 2}
        c.select("Junk")
        typ, data = c.uid("SEARCH", None, "SUBJECT", "dinner")
        assert c.uid("MOVE", data[0].decode(), "INBOX")[0] == "OK"  # out of Junk: she changed her mind
        real.call(policy.trainer.drain())  # learned in the background (docs/policy.md)
        assert real.call(state.training_counts("alice@example.test")) == {"spam": 1, "ham": 1}
        c.logout()
    finally:
        del real.service.ctx.resources["policy"]
        policy.close()


def test_moving_2000_messages_into_junk_replies_at_once(real: ServerHandle, tmp_path: Path) -> None:  # noqa: F811
    """The tagged OK does not wait for the learner: with the learner held back, MOVE of 2 000 messages
    answers OK, the moves are journaled, and every one is learned once the learner may go on."""
    import time

    state = PolicyState(tmp_path / "policy.db")
    policy = Policy(PolicyConfig(), hostname="mx.example.test", resolver=Resolver(["127.0.0.1:1"]), state=state)
    trainer = policy.trainer
    assert trainer is not None and policy.bayes is not None
    gate = real.call(_event())
    learn = trainer.learn

    async def held(items: Any, also: Any) -> None:
        await gate.wait()
        await learn(items, also)

    trainer.learn = held
    real.service.ctx.resources["policy"] = policy
    n = 2000
    try:
        async def fill() -> None:  # through the store, concurrently (2 000 IMAP APPENDs fsync one by one)
            acct = await real.store.account("1", None)
            await asyncio.gather(*(acct.append("INBOX", SPAM.replace(b"you won", f"you won prize {i}".encode()))
                                   for i in range(n)))

        real.call(fill(), timeout=300)
        c = imaplib.IMAP4(real.host, real.port, timeout=60)
        c.login("alice@example.test", "wonderland")
        assert c.select("INBOX") == ("OK", [str(n).encode()])
        t0 = time.perf_counter()
        assert c.uid("MOVE", "1:*", "Junk")[0] == "OK"
        took = time.perf_counter() - t0
        assert real.call(state.training_counts("alice@example.test")) == {}  # nothing learned yet...
        journal = real.call(state.run(lambda db: db.execute("SELECT COUNT(*) FROM training_queue").fetchone()))
        assert journal == (n,)  # ...and every move journaled before the reply
        assert took < 30, took  # the move alone (~1 s here); the learner held back proves the reply did not wait
        real.loop.call_soon_threadsafe(gate.set)
        real.call(trainer.drain(), timeout=300)
        assert real.call(state.training_counts("alice@example.test")) == {"spam": n}
        assert real.call(policy.bayes.totals(["example.test"])) == (n, 0)
        assert real.call(state.run(lambda db: db.execute("SELECT COUNT(*) FROM training_queue").fetchone())) == (0,)
        c.logout()
    finally:
        del real.service.ctx.resources["policy"]
        policy.close()


async def _event() -> asyncio.Event:
    return asyncio.Event()


def test_a_grantees_moves_in_a_shared_folder_train_the_owners_learner(tmp_path: Path) -> None:
    """Bob moves alice's mail into and out of her Junk (rights from her SETACL): alice's verdicts, as
    her own moves and JMAP's are; bob's learner learns nothing."""
    from imaptest import serve_real_store

    with serve_real_store(tmp_path / "s", users=("alice@example.test", "bob@example.test")) as srv:
        state = PolicyState(tmp_path / "policy.db")
        policy = Policy(PolicyConfig(), hostname="mx.example.test", resolver=Resolver(["127.0.0.1:1"]), state=state)
        srv.service.ctx.resources["policy"] = policy
        assert policy.trainer is not None
        try:
            a = imaplib.IMAP4(srv.host, srv.port, timeout=20)
            a.login("alice@example.test", "wonderland")
            for m in (SPAM, HAM):
                assert a.append("INBOX", None, None, m)[0] == "OK"
            for box in ("INBOX", "Junk"):
                assert a.setacl(box, "bob@example.test", "lrswite")[0] == "OK"
            a.logout()
            b = imaplib.IMAP4(srv.host, srv.port, timeout=20)
            b.login("bob@example.test", "wonderland")
            assert b.select('"Other Users/alice@example.test/INBOX"')[0] == "OK"
            assert b.uid("MOVE", "1", '"Other Users/alice@example.test/Junk"')[0] == "OK"
            srv.call(policy.trainer.drain())
            assert srv.call(state.training_counts("alice@example.test")) == {"spam": 1}
            assert b.uid("COPY", "2", '"Other Users/alice@example.test/Junk"')[0] == "OK"
            srv.call(policy.trainer.drain())
            assert srv.call(state.training_counts("alice@example.test")) == {"spam": 2}
            assert b.select('"Other Users/alice@example.test/Junk"')[0] == "OK"
            typ, data = b.uid("SEARCH", None, "SUBJECT", "lunch")
            assert b.uid("MOVE", data[0].decode(), '"Other Users/alice@example.test/INBOX"')[0] == "OK"
            srv.call(policy.trainer.drain())
            assert srv.call(state.training_counts("alice@example.test")) == {"spam": 1, "ham": 1}
            assert srv.call(state.training_counts("bob@example.test")) == {}
            b.logout()
        finally:
            del srv.service.ctx.resources["policy"]
            policy.close()
