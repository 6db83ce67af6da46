"""Big attachments of a submitted message turned into links (``[files] convert_over``; docs/files.md).

:func:`convert` finds the attachments of a message larger than the threshold (encoded octets:
what the message would carry), stores each decoded one as a link of the sender's, and returns the
message with each such part replaced by a short ``text/plain`` part that gives the link. Only
parts of the message's own multipart tree are converted, never parts inside an attached message
(that message stays as it was written), nor a message whose whole body is one file. An
attachment that cannot become a link (over the sender's quota, larger than ``max_size``) stays
in the message as it was.
"""

from __future__ import annotations

import asyncio
import quopri
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from mailsrv import log
from mailsrv.config import Config
from mailsrv.files.links import FileLinkError, iso
from mailsrv.files.service import READ_CHUNK, FileLinks
from mailsrv.mime import Part, iter_decoded, parse

logger = log.get("files")

#: Seconds the per-domain and per-user thresholds are reused while the directory's change stamp stays the
#: same (the stamp can miss a commit in the same clock tick: bounded reuse, as mailsrv.delivery.local's).
SETTINGS_TTL = 5.0
#: Seconds between two looks at the directory's change stamp (one stat): a change is seen within this time.
STAMP_LOOK = 1.0


def big_attachments(root: Part, threshold: int) -> list[Part]:
    """The leaf parts below ``root``'s multiparts larger than ``threshold`` encoded octets that are
    attachments (``Content-Disposition: attachment`` or a file name), in message order."""
    out: list[Part] = []

    def visit(p: Part) -> None:
        if p.is_multipart:
            for k in p.children:
                visit(k)
        elif p.type != "message" and p.size > threshold and (p.disposition == "attachment" or p.filename):
            out.append(p)

    if root.is_multipart:
        visit(root)
    return out


def human(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def link_part(name: str, size: int, url: str, expires: float, eol: bytes) -> bytes:
    """The text/plain part (headers and body, no trailing line end) that replaces an attachment."""
    text = (f'The attachment "{name}" ({human(size)}) was sent as a link.\n'
            f"Download it until {iso(expires)}:\n{url}\n")
    body = quopri.encodestring(text.encode("utf-8")).replace(b"\n", eol)
    return (b"Content-Type: text/plain; charset=utf-8" + eol + b"Content-Transfer-Encoding: quoted-printable" + eol
            + b"Content-Disposition: inline" + eol + eol + body.rstrip(b"\r\n"))


async def convert(raw: Any, threshold: int, links: FileLinks, owner: str, owner_name: str,
                  base_url: str) -> tuple[list[Any], list[str]] | None:
    """The message ``raw`` (bytes or an mmap of its spool file) with its big attachments as links:
    a list of pieces (memoryviews of ``raw`` and new bytes) whose concatenation is the new message,
    and the ids of the links, or None when nothing was converted. Each link is durable and pending
    before this returns: the caller settles them (:meth:`FileLinks.settle`) once the message is
    accepted or not; a link that is never settled is swept (links.PENDING_AGE)."""
    if threshold <= 0:
        return None
    st = await links.io.run(parse, raw)  # a few MB of MIME: not on the loop
    parts = big_attachments(st.root, threshold)
    if not parts:
        return None
    eol = b"\r\n" if b"\r\n" in bytes(raw[: max(st.header_end, 2)]) else b"\n"
    view = memoryview(raw)
    pieces: list[Any] = []
    made: list[str] = []
    pos = 0
    try:
        for p in parts:
            name = p.filename or f"attachment-{p.section}"
            try:
                link, token = await links.from_chunks(iter_decoded(raw, p, READ_CHUNK), owner, owner_name, name,
                                                      p.mime_type, pending=True)
            except (FileLinkError, OSError) as exc:  # the attachment stays in the message
                logger.warning("files.convert_failed", user=owner_name, part=p.section, error=str(exc))
                continue
            url = f"{base_url.rstrip('/')}/f/{token}/{quote(link.name, safe='')}"
            logger.info("files.converted", user=owner_name, id=link.id, part=p.section, size=link.size)
            made.append(link.id)
            pieces += [view[pos:p.header_start], link_part(link.name, link.size, url, link.expires, eol)]
            pos = p.body_end
    except BaseException:  # cancelled, or the pool gone: the links made so far go (else the sweep takes them)
        links.settle_later(made, keep=False)
        raise
    if not pieces:
        return None
    pieces.append(view[pos:])
    return pieces, made


def link_base(cfg: Config) -> str:
    """The URL prefix of links made at submission (no request to take a Host from): ``[files] public_url``,
    else ``[jmap] base_url``, else ``https://`` + ``[server] hostname``."""
    return (cfg.files.public_url or cfg.jmap.base_url or f"https://{cfg.server.hostname}").rstrip("/")


@dataclass(frozen=True, slots=True)
class Converted:
    """A submitted message with links instead of its big attachments: ``data``, and the ``links`` (ids)
    it points at, pending until the caller settles them (:meth:`FileLinks.settle`)."""

    data: bytes
    links: list[str]


async def converted(raw: Any, links: FileLinks, threshold: int, owner: str, owner_name: str,
                    base_url: str) -> Converted | None:
    """The submitted message ``raw`` with its big attachments as links (:func:`convert`), or None to send
    it unchanged: nothing to convert, or the conversion failed (logged ``files.convert_failed``; a
    submission is never refused or lost for it). The caller checks the size first (cheap), and
    settles the links: ``await links.settle(c.links, keep=accepted)``."""
    try:
        out = await convert(raw, threshold, links, owner, owner_name, base_url)
    except Exception as exc:  # a message the parser refuses, a pool that is gone: sent as written
        logger.warning("files.convert_failed", user=owner_name, error=f"{type(exc).__name__}: {exc}")
        return None
    if out is None:
        return None
    pieces, made = out
    data = b"".join(pieces)
    for p in pieces:
        if isinstance(p, memoryview):
            p.release()  # an mmap under them can be closed now
    return Converted(data, made)


def pick_threshold(users: dict[int, int], domains: dict[str, int], default: int, account_id: int | None,
                   domain: str) -> int:
    """The threshold that applies: the user's own, else their domain's, else ``default`` (0: never)."""
    over = users.get(account_id) if account_id is not None else None
    return domains.get(domain, default) if over is None else over


class ConvertPolicy:
    """The threshold of a sender (docs/files.md "Per domain and per user"): the user's own setting, else
    their domain's, else ``[files] convert_over``; 0 = never. The overrides (``directory.convert_settings``)
    are held per worker and loaded again when the directory changed (its change stamp, looked at once a
    :data:`STAMP_LOOK` at most) or :data:`SETTINGS_TTL` passed. Only the first load is waited for: a reload
    runs beside the submissions, which keep the settings they had until it ends."""

    def __init__(self, default: int, directory: object) -> None:
        self.default = default
        self.directory = directory
        self._users: dict[int, int] = {}
        self._domains: dict[str, int] = {}
        self._loaded_at = float("-inf")
        self._looked = float("-inf")
        self._stamp: object = None
        self._loading: asyncio.Future[None] | None = None
        self._stamp_of = getattr(directory, "change_stamp", None)

    async def threshold(self, account: object) -> int:
        """Bytes over which ``account``'s attachments become links (0: never). Never raises: while the
        directory cannot answer, the settings last loaded (else ``[files] convert_over``) apply."""
        now = time.monotonic()
        if now - self._looked >= STAMP_LOOK:
            self._looked = now
            stamp = self._stamp_of() if self._stamp_of is not None else None
            if stamp != self._stamp or now - self._loaded_at >= SETTINGS_TTL:
                if self._loading is None or self._loading.done():
                    self._loading = asyncio.ensure_future(self._load(stamp, now))
        if self._loaded_at == float("-inf") and self._loading is not None:
            await asyncio.shield(self._loading)
        return pick_threshold(self._users, self._domains, self.default, getattr(account, "id", None),
                              getattr(account, "domain", ""))

    async def _load(self, stamp: object, now: float) -> None:
        loader = getattr(self.directory, "convert_settings", None)
        try:
            users, domains = await loader() if loader is not None else ({}, {})
        except Exception as exc:  # keep what we had; the next look tries again
            logger.exception("files.settings_failed", exc)
            return
        self._users, self._domains = users, domains
        self._stamp, self._loaded_at = stamp, now
