"""Recipient resolution at RCPT time and sender checks at submission (docs/directory-api.md)."""

from __future__ import annotations

from mailsrv.directory import Directory, Kind, SyncDirectory


def test_user_alias_subaddress_and_domain_alias(sd: SyncDirectory) -> None:
    alice = sd.add_user("alice@example.test", display_name="Alice")
    sd.add_alias("ali@example.test", "alice@example.test")
    sd.add_domain_alias("example.org", "example.test")
    r = sd.resolve("<Alice+news@EXAMPLE.test>")
    assert (r.kind, r.address, r.account) == (Kind.USER, "alice@example.test", alice)
    r = sd.resolve("ali@example.org")
    assert (r.kind, r.address, r.account) == (Kind.ALIAS, "ali@example.test", alice)
    sd.del_domain_alias("example.org")
    assert sd.resolve("ali@example.org").kind is Kind.OUTSIDE
    assert alice.store == "mail/example.test/alice" and alice.backend == "local"


def test_unknown_outside_catchall_disabled(sd: SyncDirectory) -> None:
    assert sd.resolve("nobody@example.test").kind is Kind.UNKNOWN
    assert sd.resolve("someone@elsewhere.test").kind is Kind.OUTSIDE
    assert sd.resolve("postmaster").kind is Kind.UNKNOWN
    sd.add_user("catch@example.test")
    sd.set_domain("example.test", catchall="catch@example.test")
    r = sd.resolve("nobody@example.test")
    assert r.kind is Kind.CATCHALL and r.account is not None and r.account.address == "catch@example.test"
    sd.add_user("gone@example.test", state="suspended")
    r = sd.resolve("gone@example.test")
    assert r.kind is Kind.DISABLED and r.account is not None and not r.account.active


def test_may_send_as(sd: SyncDirectory) -> None:
    a = sd.add_user("alice@example.test")
    sd.add_user("bob@example.test")
    sd.add_alias("sales-alice@example.test", "alice@example.test")
    sd.add_group("sales@example.test")
    sd.add_group("support@example.test")
    sd.grant_send_as("sales@example.test", "alice@example.test")
    assert sd.may_send_as(a.id, "alice@example.test")
    assert sd.may_send_as(a.id, "Alice+x@Example.Test")
    assert sd.may_send_as(a.id, "sales-alice@example.test")
    assert sd.may_send_as(a.id, "sales@example.test")
    assert sd.may_send_as(a.id, "")
    assert not sd.may_send_as(a.id, "support@example.test")
    assert not sd.may_send_as(a.id, "bob@example.test")
    assert not sd.may_send_as(a.id, "alice@elsewhere.test")
    sd.revoke_send_as("sales@example.test", "alice@example.test")
    assert not sd.may_send_as(a.id, "sales@example.test")


def test_post_policies(sd: SyncDirectory) -> None:
    sd.add_domain("other.test")
    sd.add_user("alice@example.test")
    sd.add_user("bob@example.test")
    sd.add_user("carol@other.test")
    for policy in ("anyone", "members", "listed", "domain"):
        sd.add_group(f"g-{policy}@example.test", post_policy=policy)
        sd.add_member(f"g-{policy}@example.test", "alice@example.test")
        sd.add_member(f"g-{policy}@example.test", "ext@outside.test")
    sd.add_sender("g-listed@example.test", "carol@other.test")
    assert sd.may_post("g-anyone@example.test", "x@spam.test")
    assert sd.may_post("g-members@example.test", "alice@example.test")
    assert sd.may_post("g-members@example.test", "ext@outside.test")
    assert not sd.may_post("g-members@example.test", "bob@example.test")
    assert not sd.may_post("g-members@example.test", "")
    assert sd.may_post("g-listed@example.test", "carol@other.test")
    assert not sd.may_post("g-listed@example.test", "alice@example.test")
    assert sd.may_post("g-domain@example.test", "bob@example.test")
    assert not sd.may_post("g-domain@example.test", "carol@other.test")
    sd.del_sender("g-listed@example.test", "carol@other.test")
    assert not sd.may_post("g-listed@example.test", "carol@other.test")


def test_nested_groups_dedup_and_cycles(sd: SyncDirectory) -> None:
    for n in ("a", "b", "c", "d"):
        sd.add_user(f"{n}@example.test")
    sd.add_user("off@example.test", state="suspended")
    sd.add_group("g1@example.test")
    sd.add_group("g2@example.test")
    sd.add_member("g1@example.test", "a@example.test")
    sd.add_member("g1@example.test", "b@example.test")
    sd.add_member("g1@example.test", "g2@example.test")
    sd.add_member("g1@example.test", "off@example.test")
    sd.add_member("g1@example.test", "x@outside.test")
    sd.add_member("g2@example.test", "b@example.test")
    sd.add_member("g2@example.test", "c@example.test")
    sd.add_member("g2@example.test", "g1@example.test")  # a cycle
    sd.add_member("g2@example.test", "x@outside.test")
    users = [a.address for a in sd.expand_accounts("g2@example.test", 0, 100)]
    assert users == ["a@example.test", "b@example.test", "c@example.test"]
    assert sd.expand_outside("g2@example.test", "", 100) == ["x@outside.test"]


def test_department_tree(sd: SyncDirectory) -> None:
    sd.add_dept("company@example.test", name="Company")
    sd.add_dept("sales@example.test", name="Sales", parent="company@example.test")
    sd.add_dept("emea@example.test", name="EMEA", parent="sales@example.test")
    sd.add_dept("rd@example.test", name="R&D", parent="company@example.test")
    sd.add_user("ceo@example.test", dept="company@example.test")
    sd.add_user("s1@example.test", dept="sales@example.test")
    sd.add_user("e1@example.test", dept="emea@example.test")
    sd.add_user("r1@example.test", dept="rd@example.test")
    expand = lambda g: sorted(a.address for a in sd.expand_accounts(g, 0, 100))  # noqa: E731
    assert expand("company@example.test") == ["ceo@example.test", "e1@example.test", "r1@example.test", "s1@example.test"]
    assert expand("sales@example.test") == ["e1@example.test", "s1@example.test"]
    assert sd.account_by_address("e1@example.test").department == "Company/Sales/EMEA"  # type: ignore[union-attr]
    sd.move_dept("emea@example.test", "rd@example.test")
    assert expand("sales@example.test") == ["s1@example.test"]
    assert expand("rd@example.test") == ["e1@example.test", "r1@example.test"]
    assert sd.account_by_address("e1@example.test").department == "Company/R&D/EMEA"  # type: ignore[union-attr]


async def test_5000_member_group_streams_in_batches(sd: SyncDirectory, ad: Directory, monkeypatch) -> None:
    ids = []
    sd.add_group("all@example.test", post_policy="members")
    sd.add_group("half@example.test")
    for i in range(5000):
        ids.append(sd.add_user(f"u{i:04d}@example.test").id)
    sd.add_members_bulk("all@example.test", ids)
    sd.add_members_bulk("half@example.test", ids[:2500])
    sd.add_member("all@example.test", "half@example.test")  # overlaps: must not duplicate
    for i in range(700):
        sd.add_member("all@example.test", f"ext{i:03d}@outside.test")
    calls = []
    real = sd.__class__.expand_accounts

    def counting(self, group, after, limit):  # type: ignore[no-untyped-def]
        calls.append(limit)
        return real(self, group, after, limit)

    monkeypatch.setattr(sd.__class__, "expand_accounts", counting)
    seen_local, seen_out = [], []
    async for m in ad.expand("all@example.test"):
        (seen_local if m.account is not None else seen_out).append(m.address)
    assert len(seen_local) == 5000 and len(set(seen_local)) == 5000
    assert len(seen_out) == 700 and len(set(seen_out)) == 700
    assert max(calls) == 500 and len(calls) == 11  # 10 full pages and an empty one
    assert await ad.may_post("all@example.test", "u1234@example.test")
    assert not await ad.may_post("all@example.test", "nobody@elsewhere.test")


async def test_async_facade_sees_changes_without_restart(sd: SyncDirectory, ad: Directory) -> None:
    assert (await ad.resolve("late@example.test")).kind is Kind.UNKNOWN
    sd.add_user("late@example.test")
    res = await ad.resolve("late@example.test")
    assert res.kind is Kind.USER
    assert res.account is not None
    assert await ad.account(res.account.id) == res.account
    assert [a.address async for a in ad.iter_accounts("example.test")] == ["late@example.test"]
    assert await ad.is_local_domain("EXAMPLE.test")
    assert not await ad.is_local_domain("elsewhere.test")
