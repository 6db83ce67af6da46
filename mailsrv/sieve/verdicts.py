"""The values of RFC 5235 ``spamtest`` and ``virustest``, read from the verdict fields our own policy
pipeline wrote (mailsrv.policy.pipeline: Authentication-Results, X-Spam-*, X-Virus-Status).

Only our pipeline's fields count: it writes them in one block right after our Authentication-Results
field, and it removes every other Authentication-Results field that claims our authserv-id (on all
mail) and a sender's own X-Spam-* and X-Virus-Status fields (on inbound mail). So the fields that
directly follow the first Authentication-Results field of ours are ours; without one (the policy off,
mail submitted by a user, which it does not score) the message counts as not tested. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailsrv.mime.headers import unfold

#: the fields our pipeline writes after its Authentication-Results (mailsrv.policy.pipeline.OUR_FIELDS)
VERDICT_FIELDS = ("x-spam-flag", "x-spam-score", "x-spam-status", "x-virus-status")


@dataclass(frozen=True)
class OurVerdicts:
    """How to find and read our pipeline's verdicts at delivery."""

    #: the authserv-id of our Authentication-Results (``[policy] authserv_id``, else server.hostname)
    authserv_id: str
    #: a virus scanner runs (``[policy] clamd_socket``): a message without X-Virus-Status is clean
    virus_scanned: bool = False
    #: the X-Spam-Score at and above which spamtest is "10" and spamtest :percent "100"
    #: (``[sieve] spamtest_max_score``); 0 and below are "1" and "0"
    max_score: float = 10.0


@dataclass(frozen=True)
class Values:
    """RFC 5235 §3.2 / §3.3 values as strings ("0": not tested)."""

    spam: str = "0"
    spam_percent: str = "0"
    virus: str = "0"


def _ours(fields: tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]], authserv_id: str) -> dict[str, str]:
    """Our pipeline's verdict fields (lower-cased name -> unfolded value); empty when it wrote none."""
    want = authserv_id.lower()
    for i, (name, value) in enumerate(fields):
        if name != "authentication-results":
            continue
        first = unfold(value).decode("latin-1").split(";", 1)[0].split()
        if not first or first[0].lower() != want:  # RFC 8601 §2.2: authserv-id first (a version may follow)
            continue
        out: dict[str, str] = {}
        for n, v in fields[i + 1:]:
            if n not in VERDICT_FIELDS or n in out:
                break
            out[n] = " ".join(unfold(v).decode("latin-1").split())
        return out
    return {}


def values(fields: tuple[tuple[str, bytes], ...] | list[tuple[str, bytes]], ours: OurVerdicts) -> Values:
    """spamtest, spamtest :percent and virustest of a message with header ``fields`` (lower-cased name,
    raw value, in order)."""
    got = _ours(fields, ours.authserv_id)
    if not got:
        return Values()
    spam = pct = "0"
    score_text = got.get("x-spam-score", "")
    try:
        score = float(score_text[:32])  # our pipeline writes "%.1f"
    except ValueError:
        score = None
    if score is not None and score == score:  # not NaN
        top = ours.max_score if ours.max_score > 0 else 10.0
        frac = min(max(score, 0.0), top) / top
        # RFC 5235 §3.2: 1 definitely not spam .. 10 definitely spam; :percent 0 .. 100
        spam, pct = str(1 + int(9 * frac + 0.5)), str(int(100 * frac + 0.5))
    status = got.get("x-virus-status", "").lower()
    # RFC 5235 §3.3: 1 clean, 2 the virus replaced with harmless content, 5 definitely infected
    virus = ("5" if status.startswith("infected") else "2" if status.startswith("removed")
             else "1" if ours.virus_scanned and not status else "0")
    return Values(spam, pct, virus)
