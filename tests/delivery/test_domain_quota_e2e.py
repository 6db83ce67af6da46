"""The domain quota root at SMTP RCPT over a real listener, directory and store (issue 3)."""

from __future__ import annotations

import smtplib

MSG = b"Subject: d\r\n\r\n" + b"x" * 2000 + b"\r\n"


def test_domain_full_at_rcpt(site) -> None:  # type: ignore[no-untyped-def]
    site.store.set_domain_quota_source(site.directory.domain_quota)  # as the worker wires it
    site.directory_sync.set_domain("example.test", max_storage=2 * len(MSG) + 1200)  # room for two with trace headers
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("c.test")
        c.sendmail("a@remote.test", ["alice@example.test"], MSG)  # no user quota: the domain counts
        c.sendmail("a@remote.test", ["bob@example.test"], MSG)
        c.mail("a@remote.test", [f"SIZE={len(MSG)}"])
        code, text = c.rcpt("alice@example.test")
        # RFC 5321 §4.5.3.1.10 / RFC 3463 4.2.2: the domain's storage is used up; may clear later
        assert (code, text[:5]) == (452, b"4.2.2")
        c.rset()
        c.mail("a@remote.test", ["SIZE=100000"])
        code, text = c.rcpt("bob@example.test")
        assert (code, text[:5]) == (552, b"5.2.2")  # larger than the whole domain quota
        c.rset()
    assert len(site.inbox("alice@example.test")) == len(site.inbox("bob@example.test")) == 1

    async def per_user() -> int:
        total = 0
        for address in ("alice@example.test", "bob@example.test"):
            info = site.directory_sync.user_info(address)
            acct = await site.store.account(str(info["id"]), site.data_dir / info["store"])
            total += (await acct.quota_usage()).storage
        return total

    usage = site.store.usage.domain_usage("example.test")
    assert usage.messages == 2 and usage.storage == site.loop.run(per_user()) > 2 * len(MSG)
