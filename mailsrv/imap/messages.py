"""Selected-state commands on messages: FETCH, STORE, COPY/MOVE, EXPUNGE, SEARCH, SORT, THREAD.

A mixin of :class:`mailsrv.imap.session.Session` (the dispatcher calls
``cmd_<verb>`` on the session); the session's state it uses is declared below.
Sequence numbers are resolved against ``self.view.messages`` and never change here:
only the session's update step applies other sessions' changes.
"""

from __future__ import annotations

import contextlib
import time
from bisect import bisect_left, bisect_right
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsrv import log
from mailsrv.imap import acl, rendercache, sortthread, streaming
from mailsrv.imap import fetch as fetchmod
from mailsrv.imap import search as searchmod
from mailsrv.imap.errors import ImapError, norm_flag, store_error_name
from mailsrv.imap.flaglines import fetch_flags_lines, flag_positions, search_numbers
from mailsrv.imap.grammar import Command, SearchKey
from mailsrv.imap.seqset import SequenceSet, format_uids
from mailsrv.imap.sharing import require
from mailsrv.imap.spool import DecodedSpool
from mailsrv.imap.structure import parse as parse_structure
from mailsrv.net.connection import ConnectionClosed, IdleTimeout, ServerShutdown
from mailsrv.policy.pipeline import training_label

logger = log.get("imap")


def _batches(n: int) -> Iterator[tuple[int, int]]:
    """(start, end) of the batches of an index-only FETCH of ``n`` messages: FIRST_FETCH_BATCH,
    then twice as many each time up to FETCH_BATCH (the client never waits for a big batch)."""
    k = 0
    size = FIRST_FETCH_BATCH
    while k < n:
        yield k, min(k + size, n)
        k += size
        size = min(2 * size, FETCH_BATCH)


#: FETCH items rendered from the cached structure and kept in the render cache (rendercache.py)
_RENDERED_ITEMS = ("ENVELOPE", "BODYSTRUCTURE", "BODY")


def _has_all(entry: dict[str, bytes] | None, items: list[str]) -> bool:
    return entry is not None and all(k in entry for k in items)


def _rendered(cache: rendercache.RenderCache, key: rendercache.Key, items: list[str], struct: Any) -> dict[str, bytes]:
    """``items`` of one message from the render cache, or rendered from its cached structure (and
    kept); {} when one is neither (no structure: the caller parses the message)."""
    entry = cache.get(key)
    out: dict[str, bytes] = {}
    for item in items:
        value = entry.get(item) if entry is not None else None
        if value is None:
            if struct is None or not hasattr(struct, "imap_envelope"):
                return {}
            value = struct.imap_envelope() if item == "ENVELOPE" else struct.imap_bodystructure(item != "BODY")
            cache.put(key, item, value)
        out[item] = value
    return out


def _uid_of(m: Any) -> int:
    return int(m.uid)

#: Header fields SORT and THREAD use (RFC 5256), all kept in the cached MIME structure.
_SORT_FIELDS = (b"subject", b"date", b"from", b"to", b"cc", b"message-id", b"references", b"in-reply-to")
#: Whole-message FETCHes of messages larger than this are streamed in chunks of STREAM_CHUNK.
STREAM_AT = 1024 * 1024
STREAM_CHUNK = 256 * 1024
#: Parsed message structures kept per session for repeated FETCH of the same message.
STRUCTURE_CACHE = 8
#: Index-only FETCH responses formatted and sent per batch (a client reads while we format).
FETCH_BATCH = 2048
#: ... and in the first batch, sent at once: the client starts reading ~0.1 ms after the command.
FIRST_FETCH_BATCH = 256


class MessageCommands:
    """The message commands; see the module docstring."""

    view: Any
    acct: Any
    store: Any
    user: Any
    search: Any
    policy_source: Callable[[], Any] | None
    readonly: bool
    condstore: bool
    qresync: bool
    rev2: bool
    utf8: bool
    saved: list[int]
    recent: set[int]
    _reported: dict[int, int]
    _structs: dict[tuple[int, int], Any]

    if TYPE_CHECKING:

        def w(self, data: bytes) -> None: ...

        async def maybe_flush(self) -> None: ...

        async def send_now(self, data: bytes) -> None: ...

        async def flush(self) -> None: ...

        def _name_in(self, raw: bytes) -> str: ...

        def _seq_of(self, uid: int) -> int: ...

        def _store_error(self, exc: BaseException) -> ImapError: ...

        def _limits(self, owner: Any = None) -> Any: ...

        def _selected_rights(self) -> str: ...

        async def _place(self, name: str, need: str = "") -> Any: ...

    def _require_writable(self, rights: str = "") -> None:
        """The selected mailbox may be changed: ``rights`` (RFC 4314 letters) are held (NO [NOPERM]
        otherwise: a shared mailbox) and it was not opened read-only (EXAMINE)."""
        require(self._selected_rights(), rights)
        if self.readonly:
            raise ImapError("NO", "Mailbox is read-only", "READ-ONLY")

    async def cmd_expunge(self, cmd: Command) -> None:
        self._require_writable("e")  # RFC 4314 §4
        try:
            await self.acct.expunge(self.view.name)
        except Exception as exc:
            raise self._store_error(exc) from None

    async def cmd_uid_expunge(self, cmd: Command) -> None:
        self._require_writable("e")
        uids = self._resolve(cmd.args["set"], uid=True)
        try:
            await self.acct.expunge(self.view.name, [m.uid for m in uids])
        except Exception as exc:
            raise self._store_error(exc) from None

    def _resolve(self, s: SequenceSet, *, uid: bool) -> list[Any]:
        """Messages of the view selected by a sequence set (ascending)."""
        return self._pick(s, uid=uid)[1]

    def _pick(self, s: SequenceSet, *, uid: bool, share: bool = False) -> tuple[Sequence[int], list[Any]]:
        """(sequence numbers, messages) of the view selected by a sequence set, ascending, parallel.

        Cost: O(ranges * log n + result); ``1:*`` of a big mailbox is a range and a slice
        (no per-message objects: iterate with ``zip``). ``share``: a selection of the whole view
        is the view's own list, not a copy (100 000 references touched before the first byte);
        the caller must not keep it past a refresh, which alone changes that list.
        """
        messages = self.view.messages
        if s.saved:
            uids = set(self.saved)
            idx = [i for i, m in enumerate(messages) if m.uid in uids]
            return [i + 1 for i in idx], [messages[i] for i in idx]
        n = len(messages)
        if uid:
            largest = messages[-1].uid if messages else 0
            ranges = s.resolved(largest)
            spans = []
            for a, b in ranges:
                i = bisect_left(messages, a, key=_uid_of)
                j = bisect_right(messages, b, key=_uid_of)
                spans.append((i, j))
            if len(spans) == 1:
                i, j = spans[0]
                if share and i == 0 and j == n:
                    return range(1, n + 1), messages
                return range(i + 1, j + 1), messages[i:j]
            picked = sorted({k for i, j in spans for k in range(i, j)})
            return [k + 1 for k in picked], [messages[k] for k in picked]
        seqs: set[int] = set()
        for a, b in s.resolved(n):
            if b > n or a < 1:
                if n == 0 and all(lo == 0 or hi == 0 for lo, hi in s.ranges):
                    continue
                # RFC 9051 §9: a sequence number must be in the mailbox
                raise ImapError("BAD", "Invalid message sequence number", "CLIENTBUG")
            if len(s.ranges) == 1:
                if share and a == 1 and b == n:
                    return range(1, n + 1), messages
                return range(a, b + 1), messages[a - 1 : b]
            seqs.update(range(a, b + 1))
        order = sorted(seqs)
        return order, [messages[k - 1] for k in order]

    async def cmd_fetch(self, cmd: Command) -> None:
        await self._fetch(cmd, uid=False)

    async def cmd_uid_fetch(self, cmd: Command) -> None:
        await self._fetch(cmd, uid=True)

    def _structure(self, uid: int, raw: bytes) -> Any:
        key = (self.view.uidvalidity, uid)
        part = self._structs.get(key)
        if part is None:
            part = parse_structure(raw)
            if len(self._structs) >= STRUCTURE_CACHE:
                self._structs.pop(next(iter(self._structs)))
            self._structs[key] = part
        return part

    async def _fetch(self, cmd: Command, *, uid: bool) -> None:
        atts = cmd.args["atts"]
        changedsince = cmd.args["changedsince"]
        if cmd.args["vanished"] and (not uid or not self.qresync or changedsince is None):
            raise ImapError("BAD", "VANISHED needs UID FETCH, QRESYNC and CHANGEDSINCE", "CLIENTBUG")
        if changedsince is not None:
            self.condstore = True  # RFC 7162 §3.1: CHANGEDSINCE enables CONDSTORE
        # No refresh runs before this command's end: the view's list may be shared.
        seqs, selected = self._pick(cmd.args["set"], uid=uid, share=True)
        if changedsince is not None:
            keep = [k for k, m in enumerate(selected) if m.modseq > changedsince]
            seqs, selected = [seqs[k] for k in keep], [selected[k] for k in keep]
        if cmd.args["vanished"]:
            since = await self.acct.changes_since(self.view.name, changedsince)
            s: SequenceSet = cmd.args["set"]
            gone = [u for u in since.expunged if s.contains(u, self.view.uidnext)]
            if gone:
                self.w(b"* VANISHED (EARLIER) " + format_uids(gone).encode() + b"\r\n")
        name = self.view.name
        plan = fetchmod.plan(atts)
        structs: dict[int, Any] = {}
        items = [k for k in _RENDERED_ITEMS if k in plan.names] if plan.wants_structure else []
        cache = rendercache.for_store(self.store)
        ckey = rendercache.key_prefix(str(getattr(self.acct, "id", "")), str(self.view.id), self.view.uidvalidity,
                                      self.utf8)
        if plan.wants_structure or plan.header_only or plan.ranged:
            # The structure cached at delivery answers ENVELOPE/BODYSTRUCTURE and says where the
            # header ends, so those never re-read or re-parse the whole message.
            want = [m.uid for m in selected]
            if not plan.header_only and not plan.needs_body:  # only what the render cache may hold
                want = [u for u in want if not _has_all(cache.get(ckey + str(u)), items)]
            try:
                structs = await self.acct.structures(name, want) if want else {}
            except Exception:  # an index without structures: fall back to the bytes
                structs = {}
        seen_now: dict[int, Any] = {}
        if fetchmod.sets_seen(atts) and not self.readonly and "s" in self._selected_rights():
            # RFC 9051 §6.4.5: BODY[...] sets \Seen; one durable change for the whole FETCH.
            # RFC 4314 §4: not without the "s" right (a read-only share).
            unseen = [m.uid for m in selected if "\\Seen" not in m.flags]
            if unseen:
                modified, _ = await self.acct.store_flags(name, unseen, frozenset({"\\Seen"}), "add")
                for m in modified:
                    self._reported[m.uid] = m.modseq
                    seen_now[m.uid] = m
        if plan.index_only and not seen_now:
            await self._fetch_index_only(seqs, selected, atts, uid)
            return
        whole = fetchmod.whole_message_att(atts)
        for seq, info in zip(seqs, selected, strict=True):
            if whole is not None and info.size > STREAM_AT:
                # A big message is copied to the client in chunks, never held whole.
                new = seen_now.get(info.uid)
                try:
                    done = await self._fetch_streamed(seq, new or info, atts, whole, uid, new is not None)
                except Exception as exc:
                    if store_error_name(exc) == "MessageGone":
                        raise ImapError("NO", "Message was expunged while being sent", "EXPUNGEISSUED") from None
                    raise
                if done:
                    continue
            raw = part = None
            pre: dict[str, bytes] = {}
            struct = structs.get(info.uid)
            if items:
                pre = _rendered(cache, ckey + str(info.uid), items, struct)
            need_full = plan.needs_body or (plan.wants_structure and not pre)
            sections = None
            if plan.ranged and struct is not None and hasattr(struct, "section_range") \
                    and (pre or not plan.wants_structure):
                # Read only the bytes of the requested sections (a preview of a message with
                # big attachments does not read the attachments).
                try:
                    sections = await self._read_sections(name, info.uid, struct, atts)
                except Exception as exc:
                    if store_error_name(exc) == "MessageGone":
                        continue
                    raise self._store_error(exc) from None
                need_full = False
            if need_full or plan.header_only:
                header_end = getattr(struct, "header_end", None) if not need_full else None
                try:
                    if header_end:
                        raw = await self.acct.read_message(name, info.uid, 0, header_end)
                    else:
                        raw = await self.acct.read_message(name, info.uid)
                except Exception as exc:
                    if store_error_name(exc) == "MessageGone":
                        # RFC 9051 §7.5.1: expunged by another session meanwhile; skip it
                        continue
                    raise self._store_error(exc) from None
                part = self._structure(info.uid, raw) if not header_end else parse_structure(raw)
            if "PREVIEW" in plan.names and raw is not None and part is not None:
                pre["PREVIEW"] = self._preview(raw, part, struct)
            new = seen_now.get(info.uid)
            if new is not None:
                info = new
            try:
                body = fetchmod.render(atts, info, raw, part, uid=uid, modseq=self.condstore,
                                       recent=info.uid in self.recent, sections=sections,
                                       flags=new.flags if new is not None else None, precomputed=pre)
            except fetchmod.UnknownCte:
                raise ImapError("NO", "Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
            self.w(b"* %d FETCH " % seq + body + b"\r\n")
            await self.maybe_flush()

    def _preview(self, raw: bytes, part: Any, struct: Any) -> bytes:
        """RFC 8970 §3: up to 200 characters of the message's text, UTF-8, as a string."""
        text = ""
        if struct is not None and hasattr(struct, "imap_envelope"):
            from mailsrv.mime import preview

            text = preview(raw, struct)
        else:
            text = searchmod.first_text(raw, part)
        return fetchmod.string(text.encode("utf-8"), True) if self.utf8 or text.isascii() else \
            fetchmod.literal(text.encode("utf-8"))

    async def _read_sections(self, name: str, uid: int, struct: Any, atts: list[Any]) -> dict[int, bytes]:
        """Bytes of each BODY[section]<partial> att, read by offset (RFC 9051 §6.4.5)."""
        out: dict[int, bytes] = {}
        for k, a in enumerate(atts):
            if not fetchmod._is_ranged(a):
                continue
            rng = struct.section_range(a.section.spec().decode())
            if rng is None:
                out[k] = b""  # a part that does not exist is empty
                continue
            start, end = rng
            if a.partial is not None:
                off, length = a.partial
                start, end = min(start + off, end), min(start + off + length, end)
            out[k] = await self.acct.read_message(name, uid, start, end - start) if end > start else b""
        return out

    async def _fetch_streamed(self, seq: int, info: Any, atts: list[Any], whole: Any, uid: bool,
                              flags_changed: bool) -> bool:
        """``* n FETCH (... BODY[]<o> {size}`` then the bytes in chunks (RFC 9051 §7.5.2).

        BINARY[part] (RFC 3516 §4.2) of an encoded part is decoded once, chunk by chunk, into a
        :class:`DecodedSpool` (which learns the decoded size and whether it holds NUL: then a
        literal8) and sent from there; an identity-encoded part is sent from the file after a
        scan for NUL. Returns False (nothing written) when the message's cached structure is
        missing or the part is a multipart or message/rfc822 container: the caller renders it whole.
        """
        async with contextlib.AsyncExitStack() as stack:
            return await self._fetch_streamed_in(stack, seq, info, atts, whole, uid, flags_changed)

    async def _fetch_streamed_in(self, stack: contextlib.AsyncExitStack, seq: int, info: Any, atts: list[Any],
                                 whole: Any, uid: bool, flags_changed: bool) -> bool:
        name = self.view.name
        start, end, dec_name = 0, info.size, None
        binary = whole.name in ("BINARY", "BINARY.PEEK")
        if binary and whole.section.parts:
            structs = await self.acct.structures(name, [info.uid])
            struct = structs.get(info.uid)
            if struct is None or not hasattr(struct, "part"):
                return False
            part = struct.part(".".join(str(p) for p in whole.section.parts))
            if part is None:
                raise ImapError("NO", "No such message part", "UNKNOWN-CTE")
            if part.is_multipart or part.message is not None:
                return False  # a container: its parts are decoded inside (fetch._binary_container)
            start, end, dec_name = part.body_start, part.body_end, part.encoding
        try:
            identity = isinstance(streaming.decoder(dec_name), streaming.Identity)
        except streaming.DecodeError:
            raise ImapError("NO", "Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
        total, nul = end - start, False
        spool = None
        if binary and not identity:  # the one decoding pass: size, NUL or not, and the bytes
            root = getattr(self.acct, "root", None)
            spool = await stack.enter_async_context(DecodedSpool(Path(root) / "tmp" if root else None))
            async for data in self._decoded(info.uid, start, end, dec_name):
                await spool.write(data)
            total, nul = spool.size, spool.nul
        elif binary:  # the size is the part's; a scan for NUL decides literal8
            async for data in self._decoded(info.uid, start, end, None):
                if b"\x00" in data:
                    nul = True
                    break
        lo, hi = 0, total
        origin = b""
        if whole.partial is not None:
            off, length = whole.partial
            lo, hi = min(off, total), min(off + length, total)
            origin = b"<%d>" % off
        others = [a for a in atts if a is not whole]
        if flags_changed and not any(a.name == "FLAGS" for a in others):
            others.append(fetchmod.FetchAtt("FLAGS"))
        items = fetchmod.render_index(others, info, uid=uid, modseq=self.condstore, flag_cache={},
                                      recent=info.uid in self.recent)[1:-1]
        if binary:
            label = b"BINARY[" + whole.section.spec() + b"]" + origin + (b" ~{%d}" if nul else b" {%d}") % (hi - lo)
        else:
            label = (b"RFC822" if whole.name == "RFC822" else b"BODY[]" + origin) + b" {%d}" % (hi - lo)
        # just [lo, hi) of the decoded part (the spool) or of the file
        chunks = spool.chunks(lo, hi, STREAM_CHUNK) if spool is not None else \
            self._decoded(info.uid, start + lo, start + hi, None)
        want, sent, first = hi - lo, 0, True
        try:
            async for data in chunks:
                data = data[: want - sent]
                if first:
                    # the first chunk is read before anything is sent: a message expunged meanwhile is a NO
                    self.w(b"* %d FETCH (" % seq + (items + b" " if items else b"") + label + b"\r\n")
                    first = False
                if data:
                    self.w(data)
                    sent += len(data)
                    await self.flush()
                if sent >= want:
                    break
        except (ConnectionClosed, IdleTimeout, ServerShutdown):
            raise
        except Exception as exc:
            if first:
                raise
            # once the literal has begun, it is completed whatever happens
            logger.error("fetch.read_failed", uid=info.uid, error=type(exc).__name__)
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        if first:
            self.w(b"* %d FETCH (" % seq + (items + b" " if items else b"") + label + b"\r\n")
        if sent < want:
            # The file is shorter than the index says (or changed between the passes); the literal
            # must still be complete.
            logger.error("fetch.short_message", uid=info.uid)
            self.w(b" " * (want - sent))
        self.w(b")\r\n")
        return True

    async def _decoded(self, uid: int, start: int, end: int, encoding: str | None) -> AsyncGenerator[bytes, None]:
        """The bytes ``[start, end)`` of a message, read in chunks and decoded (``encoding``: a
        Content-Transfer-Encoding, None for raw). MessageGone; ImapError [UNKNOWN-CTE]."""
        dec = streaming.decoder(encoding)
        pos = start
        try:
            while pos < end:
                data = await self.acct.read_message(self.view.name, uid, pos, min(STREAM_CHUNK, end - pos))
                if not data:
                    break
                pos += len(data)
                out = dec.feed(data)
                if out:
                    yield out
            tail = dec.end()
        except streaming.DecodeError:
            raise ImapError("NO", "Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
        if tail:
            yield tail

    async def _fetch_index_only(self, seqs: Sequence[int], selected: list[Any], atts: list[Any],
                                uid: bool) -> None:
        """FETCH of index items only (FLAGS, UID, sizes, dates, modseq): one pass, shared flag lists.

        Written in batches of FETCH_BATCH responses (a small first one), each sent as it is made,
        so that a client reads the first lines of ``UID FETCH 1:* (FLAGS)`` while the server
        formats the rest.
        """
        modseq = self.condstore
        recent = self.recent
        cache: dict[frozenset[str], bytes] = {}
        names = {a.name for a in atts}
        if names <= {"UID", "FLAGS"} and "FLAGS" in names and not modseq:
            # The synchronisation FETCH of every client ("UID FETCH 1:* (FLAGS)"): one format per line.
            with_uid = uid or "UID" in names
            for k, end in _batches(len(selected)):
                await self._emit(fetch_flags_lines(seqs[k:end], selected[k:end], with_uid, cache, recent),
                                 len(selected))
            return
        for k, end in _batches(len(selected)):
            lines = []
            for seq, info in zip(seqs[k:end], selected[k:end], strict=True):
                body = fetchmod.render_index(atts, info, uid=uid, modseq=modseq, flag_cache=cache,
                                             recent=info.uid in recent)
                lines.append(b"* %d FETCH " % seq + body + b"\r\n")
            await self._emit(b"".join(lines), len(selected))

    async def _emit(self, batch: bytes, total: int) -> None:
        """A batch of an index-only FETCH of ``total`` messages: buffered with the tagged reply
        when it is the whole response (one write), else sent at once."""
        if total <= FIRST_FETCH_BATCH:
            self.w(batch)
        else:
            await self.send_now(batch)

    async def cmd_store(self, cmd: Command) -> str | None:
        return await self._store(cmd, uid=False)

    async def cmd_uid_store(self, cmd: Command) -> str | None:
        return await self._store(cmd, uid=True)

    async def _store(self, cmd: Command, *, uid: bool) -> str | None:
        flags = frozenset(norm_flag(f) for f in cmd.args["flags"] if f.lower() != b"\\recent")
        mode = {"+": "add", "-": "remove", "=": "replace"}[cmd.args["mode"]]
        # RFC 4314 §4: "s" for \Seen, "t" for \Deleted, "w" for the other flags. deviation (§4: "SHOULD
        # NOT fail" when one flag may change): a STORE changes all its flags or none (NO [NOPERM]).
        self._require_writable(acl.store_rights(flags, mode))
        selected = self._resolve(cmd.args["set"], uid=uid)
        unchanged = cmd.args["unchangedsince"]
        if unchanged is not None:
            self.condstore = True
        try:
            modified, failed = await self.acct.store_flags(
                self.view.name, [m.uid for m in selected], flags, mode, unchanged
            )
        except Exception as exc:
            raise self._store_error(exc) from None
        changed = {m.uid: m for m in modified}
        for info in selected:
            new = changed.get(info.uid)
            if new is not None:
                self._reported[new.uid] = new.modseq
            elif info.uid in failed:
                continue
            # RFC 9051 §6.4.6: untagged FETCH with the new flags unless .SILENT;
            # RFC 7162 §3.1.3: with CONDSTORE, also for .SILENT when the modseq changed.
            if cmd.args["silent"] and not (self.condstore and new is not None):
                continue
            if new is None and cmd.args["silent"]:
                continue
            state = new or info
            self.w(fetchmod.flags_response(self._seq_of(info.uid), state, uid=uid, modseq=self.condstore,
                                           recent=info.uid in self.recent))
        if failed:
            nums = failed if uid else [self._seq_of(u) for u in failed]
            return f"[MODIFIED {format_uids(sorted(nums))}] Conditional STORE failed"
        return None

    async def cmd_copy(self, cmd: Command) -> str:
        return await self._copy(cmd, uid=False, move=False)

    async def cmd_uid_copy(self, cmd: Command) -> str:
        return await self._copy(cmd, uid=True, move=False)

    async def cmd_move(self, cmd: Command) -> str:
        return await self._copy(cmd, uid=False, move=True)

    async def cmd_uid_move(self, cmd: Command) -> str:
        return await self._copy(cmd, uid=True, move=True)

    async def _copy(self, cmd: Command, *, uid: bool, move: bool) -> str:
        if move:
            self._require_writable("te")  # RFC 6851 §4.3 / RFC 4314: MOVE deletes and expunges the source
        selected = self._resolve(cmd.args["set"], uid=uid)
        target = await self._place(self._name_in(cmd.args["mailbox"]), "i")  # RFC 4314 §4: COPY needs "i"
        dest = target.name
        try:
            info = await target.acct.mailbox_status(dest)
        except Exception as exc:
            err = self._store_error(exc)
            if err.code == "NONEXISTENT":
                raise ImapError("NO", "No such mailbox", "TRYCREATE") from None
            raise err from None
        uids = [m.uid for m in selected]
        if not uids:
            return "No messages" if not move else "No messages moved"
        across = str(getattr(target.acct, "id", "")) != str(getattr(self.acct, "id", ""))
        try:
            if across:
                mapping = await self._copy_across(selected, target, move)
            elif move:
                mapping = await self.acct.move(self.view.name, uids, dest)
            else:
                mapping = await self.acct.copy(self.view.name, uids, dest, self._limits(target.owner))
        except Exception as exc:
            raise self._store_error(exc) from None
        if not across:  # spam training: a move within one account's folders teaches its owner's learner
            await self._train(self.view.name, dest, mapping, target.owner)
        code = f"COPYUID {info.uidvalidity} {format_uids([s for s, _ in mapping])} {format_uids([d for _, d in mapping])}"
        if move:
            # RFC 6851 §4.3: COPYUID in an untagged OK before the EXPUNGEs
            self.w(f"* OK [{code}] Moved\r\n".encode())
            return "MOVE completed"
        return f"[{code}] COPY completed"

    async def _copy_across(self, selected: list[Any], target: Any, move: bool) -> list[tuple[int, int]]:
        """COPY / MOVE between two accounts (a shared mailbox and one's own, or two owners'): each
        message appended (hard-linked from its file when the store can) into ``target``, then, for a
        MOVE, the originals expunged. Not atomic (RFC 6851 §3.3 allows it): a failure after some
        copies leaves them, and a MOVE's sources are expunged only once every copy is durable.
        """
        src, name = self.acct, self.view.name
        rights = target.rights if target.owner is not None else acl.OWNER_RIGHTS
        limits = self._limits(target.owner)
        mapping: list[tuple[int, int]] = []
        for m in selected:
            flags = acl.allowed_flags(frozenset(m.flags), rights)  # RFC 4314 §4: dropped, not refused
            path = getattr(src, "message_path", None)
            data: Any = await path(name, m.uid) if path is not None else await src.read_message(name, m.uid)
            try:
                new = await target.acct.append(target.name, data, flags, None, limits)
            except Exception as exc:
                if path is None or store_error_name(exc) != "TemporaryFailure":
                    raise
                # the file was renamed by a flag change meanwhile: its bytes, once
                new = await target.acct.append(target.name, await src.read_message(name, m.uid), flags,
                                               m.internal_date, limits)
            mapping.append((m.uid, new))
        if move:
            await src.expunge(name, [s for s, _ in mapping], only_deleted=False)
        return mapping

    async def _train(self, src: str, dest: str, mapping: Sequence[tuple[int, int]], owner: Any = None) -> None:
        """Spam training (docs/policy.md): a MOVE, or the COPY of COPY+EXPUNGE, into or out of Junk.

        ``src`` and ``dest`` are folders of the selected account (``self.acct``); ``owner`` is that
        account's owner when it is another user's (a grantee's move in a shared folder): the owner's
        learner is taught, as for the owner's own moves and as JMAP does (docs/shared-mailboxes.md).

        After the store made the copies durable; the copies are queued for the policy's background trainer
        (journaled, read and learned later), so the tagged reply does not wait for the learner. A training
        failure never fails the command.
        """
        get_policy = self.policy_source
        if not mapping or get_policy is None or training_label(src, dest) is None:
            return
        policy = get_policy()
        if policy is None:
            return
        account = getattr(owner if owner is not None else self.user, "address", None) or str(self.acct.id)
        try:
            await policy.train_later(account, src, dest, [(dest, duid) for _, duid in mapping],
                                     read=self.acct.read_message)
        except Exception as exc:
            logger.warning("imap.train_failed", error=f"{type(exc).__name__}: {exc}"[:200])

    def _check_charset(self, charset: str | None) -> None:
        if charset not in (None, "UTF-8", "US-ASCII"):
            # RFC 9051 §6.4.4
            raise ImapError("NO", "Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")

    async def _matching(self, key: SearchKey) -> list[int]:
        """Positions (sequence number - 1) in the view of the messages that match ``key``, ascending.

        Plain ints, no per-message objects: a result of 100 000 messages costs one list.
        """
        view = self.view
        messages = view.messages
        largest_uid = messages[-1].uid if messages else 0
        try:
            match = searchmod.matcher(key, largest_seq=len(messages), largest_uid=largest_uid,
                                      saved=self.saved, now=time.time(), recent=self.recent)
        except ValueError as exc:
            raise ImapError("BAD", str(exc), "CLIENTBUG") from None
        content = searchmod.needs_content(key)
        if content and self.search is not None:
            hits = await self._index_search(key)
            if hits is not None:
                return [i for i, m in enumerate(messages) if m.uid in hits]
        simple = searchmod.simple_flag(key)
        if simple is not None:
            # SEARCH (UN)SEEN, (UN)DELETED...: one comprehension over the view
            flag, want = simple
            return flag_positions(messages, flag, want)
        found: list[int] = []
        if not content:
            # Index keys only: one reused cursor object, no I/O.
            cursor = searchmod.Message(0, None, None)
            for i, info in enumerate(messages):
                cursor.seq = i + 1
                cursor.info = info
                if match(cursor):
                    found.append(i)
            return found
        for i, info in enumerate(messages):
            try:
                raw = await self.acct.read_message(view.name, info.uid)
            except Exception:  # expunged meanwhile: it does not match
                continue
            if match(searchmod.Message(i + 1, info, raw)):
                found.append(i)
        return found

    async def _index_search(self, key: SearchKey) -> Any:
        """Text keys through the search index (``mailsrv.search``); None when it cannot answer."""
        from mailsrv.imap import searchindex

        view = self.view
        name = view.name
        root = getattr(self.acct, "root", None)
        account_id = getattr(self.acct, "id", None)
        if root is None or account_id is None:
            return None
        try:
            query = searchindex.to_query(
                key, searchindex.metadata_evaluator(view, saved=self.saved, recent=self.recent))
            read_many = getattr(self.acct, "read_messages", None)
            idx = self.search.mailbox(account_id, view.id, Path(root) / "mailsrv-search",
                                      lambda uid: self.acct.read_message(name, uid),
                                      read_many=(lambda uids: read_many(view.id, uids)) if read_many else None)
            return await idx.search(query, view)
        except Exception as exc:  # the index is a cache: scan instead of failing the SEARCH
            logger.warning("search.index_failed", error=type(exc).__name__, detail=str(exc)[:200])
            return None

    async def _items(self, positions: list[int], uid: bool) -> list[sortthread.Item]:
        """What SORT and THREAD compare: from the cached structures' header fields when the store
        has them (no message is read), else from the messages' headers."""
        messages = self.view.messages
        items = []
        try:
            structs = await self.acct.structures(self.view.name, [messages[i].uid for i in positions])
        except Exception:
            structs = {}
        for i in positions:
            seq, info = i + 1, messages[i]
            struct = structs.get(info.uid)
            headers: dict[bytes, bytes] = {}
            if struct is not None and hasattr(struct, "field"):
                for name in _SORT_FIELDS:
                    value = struct.field(name)
                    if value is not None:
                        headers[name] = b" ".join(value.split())  # unfolded, trimmed
                items.append(sortthread.Item(info.uid if uid else seq, seq, info.internal_date, info.size, headers))
                continue
            try:
                raw = await self.acct.read_message(self.view.name, info.uid)
            except Exception:  # expunged meanwhile
                continue
            for k, v in parse_structure(raw).headers:
                headers.setdefault(k.lower(), v)
            items.append(sortthread.Item(info.uid if uid else seq, seq, info.internal_date, info.size, headers))
        return items

    async def cmd_sort(self, cmd: Command) -> None:
        await self._sort(cmd, uid=False)

    async def cmd_uid_sort(self, cmd: Command) -> None:
        await self._sort(cmd, uid=True)

    async def _sort(self, cmd: Command, *, uid: bool) -> None:
        # RFC 5256 §3
        self._check_charset(cmd.args["charset"])
        returns = cmd.args["return"]
        if returns is not None and any(r not in ("MIN", "MAX", "COUNT", "ALL") for r in returns):
            raise ImapError("BAD", "Unknown SORT return option", "CLIENTBUG")
        items = await self._items(await self._matching(cmd.args["key"]), uid)
        nums = sortthread.sort(items, cmd.args["criteria"])
        if returns is None:
            self.w(b"* SORT" + b"".join(b" %d" % n for n in nums) + b"\r\n")
            return
        # RFC 5267 §3.2 ESORT: MIN/MAX are the first/last in sort order, ALL keeps the sort order
        returns = returns or ["ALL"]
        parts = [b'* ESEARCH (TAG "' + cmd.tag + b'")']
        if uid:
            parts.append(b"UID")
        if nums and "MIN" in returns:
            parts.append(b"MIN %d" % nums[0])
        if nums and "MAX" in returns:
            parts.append(b"MAX %d" % nums[-1])
        if nums and "ALL" in returns:
            parts.append(b"ALL " + format_uids(nums).encode())
        if "COUNT" in returns:
            parts.append(b"COUNT %d" % len(nums))
        self.w(b" ".join(parts) + b"\r\n")

    async def cmd_thread(self, cmd: Command) -> None:
        await self._thread(cmd, uid=False)

    async def cmd_uid_thread(self, cmd: Command) -> None:
        await self._thread(cmd, uid=True)

    async def _thread(self, cmd: Command, *, uid: bool) -> None:
        # RFC 5256 §4
        self._check_charset(cmd.args["charset"])
        items = await self._items(await self._matching(cmd.args["key"]), uid)
        if cmd.args["algorithm"] == "REFERENCES":
            roots = sortthread.thread_references(items)
        else:
            roots = sortthread.thread_orderedsubject(items)
        threads = sortthread.format_threads(roots)
        self.w(b"* THREAD" + (b" " + threads if threads else b"") + b"\r\n")

    async def cmd_search(self, cmd: Command) -> None:
        await self._search(cmd, uid=False)

    async def cmd_uid_search(self, cmd: Command) -> None:
        await self._search(cmd, uid=True)

    async def _search(self, cmd: Command, *, uid: bool) -> None:
        self._check_charset(cmd.args["charset"])
        key: SearchKey = cmd.args["key"]
        positions = await self._matching(key)
        messages = self.view.messages
        modseq = max((messages[i].modseq for i in positions), default=0) if searchmod.uses_modseq(key) else None
        if modseq:
            self.condstore = True
        returns = cmd.args["return"]
        if returns is not None and not returns:
            returns = ["ALL"]
        if returns is None and not self.rev2:
            tail = f" (MODSEQ {modseq})" if modseq else ""
            self.w(b"* SEARCH" + search_numbers(messages, positions, uid) + tail.encode() + b"\r\n")
            return
        nums = [messages[i].uid for i in positions] if uid else [i + 1 for i in positions]
        if returns is None:
            returns = ["ALL"]
        if "SAVE" in returns:
            # RFC 5182 §2.1: SAVE keeps the result (as uids) for "$"
            self.saved = [messages[i].uid for i in positions]
            returns = [r for r in returns if r != "SAVE"]
            if not returns:
                return
        # RFC 4731 §3.1 / RFC 9051 §7.3.4: ESEARCH
        parts = [b'* ESEARCH (TAG "' + cmd.tag + b'")']
        if uid:
            parts.append(b"UID")
        if nums:
            if "MIN" in returns:
                parts.append(b"MIN %d" % min(nums))
            if "MAX" in returns:
                parts.append(b"MAX %d" % max(nums))
            if "ALL" in returns:
                parts.append(b"ALL " + format_uids(sorted(nums)).encode())
        if "COUNT" in returns:
            parts.append(b"COUNT %d" % len(nums))
        if modseq:
            parts.append(b"MODSEQ %d" % modseq)
        self.w(b" ".join(parts) + b"\r\n")

