"""ARC sets are the message's to write (found while fixing what fuzz/ found: str.isdigit() is true
for "²"): an instance number in non-ASCII digits gives a verdict that is not pass, never an exception."""

from __future__ import annotations

from typing import Any

from mailsrv.net.dns import Resolver
from mailsrv.policy.dkimverify import verify_arc


async def test_a_superscript_arc_instance_is_no_pass_and_no_exception(dnsserver: Any, resolver: Resolver) -> None:
    msg = ("ARC-Seal: i=\u00b2; a=rsa-sha256; cv=none; d=example.org; s=sel; t=1; b=AAAA\r\n"
           "ARC-Message-Signature: i=\u00b2; a=rsa-sha256; d=example.org; s=sel; h=from; bh=AAAA; b=AAAA\r\n"
           "ARC-Authentication-Results: i=\u00b2; mx.example.org; spf=pass\r\n"
           "From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n").encode()
    res = await verify_arc(resolver, msg)
    assert res.result in ("none", "fail")  # dkimpy finds no valid instance 1
