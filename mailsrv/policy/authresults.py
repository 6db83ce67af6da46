"""The one Authentication-Results header (RFC 8601) we add, and removal of forged copies.

RFC 8601 §5: a border MTA MUST remove (or rename) Authentication-Results
fields that claim its own authserv-id before adding its own, so downstream
filters and clients can trust the fields that carry our id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import authres
import authres.arc
import authres.dmarc

from mailsrv.policy.dkimverify import ArcResult, DkimResult
from mailsrv.policy.dmarc import DmarcResult
from mailsrv.policy.spf import SpfResult

_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")


def authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results value (comments dropped), lower-cased."""
    text = value
    for _ in range(5):  # nested comments are rare; a few passes remove them
        text = _COMMENT.sub(" ", text)
    first = text.split(";", 1)[0].strip().split()
    return first[0].lower() if first else ""


def is_ours(value: str, our_id: str) -> bool:
    return authserv_id(value) == our_id.lower()


def build(our_id: str, *, spf: SpfResult | None, helo_spf: SpfResult | None, dkim: Sequence[DkimResult],
          dmarc: DmarcResult | None, arc: ArcResult | None, iprev: str | None = None,
          client_ip: str = "") -> str:
    """The complete header field (``Authentication-Results: ...``) without the line end."""
    results: list[object] = []
    if iprev is not None:
        results.append(authres.IPRevAuthenticationResult(result=iprev, policy_iprev=client_ip or None))
    if spf is not None and spf.identity == "helo":
        # RFC 7208 §2.4: a null reverse-path was checked as postmaster@HELO
        results.append(authres.SPFAuthenticationResult(result=spf.result, smtp_helo=spf.domain))
    elif spf is not None:
        results.append(authres.SPFAuthenticationResult(
            result=spf.result, smtp_mailfrom=spf.domain,
            reason=spf.detail[:100] or None))
    if helo_spf is not None and spf is not helo_spf and (spf is None or spf.result in ("none", "temperror")):
        results.append(authres.SPFAuthenticationResult(result=helo_spf.result, smtp_helo=helo_spf.domain))
    for d in dkim:
        results.append(authres.DKIMAuthenticationResult(
            result=d.result, header_d=d.domain or None, header_s=d.selector or None,
            header_a=d.algorithm or None, reason=d.reason[:100] or None))
    if dmarc is not None and dmarc.from_domain:
        results.append(authres.dmarc.DMARCAuthenticationResult(
            result=dmarc.result, header_from=dmarc.from_domain, policy=dmarc.disposition
            if dmarc.result == "fail" else None))
    if arc is not None and arc.result != "none":
        results.append(authres.arc.ARCAuthenticationResult(result=arc.result))
    header = str(authres.AuthenticationResultsHeader(authserv_id=our_id, results=results))
    # RFC 5322 §2.1.1: fold long fields at the "; " between results
    return header.replace("; ", ";\r\n\t") if len(header) > 78 else header
