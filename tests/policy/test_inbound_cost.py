"""The inbound pipeline's cost cuts keep every verdict: the content rules' ASCII fast paths, the learner's
totals kept in memory (and seen changed by a learn in another process), one pool job for DKIM and the rules."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsrv.config import PolicyConfig
from mailsrv.net.dns import Resolver
from mailsrv.policy import content, dmarc, pipeline
from mailsrv.policy.pipeline import Decision, Policy
from mailsrv.policy.score import Facts, RuleScorer, Score
from mailsrv.policy.state import PolicyState

# -- the content rules' fast paths answer as the full regular expressions ---------------------------------

#: Pieces that make the phrase, money and removal rules match or nearly match, and the characters for which
#: Python's case-insensitive matching differs from lower() ("ı", "İ", "ſ" for i and s; the Kelvin sign).
PIECES = ["you have won", "lottery", "viagra", "click here", "$", "usd", "US$ 5,000,000", "2.5 million dollars",
          "billion euros", "500万元", "3亿", "中奖", "点击这里", "回复TD", "remove", "Removal instructions",
          "you are receiving this email because", "to be removed, click", "receive", "ı", "İ", "ſ", "K", "€",
          "£", "bıllion", "uſd", "reſponse", " ", "\n", "a", "1", ",000", "%", "１２", "é", "中", "点击", "领", "\u3000",
          "50% of the total", "刷单", "click here中奖", "中奖click here"]


#: The phrase expression as it was: one alternation of the Latin and the (grouped) Chinese phrases.
PHRASE = re.compile(content._LATIN + "|" + "|".join(f"(?:{p})" for p in content._CJK_PHRASES.values()))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=6), max_size=30).map("".join))
def test_fast_paths_answer_as_the_full_expressions(text: str) -> None:
    assert content.phrases(text) == {m.group(0) for m in PHRASE.finditer(text[:content.TEXT_LIMIT].lower())}
    assert content._big_money(text) == (content._MONEY.search(text) is not None)
    assert content._remove_instructions(text) == (content._REMOVE.search(text) is not None)


def test_fast_paths_answer_as_the_full_expressions_on_the_corpus(corpus: Path) -> None:
    texts = [p.read_bytes().decode("utf-8", "replace") for p in sorted(corpus.rglob("*")) if p.is_file()]
    assert len(texts) > 50
    for text in texts:
        window = text[:content.TEXT_LIMIT]
        assert content.phrases(text) == {m.group(0) for m in PHRASE.finditer(window.lower())}
        assert content._big_money(window) == (content._MONEY.search(window) is not None)
        assert content._remove_instructions(window) == (content._REMOVE.search(window) is not None)
    assert any(not t.isascii() for t in texts)  # the non-ASCII path was compared too


def test_fast_paths_still_find_what_they_skip_nothing_for() -> None:
    assert content._big_money("they send US$ 2.5 million dollars")
    assert content._big_money("uſd 5,000,000")  # non-ASCII: the full expression decides (IGNORECASE: ſ is s)
    assert not content._big_money("the usual numbers: 12, 400 and 7")
    assert content._remove_instructions("To be removed, reply now")
    assert not content._remove_instructions("see you at the meeting")
    assert content.phrases("Act now: you have WON the lottery, 中奖") == {"act now", "you have won", "lottery", "中奖"}


# -- the learner's totals in memory ---------------------------------------------------------------------------

LEARN = """
import asyncio, sys
from pathlib import Path
from mailsrv.config import PolicyConfig
from mailsrv.policy.bayes import Bayes, Lesson, message_digest, tokens
from mailsrv.policy.state import PolicyState

async def main():
    state = PolicyState(Path(sys.argv[1]))
    bayes = Bayes(state, PolicyConfig())
    lessons = [Lesson(("",), label, message_digest(m), tokens(m)) for label, m in (
        ("spam", b"Subject: win\\r\\n\\r\\nwin the lottery jackpot now\\r\\n"),
        ("ham", b"Subject: agenda\\r\\n\\r\\nthe meeting agenda for tomorrow\\r\\n"))]
    await bayes.learn_many(lessons)
    state.close()

asyncio.run(main())
"""

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = b"From: a@sender.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nwin the lottery jackpot now\r\n"


def _counting(policy: Policy) -> list[int]:
    """Counts the learner's totals queries (each is a job on the state's database thread)."""
    assert policy.bayes is not None
    calls = [0]
    real = policy.bayes.totals

    async def totals(scopes: Any) -> tuple[int, int]:
        calls[0] += 1
        return await real(scopes)

    policy.bayes.totals = totals  # type: ignore[method-assign]
    return calls


async def test_untrained_learner_answers_from_memory_until_a_learn_in_another_process(tmp_path: Path) -> None:
    db = tmp_path / "policy.db"
    cfg = PolicyConfig(bayes_min_spam=1, bayes_min_ham=1)
    policy = Policy(cfg, hostname="mx.example.test", resolver=Resolver(["127.0.0.1:9"]), state=PolicyState(db))
    try:
        calls = _counting(policy)
        assert await policy.classify(MESSAGE, ["bob@example.test"]) is None  # untrained: no opinion
        assert await policy.classify(MESSAGE, ["bob@example.test"]) is None  # (the first made the files)
        before = calls[0]
        for _ in range(5):
            assert await policy.classify(MESSAGE, ["bob@example.test"]) is None
        assert calls[0] == before  # memory, no query
        # another process learns one spam and one ham: the next message sees it
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", LEARN, str(db), cwd=ROOT)
        assert await asyncio.wait_for(proc.wait(), 120) == 0
        rule = await policy.classify(MESSAGE, ["bob@example.test"])
        assert rule is not None and rule[0].startswith("BAYES_"), rule
        assert calls[0] == before + 1
        assert await policy.totals(["", "example.test"]) == (1, 1)
        assert calls[0] == before + 1  # the same scopes just read: memory
    finally:
        policy.close()


async def test_totals_follow_this_workers_learns_and_expire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = Policy(PolicyConfig(), hostname="mx.example.test", resolver=Resolver(["127.0.0.1:9"]),
                    state=PolicyState(tmp_path / "policy.db"))
    try:
        calls = _counting(policy)
        assert await policy.totals([""]) == (0, 0)
        assert await policy.totals([""]) == (0, 0)  # (the first made the files)
        calls[0] = 0
        assert await policy.learn("spam", MESSAGE, [""])
        assert await policy.totals([""]) == (1, 0)  # a commit by this state changes the stamp
        assert await policy.totals([""]) == (1, 0) and calls[0] == 1
        monkeypatch.setattr(pipeline, "TOTALS_TTL", -1.0)  # past its lifetime an entry is read again
        assert await policy.learn("ham", MESSAGE.replace(b"lottery", b"meeting"), [""])
        for _ in range(3):
            assert await policy.totals([""]) == (1, 1)
        assert calls[0] == 4
    finally:
        policy.close()


# -- DKIM and the content rules in one pool job: the same decisions as the scorer's own job ---------------


class CountingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.jobs = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


class SeparateJob(RuleScorer):
    """The built-in scorer, but not exactly RuleScorer: the pipeline then asks it (its own pool job)."""


def _messages(corpus: Path, sign: Any) -> list[bytes]:
    out = []
    for p in sorted(corpus.rglob("*")):
        if p.is_file() and p.suffix in (".eml", ".msg", ".txt") and "LICENSE" not in p.name.upper() \
                and p.name != "README.md" and p.stat().st_size < 200_000:
            data = p.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            if b":" in data[:200]:
                out.append(data)
    picked = out[::max(1, len(out) // 40)]
    spam = (b"From: Promo <promo@sender.test>\r\nTo: bob@example.test\r\nSubject: YOU HAVE WON!!!\r\n\r\n"
            b"Dear friend, you have won the lottery jackpot of $5,000,000. Click here: http://203.0.113.9/x\r\n")
    signed = [sign(spam, "sender.test")]
    for m in picked:
        try:
            signed.append(sign(m, "sender.test"))
        except dkim.DKIMException:  # a malformed header block dkimpy cannot sign (it is judged unsigned)
            continue
    return picked + signed[:12] + [spam]


def _sender_records(dnsserver: Any, dkim_key: Any, dmarc_policy: str | None = None) -> None:
    """sender.test's SPF (192.0.2.0/24), DKIM key (selector sel) and, with ``dmarc_policy``, DMARC record."""
    dnsserver.add("sender.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dnsserver.add("sel._domainkey.sender.test", "TXT", dkim_key.txt)
    if dmarc_policy is not None:
        dnsserver.add("_dmarc.sender.test", "TXT", f"v=DMARC1; p={dmarc_policy}")


async def _decide(policy: Policy, message: bytes) -> tuple[Decision, bytes]:
    ps = policy.session(client_ip="192.0.2.1")
    await ps.connect()
    await ps.helo("mail.sender.test")
    await ps.mail("alice@sender.test")
    await ps.rcpt("bob@example.test")
    return await ps.data_held(message)


async def test_one_job_for_dkim_and_rules_decides_as_the_scorers_job(
        corpus: Path, dnsserver: Any, dkim_key: Any, sign: Any) -> None:
    _sender_records(dnsserver, dkim_key, "quarantine")
    cfg = PolicyConfig(nameservers=(dnsserver.address,), skip_networks=(), dnsbl_zones=("bl.test",))
    pools = CountingPool(), CountingPool()
    one = Policy(cfg, hostname="mx.example.test", resolver=Resolver(cfg.nameservers), state=None,
                 executor=pools[0])
    two = Policy(cfg, hostname="mx.example.test", resolver=Resolver(cfg.nameservers), state=None,
                 executor=pools[1], scorer=SeparateJob(pools[1]))
    try:
        messages = _messages(corpus, sign)
        actions = set()
        for m in messages:
            a, b = await _decide(one, m), await _decide(two, m)
            assert a == b, m[:300]
            actions.add(a[0].action)
        assert actions == {"accept", "junk"}  # both kinds of verdict were compared
        signed = sum(b"DKIM-Signature:" in m for m in messages)
        assert signed >= 5
        # one job per message for the merged path; the scorer's own job adds one per signed message
        assert pools[0].jobs == len(messages)
        assert pools[1].jobs == len(messages) + signed
    finally:
        for p in pools:
            p.shutdown()


async def test_a_failing_rule_job_decides_as_before(dnsserver: Any, dkim_key: Any, sign: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the content rules: a DMARC reject still rejects first, other mail is judged without analysis."""
    _sender_records(dnsserver, dkim_key, "reject")

    def broken(*_args: Any) -> list[tuple[str, float]]:
        raise RuntimeError("rule bug")

    monkeypatch.setattr(pipeline, "content_rules", broken)
    monkeypatch.setattr("mailsrv.policy.score.content_rules", broken)
    cfg = PolicyConfig(nameservers=(dnsserver.address,), skip_networks=())
    results = []
    for scorer in (None, SeparateJob()):
        policy = Policy(cfg, hostname="mx.example.test", resolver=Resolver(cfg.nameservers), state=None,
                        scorer=scorer)
        ok = sign(b"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n", "sender.test")
        spoofed = b"From: ceo@sender.test\r\nTo: bob@example.test\r\nSubject: pay\r\n\r\npay this\r\n"
        ps = policy.session(client_ip="198.51.100.7")  # outside sender.test's SPF: DMARC fails
        await ps.connect()
        await ps.helo("mail.other.test")
        await ps.mail("x@other.test")
        await ps.rcpt("bob@example.test")
        results.append(((await ps.data_held(spoofed))[0].action, (await _decide(policy, ok))[0]))
    assert results[0] == results[1]
    assert results[0][0] == "reject"
    assert results[0][1] == Decision() and results[0][1].score is None  # judged without analysis: no score


def test_with_content_is_score() -> None:
    facts = Facts(spf="pass", dnsbl=["bl.test"], iprev="fail")
    rules = [("MISSING_MID", 1.0)]
    assert RuleScorer.with_content(rules, facts) == Score(6.5, [("DNSBL_LISTED(bl.test)", 5.0), ("RDNS_NONE", 1.0),
                                                               ("SPF_PASS", -0.5), ("MISSING_MID", 1.0)])


async def _trained(tmp_path: Path, cfg: PolicyConfig, **kw: Any) -> Policy:
    policy = Policy(cfg, hostname="mx.example.test", resolver=Resolver(cfg.nameservers),
                    state=PolicyState(tmp_path / "policy.db"), **kw)
    for i in range(3):
        await policy.learn("spam", f"Subject: win {i}\r\n\r\nwin the lottery jackpot now {i}\r\n".encode(), [""])
        await policy.learn("ham", f"Subject: agenda {i}\r\n\r\nthe meeting agenda for tomorrow {i}\r\n".encode(), [""])
    return policy


async def test_a_trained_learners_tokens_in_the_same_job(tmp_path: Path, corpus: Path, dnsserver: Any, dkim_key: Any,
                                                         sign: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _sender_records(dnsserver, dkim_key)
    cfg = PolicyConfig(nameservers=(dnsserver.address,), skip_networks=(), bayes_min_spam=3, bayes_min_ham=3)
    pool = CountingPool()
    policy = await _trained(tmp_path, cfg, executor=pool)
    try:
        messages = _messages(corpus, sign)[:15]
        bayes_rules = 0
        for m in messages:
            jobs = pool.jobs
            decision, _ = await _decide(policy, m)
            assert pool.jobs == jobs + 1  # DKIM, the rules and the tokens: one job
            assert decision.score is not None
            expected = await policy.classify(m, ["bob@example.test"])  # the learner's own path: its own job
            assert expected is not None
            assert [r for r in decision.score.rules if r[0].startswith("BAYES_")] == [expected]
            bayes_rules += 1
        assert bayes_rules == len(messages)

        def broken(_message: bytes) -> set[str]:
            raise RuntimeError("tokenizer bug")

        monkeypatch.setattr(pipeline, "tokens", broken)
        decision, _ = await _decide(policy, messages[0])  # the learner fails: the rules alone decide, as before
        assert decision.score is not None and not any(r[0].startswith("BAYES_") for r in decision.score.rules)
    finally:
        policy.close()
        pool.shutdown()


async def test_dmarc_is_asked_beside_dkim_with_no_extra_query(dnsserver: Any, dkim_key: Any, sign: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _sender_records(dnsserver, dkim_key, "reject")
    cfg = PolicyConfig(nameservers=(dnsserver.address,), skip_networks=())
    message = sign(b"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n", "sender.test")
    real = pipeline._analyse
    runs = []
    for warm in (True, False):
        policy = Policy(cfg, hostname="mx.example.test", resolver=Resolver(cfg.nameservers), state=None)
        resolver = policy.resolver
        started: list[bool] = []

        def analyse(*args: Any) -> Any:
            key = ("_dmarc.sender.test", "TXT")
            started.append(key in resolver._inflight or key in resolver._cache)  # noqa: B023 - called in the loop
            return real(*args)

        monkeypatch.setattr(pipeline, "_analyse", analyse)
        if not warm:  # the order before: DMARC asked once the verification is done
            async def nothing(*_args: Any) -> None:
                return None

            monkeypatch.setattr(dmarc, "warm", nothing)
        decision, out = await _decide(policy, message)
        runs.append((decision, out, resolver.queries, started))
    (d1, out1, q1, started1), (d2, out2, q2, started2) = runs
    assert d1 == d2 and out1 == out2 and b"dmarc=pass" in out1
    assert q1 == q2  # no extra query: evaluate shares the warm-up's answer
    assert started1 == [True] and started2 == [False]  # asked before the verification job ran, not after it


async def test_a_sure_ham_verdict_damps_the_content_rules(tmp_path: Path, dnsserver: Any, dkim_key: Any) -> None:
    """The learner sure of ham (p <= bayes_sure_ham_cutoff): the content rules count at bayes_sure_ham_rules (a
    CONTENT_DAMPED rule takes the rest), the connection signals in full; 1.0 turns it off."""
    _sender_records(dnsserver, dkim_key)
    message = b"Subject: agenda 9\r\n\r\nthe meeting agenda for tomorrow 9\r\n"  # no Message-ID, Date, To: rules
    for weight, n in ((0.5, 0), (1.0, 1)):
        cfg = PolicyConfig(nameservers=(dnsserver.address,), skip_networks=(), bayes_min_spam=3, bayes_min_ham=3,
                           bayes_sure_ham_rules=weight)
        policy = await _trained(tmp_path / str(n), cfg)
        try:
            verdict = await policy.verdict(message, ["bob@example.test"])
            assert verdict is not None and verdict.prob <= cfg.bayes_sure_ham_cutoff
            decision, _ = await _decide(policy, message)
            assert decision.score is not None
            rules = dict(decision.score.rules)
            content_points = sum(p for name, p in rules.items() if name in content.RULES)
            assert content_points >= 2.0 and rules["SPF_PASS"] < 0  # content rules and a signal matched
            assert rules.get("CONTENT_DAMPED") == (-round(content_points / 2, 2) if weight == 0.5 else None)
            assert decision.score.score == round(sum(rules.values()), 2)
        finally:
            policy.close()
