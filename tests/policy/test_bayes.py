"""The spam learner: tokens, Robinson/Fisher combining, SQLite counts per scope, training through Policy.train."""

from __future__ import annotations

import asyncio
import json
import random
import smtplib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.server import mailsrv_cmd

from mailsrv import config as config_mod
from mailsrv.config import PolicyConfig
from mailsrv.policy.bayes import (
    Bayes,
    Lesson,
    chi2q,
    combine,
    message_digest,
    points,
    token_id,
    token_prob,
    tokens,
)
from mailsrv.policy.headers import header_end
from mailsrv.policy.pipeline import Policy
from mailsrv.policy.state import PolicyState

SPAM_WORDS = ("pharmacy discount pills offer cheap replica watches casino bonus jackpot crypto invest "
              "profit guaranteed exclusive deal unsubscribe viagra loan approval").split()
HAM_WORDS = ("meeting agenda project report quarterly review minutes budget schedule deadline release "
             "invoice attached draft comments thanks regards tomorrow").split()
COMMON = "the and for with this that your from have will please today about".split()


def corpus_message(kind: str, i: int, *, sender: str | None = None) -> bytes:
    rnd = random.Random(f"{kind}{i}")
    words = SPAM_WORDS if kind == "spam" else HAM_WORDS
    body = " ".join(rnd.choice(words + COMMON) for _ in range(60))
    frm = sender or ("promo@deals-4u.test" if kind == "spam" else "colleague@partner.test")
    subject = " ".join(rnd.choice(words) for _ in range(4))
    return (f"From: {frm}\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{kind}{i}@x.test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


# -- tokens -------------------------------------------------------------------------------------


def test_tokens_of_a_multipart_message() -> None:
    msg = (b"Received: from evil by us\r\nX-Spam-Flag: YES\r\nFrom: \"Prize Team\" <win@mail.lotto.test>\r\n"
           b"Subject: =?utf-8?b?5a2j5bqm5oql5ZGK?= winner\r\nMessage-ID: <a@b.lotto.test>\r\n"
           b"X-Mailer: BulkBlaster 3\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
           b"Content-Type: text/html; charset=iso-8859-1\r\n\r\n"
           b"<p>Claim <b>your</b> prize <a href=\"http://click.track.lotto.test/x\">now</a></p>\r\n"
           b"--XX\r\nContent-Type: application/octet-stream; name=prize.exe\r\n"
           b"Content-Disposition: attachment; filename=prize.exe\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"TVqQAAMAAAAEAAAA\r\n--XX--\r\n")
    t = tokens(msg)
    assert {"s:winner", "s:季度", "s:报告", "from:mail.lotto.test", "from:lotto.test", "fn:prize",
            "mid:lotto.test", "xm:bulkblaster", "h:x-mailer", "ct:multipart/mixed", "ct:text/html",
            "cs:iso-8859-1", "ext:exe", "cte:base64", "url:click.track.lotto.test", "url:lotto.test",
            "claim", "prize", "html"} <= t
    assert "h:received" not in t and "h:x-spam-flag" not in t  # fields we add are not tokens
    assert not any(x.startswith("<") or x in ("href", "p", "b") for x in t)  # tags and short words gone


@given(st.binary(max_size=3000))
@settings(max_examples=200, deadline=None)
def test_tokens_never_raise(data: bytes) -> None:
    out = tokens(data)
    assert isinstance(out, set) and len(out) <= 3000


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=400))
@settings(max_examples=100, deadline=None)
def test_tokens_of_any_text_body(text: str) -> None:
    msg = b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text.encode("utf-8")
    toks = tokens(msg)
    assert "ct:text/plain" in toks
    assert all(len(t) >= 2 for t in toks)


def test_digest_ignores_headers() -> None:
    a = b"Subject: a\r\nX-Spam-Flag: YES\r\n\r\nbody\r\n"
    assert message_digest(a) == message_digest(b"Subject: b\r\n\r\nbody\r\n")
    assert message_digest(a) != message_digest(b"Subject: a\r\n\r\nother\r\n")


def test_digest_of_an_empty_body_is_its_message_id_or_its_fields() -> None:
    """Messages with no body are not all one message; moved or re-delivered, each stays itself."""
    one = b"Message-ID: <1@x.test>\r\nSubject: win\r\n\r\n"
    two = b"Message-ID: <2@x.test>\r\nSubject: win\r\n\r\n \r\n"
    assert message_digest(one) != message_digest(two)
    assert message_digest(b"Received: from a by b\r\nX-Spam-Flag: YES\r\nStatus: RO\r\n" + one) == message_digest(one)
    assert message_digest(b"Subject: a\r\n\r\n") != message_digest(b"Subject: b\r\n\r\n")  # no Message-ID
    assert message_digest(b"Received: x\r\nSubject: a\r\n\r\n") == message_digest(b"Subject: a\r\n")


async def test_two_empty_bodies_learn_as_two_messages(bayes: Bayes) -> None:
    one = b"Message-ID: <1@x.test>\r\nSubject: cheap pills\r\n\r\n"
    two = b"Message-ID: <2@x.test>\r\nSubject: quarterly report\r\n\r\n"
    assert one[header_end(one):] == two[header_end(two):] == b""  # the same (empty) body
    assert await bayes.learn(["a.test"], "spam", one)
    assert await bayes.learn(["a.test"], "ham", two)
    assert await bayes.totals(["a.test"]) == (1, 1)  # was (0, 1): two was taken for one, relearned as ham


# -- the arithmetic ----------------------------------------------------------------------------


def test_chi2q_known_values() -> None:
    assert chi2q(0.0, 2) == pytest.approx(1.0)
    assert chi2q(2.0, 2) == pytest.approx(0.36787944, rel=1e-6)  # e^-1
    assert chi2q(10.0, 4) == pytest.approx(0.04042768, rel=1e-6)  # e^-5 (1 + 5)


@given(st.lists(st.floats(0.01, 0.99), min_size=1, max_size=200))
def test_combine_is_symmetric_and_bounded(probs: list[float]) -> None:
    p = combine(probs)
    assert 0.0 <= p <= 1.0
    assert combine([1 - x for x in probs]) == pytest.approx(1 - p, abs=1e-9)


def test_combine_direction() -> None:
    assert combine([0.99] * 20) > 0.99
    assert combine([0.01] * 20) < 0.01
    assert combine([0.55, 0.45]) == 0.5  # too weak to count
    assert combine([0.99] * 10 + [0.01] * 10) == pytest.approx(0.5, abs=0.01)  # undecided


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(1, 1000), st.integers(1, 1000))
def test_token_prob_bounds(s: int, h: int, ns: int, nh: int) -> None:
    p = token_prob(min(s, ns), min(h, nh), ns, nh)
    assert 0.0 < p < 1.0


def test_points_scale() -> None:
    cfg = PolicyConfig(bayes_spam_points=4.0, bayes_ham_points=2.0, bayes_sure_points=0.0)
    assert points(1.0, cfg) == 4.0 and points(0.5, cfg) == 0.0 and points(0.0, cfg) == -2.0
    assert points(0.75, cfg) == 2.0


# -- learning in SQLite --------------------------------------------------------------------------


@pytest.fixture
async def bayes(tmp_path: Path) -> Any:
    state = PolicyState(tmp_path / "policy.db")
    yield Bayes(state, PolicyConfig(bayes_min_spam=10, bayes_min_ham=10))
    state.close()


async def test_learns_and_classifies_after_the_minimum(bayes: Bayes) -> None:
    for i in range(9):
        assert await bayes.learn(["a.test"], "spam", corpus_message("spam", i))
        assert await bayes.learn(["a.test"], "ham", corpus_message("ham", i))
    assert await bayes.classify(["", "a.test"], corpus_message("spam", 100)) is None  # 9 < 10 of each
    await bayes.learn(["a.test"], "spam", corpus_message("spam", 9))
    await bayes.learn(["a.test"], "ham", corpus_message("ham", 9))
    assert await bayes.totals(["a.test"]) == (10, 10)
    spam = await bayes.classify(["", "a.test"], corpus_message("spam", 100))
    ham = await bayes.classify(["", "a.test"], corpus_message("ham", 100))
    assert spam is not None and ham is not None
    assert spam.prob > 0.95 and spam.points > 3.5 and spam.rule[0] in ("BAYES_95", "BAYES_99", "BAYES_97",
                                                                       "BAYES_96", "BAYES_98")
    assert ham.prob < 0.05 and ham.points < -1.8 and ham.rule[0].startswith("BAYES_0")
    # another domain's learner knows nothing yet
    assert await bayes.classify(["", "b.test"], corpus_message("spam", 100)) is None


async def test_relearn_moves_and_duplicates_count_once(bayes: Bayes) -> None:
    msg = corpus_message("spam", 1)
    assert await bayes.learn(["a.test", "u@a.test"], "spam", msg)
    assert not await bayes.learn(["a.test", "u@a.test"], "spam", msg)  # once per scope
    assert await bayes.totals(["a.test"]) == (1, 0)
    assert await bayes.learn(["a.test"], "ham", msg)  # the user changed their mind
    assert await bayes.totals(["a.test"]) == (0, 1)
    assert await bayes.totals(["u@a.test"]) == (1, 0)
    assert await bayes.totals(["a.test", "u@a.test"]) == (1, 1)

    def counts(db: Any) -> tuple[int, int]:
        return db.execute("SELECT SUM(spam), SUM(ham) FROM bayes_tokens WHERE scope = 'a.test'").fetchone()

    spam_sum, ham_sum = await bayes.state.run(counts, write=False)
    assert spam_sum == 0 and ham_sum == len(tokens(msg))
    with pytest.raises(ValueError):
        await bayes.learn(["a.test"], "maybe", msg)


def _lesson(scopes: tuple[str, ...], label: str, msg: bytes) -> Lesson:
    return Lesson(scopes, label, message_digest(msg), tokens(msg))


async def test_learn_unless_right_learns_mistakes_and_unsures_in_one_transaction(bayes: Bayes) -> None:
    """Train on error: not ready, everything is learned; then only what the learner misjudges or is unsure of."""
    boot = [_lesson(("a.test",), kind, corpus_message(kind, i)) for i in range(10) for kind in ("spam", "ham")]
    commits = bayes.state.commits
    assert await bayes.learn_unless_right(boot) == ["learned"] * 20
    assert bayes.state.commits == commits + 1  # one write transaction for the batch
    assert await bayes.totals(["a.test"]) == (10, 10)
    like_spam = corpus_message("spam", 50)
    mislabelled = corpus_message("ham", 51)  # a ham-looking message the user calls spam: a mistake, learned
    verdicts = await bayes.learn_unless_right([_lesson(("a.test",), "spam", like_spam),
                                               _lesson(("a.test",), "spam", mislabelled),
                                               _lesson(("a.test",), "ham", corpus_message("ham", 0))])
    assert verdicts == ["right", "learned", "known"]
    assert await bayes.totals(["a.test"]) == (11, 10)

    def sums(db: Any) -> tuple[int, int]:
        return db.execute("SELECT SUM(spam), SUM(ham) FROM bayes_tokens WHERE scope = 'a.test'").fetchone()

    learned = [corpus_message("spam", i) for i in range(10)] + [mislabelled]
    assert await bayes.state.run(sums, write=False) == (
        sum(len({token_id(t) for t in tokens(m)}) for m in learned),
        sum(len({token_id(t) for t in tokens(corpus_message("ham", i))}) for i in range(10)))
    # judged again with the same label: known, counted once; judged with the scopes' counts summed (a.test's
    # make it right in a.test + b.test), and learned in a scope that is not ready yet
    assert await bayes.learn_unless_right([_lesson(("a.test",), "spam", mislabelled)]) == ["known"]
    assert await bayes.learn_unless_right([_lesson(("a.test", "b.test"), "spam", mislabelled)]) == ["right"]
    assert await bayes.learn_unless_right([_lesson(("b.test",), "spam", mislabelled)]) == ["learned"]
    assert await bayes.learn_unless_right([_lesson(("a.test", "b.test"), "spam", mislabelled)]) == ["known"]
    assert await bayes.totals(["a.test"]) == (11, 10) and await bayes.totals(["b.test"]) == (1, 0)
    with pytest.raises(ValueError):
        await bayes.learn_unless_right([_lesson(("a.test",), "maybe", like_spam)])


async def test_two_processes_share_the_counts(tmp_path: Path) -> None:
    a, b = PolicyState(tmp_path / "p.db"), PolicyState(tmp_path / "p.db")
    try:
        cfg = PolicyConfig(bayes_min_spam=1, bayes_min_ham=1)
        await Bayes(a, cfg).learn([""], "spam", corpus_message("spam", 1))
        await Bayes(b, cfg).learn([""], "ham", corpus_message("ham", 1))
        assert await Bayes(a, cfg).totals([""]) == (1, 1)
    finally:
        a.close()
        b.close()


# -- through the policy: Junk moves train, SMTP scores ------------------------------------------


def _send(port: int, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("mail.sender.test")
        c.sendmail("x@sender.test", ["bob@example.test"], data)


def test_junk_moves_train_the_learner_that_then_scores(policy_server: Any, dnsserver: Any) -> None:
    srv = policy_server(bayes_min_spam=8, bayes_min_ham=8, junk_score=3.0)
    run = srv.loop.run
    _send(srv.port, corpus_message("spam", 200))
    assert b"BAYES_" not in srv.backend.delivered[-1].data  # not trained: no opinion
    for i in range(8):
        assert run(srv.policy.train("bob@example.test", "INBOX", "Junk", corpus_message("spam", i))) == "spam"
        assert run(srv.policy.train("bob@example.test", "Junk", "INBOX", corpus_message("ham", i))) == "ham"
    assert run(srv.policy.bayes.totals(["example.test"])) == (8, 8)
    assert run(srv.policy.train("bob@example.test", "INBOX", "Archive", corpus_message("ham", 50))) is None
    _send(srv.port, corpus_message("spam", 201))
    spam = srv.backend.delivered[-1]
    status = spam.data.replace(b"\r\n\t", b"")
    assert b"BAYES_9" in status and spam.junk, status[:600]
    _send(srv.port, corpus_message("ham", 201))
    ham = srv.backend.delivered[-1]
    assert b"BAYES_0" in ham.data.replace(b"\r\n\t", b"") and not ham.junk


# -- mailsrv policy learn / stats as real processes ----------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mailsrv_cmd(*args), capture_output=True, text=True, timeout=120)


def test_learn_bootstraps_the_server_learner(tmp_path: Path) -> None:
    d = tmp_path / "s"
    subprocess.run(mailsrv_cmd("init", "--dir", str(d), "--any-port", "--workers", "1"), check=True,
                   capture_output=True)
    config = d / "mailsrv.toml"
    with config.open("a") as f:
        f.write("\n[policy]\nbayes_min_spam = 5\nbayes_min_ham = 5\n")
    spam_dir = tmp_path / "spam" / "cur"
    spam_dir.mkdir(parents=True)
    for i in range(5):
        (spam_dir / f"{i}:2,S").write_bytes(b"From MAILER-DAEMON Thu Nov 26 10:00:00 2026\n"
                                             + corpus_message("spam", i))
    hams = []
    for i in range(5):
        hams.append(tmp_path / f"ham{i}.eml")
        hams[-1].write_bytes(corpus_message("ham", i))
    out = run("policy", "learn", "--spam", str(tmp_path / "spam"), "-c", str(config))
    assert out.returncode == 0, out.stderr
    assert "spam: 5 learned, 0 already known" in out.stdout
    out = run("policy", "learn", "--ham", *map(str, hams), "-c", str(config))
    assert "ham: 5 learned" in out.stdout, out.stderr
    again = run("policy", "learn", "--ham", str(hams[0]), "-c", str(config))
    assert "0 learned, 1 already known" in again.stdout
    stats = run("policy", "stats", "--json", "-c", str(config))
    assert json.loads(stats.stdout) == [{"scope": "", "spam": 5, "ham": 5}]
    missing = run("policy", "learn", "--spam", str(tmp_path / "nothing"), "-c", str(config))
    assert missing.returncode != 0 and "no such file" in missing.stderr
    bad_scope = run("policy", "learn", "--spam", str(hams[0]), "--scope", "not a scope", "-c", str(config))
    assert bad_scope.returncode != 0

    # a worker's policy now scores with the server-wide counts
    cfg = config_mod.load(str(config))

    async def classify() -> tuple[str, float] | None:
        policy = Policy.from_config(cfg.policy, hostname="mx.test", data_dir=cfg.server.data_dir)
        try:
            return await policy.classify(corpus_message("spam", 99), ["bob@example.test"])
        finally:
            policy.close()

    rule = asyncio.run(classify())
    assert rule is not None and rule[0].startswith("BAYES_9") and rule[1] > 3


async def test_oldest_tokens_expire_beyond_the_maximum(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    state = PolicyState(tmp_path / "p.db", clock=lambda: now[0])
    learner = Bayes(state, PolicyConfig(bayes_max_tokens=300))
    try:
        def msg(i: int) -> bytes:  # distinct words per message: w{i}a .. w{i}t
            words = " ".join(f"word{i:03d}{c}" for c in "abcdefghijklmnopqrst")
            return f"Subject: m{i}\r\n\r\n{words}\r\n".encode()

        for i in range(49):
            await learner.learn(["a.test"], "spam" if i % 2 else "ham", msg(i))
            now[0] += 86400  # one message a day
        count = "SELECT COUNT(*) FROM bayes_tokens WHERE scope = 'a.test'"
        before = (await state.run(lambda db: db.execute(count).fetchone(), write=False))[0]
        assert before > 300 and learner.expired == 0  # checked every 50 messages only

        def has(db: Any, word: str) -> bool:
            q = "SELECT 1 FROM bayes_tokens WHERE scope = 'a.test' AND token = ?"
            return db.execute(q, (token_id(word),)).fetchone() is not None

        new = await state.run(lambda db: sum(not has(db, t) for t in tokens(msg(49))), write=False)
        await learner.learn(["a.test"], "ham", msg(49))
        after = (await state.run(lambda db: db.execute(count).fetchone(), write=False))[0]
        assert after == 240 and learner.expired == before + new - 240  # kept 80 % of the maximum

        assert not await state.run(lambda db: has(db, "word000a"), write=False)  # the oldest went first
        assert await state.run(lambda db: has(db, "word049a"), write=False)
        assert await learner.totals(["a.test"]) == (24, 26)  # message counts are kept
    finally:
        state.close()


def _shared_ham(root: Path) -> tuple[list[str], list[bytes]]:
    paths = [p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".txt", ".msg", ".eml")
             and "LICENSE" not in p.name.upper() and p.name != "README.md"]
    return [p.name for p in paths], [p.read_bytes() for p in paths]


async def test_shared_corpus_stays_under_junk_with_a_trained_learner(corpus: Path, tmp_path: Path) -> None:
    """Rules + learner (trained on generated spam and half of ../shared/corpus) keep all of it under junk."""
    from mailsrv.policy.score import Facts, RuleScorer

    names, ham = _shared_ham(corpus)
    assert len(ham) > 200
    cfg = PolicyConfig()
    state = PolicyState(tmp_path / "p.db")
    learner = Bayes(state, cfg)
    scorer = RuleScorer()
    try:
        for i in range(cfg.bayes_min_spam):
            await learner.learn([""], "spam", corpus_message("spam", i))
        for m in ham[0::2]:
            await learner.learn([""], "ham", m)
        over = []
        for name, m in zip(names, ham, strict=True):
            verdict = await learner.classify([""], m)
            assert verdict is not None
            score = (await scorer.score(m, Facts())).score + verdict.points
            if score >= cfg.junk_score:
                over.append((name, score, verdict.prob))
        assert over == []
        spam = await learner.classify([""], corpus_message("spam", 10_000))
        assert spam is not None and spam.zone == "spam"  # the learner does have an opinion
    finally:
        state.close()


async def test_hapaxes_of_a_day_expire_before_tokens_seen_twice(tmp_path: Path, monkeypatch: Any) -> None:
    from mailsrv.policy import bayes as bayes_mod

    monkeypatch.setattr(bayes_mod, "EXPIRE_EVERY", 2)
    shared = " ".join(f"shared{c}" for c in "abcdefghij")

    def msg(tag: str) -> bytes:
        own = " ".join(f"{tag}{c}word" for c in "abcdefghijklmnopqrstuvwxyz")
        return f"Subject: s\r\n\r\n{shared} {own}\r\n".encode()

    distinct = len(tokens(msg("x")) | tokens(msg("y")))
    state = PolicyState(tmp_path / "p.db", clock=lambda: 1_800_000_000.0)  # one day for every token
    learner = Bayes(state, PolicyConfig(bayes_max_tokens=distinct - 10))
    try:
        await learner.learn(["s"], "spam", msg("x"))
        await learner.learn(["s"], "ham", msg("y"))
        assert learner.expired > 10

        def has(db: Any, word: str) -> bool:
            q = "SELECT 1 FROM bayes_tokens WHERE scope = 's' AND token = ?"
            return db.execute(q, (token_id(word),)).fetchone() is not None

        assert await state.run(lambda db: all(has(db, f"shared{c}") for c in "abcdefghij"), write=False)
        assert not await state.run(lambda db: all(has(db, f"x{c}word") for c in "abcdefghijklmnopqrstuvwxyz"),
                                   write=False)
    finally:
        state.close()
