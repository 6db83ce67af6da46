"""SPF (RFC 7208) ``check_host()`` over the shared async resolver.

Implemented: every mechanism (all include a mx ptr ip4 ip6 exists), the
``redirect`` and ``exp`` modifiers, macros (§7) with transformers and
delimiters, the 10-lookup limit (§4.6.4) and the 2-void-lookup limit. The
HELO identity is checked with ``sender = postmaster@<helo>`` (§2.3).
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

from mailsrv.net.dns import DnsTempError, Resolver

Result = Literal["none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"]

# RFC 7208 §4.6.4: at most 10 terms that cause DNS lookups; §4.6.4 void lookups limit 2.
MAX_LOOKUPS = 10
MAX_VOID_LOOKUPS = 2
# RFC 7208 §4.6.4: an mx or ptr mechanism looks at no more than 10 names.
MAX_MX_PTR_NAMES = 10

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_MACRO = re.compile(r"%(?:\{([slodiphcrtv])(\d*)(r?)([.\-+,/_=]*)\}|(%)|(_)|(-))", re.IGNORECASE)
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")


class PermError(Exception):
    pass


class TempError(Exception):
    pass


@dataclass(frozen=True)
class SpfResult:
    result: Result
    identity: str  # "mailfrom" or "helo"
    domain: str
    explanation: str = ""
    detail: str = ""  # why (the matching mechanism or the error)


@dataclass
class _Ctx:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str
    helo: str
    receiver: str
    lookups: int = 0
    voids: int = 0
    seen: list[str] = field(default_factory=list)


def valid_domain(domain: str) -> bool:
    """RFC 7208 §4.3: a usable FQDN (at least two labels, each a valid label, <= 253 octets)."""
    d = domain.rstrip(".")
    if not d or len(d) > 253 or "." not in d:
        return False
    return all(_LABEL.match(label) for label in d.split("."))


async def check_host(resolver: Resolver, ip: str, domain: str, sender: str, *, helo: str = "",
                     receiver: str = "", identity: str = "mailfrom") -> SpfResult:
    """RFC 7208 §4: the SPF result for ``ip`` sending as ``sender`` whose domain is ``domain``."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return SpfResult("permerror", identity, domain, detail=f"bad client address {ip!r}")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    domain = domain.rstrip(".").lower()
    if not valid_domain(domain):
        # RFC 7208 §4.3: malformed or non-FQDN domain -> none
        return SpfResult("none", identity, domain, detail="not a domain name")
    ctx = _Ctx(addr, sender, helo, receiver)
    try:
        result, detail, exp = await _check(resolver, ctx, domain)
    except TempError as exc:
        return SpfResult("temperror", identity, domain, detail=str(exc))
    except PermError as exc:
        return SpfResult("permerror", identity, domain, detail=str(exc))
    return SpfResult(result, identity, domain, explanation=exp, detail=detail)


async def _record(resolver: Resolver, ctx: _Ctx, domain: str) -> str | None:
    try:
        txts = await resolver.txt(domain)
    except DnsTempError as exc:
        raise TempError(str(exc)) from None
    # RFC 7208 §4.5: exactly "v=spf1" followed by a space or the end
    recs = [t for t in txts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
    if not recs:
        return None
    if len(recs) > 1:
        raise PermError(f"{domain}: more than one SPF record")
    return recs[0]


def _count(ctx: _Ctx) -> None:
    ctx.lookups += 1
    if ctx.lookups > MAX_LOOKUPS:
        raise PermError("too many DNS lookups")


def _void(ctx: _Ctx, empty: bool) -> None:
    if empty:
        ctx.voids += 1
        if ctx.voids > MAX_VOID_LOOKUPS:
            raise PermError("too many void DNS lookups")


async def _query(resolver: Resolver, ctx: _Ctx, name: str, rdtype: str) -> list[str]:
    try:
        ans = await resolver.query(name, rdtype)
    except DnsTempError as exc:
        raise TempError(str(exc)) from None
    return list(ans.records)


async def _addresses(resolver: Resolver, ctx: _Ctx, name: str) -> list[str]:
    rdtype = "A" if ctx.ip.version == 4 else "AAAA"
    return await _query(resolver, ctx, name, rdtype)


def _split_cidr(spec: str) -> tuple[str, int | None, int | None]:
    """``domain/24//64`` -> (domain, 24, 64) (RFC 7208 §5.6 dual-cidr-length)."""
    v4: int | None = None
    v6: int | None = None
    if "//" in spec:
        spec, _, six = spec.partition("//")
        # isascii: the record is the sender's, and str.isdigit() is true for "²", which int() refuses
        if not six.isascii() or not six.isdigit() or int(six) > 128 or (len(six) > 1 and six[0] == "0"):
            raise PermError(f"bad ip6 cidr length {six!r}")
        v6 = int(six)
    if "/" in spec:
        spec, _, four = spec.rpartition("/")
        if not four.isascii() or not four.isdigit() or int(four) > 32 or (len(four) > 1 and four[0] == "0"):
            raise PermError(f"bad ip4 cidr length {four!r}")
        v4 = int(four)
    return spec, v4, v6


def _in_net(ctx: _Ctx, addr: str, v4: int | None, v6: int | None) -> bool:
    try:
        other = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if other.version != ctx.ip.version:
        return False
    plen = (v4 if v4 is not None else 32) if other.version == 4 else (v6 if v6 is not None else 128)
    return ctx.ip in ipaddress.ip_network(f"{other}/{plen}", strict=False)


async def _check(resolver: Resolver, ctx: _Ctx, domain: str) -> tuple[Result, str, str]:
    record = await _record(resolver, ctx, domain)
    if record is None:
        return "none", "no SPF record", ""
    terms = record.split()[1:]
    redirect: str | None = None
    exp: str | None = None
    mechs: list[tuple[str, str, str]] = []
    for term in terms:
        m = re.match(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$", term)
        if m:  # modifier (RFC 7208 §6)
            name = m.group(1).lower()
            if name == "redirect":
                if redirect is not None:
                    raise PermError("redirect given twice")
                redirect = m.group(2)
            elif name == "exp":
                if exp is not None:
                    raise PermError("exp given twice")
                exp = m.group(2)
            else:
                _expand(m.group(2), ctx, domain)  # syntax check only; unknown modifiers are ignored
            continue
        qual = "+"
        if term[0] in _QUALIFIERS:
            qual, term = term[0], term[1:]
        name, sep, arg = term.partition(":")
        if not sep and "/" in name:
            name, _, rest = name.partition("/")
            arg, sep = "/" + rest, "/"
        name = name.lower()
        if name not in _MECHANISMS:
            raise PermError(f"unknown mechanism {term!r}")
        mechs.append((qual, name, arg if sep else ""))
    for qual, name, arg in mechs:
        if await _match(resolver, ctx, domain, name, arg):
            result: Result = _QUALIFIERS[qual]  # type: ignore[assignment]
            explanation = ""
            if result == "fail" and exp:
                explanation = await _explain(resolver, ctx, domain, exp)
            return result, f"{qual}{name}{':' + arg if arg else ''}", explanation
    if redirect is not None:
        # RFC 7208 §6.1
        _count(ctx)
        target = _expand(redirect, ctx, domain)
        if not valid_domain(target):
            raise PermError(f"bad redirect target {target!r}")
        if await _record(resolver, ctx, target) is None:
            raise PermError(f"redirect to {target} without SPF record")
        return await _check(resolver, ctx, target)
    return "neutral", "default", ""


async def _explain(resolver: Resolver, ctx: _Ctx, domain: str, exp: str) -> str:
    """RFC 7208 §6.2: failures to fetch the explanation are ignored."""
    try:
        target = _expand(exp, ctx, domain)
        txts = await resolver.txt(target)
        if len(txts) != 1:
            return ""
        return _expand(txts[0], ctx, domain, exp=True)[:512]
    except (PermError, DnsTempError):
        return ""


async def _match(resolver: Resolver, ctx: _Ctx, domain: str, name: str, arg: str) -> bool:
    if name == "all":
        if arg:
            raise PermError("all takes no argument")
        return True
    if name in ("ip4", "ip6"):
        try:
            net = ipaddress.ip_network(arg, strict=False)
        except ValueError:
            raise PermError(f"bad {name} value {arg!r}") from None
        if (name == "ip4") != (net.version == 4) or ("/" in arg and not re.search(r"/\d+$", arg)):
            raise PermError(f"bad {name} value {arg!r}")
        return net.version == ctx.ip.version and ctx.ip in net
    if name == "include":
        _count(ctx)
        if not arg:
            raise PermError("include needs a domain")
        target = _target(arg, ctx, domain)
        # RFC 7208 §5.2 table
        if await _record(resolver, ctx, target) is None:
            raise PermError(f"include:{target} has no SPF record")
        sub, _, _ = await _check(resolver, ctx, target)
        return sub == "pass"
    if name == "exists":
        _count(ctx)
        if not arg:
            raise PermError("exists needs a domain")
        recs = await _query(resolver, ctx, _target(arg, ctx, domain), "A")
        _void(ctx, not recs)
        return bool(recs)
    spec, v4, v6 = _split_cidr(arg)
    target = _target(spec, ctx, domain) if spec else domain
    if name == "a":
        _count(ctx)
        addrs = await _addresses(resolver, ctx, target)
        _void(ctx, not addrs)
        return any(_in_net(ctx, a, v4, v6) for a in addrs)
    if name == "mx":
        _count(ctx)
        mx = await _query(resolver, ctx, target, "MX")
        _void(ctx, not mx)
        hosts = [h for _, _, h in sorted(r.partition(" ") for r in mx)]
        if len(hosts) > MAX_MX_PTR_NAMES:
            raise PermError("more than 10 MX names")
        for host in hosts:
            if any(_in_net(ctx, a, v4, v6) for a in await _addresses(resolver, ctx, host)):
                return True
        return False
    if name == "ptr":
        _count(ctx)
        if v4 is not None or v6 is not None:
            raise PermError("ptr takes no cidr")
        return bool(await validated_names(resolver, ctx, target))
    raise PermError(f"unknown mechanism {name}")  # pragma: no cover - filtered above


async def validated_names(resolver: Resolver, ctx: _Ctx, target: str) -> list[str]:
    """RFC 7208 §5.5: PTR names of the client that resolve back to it and are (sub)domains of ``target``."""
    try:
        names = await resolver.ptr(str(ctx.ip))
    except DnsTempError:
        return []
    out = []
    for n in names[:MAX_MX_PTR_NAMES]:
        n = n.lower()
        if n != target and not n.endswith("." + target):
            continue
        try:
            if str(ctx.ip) in await _addresses(resolver, ctx, n):
                out.append(n)
        except TempError:
            continue
    return out


def _target(spec: str, ctx: _Ctx, domain: str) -> str:
    target = _expand(spec, ctx, domain).rstrip(".")
    if len(target) > 253:
        # RFC 7208 §7.3: drop labels from the left until it fits
        while len(target) > 253 and "." in target:
            target = target.split(".", 1)[1]
    if not valid_domain(target):
        raise PermError(f"bad domain {target!r}")
    return target.lower()


def _expand(spec: str, ctx: _Ctx, domain: str, *, exp: bool = False) -> str:
    """RFC 7208 §7: macro expansion."""
    out: list[str] = []
    pos = 0
    for m in _MACRO.finditer(spec):
        literal = spec[pos:m.start()]
        if "%" in literal:
            raise PermError(f"bad macro in {spec!r}")
        out.append(literal)
        pos = m.end()
        if m.group(5):
            out.append("%")
            continue
        if m.group(6):
            out.append(" ")
            continue
        if m.group(7):
            out.append("%20")
            continue
        letter = m.group(1)
        lower = letter.lower()
        if lower in "crt" and not exp:
            raise PermError(f"macro {letter} only allowed in exp")
        local, _, sdomain = ctx.sender.rpartition("@")
        local = local or "postmaster"
        if lower == "s":
            value = f"{local}@{sdomain}"
        elif lower == "l":
            value = local
        elif lower == "o":
            value = sdomain
        elif lower == "d":
            value = domain
        elif lower == "i":
            value = ".".join(ctx.ip.exploded.replace(":", "")) if ctx.ip.version == 6 else str(ctx.ip)
        elif lower == "p":
            value = "unknown"  # RFC 7208 §7.3: SHOULD NOT be used; we do no PTR lookup for it
        elif lower == "v":
            value = "in-addr" if ctx.ip.version == 4 else "ip6"
        elif lower == "h":
            value = ctx.helo or "unknown"
        elif lower == "c":
            value = str(ctx.ip)
        elif lower == "r":
            value = ctx.receiver or "unknown"
        else:  # t
            value = str(int(time.time()))
        delims = m.group(4) or "."
        parts = re.split("[" + re.escape(delims) + "]", value)
        if m.group(3):
            parts.reverse()
        if m.group(2):
            n = int(m.group(2))
            if n == 0:
                raise PermError("macro digit transformer 0")
            parts = parts[-n:]
        value = ".".join(parts)
        if letter.isupper():
            value = quote(value, safe="")
        out.append(value)
    rest = spec[pos:]
    if "%" in rest:
        raise PermError(f"bad macro in {spec!r}")
    out.append(rest)
    return "".join(out)
