"""SASL server mechanisms as pure state machines: bytes in, a step out. No I/O, no asyncio.

Each mechanism's ``step(data)`` takes the client's (base64-decoded) response,
``None`` for "no initial response", and returns one of:

- :class:`Challenge` - send ``data`` to the client and feed its answer to ``step``;
- :class:`NeedPassword` - PLAIN/LOGIN: the caller checks the password;
- :class:`NeedVerifier` - SCRAM: the caller looks up the user and calls ``provide``;
- :class:`Verified` - SCRAM: the proof was right; ``data`` is the server-final message;
- :class:`Failure` - end of the exchange; ``reason`` is for logs only.

Invariants: a mechanism never raises for anything the client sends; after a
``Failure`` or ``Verified`` every further step is a ``Failure``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from mailsrv.auth.passwords import ScramVerifier

#: Longest client response we look at (RFC 4616 §2 allows 255 octets per field).
MAX_RESPONSE = 4096


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class NeedPassword:
    authzid: str
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class NeedVerifier:
    authzid: str
    username: str


@dataclass(frozen=True, slots=True)
class Verified:
    authzid: str
    username: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelBinding:
    """TLS channel binding data (RFC 5929 / RFC 9266) the connection computed."""

    type: str
    data: bytes


Step = Challenge | NeedPassword | NeedVerifier | Verified | Failure


def _utf8(b: bytes) -> str | None:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Plain:
    """RFC 4616: ``[authzid] NUL authcid NUL passwd``."""

    name = "PLAIN"

    def __init__(self) -> None:
        self.done = False

    def step(self, data: bytes | None) -> Step:
        if self.done:
            return Failure("exchange finished")
        if data is None:
            return Challenge(b"")  # RFC 4422 §5: empty challenge asks for the initial response
        self.done = True
        if len(data) > MAX_RESPONSE:
            return Failure("response too long")
        parts = data.split(b"\0")
        if len(parts) != 3:
            return Failure("malformed PLAIN response")
        fields = [_utf8(p) for p in parts]
        if any(f is None for f in fields) or not parts[1] or not parts[2]:
            return Failure("malformed PLAIN response")
        authzid, user, pw = fields
        assert authzid is not None and user is not None and pw is not None
        return NeedPassword(authzid, user, pw)


class Login:
    """The LOGIN mechanism (draft-murchison-sasl-login): ask user name, then password."""

    name = "LOGIN"

    def __init__(self) -> None:
        self.state = 0
        self.user = ""

    def step(self, data: bytes | None) -> Step:
        if self.state == 0:
            self.state = 1
            if data is None or data == b"":  # no (or an empty) initial response: ask for the name
                return Challenge(b"Username:")
        if self.state == 1:
            self.state = 3
            user = _utf8(data) if data is not None and len(data) <= MAX_RESPONSE else None
            if not user:
                return Failure("malformed LOGIN user name")
            self.user = user
            self.state = 2
            return Challenge(b"Password:")
        if self.state == 2:
            self.state = 3
            pw = _utf8(data) if data is not None and len(data) <= MAX_RESPONSE else None
            if not pw:
                return Failure("malformed LOGIN password")
            return NeedPassword("", self.user, pw)
        return Failure("exchange finished")


def _saslname_decode(s: str) -> str | None:
    """RFC 5802 §5.1: "=2C" is ",", "=3D" is "="; any other "=" is an error."""
    out = []
    i = 0
    while i < len(s):
        if s[i] == "=":
            code = s[i + 1:i + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                return None
            i += 3
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


class Scram:
    """SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677, RFC 5929, RFC 9266).

    ``plus``: this is the -PLUS mechanism (the client must bind to ``binding``).
    ``plus_offered``: the server advertised -PLUS, so a client that says "y"
    (it supports binding but thinks the server does not) is a downgrade attack.
    """

    def __init__(self, *, plus: bool, binding: ChannelBinding | None, plus_offered: bool,
                 nonce: bytes | None = None) -> None:
        self.name = "SCRAM-SHA-256-PLUS" if plus else "SCRAM-SHA-256"
        self.plus = plus
        self.binding = binding
        self.plus_offered = plus_offered
        self.server_nonce = base64.b64encode(nonce or os.urandom(18)).decode()
        self.state = "first"
        self.gs2_header = b""
        self.client_first_bare = ""
        self.server_first = ""
        self.nonce = ""
        self.verifier: ScramVerifier | None = None
        self.authzid = ""
        self.user = ""

    def _fail(self, reason: str) -> Failure:
        self.state = "done"
        return Failure(reason)

    def step(self, data: bytes | None) -> Step:
        if self.state == "first":
            if data is None or data == b"":
                return Challenge(b"")
            return self._client_first(data)
        if self.state == "final":
            return self._client_final(data or b"")
        return self._fail("exchange finished")

    def _client_first(self, data: bytes) -> Step:
        text = _utf8(data) if len(data) <= MAX_RESPONSE else None
        if text is None:
            return self._fail("malformed client-first")
        parts = text.split(",", 2)
        if len(parts) != 3:
            return self._fail("malformed client-first")
        cbflag, authz, bare = parts
        # RFC 5802 §6: "p=" demands binding; "y" means client could bind but thinks we cannot.
        if cbflag.startswith("p="):
            if not self.plus or self.binding is None or cbflag[2:] != self.binding.type:
                return self._fail("channel binding type not supported")
        elif cbflag == "y":
            if self.plus or self.plus_offered:
                return self._fail("channel binding downgrade (client said y)")
        elif cbflag == "n":
            if self.plus:
                return self._fail("-PLUS without channel binding")
        else:
            return self._fail("malformed gs2 header")
        if authz:
            if not authz.startswith("a="):
                return self._fail("malformed authzid")
            decoded = _saslname_decode(authz[2:])
            if decoded is None:
                return self._fail("malformed authzid")
            self.authzid = decoded
        fields = bare.split(",")
        if fields[0].startswith("m="):
            return self._fail("unsupported mandatory extension")
        if len(fields) < 2 or not fields[0].startswith("n=") or not fields[1].startswith("r="):
            return self._fail("malformed client-first-bare")
        user = _saslname_decode(fields[0][2:])
        cnonce = fields[1][2:]
        if not user or user is None or not cnonce or any(c < "!" or c > "~" or c == "," for c in cnonce):
            return self._fail("malformed client-first-bare")
        self.user = user
        self.gs2_header = (cbflag + "," + authz + ",").encode()
        self.client_first_bare = bare
        self.nonce = cnonce + self.server_nonce
        self.state = "verifier"
        return NeedVerifier(self.authzid, user)

    def provide(self, verifier: ScramVerifier) -> Challenge | Failure:
        """Give the user's verifier (a decoy for an unknown user); returns the server-first challenge."""
        if self.state != "verifier":
            return self._fail("verifier not expected")
        self.verifier = verifier
        salt = base64.b64encode(verifier.salt).decode()
        self.server_first = f"r={self.nonce},s={salt},i={verifier.iterations}"
        self.state = "final"
        return Challenge(self.server_first.encode())

    def _client_final(self, data: bytes) -> Step:
        assert self.verifier is not None
        text = _utf8(data) if len(data) <= MAX_RESPONSE else None
        if text is None:
            return self._fail("malformed client-final")
        fields = text.split(",")
        if len(fields) < 3 or not fields[0].startswith("c=") or not fields[1].startswith("r="):
            return self._fail("malformed client-final")
        if not fields[-1].startswith("p="):
            return self._fail("malformed client-final (no proof)")
        expected_c = self.gs2_header + (self.binding.data if self.plus and self.binding else b"")
        try:
            got_c = base64.b64decode(fields[0][2:], validate=True)
            proof = base64.b64decode(fields[-1][2:], validate=True)
        except ValueError:
            return self._fail("malformed base64 in client-final")
        if not hmac.compare_digest(got_c, expected_c):
            return self._fail("channel binding mismatch")
        if fields[1][2:] != self.nonce:
            return self._fail("nonce mismatch")
        without_proof = ",".join(fields[:-1])
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        client_sig = hmac.new(self.verifier.stored_key, auth_message, hashlib.sha256).digest()
        if len(proof) != len(client_sig):
            return self._fail("bad proof")
        client_key = bytes(a ^ b for a, b in zip(proof, client_sig, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.verifier.stored_key):
            return self._fail("bad proof")
        server_sig = hmac.new(self.verifier.server_key, auth_message, hashlib.sha256).digest()
        self.state = "done"
        return Verified(self.authzid, self.user, b"v=" + base64.b64encode(server_sig))
