"""DKIM (RFC 6376) and ARC (RFC 8617) verification with dkimpy, keys fetched by the shared async resolver.

Keys are fetched concurrently on the loop first; then dkimpy runs in a thread
(RSA/Ed25519 verification and body hashing are CPU work) with a ``dnsfunc``
that only answers from the prefetched keys, so dkimpy never does DNS itself.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Literal

import dkim

from mailsrv.net.dns import DnsTempError, Resolver
from mailsrv.policy.headers import Fields, get_all, split_fields, tag_list

DkimResultCode = Literal["pass", "fail", "neutral", "temperror", "permerror", "none", "policy"]

#: RFC 8301 §3.2: verifiers MUST reject RSA keys shorter than 1024 bits.
MIN_KEY_BITS = 1024


@dataclass(frozen=True)
class DkimResult:
    result: DkimResultCode
    domain: str = ""  # d=
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    reason: str = ""


@dataclass(frozen=True)
class ArcResult:
    result: Literal["pass", "fail", "none", "temperror"]
    reason: str = ""
    instances: int = 0
    #: d= of the sealer of the newest instance (who vouches for the chain)
    sealer: str = ""


class _Temp:
    """Marker: the key lookup failed temporarily."""


_TEMP = _Temp()


def _key_name(tags: dict[str, str]) -> str | None:
    d, s = tags.get("d", ""), tags.get("s", "")
    if not d or not s:
        return None
    return f"{s}._domainkey.{d}".lower().rstrip(".")


async def _prefetch(resolver: Resolver, names: set[str]) -> dict[str, bytes | None | _Temp]:
    async def one(name: str) -> tuple[str, bytes | None | _Temp]:
        try:
            txts = await resolver.txt(name)
        except DnsTempError:
            return name, _TEMP
        # RFC 6376 §3.6.2.2: multiple TXT records give undefined results; use the first
        return name, txts[0].encode() if txts else None

    pairs = await asyncio.gather(*(one(n) for n in names))
    return dict(pairs)


def _dnsfunc(keys: dict[str, bytes | None | _Temp]) -> object:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        key = keys.get(name.decode("ascii", "replace").lower().rstrip("."))
        if isinstance(key, _Temp):
            raise dkim.DnsTimeoutError(f"key lookup for {name!r} failed temporarily")
        return key

    return dnsfunc


def _verify_all(message: bytes, sigs: list[dict[str, str]], keys: dict[str, bytes | None | _Temp]) -> list[DkimResult]:
    out: list[DkimResult] = []
    dnsfunc = _dnsfunc(keys)
    d = dkim.DKIM(message, minkey=MIN_KEY_BITS)
    for idx, tags in enumerate(sigs):
        base = {"domain": tags.get("d", "").lower(), "selector": tags.get("s", ""),
                "algorithm": tags.get("a", "")}
        name = _key_name(tags)
        if name is None:
            out.append(DkimResult("permerror", reason="signature lacks d= or s=", **base))
            continue
        key = keys.get(name)
        if isinstance(key, _Temp):
            out.append(DkimResult("temperror", reason="key lookup failed", **base))
            continue
        if key is None:
            out.append(DkimResult("permerror", reason="no key for signature", **base))
            continue
        try:
            # dkimpy turns a bad key into a plain False: check the key first (RFC 6376 §6.1.2: PERMFAIL)
            dkim.evaluate_pk(name.encode(), key)
        except (dkim.KeyFormatError, ValueError, TypeError) as exc:
            out.append(DkimResult("permerror", reason=f"bad key: {exc}"[:120], **base))
            continue
        try:
            ok = d.verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.DnsTimeoutError:
            out.append(DkimResult("temperror", reason="key lookup failed", **base))
            continue
        except dkim.ValidationError as exc:
            # a body that changed is a signature that failed (RFC 8601 §2.7.1 "fail"); the rest is syntax
            code: DkimResultCode = "fail" if "body hash mismatch" in str(exc) else "permerror"
            out.append(DkimResult(code, reason=str(exc)[:120], **base))
            continue
        except (dkim.KeyFormatError, dkim.ParameterError, dkim.MessageFormatError,
                dkim.UnparsableKeyError, dkim.UnknownKeyTypeError, dkim.DKIMException) as exc:
            out.append(DkimResult("permerror", reason=str(exc)[:120], **base))
            continue
        except (ValueError, IndexError, TypeError) as exc:  # dkimpy on mangled input
            out.append(DkimResult("permerror", reason=f"malformed signature: {exc}"[:120], **base))
            continue
        out.append(DkimResult("pass" if ok else "fail", reason="" if ok else "signature did not verify",
                              **base))
    return out


Keys = dict[str, bytes | None | _Temp]


async def dkim_keys(resolver: Resolver, fields: Fields) -> tuple[list[dict[str, str]], Keys]:
    """The DKIM-Signature tag lists of a message whose header fields are ``fields``
    (:func:`~mailsrv.policy.headers.split_fields`) and their keys, fetched on the loop: the arguments of
    :func:`verify_signatures` (no signature: ``([], {})``)."""
    sigs = [tag_list(v) for v in get_all(fields, "dkim-signature")]
    if not sigs:
        return [], {}
    return sigs, await _prefetch(resolver, {n for t in sigs if (n := _key_name(t)) is not None})


def verify_signatures(message: bytes, sigs: list[dict[str, str]], keys: Keys) -> list[DkimResult]:
    """One result per signature of :func:`dkim_keys` (CPU work: call it off the loop)."""
    return _verify_all(message, sigs, keys) if sigs else []


async def verify_dkim(resolver: Resolver, message: bytes, executor: Executor | None = None, *,
                      fields: Fields | None = None) -> list[DkimResult]:
    """One result per DKIM-Signature field, in header order (empty: the message is unsigned).
    ``fields``: the message's :func:`~mailsrv.policy.headers.split_fields`, when the caller has them."""
    sigs, keys = await dkim_keys(resolver, split_fields(message) if fields is None else fields)
    if not sigs:
        return []
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, _verify_all, message, sigs, keys)


def _arc_verify(message: bytes, keys: dict[str, bytes | None | _Temp]) -> tuple[bytes, str]:
    try:
        cv, _results, comment = dkim.arc_verify(message, dnsfunc=_dnsfunc(keys), minkey=MIN_KEY_BITS)
    except dkim.DnsTimeoutError:
        return b"temperror", "key lookup failed"
    except (dkim.DKIMException, ValueError, IndexError, TypeError) as exc:
        return dkim.CV_Fail, str(exc)[:120]
    return cv, comment or ""


async def verify_arc(resolver: Resolver, message: bytes, executor: Executor | None = None, *,
                     fields: Fields | None = None) -> ArcResult:
    """RFC 8617 §5.2: validate the whole ARC chain; ``none`` when the message has no ARC sets.
    ``fields``: the message's :func:`~mailsrv.policy.headers.split_fields`, when the caller has them."""
    fields = split_fields(message) if fields is None else fields
    seals = [tag_list(v) for v in get_all(fields, "arc-seal")]
    if not seals:
        return ArcResult("none")
    ams = [tag_list(v) for v in get_all(fields, "arc-message-signature")]
    names = {n for t in seals + ams if (n := _key_name(t)) is not None}
    keys = await _prefetch(resolver, names)
    loop = asyncio.get_running_loop()
    cv, comment = await loop.run_in_executor(executor, _arc_verify, message, keys)
    # isascii: the seals are the message's, and str.isdigit() is true for "²", which int() refuses
    newest = max(seals, key=lambda t: int(t["i"]) if t.get("i", "").isascii() and t.get("i", "").isdigit() else 0)
    result = {dkim.CV_Pass: "pass", dkim.CV_None: "none", b"temperror": "temperror"}.get(cv, "fail")
    return ArcResult(result, comment, len(seals), newest.get("d", "").lower())  # type: ignore[arg-type]
