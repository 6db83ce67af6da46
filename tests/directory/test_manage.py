"""Administrative changes: limits, conflicts, department moves, administrator scopes, address syntax."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.directory import (
    Conflict,
    DirectoryError,
    NotFound,
    PermissionDenied,
    SyncDirectory,
    ops,
)
from mailsrv.directory import addresses as A
from mailsrv.directory.scope import Actor


def test_domain_limits(sd: SyncDirectory) -> None:
    sd.add_domain("small.test", max_users=2, max_storage=1000)
    sd.add_user("a@small.test")  # no quota under a domain limit: the domain root alone applies
    sd.add_user("b@small.test", quota_bytes=5000)  # quota roots are independent (over-commit is allowed)
    with pytest.raises(Conflict, match="maximum of 2"):
        sd.add_user("c@small.test", quota_bytes=0)
    sd.set_user("a@small.test", quota_bytes=600)
    sd.set_user("a@small.test", quota_bytes=None)
    assert sd.user_info("a@small.test")["quota_bytes"] is None
    sd.set_domain("small.test", max_users=1)  # below today's count: only new users are refused
    with pytest.raises(DirectoryError, match="max_storage must be"):
        sd.set_domain("small.test", max_storage=-1)
    with pytest.raises(DirectoryError, match="quota_bytes must be"):
        sd.set_user("a@small.test", quota_bytes=-5)


def test_one_address_namespace(sd: SyncDirectory) -> None:
    sd.add_user("x@example.test")
    with pytest.raises(Conflict):
        sd.add_alias("x@example.test", "x@example.test")
    with pytest.raises(Conflict):
        sd.add_group("x@example.test")
    sd.add_group("g@example.test")
    with pytest.raises(Conflict):
        sd.add_user("g@example.test")
    with pytest.raises(NotFound):
        sd.add_user("y@nowhere.test")
    with pytest.raises(DirectoryError):
        sd.add_user("bad name@example.test")
    with pytest.raises(Conflict):
        sd.add_member("g@example.test", "g@example.test")
    with pytest.raises(Conflict):
        sd.del_domain("example.test")  # still has users


def test_department_cannot_move_below_itself(sd: SyncDirectory) -> None:
    sd.add_dept("top@example.test")
    sd.add_dept("mid@example.test", parent="top@example.test")
    sd.add_dept("low@example.test", parent="mid@example.test")
    with pytest.raises(Conflict):
        sd.move_dept("top@example.test", "low@example.test")
    with pytest.raises(Conflict):
        sd.move_dept("mid@example.test", "mid@example.test")
    with pytest.raises(Conflict):
        sd.del_group("top@example.test")  # has sub-departments
    sd.move_dept("low@example.test", None)
    assert sd.group_info("low@example.test")["path"] == "low"


def test_scopes_super_domain_department(sd: SyncDirectory) -> None:
    sd.add_domain("other.test")
    for u in ("root@example.test", "dom@example.test", "head@example.test", "s1@example.test", "x@other.test"):
        sd.add_user(u)
    sd.add_dept("sales@example.test")
    sd.add_dept("emea@example.test", parent="sales@example.test")
    sd.add_dept("rd@example.test")
    sd.set_user("s1@example.test", dept="emea@example.test")
    sd.grant_admin("root@example.test", "super")
    sd.grant_admin("dom@example.test", "domain", "example.test")
    sd.grant_admin("head@example.test", "dept", "sales@example.test")
    root, dom, head = (Actor.admin(sd, a) for a in ("root@example.test", "dom@example.test", "head@example.test"))
    with pytest.raises(PermissionDenied):
        Actor.admin(sd, "s1@example.test")
    assert root.can_address(sd, "x@other.test")
    assert dom.can_address(sd, "s1@example.test") and not dom.can_address(sd, "x@other.test")
    assert head.can_address(sd, "s1@example.test")
    assert not head.can_address(sd, "root@example.test")
    assert head.can_address(sd, "emea@example.test") and not head.can_address(sd, "sales@example.test")
    ops.user_add(sd, head, "s2@example.test", None, dept="emea@example.test")
    with pytest.raises(PermissionDenied):
        ops.user_add(sd, head, "s3@example.test", None)
    with pytest.raises(PermissionDenied):
        ops.user_add(sd, head, "s3@example.test", None, dept="rd@example.test")
    with pytest.raises(PermissionDenied):
        ops.user_set(sd, head, "s1@example.test", dept="rd@example.test")  # cannot move people out of scope
    with pytest.raises(PermissionDenied):
        ops.domain_set(sd, dom, "example.test", max_users=10)
    ops.domain_set(sd, dom, "example.test", catchall="s1@example.test")
    with pytest.raises(PermissionDenied):
        ops.admin_grant(sd, dom, "x@other.test", "domain", "other.test")
    ops.admin_grant(sd, dom, "s1@example.test", "dept", "emea@example.test")
    assert {u["address"] for u in ops.user_list(sd, head)} == {"s1@example.test", "s2@example.test"}
    with pytest.raises(PermissionDenied):
        ops.lockout_list(sd, dom, 0.0)


LOCAL = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,20}[a-z0-9])?", fullmatch=True).filter(lambda s: ".." not in s)
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(local=LOCAL, labels=st.lists(LABEL, min_size=2, max_size=4), tag=st.text("abc+", max_size=5))
def test_address_syntax_properties(local: str, labels: list[str], tag: str) -> None:
    domain = ".".join(labels)
    addr = f"{local}@{domain}"
    assert A.check_new(addr.upper()) == addr
    assert A.normalise(f" <{addr.upper()}> ") == addr
    assert A.split(addr) == (local, domain)
    assert A.strip_subaddress(f"{local}+{tag}", "+") == local


@given(st.text(max_size=80))
def test_address_parsers_never_crash(text: str) -> None:
    for fn in (A.check_new, A.check_any, A.split):
        try:
            fn(text)
        except ValueError:
            pass
    assert A.ip_in(text, ("10.0.0.0/8",)) in (True, False)
