"""Client side of the SASL mechanisms the queue uses toward a smarthost (RFC 4954 AUTH).

Pure state machines, no I/O: ``start()`` gives the initial response (or None),
``step(challenge)`` answers each decoded server challenge. A malformed or
dishonest server challenge raises :class:`SaslError` (never anything else).
Preference when the server offers several: :data:`PREFERENCE`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from mailsrv.auth.passwords import saslprep

#: Best first: SCRAM never shows the password to the server (RFC 7677), PLAIN is one
#: round trip (RFC 4616), LOGIN is the legacy fallback (draft-murchison-sasl-login).
PREFERENCE = ("SCRAM-SHA-256", "PLAIN", "LOGIN")
#: Longest server challenge we parse.
MAX_CHALLENGE = 4096
#: RFC 7677 §4 recommends >= 4096; a server asking for absurdly many rounds stalls the queue owner.
MAX_SCRAM_ITERATIONS = 1_000_000


class SaslError(Exception):
    """The server's challenge was malformed, or its SCRAM signature did not verify."""


class ClientMechanism:
    name = ""

    def start(self) -> bytes | None:
        """Initial response (sent with the AUTH command), or None."""
        return None

    def step(self, challenge: bytes) -> bytes:
        raise SaslError(f"{self.name}: unexpected challenge")

    def done(self, final: bytes | None) -> None:
        """The server said 235; ``final`` is any data it sent with it (RFC 4954 §4)."""


class PlainClient(ClientMechanism):
    """RFC 4616: ``NUL authcid NUL passwd`` as the initial response."""

    name = "PLAIN"

    def __init__(self, user: str, password: str) -> None:
        self.token = b"\0" + user.encode() + b"\0" + password.encode()

    def start(self) -> bytes | None:
        return self.token


class LoginClient(ClientMechanism):
    """The LOGIN mechanism: the user name, then the password, each on a challenge."""

    name = "LOGIN"

    def __init__(self, user: str, password: str) -> None:
        self.answers = [user.encode(), password.encode()]

    def step(self, challenge: bytes) -> bytes:
        # The prompts ("Username:", "Password:") are informational; servers differ in wording.
        if not self.answers:
            raise SaslError("LOGIN: more challenges than user name and password")
        return self.answers.pop(0)


def _saslname(name: str) -> str:
    # RFC 5802 §5.1: "=" and "," are escaped in user names
    return name.replace("=", "=3D").replace(",", "=2C")


class ScramClient(ClientMechanism):
    """SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding (gs2 header ``n,,``)."""

    name = "SCRAM-SHA-256"

    def __init__(self, user: str, password: str, nonce: bytes | None = None) -> None:
        self.password = saslprep(password)
        self.nonce = base64.b64encode(nonce or os.urandom(18)).decode()
        self.first_bare = f"n={_saslname(saslprep(user))},r={self.nonce}"
        self.server_signature = b""
        self.state = "first"

    def start(self) -> bytes | None:
        return ("n,," + self.first_bare).encode()

    def step(self, challenge: bytes) -> bytes:
        if self.state == "final":
            # RFC 4954 §4: the server-final message comes as a last 334; we answer it empty
            self.verify(challenge)
            return b""
        if self.state != "first":
            raise SaslError("SCRAM: unexpected challenge")
        self.state = "final"
        if len(challenge) > MAX_CHALLENGE:
            raise SaslError("SCRAM: server-first too long")
        try:
            server_first = challenge.decode("ascii")
        except UnicodeDecodeError:
            raise SaslError("SCRAM: server-first is not ASCII") from None
        attrs = _attributes(server_first)
        if "m" in attrs:
            raise SaslError("SCRAM: unsupported mandatory extension")
        nonce, salt_b64, iter_text = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
        # RFC 5802 §5.1: the server nonce starts with ours
        if not nonce.startswith(self.nonce) or len(nonce) == len(self.nonce):
            raise SaslError("SCRAM: server nonce does not extend ours")
        if not iter_text.isascii() or not iter_text.isdigit() or not 1 <= int(iter_text) <= MAX_SCRAM_ITERATIONS:
            raise SaslError("SCRAM: bad iteration count")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
        except ValueError:
            raise SaslError("SCRAM: bad salt") from None
        if not salt:
            raise SaslError("SCRAM: empty salt")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, int(iter_text))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={base64.b64encode(b'n,,').decode()},r={nonce}"
        auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        client_sig = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_sig, strict=True))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        """RFC 5802 §3: the server proves it knew the verifier; a mismatch means an impostor."""
        try:
            attrs = _attributes(server_final.decode("ascii"))
            sig = base64.b64decode(attrs.get("v", ""), validate=True)
        except (UnicodeDecodeError, ValueError):
            raise SaslError("SCRAM: malformed server-final") from None
        if "e" in attrs or not self.server_signature or not hmac.compare_digest(sig, self.server_signature):
            raise SaslError("SCRAM: server signature does not verify")
        self.state = "verified"

    def done(self, final: bytes | None) -> None:
        if self.state != "verified":
            if not final:
                raise SaslError("SCRAM: success without a server signature")
            self.verify(final)


def _attributes(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if len(key) != 1 or not sep:
            raise SaslError("SCRAM: malformed attribute")
        out.setdefault(key, value)
    return out


def choose(offered: str, user: str, password: str) -> ClientMechanism | None:
    """The best mechanism of :data:`PREFERENCE` in an EHLO ``AUTH`` value, or None."""
    names = set(offered.upper().split())
    for name in PREFERENCE:
        if name in names:
            if name == "SCRAM-SHA-256":
                return ScramClient(user, password)
            return PlainClient(user, password) if name == "PLAIN" else LoginClient(user, password)
    return None
