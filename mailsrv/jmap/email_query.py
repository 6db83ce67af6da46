"""Email/query, Email/queryChanges and SearchSnippet/get (RFC 8621 §4.4, §4.5, §5).

Filters are evaluated exactly by scanning the account's emails (header facts
are parsed once per blob and cached); the search engine's bitmaps replace the
scan when docs/search-api.md lands.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailsrv import mime
from mailsrv.jmap import args as A
from mailsrv.jmap import message
from mailsrv.jmap.backend import CannotCalculateChanges, EmailMeta, MailBackend
from mailsrv.jmap.core import MAIL, RequestContext, registry
from mailsrv.jmap.errors import MethodError, invalid_arguments
from mailsrv.jmap.query import compile_filter, compile_sort, window
from mailsrv.mime import MessageStructure
from mailsrv.mime.headers import BASE_SUBJECT_MAX

#: parsed facts of this many messages are kept per worker
FACT_CACHE = 20000


@dataclass(frozen=True)
class Facts:
    """What filters and sorts need from a message besides the backend's metadata.

    ``headers`` and ``body`` need the message bytes; they are None when the facts were made
    from the cached structure alone (no filter asked for them).
    """

    from_: str
    to: str
    cc: str
    bcc: str
    subject: str
    sent_at: float
    has_attachment: bool
    first_from: str
    first_to: str
    sort_subject: str
    headers: tuple[tuple[str, str], ...] | None = None  # (lower-case name, Text form)
    body: str | None = None  # text of the text body parts, lower case


_cache: OrderedDict[str, Facts] = OrderedDict()


def _addr_text(values: list[bytes]) -> tuple[str, str]:
    parts, first = [], ""
    for v in values:
        for a in message.as_addresses(v):
            parts.append(f"{a['name'] or ''} {a['email']}")
            if not first:
                first = (a["name"] or a["email"] or "").casefold()
    return " ".join(parts).casefold(), first


def base_subject(subject: str) -> str:
    # RFC 5256 §2.1 (simplified): strip leading Re:/Fwd:/Fw: and [tags], lower case
    s = subject[:BASE_SUBJECT_MAX].strip()
    while True:
        low = s.lower()
        for pre in ("re:", "fwd:", "fw:", "aw:", "wg:"):
            if low.startswith(pre):
                s = s[len(pre):].strip()
                break
        else:
            if s.startswith("[") and "]" in s:
                s = s[s.index("]") + 1:].strip()
                continue
            break
    return s.casefold()


def facts_of(st: MessageStructure, raw: bytes | None = None) -> Facts:
    """Facts from the structure; ``headers`` and ``body`` too when ``raw`` is given."""
    root = st.root
    text, htm, att = message.body_lists(st)
    subjects = root.field_all(b"subject")
    subj = message.as_text(subjects[-1]) if subjects else ""
    dates = root.field_all(b"date")
    date = message.as_date(dates[-1]) if dates else None
    sent = datetime.fromisoformat(date.replace("Z", "+00:00")).timestamp() if date else 0.0
    f, ff = _addr_text(root.field_all(b"from"))
    t, ft = _addr_text(root.field_all(b"to"))
    headers = body = None
    if raw is not None:
        headers = tuple((k.lower(), message.as_text(v).casefold()) for k, v in message.header_list(raw, root))
        body = message.text_of(raw, [p for p in text or htm if p.type == "text"]).casefold()
    return Facts(
        from_=f, to=t, cc=_addr_text(root.field_all(b"cc"))[0], bcc=_addr_text(root.field_all(b"bcc"))[0],
        subject=subj.casefold(), sent_at=sent, has_attachment=bool(att), first_from=ff, first_to=ft,
        sort_subject=base_subject(subj), headers=headers, body=body,
    )


#: messages whose structures (or bytes) are fetched in one backend call
FACT_BATCH = 256


async def all_facts(be: MailBackend, metas: list[EmailMeta], content: bool) -> dict[str, Facts]:
    """Facts by blob id: from the cached structures (one backend call per batch, no file read),
    and from the bytes (read concurrently) only when ``content`` (header/body/text filters)."""
    out: dict[str, Facts] = {}
    missing: list[EmailMeta] = []
    for m in metas:
        hit = _cache.get(m.blob_id)
        if hit is not None and (not content or hit.body is not None):
            _cache.move_to_end(m.blob_id)
            out[m.blob_id] = hit
        else:
            missing.append(m)
    for i in range(0, len(missing), FACT_BATCH):
        chunk = missing[i : i + FACT_BATCH]
        structs = await be.structures([m.blob_id for m in chunk])
        need = [m for m in chunk if content or m.blob_id not in structs]
        datas = await asyncio.gather(*(be.read_blob(m.blob_id) for m in need))
        raws = {m.blob_id: d or b"" for m, d in zip(need, datas, strict=True)}
        for m in chunk:
            raw = raws.get(m.blob_id)
            st = structs.get(m.blob_id) or mime.parse(raw or b"")
            f = out[m.blob_id] = facts_of(st, raw if content else None)
            _cache[m.blob_id] = f
            if len(_cache) > FACT_CACHE:
                _cache.popitem(last=False)
    return out


@dataclass
class Item:
    meta: EmailMeta
    facts: Facts | None


def _utc(value: Any, key: str) -> float:
    if not isinstance(value, str):
        raise MethodError("unsupportedFilter", f"{key} must be a UTCDate")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise MethodError("unsupportedFilter", f"{key} is not a UTCDate") from None


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise MethodError("unsupportedFilter", f"{key} must be a String")
    return value.casefold()


def _keyword(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in '()[]{}%*"\\ ') or not value.isascii():
        raise MethodError("unsupportedFilter", f"{key} must be a keyword")
    return value.lower()


class Compiler:
    """Compiles FilterConditions; records whether message facts are needed."""

    FACT_KEYS = frozenset({"text", "from", "to", "cc", "bcc", "subject", "body", "header", "hasAttachment"})
    KNOWN = FACT_KEYS | {
        "inMailbox", "inMailboxOtherThan", "before", "after", "minSize", "maxSize", "allInThreadHaveKeyword",
        "someInThreadHaveKeyword", "noneInThreadHaveKeyword", "hasKeyword", "notKeyword",
    }

    def __init__(self, ctx: RequestContext, threads: dict[str, list[EmailMeta]]) -> None:
        self.ctx = ctx
        self.threads = threads
        self.need_facts = False
        self.need_content = False  # header, body or text: facts from the message bytes

    def condition(self, cond: dict[str, Any]) -> Callable[[Item], bool]:
        tests: list[Callable[[Item], bool]] = []
        for key, value in cond.items():
            if key not in self.KNOWN:
                raise MethodError("unsupportedFilter", f"unknown Email filter {key!r}")
            if key in self.FACT_KEYS:
                self.need_facts = True
            if key in ("text", "body", "header"):
                self.need_content = True
            tests.append(self._one(key, value))
        return lambda it: all(t(it) for t in tests)

    def _one(self, key: str, v: Any) -> Callable[[Item], bool]:
        th = self.threads
        if key == "inMailbox":
            if not isinstance(v, str):
                raise MethodError("unsupportedFilter", "inMailbox must be an Id")
            mid = self.ctx.resolve_id(v) or v
            return lambda it: mid in it.meta.mailbox_ids
        if key == "inMailboxOtherThan":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise MethodError("unsupportedFilter", "inMailboxOtherThan must be Id[]")
            ex = {self.ctx.resolve_id(x) or x for x in v}
            return lambda it: bool(it.meta.mailbox_ids - ex)
        if key == "before":
            t = _utc(v, key)
            return lambda it: it.meta.received_at < t
        if key == "after":
            t = _utc(v, key)
            return lambda it: it.meta.received_at >= t
        if key in ("minSize", "maxSize"):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise MethodError("unsupportedFilter", f"{key} must be an UnsignedInt")
            return (lambda it: it.meta.size >= v) if key == "minSize" else (lambda it: it.meta.size < v)
        if key in ("hasKeyword", "notKeyword"):
            kw = _keyword(v, key)
            return (lambda it: kw in it.meta.keywords) if key == "hasKeyword" else (lambda it: kw not in it.meta.keywords)
        if key == "allInThreadHaveKeyword":
            kw = _keyword(v, key)
            return lambda it: all(kw in e.keywords for e in th.get(it.meta.thread_id, [it.meta]))
        if key == "someInThreadHaveKeyword":
            kw = _keyword(v, key)
            return lambda it: any(kw in e.keywords for e in th.get(it.meta.thread_id, [it.meta]))
        if key == "noneInThreadHaveKeyword":
            kw = _keyword(v, key)
            return lambda it: not any(kw in e.keywords for e in th.get(it.meta.thread_id, [it.meta]))
        if key == "hasAttachment":
            if not isinstance(v, bool):
                raise MethodError("unsupportedFilter", "hasAttachment must be a Boolean")
            return lambda it: it.facts is not None and it.facts.has_attachment == v
        if key == "header":
            if not isinstance(v, list) or not 1 <= len(v) <= 2 or not all(isinstance(x, str) for x in v):
                raise MethodError("unsupportedFilter", "header must be [name] or [name, value]")
            name = v[0].lower()
            val = v[1].casefold() if len(v) == 2 else None
            return lambda it: it.facts is not None and any(
                k == name and (val is None or val in hv) for k, hv in it.facts.headers or ()
            )
        s = _str(v, key)
        if key == "text":
            return lambda it: it.facts is not None and any(
                s in x for x in (it.facts.from_, it.facts.to, it.facts.cc, it.facts.bcc, it.facts.subject,
                                 it.facts.body or "")
            )
        attr = {"from": "from_", "to": "to", "cc": "cc", "bcc": "bcc", "subject": "subject", "body": "body"}[key]
        return lambda it: it.facts is not None and s in (getattr(it.facts, attr) or "")


def sort_key(threads: dict[str, list[EmailMeta]]) -> Callable[[dict[str, Any]], Callable[[Item], Any]]:
    def key_for(comp: dict[str, Any]) -> Callable[[Item], Any]:
        prop = comp["property"]
        if prop == "receivedAt":
            return lambda it: it.meta.received_at
        if prop == "size":
            return lambda it: it.meta.size
        if prop == "id":
            return lambda it: it.meta.id
        if prop in ("from", "to", "subject", "sentAt"):
            attr = {"from": "first_from", "to": "first_to", "subject": "sort_subject", "sentAt": "sent_at"}[prop]
            return lambda it: getattr(it.facts, attr) if it.facts is not None else ""
        if prop in ("hasKeyword", "allInThreadHaveKeyword", "someInThreadHaveKeyword"):
            kw = comp.get("keyword")
            if not isinstance(kw, str):
                raise invalid_arguments(f"sort by {prop} needs a keyword")
            kw = kw.lower()
            if prop == "hasKeyword":
                return lambda it: kw in it.meta.keywords
            agg = all if prop == "allInThreadHaveKeyword" else any
            return lambda it: agg(kw in e.keywords for e in threads.get(it.meta.thread_id, [it.meta]))
        raise MethodError("unsupportedSort", f"cannot sort Emails by {prop!r}")

    return key_for


def _needs_facts_for_sort(sort: Any) -> bool:
    return isinstance(sort, list) and any(
        isinstance(c, dict) and c.get("property") in ("from", "to", "subject", "sentAt") for c in sort
    )


#: full result lists by (account, state, query): a state names one exact version of the data
QUERY_CACHE = 64
_results: OrderedDict[tuple[str, str, str], list[str]] = OrderedDict()


async def run_query(ctx: RequestContext, be: MailBackend, args: dict[str, Any], state: str | None = None) -> list[str]:
    """The full ordered result list of ids for filter/sort/collapseThreads."""
    key = None
    if state is not None and not ctx.created_ids:
        shape = json.dumps([args.get("filter"), args.get("sort"), args.get("collapseThreads", False)], sort_keys=True)
        key = (be.account_id, state, shape)
        hit = _results.get(key)
        if hit is not None:
            _results.move_to_end(key)
            return hit
    ids = await _run_query(ctx, be, args)
    if key is not None:
        _results[key] = ids
        if len(_results) > QUERY_CACHE:
            _results.popitem(last=False)
    return ids


async def _run_query(ctx: RequestContext, be: MailBackend, args: dict[str, Any]) -> list[str]:
    metas = await be.emails()
    threads: dict[str, list[EmailMeta]] = {}
    for m in metas:
        threads.setdefault(m.thread_id, []).append(m)
    comp = Compiler(ctx, threads)
    filt = args.get("filter")
    pred = compile_filter(filt, comp.condition) if filt is not None else (lambda it: True)
    sort = args.get("sort")
    sorter = compile_sort(sort, sort_key(threads))
    collapse = A.boolean(args, "collapseThreads", False)
    need = comp.need_facts or _needs_facts_for_sort(sort)
    facts = await all_facts(be, metas, comp.need_content) if need else {}
    items = [Item(m, facts.get(m.blob_id)) for m in metas]
    matched = [it for it in items if pred(it)]
    # server default order (and the tie-break of every sort): newest first, then id
    matched.sort(key=lambda it: (-it.meta.received_at, it.meta.id))
    ordered = sorter(matched)
    if collapse:
        seen: set[str] = set()
        out = []
        for it in ordered:
            if it.meta.thread_id not in seen:
                seen.add(it.meta.thread_id)
                out.append(it)
        ordered = out
    return [it.meta.id for it in ordered]


@registry.add("Email/query", MAIL)
async def email_query(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "filter", "sort", "position", "anchor", "anchorOffset", "limit",
                   "calculateTotal", "collapseThreads"))
    be: MailBackend = ctx.account(args)
    state = await be.state("Email")
    ids = await run_query(ctx, be, args, state)
    page, pos = window(ids, args)
    out: dict[str, Any] = {"accountId": be.account_id, "queryState": state, "canCalculateChanges": True,
                           "position": pos, "ids": page}
    if A.boolean(args, "calculateTotal", False):
        out["total"] = len(ids)
    return out


@registry.add("Email/queryChanges", MAIL)
async def email_query_changes(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "filter", "sort", "sinceQueryState", "maxChanges", "upToId", "calculateTotal",
                   "collapseThreads"))
    be: MailBackend = ctx.account(args)
    since = A.state(args, "sinceQueryState")
    max_changes = A.uint(args, "maxChanges", None)
    if args.get("upToId") is not None and not isinstance(args["upToId"], str):
        raise invalid_arguments("upToId must be an Id")
    try:
        cs = await be.changes("Email", since, None)
        ts = await be.changes("Thread", since, None)
    except CannotCalculateChanges:
        raise MethodError("cannotCalculateChanges") from None
    ids = await run_query(ctx, be, args)
    # RFC 8620 §5.6: every id that may have moved is removed, then re-added at its index
    touched = set(cs.created) | set(cs.updated) | set(cs.destroyed)
    if A.boolean(args, "collapseThreads", False):
        changed_threads = set(ts.created) | set(ts.updated) | set(ts.destroyed)
        for m in await be.emails():
            if m.thread_id in changed_threads:
                touched.add(m.id)
    removed = sorted(set(cs.updated) | set(cs.destroyed) | (touched - set(cs.created)))
    added = [{"id": i, "index": n} for n, i in enumerate(ids) if i in touched]
    if max_changes is not None and len(removed) + len(added) > max_changes:
        raise MethodError("tooManyChanges")
    out: dict[str, Any] = {"accountId": be.account_id, "oldQueryState": since, "newQueryState": cs.new_state,
                           "removed": removed, "added": added}
    if A.boolean(args, "calculateTotal", False):
        out["total"] = len(ids)
    return out


def _highlight(text: str, terms: list[str]) -> str | None:
    low = text.casefold()
    hits = [(low.find(t), t) for t in terms if t and low.find(t) >= 0]
    if not hits:
        return None
    out = html.escape(text)
    for t in sorted({t for _, t in hits}, key=len, reverse=True):
        # case-insensitive mark of each term in the escaped text
        import re

        out = re.sub(re.escape(html.escape(t)), lambda m: f"<mark>{m.group(0)}</mark>", out, flags=re.IGNORECASE)
    return out


def _terms(node: Any, depth: int = 0) -> list[str]:
    if depth > 32 or not isinstance(node, dict):
        return []
    if "conditions" in node and isinstance(node["conditions"], list):
        if node.get("operator") == "NOT":
            return []
        return [t for c in node["conditions"] for t in _terms(c, depth + 1)]
    return [v.casefold() for k, v in node.items() if k in ("text", "subject", "body") and isinstance(v, str)]


@registry.add("SearchSnippet/get", MAIL)
async def search_snippet_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "filter", "emailIds"))
    be: MailBackend = ctx.account(args)
    ids = A.ids(ctx, args, "emailIds", nullable=False) or []
    A.get_limit(ctx, len(ids))
    terms = _terms(args.get("filter"))
    metas = await be.get_emails(ids)
    found, not_found = [], []
    for i in ids:
        m = metas.get(i)
        if m is None:
            not_found.append(i)
            continue
        raw = await be.read_blob(m.blob_id) or b""
        st = mime.parse(raw)
        subjects = st.root.field_all(b"subject")
        subj = message.as_text(subjects[-1]) if subjects else ""
        text, htm, _ = message.body_lists(st)
        preview = None
        for part in text or htm:
            if part.type == "text":
                body = " ".join(message.text_of(raw, [part]).split())
                low = body.casefold()
                pos = min((low.find(t) for t in terms if t and low.find(t) >= 0), default=-1)
                if pos >= 0:
                    start = max(0, pos - 60)
                    preview = _highlight(body[start:start + 255], terms)
                break
        found.append({"emailId": i, "subject": _highlight(subj, terms), "preview": preview})
    return {"accountId": be.account_id, "list": found, "notFound": not_found or None}
