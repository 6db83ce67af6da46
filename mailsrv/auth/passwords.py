"""Password storage: argon2id hashes plus SCRAM-SHA-256 verifiers; legacy hashes verified for upgrade.

Everything here is CPU-bound and blocking: callers on an event loop run it in
an executor (``Authenticator`` does). Clear-text passwords are never stored
or logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata
from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mailsrv.auth import crypt
from mailsrv.config import AuthConfig

#: RFC 7677 §4: at least 4096 iterations of PBKDF2-HMAC-SHA-256.
SCRAM_MIN_ITERATIONS = 4096
SCRAM_SALT_BYTES = 16


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep (mapping, NFKC, prohibited output); ValueError on prohibited characters."""
    # RFC 4013 §2.1: non-ASCII spaces map to SPACE, "commonly mapped to nothing" is removed.
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c))
    norm = unicodedata.normalize("NFKC", mapped)
    for c in norm:
        if (stringprep.in_table_c12(c) or stringprep.in_table_c21_c22(c) or stringprep.in_table_c3(c)
                or stringprep.in_table_c4(c) or stringprep.in_table_c5(c) or stringprep.in_table_c6(c)
                or stringprep.in_table_c7(c) or stringprep.in_table_c8(c) or stringprep.in_table_c9(c)
                or stringprep.in_table_a1(c)):
            raise ValueError("password contains a character SASLprep prohibits")
    return norm


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    """RFC 5802 §3 server-side data: salt, iterations, StoredKey, ServerKey."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def encode(self) -> str:
        b = base64.b64encode
        return (f"SCRAM-SHA-256${self.iterations}:{b(self.salt).decode()}$"
                f"{b(self.stored_key).decode()}:{b(self.server_key).decode()}")

    @classmethod
    def decode(cls, text: str) -> ScramVerifier | None:
        try:
            scheme, params, keys = text.split("$")
            if scheme != "SCRAM-SHA-256":
                return None
            it, salt = params.split(":")
            stored, server = keys.split(":")
            return cls(int(it), base64.b64decode(salt), base64.b64decode(stored), base64.b64decode(server))
        except ValueError:
            return None


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) for a password (RFC 5802 §3)."""
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest(), server_key


def make_scram(password: str, iterations: int = SCRAM_MIN_ITERATIONS, salt: bytes | None = None) -> ScramVerifier:
    salt = salt if salt is not None else os.urandom(SCRAM_SALT_BYTES)
    stored, server = scram_keys(password, salt, max(iterations, SCRAM_MIN_ITERATIONS))
    return ScramVerifier(max(iterations, SCRAM_MIN_ITERATIONS), salt, stored, server)


class Hasher:
    """Hashes and verifies passwords with the configured argon2id parameters."""

    def __init__(self, cfg: AuthConfig) -> None:
        self.cfg = cfg
        self.ph = argon2.PasswordHasher(
            time_cost=cfg.argon2_time_cost, memory_cost=cfg.argon2_memory_kib,
            parallelism=cfg.argon2_parallelism, type=argon2.Type.ID,
        )

    def make(self, password: str) -> tuple[str, str]:
        """(argon2id hash, SCRAM verifier) for storing a new password."""
        return self.ph.hash(password), make_scram(password, self.cfg.scram_iterations).encode()

    def verify(self, stored: str, password: str) -> tuple[bool, bool]:
        """(matches, should be re-hashed with current parameters). Never raises for bad input."""
        pw = password.encode("utf-8", "surrogateescape")
        scheme, value = _split_scheme(stored)
        if scheme in ("", "ARGON2ID", "ARGON2I") and value.startswith("$argon2"):
            try:
                self.ph.verify(value, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False, False
            return True, scheme != "" or self.ph.check_needs_rehash(value)
        ok = False
        if scheme in ("", "CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "BLF-CRYPT", "MD5"):
            ok = value.startswith("$") and crypt.verify_crypt(pw, value)
        elif scheme == "SSHA":
            ok = crypt.verify_ssha(pw, value, hashlib.sha1, 20)
        elif scheme == "SSHA256":
            ok = crypt.verify_ssha(pw, value, hashlib.sha256, 32)
        elif scheme == "SSHA512":
            ok = crypt.verify_ssha(pw, value, hashlib.sha512, 64)
        return ok, ok  # a legacy hash that matched is always upgraded


def _split_scheme(stored: str) -> tuple[str, str]:
    """``{SHA512-CRYPT}$6$...`` -> ("SHA512-CRYPT", "$6$..."); no prefix -> ("", stored)."""
    if stored.startswith("{") and "}" in stored:
        scheme, _, value = stored[1:].partition("}")
        return scheme.upper(), value
    return "", stored


SUPPORTED_SCHEMES = ("ARGON2ID", "SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "BLF-CRYPT", "CRYPT",
                     "SSHA", "SSHA256", "SSHA512")


def is_supported(stored: str) -> bool:
    """Whether an imported hash is in a format that can be verified."""
    if stored == "":
        return True  # no password: the account cannot log in until one is set
    scheme, value = _split_scheme(stored)
    if scheme == "":
        return value.startswith(("$argon2", "$1$", "$5$", "$6$", "$2a$", "$2b$", "$2y$"))
    return scheme in SUPPORTED_SCHEMES or scheme == "MD5"
