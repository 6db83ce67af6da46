"""Spam scoring: points for authentication and reputation signals plus content rules.

The built-in :class:`RuleScorer` is small and explainable (every point has a
rule name, reported in ``X-Spam-Status``); its content rules live in
:mod:`mailsrv.policy.content`. :class:`RspamdScorer` hands the
message to an rspamd worker over its HTTP protocol (``POST /checkv2``) where
an operator runs one. Both return a :class:`Score`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDict

from mailsrv.policy.content import GTUBE, content_rules

__all__ = ["GTUBE", "Facts", "RspamdLearner", "RspamdScorer", "RuleScorer", "Score", "Scorer", "content_rules",
           "signal_rules"]


@dataclass
class Facts:
    """What the earlier checks learned about a message (filled by the pipeline)."""

    client_ip: str = ""
    helo: str = ""
    sender: str = ""
    recipients: Sequence[str] = ()
    iprev: str = ""  # pass | fail | temperror
    helo_problems: Sequence[str] = ()
    dnsbl: Sequence[str] = ()  # listing zones
    spf: str = ""
    dkim: Sequence[str] = ()  # results of each signature
    dkim_aligned_pass: bool = False
    dmarc: str = ""
    dmarc_policy: str = ""
    arc: str = ""
    authenticated: bool = False


@dataclass
class Score:
    score: float
    rules: list[tuple[str, float]] = field(default_factory=list)
    action: str = ""  # rspamd's own action, informational

    def status(self, threshold: float) -> str:
        """The ``X-Spam-Status`` value (SpamAssassin's format, which clients and Sieve scripts know)."""
        flag = "Yes" if self.score >= threshold else "No"
        tests = ",".join(name for name, _ in self.rules) or "none"
        return f"{flag}, score={self.score:.1f} required={threshold:.1f} tests={tests}"


class Scorer(Protocol):
    async def score(self, message: bytes, facts: Facts) -> Score: ...


# -- the built-in rules ---------------------------------------------------------------------

SIGNAL_POINTS: dict[str, float] = {
    "DNSBL_LISTED": 5.0,  # per listing zone
    "RDNS_NONE": 1.0,
    "HELO_BAD": 1.5,
    "SPF_FAIL": 3.0,
    "SPF_SOFTFAIL": 1.0,
    "SPF_PASS": -0.5,
    "DKIM_INVALID": 1.0,
    "DKIM_VALID_ALIGNED": -1.0,
    "DMARC_FAIL_REJECT": 6.0,
    "DMARC_FAIL_QUARANTINE": 4.0,
    "DMARC_FAIL_NONE": 1.0,
    "ARC_FAIL": 0.5,
}

def signal_rules(f: Facts) -> list[tuple[str, float]]:
    rules: list[tuple[str, float]] = []
    for zone in f.dnsbl:
        rules.append((f"DNSBL_LISTED({zone})", SIGNAL_POINTS["DNSBL_LISTED"]))
    if f.iprev == "fail":
        rules.append(("RDNS_NONE", SIGNAL_POINTS["RDNS_NONE"]))
    if f.helo_problems:
        rules.append(("HELO_BAD", SIGNAL_POINTS["HELO_BAD"]))
    spf_rule = {"fail": "SPF_FAIL", "softfail": "SPF_SOFTFAIL", "pass": "SPF_PASS"}.get(f.spf)
    if spf_rule:
        rules.append((spf_rule, SIGNAL_POINTS[spf_rule]))
    if any(r in ("fail", "permerror") for r in f.dkim):
        rules.append(("DKIM_INVALID", SIGNAL_POINTS["DKIM_INVALID"]))
    if f.dkim_aligned_pass:
        rules.append(("DKIM_VALID_ALIGNED", SIGNAL_POINTS["DKIM_VALID_ALIGNED"]))
    if f.dmarc == "fail":
        name = f"DMARC_FAIL_{(f.dmarc_policy or 'none').upper()}"
        rules.append((name, SIGNAL_POINTS[name]))
    if f.arc == "fail":
        rules.append(("ARC_FAIL", SIGNAL_POINTS["ARC_FAIL"]))
    return rules


class RuleScorer:
    """The default scorer: signals plus content rules (no network, no learning).

    The content rules are CPU work (tens of ms on a large HTML part), so they run on ``executor``
    (None: the loop's default executor), never on the event loop.
    """

    def __init__(self, executor: Executor | None = None) -> None:
        self.executor = executor

    async def score(self, message: bytes, facts: Facts) -> Score:
        content = await asyncio.get_running_loop().run_in_executor(
            self.executor, content_rules, message, list(facts.recipients))
        return self.with_content(content, facts)

    @staticmethod
    def with_content(content: list[tuple[str, float]], facts: Facts) -> Score:
        """:meth:`score` with the message's :func:`content_rules` computed already (by the caller, in a pool
        job it runs anyway: the policy pipeline's DKIM verification)."""
        rules = signal_rules(facts) + content
        return Score(round(sum(p for _, p in rules), 2), rules)


class RspamdScorer:
    """rspamd's HTTP protocol (``POST /checkv2``, rspamd ≥ 1.x): the message as the body, envelope in headers."""

    def __init__(self, url: str, *, timeout: float = 15.0, session: Any = None) -> None:
        self.url = url.rstrip("/") + "/checkv2"
        self.timeout = timeout
        self._session = session

    async def score(self, message: bytes, facts: Facts) -> Score:
        headers = {"IP": facts.client_ip, "Helo": facts.helo or "unknown", "From": facts.sender,
                   "Pass": "all"}
        if facts.authenticated:
            headers["User"] = facts.sender
        multi = [("Rcpt", r) for r in facts.recipients]
        hdrs = CIMultiDict(list(headers.items()) + multi)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        session = self._session or aiohttp.ClientSession(timeout=timeout)
        try:
            async with session.post(self.url, data=message, headers=hdrs) as resp:
                resp.raise_for_status()
                data = await resp.json(content_type=None)
        finally:
            if self._session is None:
                await session.close()
        symbols = data.get("symbols", {}) or {}
        rules = [(name, float(sym.get("score", 0.0))) for name, sym in symbols.items()
                 if float(sym.get("score", 0.0)) != 0.0]
        return Score(float(data.get("score", 0.0)), sorted(rules), str(data.get("action", "")))


class RspamdLearnError(Exception):
    """rspamd's controller refused to learn (no classifier, no storage, bad password...)."""


class RspamdLearner:
    """Forwards users' verdicts to an rspamd controller (``POST /learnspam`` and ``/learnham``, with the
    controller ``Password`` header when one is set), so rspamd's own Bayes learns what our users teach."""

    def __init__(self, url: str, *, password: str = "", timeout: float = 15.0, session: Any = None) -> None:
        self.url = url.rstrip("/")
        self.password = password
        self.timeout = timeout
        self._session = session

    async def learn(self, label: str, message: bytes) -> bool:
        """True when rspamd learned it, False when it already knew the message; raises
        :class:`RspamdLearnError` for a refusal and ``aiohttp.ClientError`` when unreachable."""
        if label not in ("spam", "ham"):
            raise ValueError(f"label must be spam or ham, not {label!r}")
        headers = {"Password": self.password} if self.password else {}
        session = self._session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            async with session.post(f"{self.url}/learn{label}", data=message, headers=headers) as resp:
                text = await resp.text()
                status = resp.status
        finally:
            if self._session is None:
                await session.close()
        if status == 200:
            return True
        # rspamd answers 208 (Already Reported) for a message it learned before with the same class
        if status == 208 or "already learned" in text.lower():
            return False
        raise RspamdLearnError(f"rspamd {status}: {text[:200]}")
