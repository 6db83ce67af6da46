"""Junk moves forwarded to a real rspamd controller (/learnspam, /learnham) when rspamd is the scorer."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from typing import Any

import pytest

from mailsrv.policy.score import RspamdLearner, RspamdLearnError


def learned_count(controller: str, password: str) -> int:
    req = urllib.request.Request(controller + "/stat", headers={"Password": password})
    with urllib.request.urlopen(req, timeout=10) as r:
        return int(json.loads(r.read())["learned"])


def wait_learned(r: Any, expected: int, timeout: float = 20.0) -> int:
    """rspamd's /stat counter is shared memory its workers update: poll it (with a deadline) until it shows
    ``expected``, and return what it shows last."""
    deadline = time.monotonic() + timeout
    while (got := learned_count(r.controller, r.password)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


#: Per run: rspamd remembers what it learned by message, so a rerun must not meet an earlier run's messages.
RUN = uuid.uuid4().hex


def note(i: int) -> bytes:
    return (f"From: a{i}@rspamd-learn.test\r\nTo: bob@example.test\r\nSubject: offer {i}\r\n"
            f"Message-ID: <learn{i}.{RUN}@rspamd-learn.test>\r\n\r\n"
            f"Cheap offer number {i} ({RUN}) for pills and watches, reply today {i * 7919}.\r\n").encode()


async def test_learner_against_real_rspamd(rspamd_instance: Any) -> None:
    r = rspamd_instance
    learner = RspamdLearner(r.controller, password=r.password)
    before = learned_count(r.controller, r.password)
    assert await learner.learn("spam", note(1)) is True
    assert await learner.learn("ham", note(1)) is True  # relearned as ham
    assert wait_learned(r, before + 2) == before + 2
    # learned again with the same class, rspamd answers "already learned": False. Its learn cache is written
    # after the reply (and may lose a race under load), so ask until it says so, with a deadline.
    for _ in range(400):  # 20 s at most
        if await learner.learn("ham", note(1)) is False:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("rspamd never answered 'already learned'")
    with pytest.raises(RspamdLearnError):
        await RspamdLearner(r.controller, password="wrong").learn("spam", note(2))
    with pytest.raises(ValueError):
        await learner.learn("eggs", note(2))


def test_junk_move_trains_rspamd_not_our_learner(policy_server: Any, rspamd_instance: Any) -> None:
    r = rspamd_instance
    srv = policy_server(rspamd_url=r.url, rspamd_controller_url=r.controller, rspamd_password=r.password)
    assert srv.policy.bayes is None and srv.policy.rspamd_learner is not None
    before = learned_count(r.controller, r.password)
    assert srv.loop.run(srv.policy.train("bob@example.test", "INBOX", "Junk", note(10))) == "spam"
    assert srv.loop.run(srv.policy.train("bob@example.test", "Junk", "INBOX", note(11))) == "ham"
    assert wait_learned(r, before + 2) == before + 2
    # rspamd refusing (bad password) never fails the move
    bad = policy_server(rspamd_url=r.url, rspamd_controller_url=r.controller, rspamd_password="nope")
    assert bad.loop.run(bad.policy.train("bob@example.test", "INBOX", "Junk", note(12))) == "spam"
    assert learned_count(r.controller, r.password) == before + 2
