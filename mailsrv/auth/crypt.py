"""Legacy password hashes found in exports from Dovecot and hosted providers (verify only).

SHA-512-crypt / SHA-256-crypt (Drepper, "Unix crypt using SHA-256 and
SHA-512"), MD5-crypt (the FreeBSD ``$1$`` scheme) and salted SHA (``{SSHA}``)
in pure Python; bcrypt (``{BLF-CRYPT}``, ``$2y$``) through the bcrypt package.
These exist only so that imported users can log in once and be upgraded to
argon2id; nothing new is ever hashed with them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_ALPHABET = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# Byte order of the final encoding, as (b2, b1, b0) triples (Drepper's spec).
_SHA512_ORDER = [(0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
                 (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
                 (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41)]
_SHA256_ORDER = [(0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14), (15, 25, 5), (6, 16, 26),
                 (27, 7, 17), (18, 28, 8), (9, 19, 29)]
_MD5_ORDER = [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)]

#: Drepper's limits on the rounds parameter.
ROUNDS_DEFAULT, ROUNDS_MIN, ROUNDS_MAX = 5000, 1000, 999_999_999


def _b64(b2: int, b1: int, b0: int, n: int) -> bytes:
    w = (b2 << 16) | (b1 << 8) | b0
    out = bytearray()
    for _ in range(n):
        out.append(_ALPHABET[w & 0x3F])
        w >>= 6
    return bytes(out)


def _repeat(block: bytes, n: int) -> bytes:
    return (block * (n // len(block) + 1))[:n]


def sha_crypt(password: bytes, setting: str) -> str:
    """Compute ``$5$`` or ``$6$`` crypt of ``password`` with ``setting`` (``$6$[rounds=N$]salt[$...]``)."""
    parts = setting.split("$")
    if len(parts) < 3 or parts[0] != "" or parts[1] not in ("5", "6"):
        raise ValueError("not a SHA-crypt setting")
    ident = parts[1]
    hfn = hashlib.sha512 if ident == "6" else hashlib.sha256
    rest = parts[2:]
    rounds, custom = ROUNDS_DEFAULT, False
    if rest[0].startswith("rounds="):
        rounds = min(max(int(rest[0][7:]), ROUNDS_MIN), ROUNDS_MAX)
        custom = True
        rest = rest[1:]
    salt = rest[0].encode()[:16]
    pw = password
    b = hfn(pw + salt + pw).digest()
    a = hfn(pw + salt + _repeat(b, len(pw)))
    n = len(pw)
    while n:
        a.update(b if n & 1 else pw)
        n >>= 1
    c = a.digest()
    p = _repeat(hfn(pw * len(pw)).digest(), len(pw))
    s = _repeat(hfn(salt * (16 + c[0])).digest(), len(salt))
    for i in range(rounds):
        h = hfn(p if i & 1 else c)
        if i % 3:
            h.update(s)
        if i % 7:
            h.update(p)
        h.update(c if i & 1 else p)
        c = h.digest()
    if ident == "6":
        enc = b"".join(_b64(c[x], c[y], c[z], 4) for x, y, z in _SHA512_ORDER) + _b64(0, 0, c[63], 2)
    else:
        enc = b"".join(_b64(c[x], c[y], c[z], 4) for x, y, z in _SHA256_ORDER) + _b64(0, c[31], c[30], 3)
    head = f"${ident}$" + (f"rounds={rounds}$" if custom else "")
    return head + salt.decode() + "$" + enc.decode()


def md5_crypt(password: bytes, setting: str) -> str:
    """Compute ``$1$salt$hash`` (MD5-crypt)."""
    if not setting.startswith("$1$"):
        raise ValueError("not an MD5-crypt setting")
    salt = setting[3:].split("$", 1)[0].encode()[:8]
    pw = password
    final = hashlib.md5(pw + salt + pw).digest()
    ctx = pw + b"$1$" + salt
    n = len(pw)
    while n > 0:
        ctx += final[: min(16, n)]
        n -= 16
    i = len(pw)
    while i:
        ctx += b"\0" if i & 1 else pw[:1]
        i >>= 1
    final = hashlib.md5(ctx).digest()
    for i in range(1000):
        c = pw if i & 1 else final
        if i % 3:
            c += salt
        if i % 7:
            c += pw
        c += final if i & 1 else pw
        final = hashlib.md5(c).digest()
    enc = b"".join(_b64(final[x], final[y], final[z], 4) for x, y, z in _MD5_ORDER) + _b64(0, 0, final[11], 2)
    return "$1$" + salt.decode() + "$" + enc.decode()


def verify_crypt(password: bytes, stored: str) -> bool:
    """Verify a bare crypt(3) string: ``$1$``, ``$5$``, ``$6$``, ``$2a$``/``$2b$``/``$2y$``."""
    if stored.startswith(("$5$", "$6$")):
        computed = sha_crypt(password, stored)
    elif stored.startswith("$1$"):
        computed = md5_crypt(password, stored)
    elif stored.startswith(("$2a$", "$2b$", "$2y$")):
        import bcrypt

        try:
            return bool(bcrypt.checkpw(password[:72], stored.replace("$2y$", "$2b$", 1).encode()))
        except ValueError:
            return False
    else:
        return False
    return hmac.compare_digest(computed.encode(), stored.encode())


def verify_ssha(password: bytes, b64: str, hfn: type | object = hashlib.sha1, size: int = 20) -> bool:
    """``{SSHA}``: base64(SHA1(password + salt) + salt); also SSHA256/SSHA512 with their sizes."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:
        return False
    if len(raw) <= size:
        return False
    digest, salt = raw[:size], raw[size:]
    return hmac.compare_digest(hfn(password + salt).digest(), digest)  # type: ignore[operator]
