"""The RCPT check and the delivery prelude take an open account and a domain's held limits without a coroutine
(Store.account_now, Store.domain_limits_now): what the directory changes still reaches the next message as
before (a domain's limits after DOMAIN_LIMITS_TTL, a user's new domain at once)."""

from __future__ import annotations

import smtplib
from dataclasses import replace
from pathlib import Path

import pytest

from mailsrv.config import StoreConfig
from mailsrv.delivery.local import LocalDelivery
from mailsrv.directory import Kind, Resolution
from mailsrv.directory.types import Account
from mailsrv.store import Store
from mailsrv.store import store as store_mod
from mailsrv.store.types import QuotaLimits

MSG = b"Subject: d\r\n\r\n" + b"x" * 2000 + b"\r\n"


def test_a_domain_limit_change_reaches_the_next_rcpt_of_a_session(site, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    site.store.set_domain_quota_source(site.directory.domain_quota)  # as the worker wires it
    site.directory_sync.set_domain("example.test", max_storage=1_000_000)
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("c.test")
        c.sendmail("a@remote.test", ["alice@example.test"], MSG)
        c.sendmail("a@remote.test", ["alice@example.test"], MSG)  # the limits held: no query, same answer
        site.directory_sync.set_domain("example.test", max_storage=1000)
        c.mail("a@remote.test", [f"SIZE={len(MSG)}"])
        assert c.rcpt("alice@example.test")[0] == 250  # held for DOMAIN_LIMITS_TTL s, as before
        c.rset()
        monkeypatch.setattr(store_mod, "DOMAIN_LIMITS_TTL", 0.0)  # the held limits are due: asked again
        c.mail("a@remote.test", [f"SIZE={len(MSG)}"])
        code, text = c.rcpt("alice@example.test")
        assert (code, text[:5]) == (552, b"5.2.2")  # larger than the whole domain quota now
        c.rset()
    assert len(site.inbox("alice@example.test")) == 2


def _account(domain: str, aid: int = 7) -> Account:
    return Account(id=aid, address=f"u@{domain}", domain=domain, display_name="", state="active", store=f"u{aid}",
                   backend="maildir", quota_bytes=None, quota_messages=None, may_send_outside=True)


class _Dir:
    """A directory for LocalDelivery.deliver: nothing is resolved or expanded here."""


async def test_a_users_new_domain_reaches_the_next_delivery(tmp_path: Path) -> None:
    store = Store(StoreConfig(), tmp_path, hostname="mx.example.test")
    asked: list[str] = []

    async def source(domain: str) -> tuple[int | None, int | None]:
        asked.append(domain)
        return (10_000_000, None) if domain == "a.test" else (20_000_000, 5)

    store.set_domain_quota_source(source)
    local = LocalDelivery(_Dir(), store, tmp_path)
    try:
        assert store.account_now("7") is None and store.domain_limits_now("a.test") is None  # nothing open, held
        a = _account("a.test")
        spool = tmp_path / "m1"
        spool.write_bytes(MSG)
        out = await local.deliver(spool, [(a.address, Resolution(a.address, Kind.USER, a))], data=MSG)
        assert out.delivered == 1 and asked == ["a.test"]
        sacct = store.account_now("7", "a.test")
        assert sacct is not None and sacct.engine.domain == "a.test"
        assert store.domain_limits_now("a.test") == QuotaLimits(10_000_000, None)
        # the directory moved the user: the open account is not taken as it is, the delivery moves it
        b = replace(a, domain="b.test", address="u@b.test")
        assert store.account_now("7", "b.test") is None
        spool2 = tmp_path / "m2"
        spool2.write_bytes(MSG)
        out = await local.deliver(spool2, [(b.address, Resolution(b.address, Kind.USER, b))], data=MSG)
        assert out.delivered == 1 and asked == ["a.test", "b.test"]
        assert store.account_now("7", "b.test") is sacct and sacct.engine.domain == "b.test"
        # a domain's held limits are dropped with a new source
        store.set_domain_quota_source(source)
        assert store.domain_limits_now("b.test") is None
    finally:
        await store.close()


async def test_without_a_source_every_domain_is_unlimited_without_a_coroutine(tmp_path: Path) -> None:
    store = Store(StoreConfig(), tmp_path, hostname="mx.example.test")
    try:
        assert store.domain_limits_now("x.test") == QuotaLimits() == await store.domain_limits("x.test")
    finally:
        await store.close()
