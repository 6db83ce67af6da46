"""SASL mechanisms: pure state machines, then the async sessions against scramp (an independent client)."""

from __future__ import annotations

import base64

import pytest
import scramp
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.auth import (
    Authenticator,
    Challenge,
    ChannelBinding,
    Failure,
    Success,
    UnknownMechanism,
    sasl,
)
from mailsrv.auth.passwords import make_scram

from .conftest import PASSWORD

# -- pure machines ------------------------------------------------------------------------------


def test_plain_machine() -> None:
    m = sasl.Plain()
    assert m.step(None) == sasl.Challenge(b"")
    assert m.step(b"authz\0user\0pw") == sasl.NeedPassword("authz", "user", "pw")
    assert isinstance(m.step(b"\0user\0pw"), sasl.Failure)  # finished
    for bad in (b"user\0pw", b"\0\0pw", b"\0user\0", b"\0\xff\0pw", b"a\0b\0c\0d"):
        assert isinstance(sasl.Plain().step(bad), sasl.Failure)


def test_login_machine() -> None:
    m = sasl.Login()
    assert m.step(None) == sasl.Challenge(b"Username:")
    assert m.step(b"alice") == sasl.Challenge(b"Password:")
    assert m.step(b"pw") == sasl.NeedPassword("", "alice", "pw")
    m = sasl.Login()
    assert m.step(b"alice") == sasl.Challenge(b"Password:")  # initial response is the user name
    assert isinstance(m.step(b""), sasl.Failure)


@given(st.lists(st.one_of(st.none(), st.binary(max_size=300)), max_size=5))
def test_machines_never_raise(chunks: list[bytes | None]) -> None:
    v = make_scram("x", 4096, salt=b"0123456789abcdef")
    for m in (sasl.Plain(), sasl.Login(), sasl.Scram(plus=False, binding=None, plus_offered=False),
              sasl.Scram(plus=True, binding=ChannelBinding("tls-server-end-point", b"h" * 32), plus_offered=True)):
        for c in chunks:
            out = m.step(c)
            if isinstance(out, sasl.NeedVerifier):
                assert isinstance(m, sasl.Scram)
                m.provide(v)


def test_scram_rejects_downgrade_and_wrong_binding() -> None:
    cb = ChannelBinding("tls-server-end-point", b"x" * 32)
    assert isinstance(sasl.Scram(plus=False, binding=cb, plus_offered=True).step(b"y,,n=a,r=abc"), sasl.Failure)
    assert isinstance(sasl.Scram(plus=True, binding=cb, plus_offered=True).step(b"n,,n=a,r=abc"), sasl.Failure)
    assert isinstance(sasl.Scram(plus=True, binding=cb, plus_offered=True).step(b"p=tls-unique,,n=a,r=abc"), sasl.Failure)
    assert isinstance(sasl.Scram(plus=False, binding=None, plus_offered=False).step(b"y,,n=a,r=abc"), sasl.NeedVerifier)
    assert sasl.Scram(plus=False, binding=None, plus_offered=False).step(b"n,a=x=2Cy,n=u=3Dv,r=abc") == \
        sasl.NeedVerifier("x,y", "u=v")


# -- sessions against scramp ---------------------------------------------------------------------------


async def _scram_login(auth: Authenticator, user: str, password: str, *, mech: str = "SCRAM-SHA-256",
                       cb: ChannelBinding | None = None, client_cb: tuple[str, bytes] | None = None):
    client = scramp.ScramClient([mech], user, password, channel_binding=client_cb)
    s = auth.sasl(mech, protocol="imap", client_ip="127.0.0.1", tls=True, channel_binding=cb)
    step = await s.step(client.get_client_first().encode())
    if not isinstance(step, Challenge):
        return step, client
    client.set_server_first(step.data.decode())
    step = await s.step(client.get_client_final().encode())
    if isinstance(step, Success):
        assert step.data is not None
        client.set_server_final(step.data.decode())  # raises if our ServerSignature is wrong
    return step, client


async def test_scram_sha256_against_scramp(auth: Authenticator) -> None:
    step, _ = await _scram_login(auth, "alice@example.test", PASSWORD)
    assert isinstance(step, Success) and step.account.address == "alice@example.test"
    step, _ = await _scram_login(auth, "al@example.test", PASSWORD)  # alias login
    assert isinstance(step, Success) and step.account.address == "alice@example.test"
    step, _ = await _scram_login(auth, "alice@example.test", "wrong")
    assert isinstance(step, Failure) and step.reason == "bad proof"
    step, _ = await _scram_login(auth, "nobody@example.test", "whatever")
    assert isinstance(step, Failure) and step.reason == "unknown user"


async def test_scram_decoy_salt_is_stable_for_unknown_users(auth: Authenticator) -> None:
    async def salt_of(user: str) -> bytes:
        s = auth.sasl("SCRAM-SHA-256", protocol="imap", client_ip="127.0.0.1", tls=True)
        step = await s.step(f"n,,n={user},r=abcdef".encode())
        assert isinstance(step, Challenge)
        fields = dict(f.split("=", 1) for f in step.data.decode().split(","))
        assert fields["i"] == "4096"
        return base64.b64decode(fields["s"])

    assert await salt_of("ghost@example.test") == await salt_of("ghost@example.test")
    assert await salt_of("ghost@example.test") != await salt_of("other-ghost@example.test")


async def test_scram_plus_with_tls_server_end_point(auth: Authenticator) -> None:
    data = b"\x01" * 32
    cb = ChannelBinding("tls-server-end-point", data)
    assert auth.mechanisms(tls=True, client_ip="192.0.2.1", channel_binding=True)[0] == "SCRAM-SHA-256-PLUS"
    step, _ = await _scram_login(auth, "bob@example.test", PASSWORD, mech="SCRAM-SHA-256-PLUS", cb=cb,
                                 client_cb=("tls-server-end-point", data))
    assert isinstance(step, Success)
    # a man in the middle sees another certificate: the binding differs
    step, _ = await _scram_login(auth, "bob@example.test", PASSWORD, mech="SCRAM-SHA-256-PLUS", cb=cb,
                                 client_cb=("tls-server-end-point", b"\x02" * 32))
    assert isinstance(step, Failure) and step.reason == "channel binding mismatch"


async def test_plain_and_login_sessions(auth: Authenticator) -> None:
    s = auth.sasl("PLAIN", protocol="smtp", client_ip="127.0.0.1", tls=True)
    out = await s.step(f"\0alice@example.test\0{PASSWORD}".encode())
    assert isinstance(out, Success) and out.authzid == "alice@example.test"
    s = auth.sasl("PLAIN", protocol="smtp", client_ip="127.0.0.1", tls=True)
    out = await s.step(f"bob@example.test\0alice@example.test\0{PASSWORD}".encode())
    assert isinstance(out, Failure) and out.reason == "authzid mismatch"
    s = auth.sasl("PLAIN", protocol="smtp", client_ip="127.0.0.1", tls=True)
    out = await s.step(f"AL@example.test\0al@example.test\0{PASSWORD}".encode())  # alias as both
    assert isinstance(out, Success) and out.authzid == "alice@example.test"
    s = auth.sasl("login", protocol="pop3", client_ip="127.0.0.1", tls=True)
    assert await s.step(None) == Challenge(b"Username:")
    assert await s.step(b"bob@example.test") == Challenge(b"Password:")
    out = await s.step(PASSWORD.encode())
    assert isinstance(out, Success) and out.account.address == "bob@example.test"


async def test_plaintext_mechanisms_need_tls(auth: Authenticator) -> None:
    assert auth.mechanisms(tls=False, client_ip="127.0.0.1") == ["SCRAM-SHA-256"]
    assert auth.mechanisms(tls=True, client_ip="192.0.2.1") == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]
    with pytest.raises(UnknownMechanism):
        auth.sasl("PLAIN", protocol="imap", client_ip="127.0.0.1", tls=False)
    with pytest.raises(UnknownMechanism):
        auth.sasl("CRAM-MD5", protocol="imap", client_ip="127.0.0.1", tls=True)
    r = await auth.login("alice@example.test", PASSWORD, protocol="pop3", client_ip="127.0.0.1", tls=False)
    assert not r.ok and r.reason == "plain-text password without TLS"
