"""Legacy hash verification against an independent implementation (openssl passwd) and bcrypt."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess

import bcrypt
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsrv.auth import crypt
from mailsrv.auth.passwords import Hasher, is_supported
from mailsrv.config import AuthConfig

FAST = AuthConfig(argon2_memory_kib=1024, argon2_time_cost=1)
SALT = st.text(alphabet="./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=1, max_size=16)
PW = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)


def openssl(flag: str, salt: str, pw: str) -> str:
    out = subprocess.run(["openssl", "passwd", flag, "-salt", salt, "-stdin"], input=pw + "\n",
                         capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.strip()


def test_drepper_vectors() -> None:
    # From "Unix crypt using SHA-256 and SHA-512" (Drepper), test vectors 1 and 2.
    assert crypt.sha_crypt(b"Hello world!", "$6$saltstring") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1")
    assert crypt.sha_crypt(b"Hello world!", "$6$rounds=10000$saltstringsaltstring") == (
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.")
    assert crypt.sha_crypt(b"Hello world!", "$5$saltstring") == "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"


@settings(max_examples=15, deadline=None)
@given(salt=SALT, pw=PW)
def test_sha512_and_md5_crypt_agree_with_openssl(salt: str, pw: str) -> None:
    assert crypt.sha_crypt(pw.encode(), f"$6${salt}") == openssl("-6", salt, pw)
    assert crypt.sha_crypt(pw.encode(), f"$5${salt}") == openssl("-5", salt, pw)
    assert crypt.md5_crypt(pw.encode(), f"$1${salt[:8]}") == openssl("-1", salt[:8], pw)


def test_dovecot_schemes_verify_and_ask_for_upgrade() -> None:
    h = Hasher(FAST)
    pw = "s3cret pass"
    salt = os.urandom(8)
    ssha = "{SSHA}" + base64.b64encode(hashlib.sha1(pw.encode() + salt).digest() + salt).decode()
    ssha512 = "{SSHA512}" + base64.b64encode(hashlib.sha512(pw.encode() + salt).digest() + salt).decode()
    blf = "{BLF-CRYPT}" + bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$")
    sha512 = "{SHA512-CRYPT}" + openssl("-6", "abcdefgh", pw)
    md5 = "{MD5-CRYPT}" + openssl("-1", "abcdefgh", pw)
    bare = openssl("-6", "zzz", pw)
    for stored in (ssha, ssha512, blf, sha512, md5, bare):
        assert is_supported(stored)
        assert h.verify(stored, pw) == (True, True), stored
        assert h.verify(stored, pw + "x") == (False, False), stored
    assert not is_supported("{PLAIN}secret") and h.verify("{PLAIN}" + pw, pw) == (False, False)
    assert h.verify("garbage", pw) == (False, False)


def test_argon2id_current_params_need_no_rehash() -> None:
    h = Hasher(FAST)
    stored, scram = h.make("pw pw pw pw")
    assert stored.startswith("$argon2id$") and scram.startswith("SCRAM-SHA-256$4096:")
    assert h.verify(stored, "pw pw pw pw") == (True, False)
    stronger = Hasher(AuthConfig(argon2_memory_kib=2048, argon2_time_cost=1))
    assert stronger.verify(stored, "pw pw pw pw") == (True, True)
