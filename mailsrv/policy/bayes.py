"""The spam learner: a Bayesian token classifier with Robinson's per-token probabilities and Fisher's
chi-square combining, as SpamBayes and SpamAssassin's Bayes do, learned from users' Junk moves.

Tokens come from :mod:`mailsrv.policy.spamtokens` (words and word pairs of the
text a reader sees, header shapes, sender and URL domains, MIME structure).
Fields that we add ourselves (trace, Authentication-Results, X-Spam-*) are
left out, so a message scores the same before delivery and when a user later
moves it.

Counts live in the shared policy database (``data_dir/policy/policy.db``) per
scope: ``""`` (the server, fed by ``mailsrv policy learn``), a domain and,
with ``bayes_per_user``, a user. A message is classified with the counts of
its scopes summed (server + its recipients' domains [+ the user]), and only
once those scopes have learned ``bayes_min_spam`` spam and ``bayes_min_ham``
ham messages. The combined probability falls in one of SpamBayes' three zones:
*spam* (>= ``bayes_spam_cutoff``) adds ``bayes_spam_points`` (and ``bayes_sure_points`` from
``bayes_sure_cutoff``), *ham* (<=
``bayes_ham_cutoff``) takes ``bayes_ham_points``, *unsure* in between adds or
takes in proportion to the distance from 0.5 (rule ``BAYES_NN``, NN the spam
probability in percent).

Invariant: a message (by body digest) counts at most once per scope; learning
it again with the other label moves its tokens from one side to the other.
A scope keeps at most ``bayes_max_tokens`` tokens: past that, the tokens
learned longest ago are forgotten (SpamAssassin's expiry, by age alone), and
among those of one day the ones seen once (hapaxes) first.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailsrv.config import PolicyConfig
from mailsrv.policy.content import RULES as CONTENT_RULES
from mailsrv.policy.headers import header_end, split_fields
from mailsrv.policy.spamtokens import MAILBOX_FIELDS, MAX_TOKENS, OUR_FIELDS, tokens
from mailsrv.policy.state import PolicyState

__all__ = ["MAX_TOKENS", "OUR_FIELDS", "Bayes", "Lesson", "Verdict", "chi2q", "combine", "damped_rules", "message_digest",
           "points", "token_id", "token_prob", "tokens", "zone"]

# SpamBayes' defaults (spambayes/Options.py, "Classifier" section)
#: Robinson's s: the strength of the prior for a token seen few times.
UNKNOWN_STRENGTH = 0.45
#: Robinson's x: the probability assumed for a token never seen.
UNKNOWN_PROB = 0.5
#: Tokens closer than this to 0.5 are ignored (SpamBayes: 0.1, SpamAssassin: 0.346). 0.16 by cross-validation on
#: the development half of the SpamAssassin public corpus (4, 5 and 10 folds, docs/policy.md): fewer weak clues
#: from a spam-like newsletter's ordinary words.
MIN_STRENGTH = 0.16
#: The most decisive tokens combined per message.
MAX_DISCRIMINATORS = 150

#: Rows per SQL ``IN (...)`` query.
SQL_BATCH = 500
#: A scope's token count is checked against ``bayes_max_tokens`` every this many learned messages; expiry
#: then keeps :data:`EXPIRE_KEEP` of the maximum (so it does not run again at the next message).
EXPIRE_EVERY = 50
EXPIRE_KEEP = 0.8

DDL = """
CREATE TABLE IF NOT EXISTS bayes_tokens (
    scope TEXT NOT NULL, token INTEGER NOT NULL, spam INTEGER NOT NULL, ham INTEGER NOT NULL,
    day INTEGER NOT NULL,  -- last learned (days since the epoch): the oldest are expired first
    PRIMARY KEY (scope, token)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bayes_tokens_age ON bayes_tokens (scope, day);
CREATE TABLE IF NOT EXISTS bayes_totals (scope TEXT PRIMARY KEY, spam INTEGER NOT NULL, ham INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bayes_seen (
    scope TEXT NOT NULL, digest TEXT NOT NULL, label TEXT NOT NULL CHECK (label IN ('spam', 'ham')),
    PRIMARY KEY (scope, digest)
) WITHOUT ROWID;
"""


def token_id(token: str) -> int:
    """A stable signed 64-bit id for a token (the database stores ids, not words)."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


def message_digest(message: bytes) -> str:
    """The identity of a message for learning: its body (headers change as it travels and is moved). A body of
    white space alone identifies nothing (every such message would be one: a second one learned was "already
    known", and learned with the other label it took its own tokens off the first one's counts), so then the
    Message-ID, else the header fields but the ones we, the MTAs and mailboxes add."""
    body = message[header_end(message):]
    if body.strip():
        return hashlib.sha256(body).hexdigest()
    fields = [(name, value) for name, value, _ in split_fields(message)
              if name not in OUR_FIELDS and name not in MAILBOX_FIELDS]
    mid = [value for name, value in fields if name == b"message-id"]
    key = b"mid\0" + mid[0] if mid else b"fields\0" + b"\0".join(name + b":" + value for name, value in fields)
    return hashlib.sha256(key).hexdigest()


# -- the classifier -----------------------------------------------------------------------------


def chi2q(x2: float, v: int) -> float:
    """P(chi-square with ``v`` (even) degrees of freedom >= ``x2``) (SpamBayes' chi2Q)."""
    m = x2 / 2.0
    term = total = math.exp(-m)
    for i in range(1, v // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


def token_prob(spam: int, ham: int, nspam: int, nham: int) -> float:
    """Robinson's f(w): the smoothed spam probability of a token seen in ``spam``/``ham`` messages."""
    spam_ratio = spam / nspam if nspam else 0.0
    ham_ratio = ham / nham if nham else 0.0
    if spam_ratio + ham_ratio == 0:
        return UNKNOWN_PROB
    p = spam_ratio / (spam_ratio + ham_ratio)
    n = spam + ham
    return (UNKNOWN_STRENGTH * UNKNOWN_PROB + n * p) / (UNKNOWN_STRENGTH + n)


def combine(probs: Sequence[float]) -> float:
    """Fisher's chi-square combining (Robinson; SpamBayes' chi2_spamprob) of the most decisive probabilities."""
    clues = sorted((p for p in probs if abs(p - 0.5) >= MIN_STRENGTH), key=lambda p: -abs(p - 0.5))
    clues = clues[:MAX_DISCRIMINATORS]
    if not clues:
        return 0.5
    n = len(clues)
    s = 1.0 - chi2q(-2.0 * sum(math.log(1.0 - p) for p in clues), 2 * n)
    h = 1.0 - chi2q(-2.0 * sum(math.log(p) for p in clues), 2 * n)
    return (s - h + 1.0) / 2.0


def _prob_in(db: sqlite3.Connection, keys: Sequence[str], ids: Sequence[int], nspam: int, nham: int) -> float:
    """The combined spam probability of token ids ``ids`` with the counts of scopes ``keys`` summed."""
    marks = ",".join("?" * len(keys))
    rows: list[tuple[int, int]] = []
    for i in range(0, len(ids), SQL_BATCH):
        batch = ids[i:i + SQL_BATCH]
        rows += db.execute(
            f"SELECT SUM(spam), SUM(ham) FROM bayes_tokens WHERE scope IN ({marks}) "
            f"AND token IN ({','.join('?' * len(batch))}) GROUP BY token", (*keys, *batch)).fetchall()
    return combine([token_prob(s, h, nspam, nham) for s, h in rows])


def zone(prob: float, cfg: PolicyConfig) -> str:
    """SpamBayes' verdict zones: "spam" from ``bayes_spam_cutoff``, "ham" up to ``bayes_ham_cutoff``, else "unsure"."""
    if prob >= cfg.bayes_spam_cutoff:
        return "spam"
    if prob <= cfg.bayes_ham_cutoff:
        return "ham"
    return "unsure"


def points(prob: float, cfg: PolicyConfig) -> float:
    """Score points for a spam probability: the full ``bayes_spam_points`` in the spam zone (plus
    ``bayes_sure_points`` from ``bayes_sure_cutoff``) and ``-bayes_ham_points`` in the ham zone; in the unsure
    zone linear, 0 at 0.5 (so the rules decide)."""
    where = zone(prob, cfg)
    if where == "spam":
        return cfg.bayes_spam_points + (cfg.bayes_sure_points if prob >= cfg.bayes_sure_cutoff else 0.0)
    if where == "ham":
        return -cfg.bayes_ham_points
    if prob >= 0.5:
        return round((prob - 0.5) * 2.0 * cfg.bayes_spam_points, 2)
    return round(-(0.5 - prob) * 2.0 * cfg.bayes_ham_points, 2)


#: The rule :func:`damped_rules` adds (negative points).
DAMPED_RULE = "CONTENT_DAMPED"


def damped_rules(rules: Sequence[tuple[str, float]], prob: float, cfg: PolicyConfig) -> tuple[str, float] | None:
    """When the learner is sure of ham (``prob`` <= ``bayes_sure_ham_cutoff``): the rule :data:`DAMPED_RULE` that
    takes the content rules' positive points among ``rules`` down to ``bayes_sure_ham_rules`` of themselves (a
    newsletter the recipients learned as ham reads like spam to the phrase and HTML rules). GTUBE and the
    connection signals (DNSBL, SPF, DMARC, rDNS) count in full. None when nothing is taken."""
    if prob > cfg.bayes_sure_ham_cutoff:
        return None
    content = sum(p for name, p in rules if p > 0 and name in CONTENT_RULES and name != "GTUBE")
    take = round(content * (1.0 - cfg.bayes_sure_ham_rules), 2)
    return (DAMPED_RULE, -take) if take > 0 else None


@dataclass(frozen=True)
class Lesson:
    """One message to learn: its scopes, "spam" or "ham", :func:`message_digest` and :func:`tokens`."""

    scopes: tuple[str, ...]
    label: str
    digest: str
    toks: set[str]


@dataclass(frozen=True)
class Verdict:
    prob: float
    points: float
    spam: int  # spam messages learned by the scopes used
    ham: int
    zone: str = "unsure"  # "spam" | "unsure" | "ham" (:func:`zone`)

    @property
    def rule(self) -> tuple[str, float]:
        return f"BAYES_{min(int(self.prob * 100), 99):02d}", self.points


class Bayes:
    """The learner over the shared policy database. Per worker; every call runs on the state's thread."""

    def __init__(self, state: PolicyState, cfg: PolicyConfig) -> None:
        self.state = state
        self.cfg = cfg
        self._ready_schema = False
        self.expired = 0  # tokens forgotten by this learner (for tests and the bench)

    def _schema(self, db: sqlite3.Connection) -> None:
        if not self._ready_schema:
            for stmt in DDL.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            self._ready_schema = True

    async def learn(self, scopes: Sequence[str], label: str, message: bytes,
                    toks: set[str] | None = None) -> bool:
        """Learn ``message`` as ``label`` ("spam"/"ham") in each scope; False when every scope already had it
        with that label. ``toks`` may carry :func:`tokens` computed off the loop (it is CPU work)."""
        item = Lesson(tuple(scopes), label, message_digest(message),
                      toks if toks is not None else tokens(message))
        return (await self.learn_many([item]))[0]

    async def learn_many(self, lessons: Sequence[Lesson],
                         also: Callable[[sqlite3.Connection], None] | None = None) -> list[bool]:
        """Learn every lesson in one write transaction (the training queue's coalesced write); ``also(db)`` runs
        in the same transaction (the queue deletes its journal rows there, so a batch counts exactly once).
        Per lesson: False when every scope already had it with that label. Raises ValueError for a bad label."""
        for lesson in lessons:
            if lesson.label not in ("spam", "ham"):
                raise ValueError(f"label must be spam or ham, not {lesson.label!r}")
        day = int(self.state.clock() // 86400)

        def op(db: sqlite3.Connection) -> list[bool]:
            self._schema(db)
            out = [self._learn_in(db, lesson, sorted({token_id(t) for t in lesson.toks}), day) for lesson in lessons]
            if also is not None:
                also(db)
            return out

        return await self.state.run(op)

    async def learn_unless_right(self, lessons: Sequence[Lesson]) -> list[str]:
        """Train on error (SpamBayes' "mistakes and unsures", SpamAssassin's train-until-no-errors pass): in one
        write transaction, each lesson in turn is judged with the counts of its scopes as they are then (the
        lessons before it included) and learned only when the learner is not ready (``bayes_min_spam`` /
        ``bayes_min_ham``) or its zone is not the lesson's label. Per lesson: "learned", "known" (every scope
        already had it with that label; judged as such it is not relearned) or "right" (judged right, not
        learned: a later pass may learn it). Raises ValueError for a bad label."""
        for lesson in lessons:
            if lesson.label not in ("spam", "ham"):
                raise ValueError(f"label must be spam or ham, not {lesson.label!r}")
        day = int(self.state.clock() // 86400)

        def judge_and_learn(db: sqlite3.Connection, lesson: Lesson) -> str:
            keys = list(dict.fromkeys(s.lower() for s in lesson.scopes))
            marks = ",".join("?" * len(keys))
            if all(db.execute("SELECT label FROM bayes_seen WHERE scope = ? AND digest = ?",
                              (k, lesson.digest)).fetchone() == (lesson.label,) for k in keys):
                return "known"
            ids = sorted({token_id(t) for t in lesson.toks})
            nspam, nham = db.execute(f"SELECT COALESCE(SUM(spam), 0), COALESCE(SUM(ham), 0) FROM bayes_totals "
                                     f"WHERE scope IN ({marks})", keys).fetchone()
            if nspam >= self.cfg.bayes_min_spam and nham >= self.cfg.bayes_min_ham \
                    and zone(_prob_in(db, keys, ids, nspam, nham), self.cfg) == lesson.label:
                return "right"
            self._learn_in(db, lesson, ids, day)
            return "learned"

        def op(db: sqlite3.Connection) -> list[str]:
            self._schema(db)
            return [judge_and_learn(db, lesson) for lesson in lessons]

        return await self.state.run(op)

    def _learn_in(self, db: sqlite3.Connection, lesson: Lesson, ids: list[int], day: int) -> bool:
        label, digest = lesson.label, lesson.digest
        other = "ham" if label == "spam" else "spam"
        changed = False
        for scope in dict.fromkeys(s.lower() for s in lesson.scopes):
            row = db.execute("SELECT label FROM bayes_seen WHERE scope = ? AND digest = ?",
                             (scope, digest)).fetchone()
            if row is not None and row[0] == label:
                continue
            changed = True
            db.execute("INSERT OR IGNORE INTO bayes_totals (scope, spam, ham) VALUES (?, 0, 0)", (scope,))
            if row is not None:  # relearn: the message moves from the other side
                db.executemany(f"UPDATE bayes_tokens SET {other} = MAX({other} - 1, 0) "
                               "WHERE scope = ? AND token = ?", [(scope, t) for t in ids])
                db.execute(f"UPDATE bayes_totals SET {other} = MAX({other} - 1, 0) WHERE scope = ?", (scope,))
            add = (1, 0) if label == "spam" else (0, 1)
            db.executemany("INSERT INTO bayes_tokens (scope, token, spam, ham, day) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT (scope, token) DO UPDATE SET spam = spam + excluded.spam, "
                           "ham = ham + excluded.ham, day = excluded.day", [(scope, t, *add, day) for t in ids])
            db.execute(f"UPDATE bayes_totals SET {label} = {label} + 1 WHERE scope = ?", (scope,))
            db.execute("INSERT OR REPLACE INTO bayes_seen (scope, digest, label) VALUES (?, ?, ?)",
                       (scope, digest, label))
            self._maybe_expire(db, scope)
        return changed

    def _maybe_expire(self, db: sqlite3.Connection, scope: str) -> None:
        """Every :data:`EXPIRE_EVERY` messages of ``scope``: forget its oldest tokens beyond the maximum."""
        spam, ham = db.execute("SELECT spam, ham FROM bayes_totals WHERE scope = ?", (scope,)).fetchone()
        if (spam + ham) % EXPIRE_EVERY:
            return
        count = db.execute("SELECT COUNT(*) FROM bayes_tokens WHERE scope = ?", (scope,)).fetchone()[0]
        limit = self.cfg.bayes_max_tokens
        if count <= limit:
            return
        drop = count - int(limit * EXPIRE_KEEP)
        db.execute("DELETE FROM bayes_tokens WHERE scope = ? AND token IN (SELECT token FROM bayes_tokens "
                   "WHERE scope = ? ORDER BY day, spam + ham LIMIT ?)", (scope, scope, drop))
        self.expired += drop

    async def totals(self, scopes: Sequence[str]) -> tuple[int, int]:
        """(spam, ham) messages learned by ``scopes`` together."""
        keys = list(dict.fromkeys(s.lower() for s in scopes))

        def op(db: sqlite3.Connection) -> tuple[int, int]:
            self._schema(db)
            marks = ",".join("?" * len(keys))
            row = db.execute(f"SELECT COALESCE(SUM(spam), 0), COALESCE(SUM(ham), 0) FROM bayes_totals "
                             f"WHERE scope IN ({marks})", keys).fetchone()
            return int(row[0]), int(row[1])

        return await self.state.run(op, write=False)

    async def scope_totals(self) -> list[tuple[str, int, int]]:
        """(scope, spam, ham) of every scope that learned something."""

        def op(db: sqlite3.Connection) -> list[tuple[str, int, int]]:
            self._schema(db)
            return db.execute("SELECT scope, spam, ham FROM bayes_totals ORDER BY scope").fetchall()

        return await self.state.run(op, write=False)

    async def classify(self, scopes: Sequence[str], message: bytes, toks: set[str] | None = None, *,
                       totals: tuple[int, int] | None = None) -> Verdict | None:
        """The learner's verdict with the counts of ``scopes`` summed; None until they learned enough.
        ``totals`` may carry :meth:`totals` of the same scopes, just read (it is then not queried again)."""
        keys = list(dict.fromkeys(s.lower() for s in scopes))
        nspam, nham = totals if totals is not None else await self.totals(keys)
        if nspam < self.cfg.bayes_min_spam or nham < self.cfg.bayes_min_ham:
            return None
        words = toks if toks is not None else tokens(message)

        def op(db: sqlite3.Connection) -> float:  # hashing and combining too: CPU off the event loop
            return _prob_in(db, keys, sorted({token_id(t) for t in words}), nspam, nham)

        prob = await self.state.run(op, write=False)
        return Verdict(prob, points(prob, self.cfg), nspam, nham, zone(prob, self.cfg))
