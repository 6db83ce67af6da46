"""The policy pipeline an SMTP session calls at connect, HELO, MAIL, RCPT and end of DATA.

:class:`Policy` lives for a worker; :meth:`Policy.session` makes one
:class:`PolicySession` per SMTP connection. Every hook returns a
:class:`Decision` the session turns into its reply; checks finish before the
session answers (the end-of-DATA decision comes before the ``250``).

Inbound mail (port 25, not authenticated, not from a trusted network) gets
the lists, DNSBL, FCrDNS, HELO, SPF, greylisting, DKIM, ARC, DMARC, virus
scan and spam score. Outbound mail (authenticated or trusted) gets the
sending limits and the virus scan. Both lose forged Authentication-Results.

Invariant: :meth:`PolicySession.data` rewrites the spool file only by
writing a new file beside it and renaming it over the old one, so the spool
path always holds a whole message. Neither the spool nor its rewrite is
fsync'd here: every consumer makes its own hard link of the spool's inode
durable (``store.deliver`` by syncfs or an fsync of the file and ``new/``, the
queue by fsyncing its link), and nothing is acknowledged before that. A
message that needs no change (authenticated or trusted mail without a forged
Authentication-Results) is not rewritten at all.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from mailsrv import log
from mailsrv.config import PolicyConfig
from mailsrv.directory import Directory
from mailsrv.net.dns import Resolver
from mailsrv.policy import authresults, dmarc, reputation, spf
from mailsrv.policy.bayes import Bayes, Verdict, damped_rules, message_digest, tokens
from mailsrv.policy.clamd import Clamd, ClamdUnavailable, ScanResult
from mailsrv.policy.content import content_rules
from mailsrv.policy.dkimverify import (
    ArcResult,
    DkimResult,
    Keys,
    dkim_keys,
    verify_arc,
    verify_signatures,
)
from mailsrv.policy.headers import Fields, from_domains, header_end, split_fields
from mailsrv.policy.lists import Lists, ListSource, Match
from mailsrv.policy.score import Facts, RspamdLearner, RspamdScorer, RuleScorer, Score, Scorer
from mailsrv.policy.seats import DirectorySeats, SeatSource, outside_limit
from mailsrv.policy.state import PolicyState
from mailsrv.policy.strip import strip_infected
from mailsrv.policy.training import SessionReader, Trainer, learner
from mailsrv.util import fsio

logger = log.get("policy")
T = TypeVar("T")

Action = Literal["accept", "reject", "tempfail", "junk"]
#: Largest header block read when the message is too big to scan whole.
MAX_HEADER_READ = 256 * 1024
#: Bytes per copy step when the spool file is rewritten.
COPY_CHUNK = 256 * 1024
#: Senders whose MAIL FROM SPF result a session keeps (least recently used go first): a client sending
#: MAIL FROM after MAIL FROM with new senders must not grow a session's memory without bound.
SPF_SEEN_MAX = 32
#: Seconds the learner's message totals of a set of scopes are reused while the policy database's change
#: stamp stays the same (bounds what a commit the stamp cannot see, in the same clock tick, can leave stale).
TOTALS_TTL = 10.0
#: Sets of scopes whose totals a worker keeps (all forgotten past this).
TOTALS_ENTRIES = 4096
#: Client addresses whose skip_networks membership a worker remembers (all forgotten past this).
MAX_KNOWN_IPS = 4096


@dataclass(frozen=True)
class Decision:
    action: Action = "accept"
    code: int = 250
    enh: str = "2.0.0"
    text: str = "OK"
    score: Score | None = None

    @property
    def ok(self) -> bool:
        return self.action in ("accept", "junk")


ACCEPT = Decision()
#: internal: the virus action is "strip" (never returned to the session)
_STRIP = Decision("accept", text="strip infected attachments")


def _reject(text: str, code: int = 550, enh: str = "5.7.1") -> Decision:
    return Decision("reject", code, enh, text)


def _tempfail(text: str, code: int = 451, enh: str = "4.7.1") -> Decision:
    return Decision("tempfail", code, enh, text)


def training_label(from_mailbox: str, to_mailbox: str) -> str | None:
    """"spam" for a move into Junk, "ham" for a move out of Junk (except into Trash), else None."""
    src, dst = from_mailbox.strip("/").lower(), to_mailbox.strip("/").lower()
    junk = ("junk", "spam", "junk e-mail", "bulk mail")
    if dst in junk and src not in junk:
        return "spam"
    if src in junk and dst not in junk and dst not in ("trash", "deleted items", "deleted messages"):
        return "ham"
    return None


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


class Policy:
    """Per worker: the resolver, the shared state, the scanners. Build with :meth:`from_config`."""

    def __init__(self, cfg: PolicyConfig, *, hostname: str, resolver: Resolver, state: PolicyState | None,
                 lists: ListSource | None = None, scorer: Scorer | None = None, clamd: Clamd | None = None,
                 is_local_domain: Callable[[str], Awaitable[bool]] | None = None,
                 executor: Executor | None = None, seats: SeatSource | None = None) -> None:
        self.cfg = cfg
        self.hostname = hostname
        self.authserv_id = cfg.authserv_id or hostname
        self.resolver = resolver
        self.state = state
        self.lists = Lists(lists)
        self.clamd = clamd or (Clamd(cfg.clamd_socket, timeout=cfg.clamd_timeout) if cfg.clamd_socket else None)
        # docs/policy.md "Learning": rspamd learns when it scores, else our own learner
        self.rspamd_learner = RspamdLearner(cfg.rspamd_controller_url or cfg.rspamd_url,
                                            password=cfg.rspamd_password) if cfg.rspamd_url else None
        self.bayes = Bayes(state, cfg) if cfg.bayes and state is not None and self.rspamd_learner is None else None
        #: scopes -> (policy database change stamp, monotonic expiry, (spam, ham)): see :meth:`totals`
        self._totals: dict[tuple[str, ...], tuple[tuple[int, ...], float, tuple[int, int]]] = {}
        # docs/policy.md "Learning": Junk moves are learned in the background (set trainer.reader to replay
        # a dead worker's journaled references)
        self.trainer = Trainer(state, learner(state, bayes=self.bayes, rspamd=self.rspamd_learner,
                                              scopes_of=self.learn_scopes, executor=executor),
                               batch=cfg.bayes_train_batch, limit=cfg.bayes_train_queue) if state is not None else None
        self.is_local_domain = is_local_domain
        self.executor = executor
        self.scorer: Scorer = scorer or (RspamdScorer(cfg.rspamd_url) if cfg.rspamd_url else RuleScorer(executor))
        self.seats = seats
        self.skip_nets = [ipaddress.ip_network(n, strict=False) for n in cfg.skip_networks]
        #: client address -> in ``skip_nets`` (ipaddress parses in Python: once per address, not per session)
        self._skipped: dict[str, bool] = {}
        self.dnsbl_skip = tuple(ipaddress.ip_network(n, strict=False) for n in cfg.dnsbl_skip_networks)
        self.grey_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.grey_domains: set[str] = set()
        for entry in cfg.greylist_whitelist:
            try:
                self.grey_nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.grey_domains.add(entry.lower().lstrip("@"))

    @classmethod
    def from_config(cls, cfg: PolicyConfig, *, hostname: str, data_dir: Path, lists: ListSource | None = None,
                    is_local_domain: Callable[[str], Awaitable[bool]] | None = None,
                    seats: SeatSource | None = None) -> Policy:
        """``lists`` is usually the worker's :class:`Directory`; it then also counts the seats of a
        domain for the outside-recipient limit unless ``seats`` is given."""
        resolver = Resolver(cfg.nameservers, timeout=cfg.dns_timeout, max_ttl=cfg.dns_cache_ttl)
        state = PolicyState(data_dir / "policy" / "policy.db")
        if seats is None and isinstance(lists, Directory):
            seats = DirectorySeats(lists)
        return cls(cfg, hostname=hostname, resolver=resolver, state=state, lists=lists,
                   is_local_domain=is_local_domain, seats=seats)

    def close(self) -> None:
        if self.trainer is not None:
            self.trainer.stop()
        if self.state is not None:
            self.state.close()

    def session(self, *, client_ip: str, listener: str = "smtp", trusted: bool = False) -> PolicySession:
        return PolicySession(self, client_ip, listener, trusted or self.skipped(client_ip))

    def skipped(self, ip: str) -> bool:
        known = self._skipped.get(ip)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if len(self._skipped) >= MAX_KNOWN_IPS:
            self._skipped.clear()
        known = self._skipped[ip] = any(addr in n for n in self.skip_nets)
        return known

    async def train(self, account: str, from_mailbox: str, to_mailbox: str, message: bytes) -> str | None:
        """A user moved ``message`` between mailboxes (IMAP MOVE/COPY+EXPUNGE, JMAP mailboxIds): into
        Junk is a "spam" verdict, out of Junk (not to Trash) a "ham" one; recorded and returned, else None.

        Callers: the IMAP and JMAP front ends (they sit above this layer), after the move is durable.
        """
        label = training_label(from_mailbox, to_mailbox)
        if label is None or self.state is None:
            return label
        await self.state.record_training(account.lower(), label, message_digest(message))
        try:
            learned = await self.learn(label, message, self.learn_scopes(account))
        except Exception as exc:  # a learner failure never fails the user's move
            logger.warning("policy.learn_failed", account=account, label=label, error=str(exc))
            learned = False
        logger.info("policy.trained", account=account, label=label, learned=learned)
        return label

    async def train_later(self, account: str, from_mailbox: str, to_mailbox: str, refs: Sequence[tuple[str, int]],
                          *, read: SessionReader | None = None, messages: Sequence[bytes] | None = None) -> str | None:
        """:meth:`train` for many messages without waiting for the learner: journals the (mailbox, uid) ``refs``
        (read later with ``read``), or ``messages`` themselves, and returns the label (None: not a training
        move). Returns once journaled (milliseconds for thousands); may wait while the worker's queue is full.
        Callers: the IMAP and JMAP front ends, after the move is durable; raises what SQLite raises."""
        label = training_label(from_mailbox, to_mailbox)
        if label is None or self.trainer is None or not refs:
            return label
        await self.trainer.submit(account, label, refs, read=read, messages=messages)
        return label

    def learn_scopes(self, account: str) -> list[str]:
        """Where a user's verdict is learned: their domain, and the user with ``bayes_per_user``."""
        scopes = [_domain(account)]
        if self.cfg.bayes_per_user:
            scopes.append(account.lower())
        return scopes

    async def learn(self, label: str, message: bytes, scopes: Sequence[str]) -> bool:
        """Learn ``message`` as "spam" or "ham": through rspamd's controller when rspamd scores, else in our
        learner's ``scopes``. True when something learned it (False: known already, or no learner).
        Raises what the learner raises (rspamd unreachable: ``aiohttp.ClientError``, ``RspamdLearnError``)."""
        if self.rspamd_learner is not None:
            return await self.rspamd_learner.learn(label, message)
        if self.bayes is None:
            return False
        toks = await asyncio.get_running_loop().run_in_executor(self.executor, tokens, message)
        return await self.bayes.learn(scopes, label, message, toks)

    def learner_scopes(self, recipients: Sequence[str]) -> list[str]:
        """The learner's scopes summed for an inbound message to ``recipients``: the server, the recipients'
        domains, and a lone recipient with ``bayes_per_user``."""
        scopes = ["", *sorted({_domain(r) for r in recipients})]
        if self.cfg.bayes_per_user and len(recipients) == 1:
            scopes.append(recipients[0].lower())
        return scopes

    async def learner_ready(self, recipients: Sequence[str]) -> bool:
        """Whether :meth:`classify` would tokenize a message to ``recipients`` (a learner, trained enough)."""
        if self.bayes is None:
            return False
        nspam, nham = await self.totals(self.learner_scopes(recipients))
        return nspam >= self.cfg.bayes_min_spam and nham >= self.cfg.bayes_min_ham

    async def classify(self, message: bytes, recipients: Sequence[str],
                       toks: set[str] | None = None) -> tuple[str, float] | None:
        """The learner's rule for an inbound message to ``recipients`` (None: no learner, or not trained enough).
        ``toks``: the message's :func:`~mailsrv.policy.bayes.tokens` when the caller made them already (in a
        pool job it ran anyway); else they are made in a pool job here, only when the learner is trained."""
        verdict = await self.verdict(message, recipients, toks)
        return verdict.rule if verdict is not None else None

    async def verdict(self, message: bytes, recipients: Sequence[str],
                      toks: set[str] | None = None) -> Verdict | None:
        """:meth:`classify`'s whole verdict (probability, points, zone)."""
        if self.bayes is None:
            return None
        scopes = self.learner_scopes(recipients)
        nspam, nham = await self.totals(scopes)  # before tokenizing: an untrained learner costs one stat
        if nspam < self.cfg.bayes_min_spam or nham < self.cfg.bayes_min_ham:
            return None
        if toks is None:
            toks = await asyncio.get_running_loop().run_in_executor(self.executor, tokens, message)
        return await self.bayes.classify(scopes, message, toks, totals=(nspam, nham))

    async def totals(self, scopes: Sequence[str]) -> tuple[int, int]:
        """The learner's (spam, ham) message totals of ``scopes``, as :meth:`Bayes.totals` reads them, kept in
        memory while the policy database is unchanged (:meth:`PolicyState.change_stamp`: a learn by this
        worker or its trainer is seen at the next message, ``mailsrv policy learn`` in another process within
        :data:`mailsrv.policy.state.STAMP_INTERVAL`) and
        for :data:`TOTALS_TTL` seconds at most. Requires the learner (``self.bayes``)."""
        assert self.bayes is not None and self.state is not None
        key = tuple(scopes)
        stamp = self.state.change_stamp()  # before the read: a commit during it makes the next call read again
        now = time.monotonic()
        hit = self._totals.get(key)
        if hit is not None and hit[0] == stamp and hit[1] > now:
            return hit[2]
        got = await self.bayes.totals(scopes)
        if len(self._totals) >= TOTALS_ENTRIES:
            self._totals.clear()
        self._totals[key] = (stamp, now + TOTALS_TTL, got)
        return got

    async def outside_limit(self, user: str) -> int:
        """The daily distinct outside-recipient limit of ``user`` (0: unlimited), grown with the seats
        of their domain (:func:`mailsrv.policy.seats.outside_limit`)."""
        cfg = self.cfg
        seats = 0
        if self.seats is not None and cfg.outside_recipients_per_seat:
            try:
                seats = await self.seats.domain_seats(_domain(user))
            except Exception as exc:  # the directory unavailable: the base limit still holds
                logger.exception("policy.seats_failed", exc, user=user)
        return outside_limit(cfg.max_outside_recipients_per_day, cfg.outside_recipients_per_seat,
                             cfg.outside_recipients_cap, seats)

    def thresholds(self, domains: Sequence[str]) -> tuple[float, float]:
        """(junk, reject) for a message to ``domains``: the strictest of their thresholds."""
        junk, reject = self.cfg.junk_score, self.cfg.reject_score
        per = [self.cfg.domain[d] for d in domains if d in self.cfg.domain]
        if per:
            junk = min(p.junk_score for p in per)
            reject = min(p.reject_score for p in per)
        return junk, reject


@dataclass
class _Tx:
    sender: str = ""
    rcpts: list[str] = field(default_factory=list)
    spf: spf.SpfResult | None = None
    allowed: bool = False  # sender allow-listed (global or for every recipient so far)
    #: recipient -> whether its lists allow the sender, as found at RCPT (the end of DATA asks again)
    allowed_for: dict[str, bool] = field(default_factory=dict)


class PolicySession:
    """One SMTP connection's policy state. Not thread-safe; used by one session task."""

    def __init__(self, policy: Policy, client_ip: str, listener: str, trusted: bool) -> None:
        self.p = policy
        self.cfg = policy.cfg
        self.client_ip = client_ip
        self.listener = listener
        self.trusted = trusted
        self.user: str | None = None
        self.helo_name = ""
        self.helo_spf: spf.SpfResult | None = None
        self.helo_bad: list[str] = []
        self.iprev = ""
        self.dnsbl: list[str] = []
        self._conn_task: asyncio.Task[None] | None = None
        #: sender -> its MAIL FROM SPF result in this session (client and HELO fixed): a session's
        #: second message from the same sender is not evaluated again; DNS errors are not kept;
        #: at most SPF_SEEN_MAX senders, in least recently used order
        self._spf_seen: dict[str, spf.SpfResult] = {}
        self.tx = _Tx()

    @property
    def outbound(self) -> bool:
        return self.user is not None or self.trusted

    @property
    def active(self) -> bool:
        return self.cfg.enabled

    @property
    def envelope_checked(self) -> bool:
        """Whether :meth:`mail` and :meth:`rcpt` can decide anything in this session: False for a
        trusted client (``skip_networks``, a trusted listener network) that has not authenticated, or
        with the policy off, where both accept and keep nothing that a later check reads (the session
        may skip the two calls; a session that authenticates later checks its next transaction)."""
        return self.cfg.enabled and (self.user is not None or not self.trusted)

    # -- connect / HELO ---------------------------------------------------------------------

    async def connect(self) -> Decision:
        """Client IP lists; starts DNSBL and FCrDNS lookups (awaited at MAIL)."""
        if not self.active or self.trusted:
            return ACCEPT
        m = await self.p.lists.match_ip(self.client_ip, scopes=[""])
        if m is not None and m.kind == "block":
            return _reject(f"Client address {self.client_ip} is blocked by policy", 554, "5.7.1")
        if self.listener == "smtp":
            self._conn_task = asyncio.ensure_future(self._reputation())
        return ACCEPT

    async def _reputation(self) -> None:
        zones = self.cfg.dnsbl_zones
        hits, (iprev, _name) = await asyncio.gather(
            reputation.dnsbl(self.p.resolver, self.client_ip, zones, self.p.dnsbl_skip) if zones else _none_list(),
            reputation.fcrdns(self.p.resolver, self.client_ip),
        )
        self.dnsbl = [h.zone for h in hits]
        self.iprev = iprev

    def early_talker(self) -> Decision:
        """The client sent data before our greeting (RFC 5321 §4.3.1: it must wait for it)."""
        logger.info("policy.early_talker", ip=self.client_ip)
        return _reject("Protocol error: talking before the greeting", 554, "5.5.1")

    async def helo(self, name: str) -> Decision:
        if name != self.helo_name:  # a new HELO identity: its SPF and the senders' (macros use it) anew
            self.helo_spf = None
            self._spf_seen = {}
        self.helo_name = name
        if not self.active or self.outbound or self.listener != "smtp":
            return ACCEPT
        self.helo_bad = reputation.helo_problems(name, client_ip=self.client_ip,
                                                 our_names=[self.p.hostname])
        if "claims to be us" in self.helo_bad:
            return _reject(f"HELO {name} is our own name", 550, "5.7.1")
        return ACCEPT

    def authenticated(self, user: str) -> None:
        self.user = user.lower()

    def reset(self) -> None:
        self.tx = _Tx()

    # -- MAIL / RCPT -----------------------------------------------------------------------------

    async def mail(self, sender: str) -> Decision:
        self.tx = _Tx(sender=sender)
        if not self.active:
            return ACCEPT
        if self.outbound:
            try:
                return await self._mail_outbound()
            except sqlite3.Error as exc:
                logger.exception("policy.state_failed", exc)
                return ACCEPT
        if self._conn_task is not None:
            await self._conn_task
        m = await self.p.lists.match_sender(sender, self.client_ip, scopes=[""])
        if m is not None and m.kind == "block":
            return _reject(f"<{sender}>: Sender blocked by policy")
        if self.cfg.spf and self.listener == "smtp":
            await self._spf(sender)
            # deviation (RFC 7208 §8.4 allows rejecting a fail at MAIL): RFC 7489 §10.1 warns that this
            # preempts a DMARC pass through DKIM, so an SPF fail only feeds DMARC and the score.
        self.tx.allowed = self._allows(m)
        if not self.tx.allowed:
            if self.dnsbl and self.cfg.dnsbl_reject:
                return _reject(f"Client {self.client_ip} listed at {self.dnsbl[0]}", 554, "5.7.1")
            if self.cfg.require_fcrdns and self.iprev == "fail":
                return _reject(f"Client {self.client_ip} has no forward-confirmed reverse DNS", 550, "5.7.25")
        return ACCEPT

    def _allows(self, m: Match | None) -> bool:
        """An allow entry counts for a network always (a TCP peer cannot forge its address), for an
        address or domain only with an SPF pass (the envelope sender is just a claim otherwise)."""
        if m is None or m.kind != "allow":
            return False
        if "/" in m.entry:
            return True
        return self.tx.spf is not None and self.tx.spf.result == "pass"

    async def _spf(self, sender: str) -> None:
        helo = self.helo_name
        if helo and not helo.startswith("[") and spf.valid_domain(helo):
            # RFC 7208 §2.3: the HELO identity, checked with postmaster@helo
            self.helo_spf = self.helo_spf or await spf.check_host(
                self.p.resolver, self.client_ip, helo, f"postmaster@{helo}", helo=helo,
                receiver=self.p.hostname, identity="helo")
        if sender:
            seen = self._spf_seen.pop(sender, None)
            if seen is None:
                seen = await spf.check_host(self.p.resolver, self.client_ip, _domain(sender), sender,
                                            helo=helo, receiver=self.p.hostname)
            if seen.result != "temperror":  # a DNS failure may pass at the next MAIL
                if len(self._spf_seen) >= SPF_SEEN_MAX:
                    del self._spf_seen[next(iter(self._spf_seen))]  # the least recently used
                self._spf_seen[sender] = seen  # (again) the most recently used
            self.tx.spf = seen
        elif self.helo_spf is not None:
            # RFC 7208 §2.4: a null reverse-path is checked as postmaster@helo
            self.tx.spf = self.helo_spf

    async def _mail_outbound(self) -> Decision:
        limit = self.cfg.max_messages_per_hour
        if self.user is not None and limit and self.p.state is not None:
            if await self.p.state.sent_last_hour(self.user) >= limit:
                logger.warning("policy.rate_limited", user=self.user, limit=limit)
                return _tempfail(f"Sending rate exceeded ({limit} messages per hour), try again later",
                                 450, "4.7.1")
        return ACCEPT

    async def rcpt(self, address: str) -> Decision:
        if not self.active:
            self.tx.rcpts.append(address)
            return ACCEPT
        try:
            if self.outbound:
                d = await self._rcpt_outbound(address)
            else:
                d = await self._rcpt_inbound(address)
        except sqlite3.Error as exc:  # the shared state is unavailable: no greylisting or counting now
            logger.exception("policy.state_failed", exc)
            d = ACCEPT
        if d.ok:
            self.tx.rcpts.append(address)
        return d

    async def _rcpt_outbound(self, address: str) -> Decision:
        if self.user is None or not self.cfg.max_outside_recipients_per_day or self.p.state is None:
            return ACCEPT
        is_local = self.p.is_local_domain
        if is_local is not None and await is_local(_domain(address)):
            return ACCEPT
        limit = await self.p.outside_limit(self.user)
        if not await self.p.state.outside_recipient(self.user, address, limit):
            logger.warning("policy.outside_limit", user=self.user, limit=limit)
            return _tempfail(f"Daily limit of {limit} outside recipients reached", 450, "4.7.1")
        return ACCEPT

    async def _rcpt_inbound(self, address: str) -> Decision:
        scopes = [address.lower(), _domain(address)]
        m = await self.p.lists.match_sender(self.tx.sender, self.client_ip, scopes=scopes)
        if m is not None and m.kind == "block":
            return _reject(f"<{address}>: Sender blocked by the recipient's policy")
        self.tx.allowed_for[address] = self._allows(m)
        allowed = self.tx.allowed or self.tx.allowed_for[address]
        if self.cfg.greylist and not allowed and self.p.state is not None and not self._grey_exempt():
            verdict = await self.p.state.greylist(
                self.client_ip, self.tx.sender, address, delay=self.cfg.greylist_delay,
                expire=self.cfg.greylist_expire, pass_ttl=self.cfg.greylist_pass_ttl)
            if verdict != "pass":
                logger.info("policy.greylisted", ip=self.client_ip, sender=self.tx.sender, rcpt=address)
                return _tempfail("Greylisted, please try again later", 451, "4.7.1")
        return ACCEPT

    def _grey_exempt(self) -> bool:
        try:
            ip = ipaddress.ip_address(self.client_ip)
        except ValueError:
            return False
        if any(ip in net for net in self.p.grey_nets):
            return True
        # a whitelisted sender domain counts only with an SPF pass (a forged one would walk through)
        dom = _domain(self.tx.sender)
        return dom in self.p.grey_domains and self.tx.spf is not None and self.tx.spf.result == "pass"

    # -- end of DATA ---------------------------------------------------------------------------------

    def judges_in_memory(self, size: int) -> bool:
        """Whether :meth:`data_held` can judge a ``size``-byte message before its spool file exists
        (not with a virus scanner: clamd reads the file)."""
        return not self.active or (self.p.clamd is None and size <= self.cfg.max_scan_size)

    async def data(self, spool: Path, content: bytes | None = None) -> Decision:
        """Decide on the durable message in ``spool`` and add our headers to it (atomically).

        Must be called after the spool is complete (written and closed) and before the
        consumers make it durable and the reply. Raises OSError when the spool cannot be
        read or rewritten (the session answers 451). ``content``, when the caller still
        holds it, is the whole spool file (it is then not read back).
        """
        if not self.active:
            return ACCEPT
        loop = asyncio.get_running_loop()
        # deviation (STYLE.md §8, bodies are streamed): up to max_scan_size is read whole, because dkimpy
        # verifies bytes; larger messages are judged on their headers (clamd still gets a stream)
        size = len(content) if content is not None else os.stat(spool).st_size
        whole = size <= self.cfg.max_scan_size
        if content is not None:
            message = content if whole else content[:MAX_HEADER_READ]
        else:
            message = await loop.run_in_executor(self.p.executor, fsio.read_prefix, spool,
                                                 size if whole else MAX_HEADER_READ)
        decision, headers, drop = await self._decide(spool, message, whole)
        if decision.ok and (headers or needs_rewrite(message, self.p.authserv_id, drop)):
            await loop.run_in_executor(self.p.executor, functools.partial(
                rewrite_spool, spool, headers, self.p.authserv_id, drop=drop))
        return decision

    async def data_held(self, message: bytes) -> tuple[Decision, bytes]:
        """:meth:`data` for a whole message still in memory, before its spool file is written (one
        file write instead of a write, a read-back and a rewrite): the decision, and the message to
        spool with our fields added and forged ones removed. Only when :meth:`judges_in_memory`."""
        if not self.active:
            return ACCEPT, message
        if self.trusted and self.user is None and not log.enabled("debug"):
            # a trusted client's message (skip_networks) without a user: no sending limit to count, no scanner
            # reads a message in memory, so the decision is ACCEPT without _decide's hops (its line is debug);
            # our own fields it carries are still removed
            if needs_rewrite(message, self.p.authserv_id, frozenset()):
                message = rewrite_message(message, [], self.p.authserv_id)
            return ACCEPT, message
        decision, headers, drop = await self._decide(None, message, True)
        if decision.ok and (headers or needs_rewrite(message, self.p.authserv_id, drop)):
            message = rewrite_message(message, headers, self.p.authserv_id, drop=drop)
        return decision, message

    async def _decide(self, spool: Path | None, message: bytes,
                      whole: bool) -> tuple[Decision, list[str], frozenset[bytes]]:
        """(decision, fields to add, fields to drop) for ``message`` (``spool``: its file, None when
        it is not written yet and there is no scanner)."""
        started = time.perf_counter()
        # no task (one loop round per message) when there is no scanner to wait for
        scan = asyncio.ensure_future(self._virus_scan(spool, whole)) \
            if self.p.clamd is not None and spool is not None else None
        try:
            try:
                if self.outbound:
                    decision, headers = await self._data_outbound(scan)
                else:
                    decision, headers = await self._data_inbound(spool, message, scan, whole)
            except (OSError, ClamdUnavailable):
                raise
            except Exception as exc:
                # A bug or a hostile message tripping a library must neither crash the session nor
                # bounce the mail forever: judge it on the virus scan alone (fail open on analysis).
                logger.exception("policy.analysis_failed", exc)
                virus, _sig = await self._virus_decision(scan) if scan is None or not scan.cancelled() \
                    else (None, "")
                decision = virus if virus is not None and not virus.ok else ACCEPT
                headers = []
        finally:
            if scan is not None and not scan.done():
                scan.cancel()
        # trusted or authenticated mail that passed has nothing to tell beyond the session's message.accepted
        # (and its line is not even formatted unless debug lines are printed)
        quiet = self.outbound and decision.ok
        if not quiet or log.enabled("debug"):
            (logger.debug if quiet else logger.info)(
                "policy.decided", action=decision.action, code=decision.code,
                score=f"{decision.score.score:.1f}" if decision.score else None,
                ms=f"{(time.perf_counter() - started) * 1000:.1f}")
        return decision, headers, OUR_FIELDS if not self.outbound else frozenset()

    async def _virus_scan(self, spool: Path | None, whole: bool) -> ScanResult | None:
        if self.p.clamd is None or spool is None:
            return None
        return await self.p.clamd.scan_file(spool, limit=None if whole else self.cfg.max_scan_size)

    async def _virus_decision(self, scan: asyncio.Future[ScanResult | None] | None) -> tuple[Decision | None, str]:
        if scan is None:  # no scanner configured
            return None, ""
        try:
            res = await scan
        except ClamdUnavailable as exc:
            logger.warning("policy.clamd_unavailable", error=str(exc))
            if self.cfg.clamd_failure == "tempfail":
                return _tempfail("Virus scanner unavailable, try again later", 451, "4.7.1"), ""
            return None, "unscanned"
        if res is None or res.status == "clean":
            return None, "clean" if res is not None else ""
        logger.warning("policy.virus", signature=res.signature)
        if self.cfg.virus_action == "reject":
            return _reject(f"Message contains a virus ({res.signature})", 554, "5.7.1"), res.signature
        if self.cfg.virus_action == "strip":
            return _STRIP, res.signature
        return Decision("junk", 250, "2.0.0", "OK"), res.signature

    async def _data_outbound(self, scan: asyncio.Future[ScanResult | None] | None) -> tuple[Decision, list[str]]:
        virus, sig = await self._virus_decision(scan)
        if virus is not None and not virus.ok:
            return virus, []
        if virus is not None:
            # an infected outgoing message is never sent on, whatever the inbound action
            return _reject(f"Message contains a virus ({sig})", 554, "5.7.1"), []
        if self.user is not None and self.p.state is not None and self.cfg.max_messages_per_hour:
            try:
                await self.p.state.record_sent(self.user)
            except sqlite3.Error as exc:
                logger.exception("policy.state_failed", exc)
        return ACCEPT, []

    async def _data_inbound(self, spool: Path | None, message: bytes,
                            scan: asyncio.Future[ScanResult | None] | None,
                            whole: bool) -> tuple[Decision, list[str]]:
        fields = split_fields(message)  # the one parse of the header block: every check below reads it
        dkim_res: list[DkimResult] = []
        arc_res = ArcResult("none")
        # the built-in scorer's content rules (0.5 ms on 4 KB, 37 us for a pool hand-off) and a trained learner's
        # tokens (0.45 ms) are made in the pool job that verifies the DKIM signatures: one job per message
        rules_here = whole and type(self.p.scorer) is RuleScorer
        want_tokens = whole and await self._learner_ready()
        content: list[tuple[str, float]] | Exception | None = None
        toks: set[str] | Exception | None = None
        sigs: list[dict[str, str]] = []
        keys: Keys = {}
        arc: asyncio.Future[ArcResult] | None = None
        froms = from_domains(fields)
        # the DMARC records are asked for now, beside the DKIM keys and verification (evaluated below)
        dmarc_warm = asyncio.ensure_future(dmarc.warm(self.p.resolver, froms)) if self.cfg.dmarc and froms else None
        try:
            if self.cfg.dkim and whole:
                # the verifiers answer "unsigned" and "none" without these fields: skip their work then
                names = {name for name, _value, _raw in fields}
                if b"arc-seal" in names:
                    arc = asyncio.ensure_future(verify_arc(self.p.resolver, message, self.p.executor, fields=fields))
                if b"dkim-signature" in names:
                    sigs, keys = await dkim_keys(self.p.resolver, fields)
            if sigs or rules_here or want_tokens:
                dkim_res, content, toks = await asyncio.get_running_loop().run_in_executor(
                    self.p.executor, _analyse, message, fields, sigs, keys,
                    list(self.tx.rcpts) if rules_here else None, want_tokens)
        finally:
            if dmarc_warm is not None:
                await dmarc_warm  # never raises (evaluate asks again what failed); not cancelled: shared queries
            if arc is not None:
                arc_res = await arc
        dm: dmarc.DmarcResult | None = None
        if self.cfg.dmarc:
            dm = await dmarc.evaluate(self.p.resolver, froms, self.tx.spf, dkim_res)
        header = authresults.build(self.p.authserv_id, spf=self.tx.spf, helo_spf=self.helo_spf, dkim=dkim_res,
                                   dmarc=dm, arc=arc_res, iprev=self.iprev or None, client_ip=self.client_ip)
        virus, signature = await self._virus_decision(scan)
        virus_header = f"X-Virus-Status: Infected ({signature})" if signature else ""
        if virus is _STRIP:
            stripped = await strip_infected(self.p.clamd, message) if whole and self.p.clamd else None
            if stripped is None:  # the virus is not in a part of its own: nothing to strip
                return _reject(f"Message contains a virus ({signature})", 554, "5.7.1"), []
            message, found = stripped
            assert spool is not None  # a scan ran, so the file exists
            await asyncio.get_running_loop().run_in_executor(self.p.executor, replace_spool, spool, message)
            virus, virus_header = None, f"X-Virus-Status: Removed ({', '.join(found)})"
        if virus is not None and virus.action != "junk":
            return virus, []
        rcpt_domains = sorted({_domain(r) for r in self.tx.rcpts})
        allowed = self.tx.allowed or await self._all_allowed()
        if dm is not None and dm.result == "fail" and dm.disposition == "reject" and not allowed:
            # RFC 7489 §6.7 / §10.3: reject with the From domain named
            # RFC 8617 §7.2: only a chain sealed by a sealer we trust may vouch (anyone can seal a chain)
            trusted_arc = arc_res.result == "pass" and any(
                arc_res.sealer == t or arc_res.sealer.endswith("." + t) for t in self.cfg.arc_trusted_sealers)
            if not trusted_arc:
                return _reject(f"Unauthenticated email from {dm.from_domain} is not accepted due to "
                               "domain's DMARC policy"), []
        if dm is not None and dm.result == "temperror" and dm.policy == "reject" and not allowed:
            return _tempfail(f"Could not verify {dm.from_domain} (DNS), try again later"), []
        facts = Facts(client_ip=self.client_ip, helo=self.helo_name, sender=self.tx.sender,
                      recipients=list(self.tx.rcpts), iprev=self.iprev, helo_problems=self.helo_bad,
                      dnsbl=self.dnsbl, spf=self.tx.spf.result if self.tx.spf else "",
                      dkim=[d.result for d in dkim_res],
                      dkim_aligned_pass=bool(froms) and any(
                          d.result == "pass" and dmarc.aligned(d.domain, froms[0], "r") for d in dkim_res),
                      dmarc=dm.result if dm else "", dmarc_policy=dm.disposition if dm else "",
                      arc=arc_res.result)
        junk_at, reject_at = self.p.thresholds(rcpt_domains)
        if whole:
            try:
                if isinstance(content, Exception):
                    raise content
                score = RuleScorer.with_content(content, facts) if content is not None \
                    else await self.p.scorer.score(message, facts)
            except Exception as exc:  # an unreachable external scorer must not lose mail
                logger.warning("policy.scorer_failed", error=str(exc))
                score = await RuleScorer(self.p.executor).score(message, facts)
            score = await self._learner_score(message, score, toks)
        else:
            score = Score(0.0, [("TOO_BIG_TO_SCAN", 0.0)])
        headers = [header]
        spam = score.score >= junk_at and not allowed
        if dm is not None and dm.result == "fail" and dm.disposition == "quarantine" and not allowed:
            spam = True
        if score.score >= reject_at and not allowed:
            return Decision("reject", 550, "5.7.1", "Message rejected as spam", score), []
        headers.append(f"X-Spam-Flag: {'YES' if spam else 'NO'}")
        headers.append(f"X-Spam-Score: {score.score:.1f}")
        headers.append("X-Spam-Status: " + _fold(score.status(junk_at)))
        if virus_header:
            headers.append(virus_header)
        if virus is not None or spam:
            return Decision("junk", 250, "2.0.0", "OK", score), headers
        return Decision("accept", 250, "2.0.0", "OK", score), headers

    async def _learner_ready(self) -> bool:
        """:meth:`Policy.learner_ready` for this message's recipients; False when the totals cannot be read
        (:meth:`_learner_score` then meets the error again and says so)."""
        try:
            return await self.p.learner_ready(self.tx.rcpts)
        except Exception:
            return False

    async def _learner_score(self, message: bytes, score: Score, toks: set[str] | Exception | None = None) -> Score:
        if self.p.bayes is None:
            return score
        try:
            if isinstance(toks, Exception):  # raised where the learner's own tokenizing would have raised it
                raise toks
            verdict = await self.p.verdict(message, self.tx.rcpts, toks)
        except Exception as exc:  # the learner is an opinion: without it the rules still decide
            logger.warning("policy.classify_failed", error=str(exc))
            return score
        if verdict is None:
            return score
        added = [verdict.rule]
        damped = damped_rules(score.rules, verdict.prob, self.cfg)  # sure of ham: the content rules count less
        if damped is not None:
            added.append(damped)
        return Score(round(score.score + sum(p for _, p in added), 2), [*score.rules, *added], score.action)

    async def _all_allowed(self) -> bool:
        if not self.tx.rcpts:
            return False
        for r in self.tx.rcpts:
            ok = self.tx.allowed_for.get(r)
            if ok is None:  # not looked up at RCPT (the state failed there): now
                m = await self.p.lists.match_sender(self.tx.sender, self.client_ip, scopes=[r.lower(), _domain(r)])
                ok = self._allows(m)
            if not ok:
                return False
        return True


def _caught(fn: Callable[..., T], *args: Any) -> T | Exception:
    """``fn(*args)``, or the exception it raised (raised again where the result is used, as a job of its own
    would have raised it there)."""
    try:
        return fn(*args)
    except Exception as exc:
        return exc


def _analyse(message: bytes, fields: Fields, sigs: list[dict[str, str]], keys: Keys, recipients: list[str] | None,
             want_tokens: bool) -> tuple[list[DkimResult], list[tuple[str, float]] | Exception | None,
                                         set[str] | Exception | None]:
    """One pool job of the end of DATA: the DKIM results of ``sigs`` (keys fetched already), with ``recipients``
    the content rules, with ``want_tokens`` the learner's tokens (those two: or the exception they raised)."""
    return (verify_signatures(message, sigs, keys),
            None if recipients is None else _caught(content_rules, message, recipients, fields),
            _caught(tokens, message) if want_tokens else None)


async def _none_list() -> list[reputation.DnsblHit]:
    return []


def _fold(value: str) -> str:
    """Fold a long header value at commas (RFC 5322 §2.2.3)."""
    out, line = [], ""
    for part in value.split(","):
        piece = part if not line else "," + part
        if len(line) + len(piece) > 70 and line:
            out.append(line + ",")
            line = part
        else:
            line += piece
    out.append(line)
    return "\r\n\t".join(out)


def replace_spool(path: Path, data: bytes) -> None:
    """Replace the spool's content with ``data``: temp file beside it, renamed over it (no fsync: the
    consumers make their links of the new inode durable, see the module docstring)."""
    tmp = path.with_name(path.name + ".policy")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as dst:
            dst.write(data)
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)


_BREAK = re.compile(r"\r\n(?![ \t])|\r(?!\n)|(?<!\r)\n|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def safe_field(field: str) -> str:
    """A header field we add, with every line break that is not folding (and every other control
    character) turned into a space: values that came from DNS or the message cannot inject fields."""
    return _BREAK.sub(" ", field)


#: Fields only we may set on inbound mail: a sender's own copies are removed with forged A-R fields.
OUR_FIELDS = frozenset({b"x-spam-flag", b"x-spam-score", b"x-spam-status", b"x-virus-status"})


def _removed(name: bytes, value: bytes, our_id: str, drop: frozenset[bytes]) -> bool:
    """A field we take out: one in ``drop``, or an Authentication-Results claiming to be ours (forged)."""
    return name in drop or (name == b"authentication-results"
                            and authresults.is_ours(value.decode("utf-8", "replace"), our_id))


def needs_rewrite(head: bytes, our_id: str, drop: frozenset[bytes]) -> bool:
    """Whether :func:`rewrite_spool` without new headers would remove a field from the message that
    starts with ``head`` (at least its first ``MAX_HEADER_READ`` bytes, or all of it)."""
    head = head[:MAX_HEADER_READ]
    end = header_end(head)
    # the common case: the header block only, not split; lowered and searched (an IGNORECASE regex tries a
    # match at each offset: ~3x the instructions per message, on the event loop)
    if not drop and b"authentication-results" not in head[:end].lower():
        return False
    return any(_removed(name, value, our_id, drop) for name, value, _raw in split_fields(head[:end]))


def _rewritten_head(head: bytes, headers: Sequence[str], our_id: str,
                    drop: frozenset[bytes]) -> tuple[bytes, int, int]:
    """The header block of the message that starts with ``head`` (its first ``MAX_HEADER_READ`` bytes)
    with ``headers`` after our trace fields and the removed fields gone: (new fields, bytes of
    ``head`` they replace, fields removed)."""
    fields = split_fields(head[:header_end(head)])
    kept: list[bytes] = []
    removed = 0
    for name, value, raw in fields:
        if _removed(name, value, our_id, drop):
            removed += 1
            continue
        kept.append(raw)
    # our own trace fields (Return-Path, then our Received) stay on top
    top = 0
    if kept and kept[0].lower().startswith(b"return-path:"):
        top = 1
    if len(kept) > top and kept[top].lower().startswith(b"received:"):
        top += 1
    consumed = sum(len(r) for _, _, r in fields)
    new_fields = [safe_field(h).encode("utf-8") + b"\r\n" for h in headers]
    return b"".join(kept[:top]) + b"".join(new_fields) + b"".join(kept[top:]), consumed, removed


def rewrite_message(message: bytes, headers: Sequence[str], our_id: str, *,
                    drop: frozenset[bytes] = frozenset()) -> bytes:
    """What :func:`rewrite_spool` makes of a file holding ``message``, in memory."""
    new, consumed, _removed_count = _rewritten_head(message[:MAX_HEADER_READ], headers, our_id, drop)
    return new + message[consumed:]


def rewrite_spool(path: Path, headers: Sequence[str], our_id: str, *, drop: frozenset[bytes] = frozenset()) -> int:
    """Insert ``headers`` after our trace fields, drop forged Authentication-Results and the fields in
    ``drop``; atomic. Returns the number of fields removed. The new file is written beside
    the old one and renamed over it; it is not fsync'd (see the module docstring).
    """
    with open(path, "rb") as src:
        head = src.read(MAX_HEADER_READ)
        new, consumed, removed = _rewritten_head(head, headers, our_id, drop)
        tmp = path.with_name(path.name + ".policy")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as dst:
                dst.write(new)
                dst.write(head[consumed:])
                while chunk := src.read(COPY_CHUNK):
                    dst.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
    os.replace(tmp, path)
    return removed


__all__ = ["ACCEPT", "Decision", "Match", "Policy", "PolicySession", "rewrite_message", "rewrite_spool"]
