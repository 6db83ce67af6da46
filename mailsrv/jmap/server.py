"""The JMAP HTTP service: session resource, API, upload/download, EventSource, WebSocket.

Routes (all answer CORS, RFC 8620 §2 asks for browser clients to work):

    GET  /.well-known/jmap              -> 307 to /jmap/session (no authentication)
    GET  /jmap/session                  the Session object
    POST /jmap/api                      API requests (RFC 8620 §3)
    POST /jmap/upload/{accountId}/      binary upload, streamed to disk (§6.1)
    GET  /jmap/download/{accountId}/{blobId}/{name}?accept=   with Range (§6.2)
    GET  /jmap/eventsource              push (§7.3)
    GET  /jmap/ws                       RFC 8887 WebSocket, subprotocol "jmap"
    POST /jmap/token                    a short-lived access token for URLs (browsers' EventSource)

Authentication: HTTP Basic (only where ``auth.plaintext_allowed`` says so, i.e.
TLS or trusted loopback), ``Authorization: Bearer`` tokens the directory
issues, and on GET endpoints the short-lived ``access_token`` query parameter
or ``jmap_access`` cookie.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import WSMsgType, web

from mailsrv import log
from mailsrv.config import JmapConfig
from mailsrv.directory.rights import OwnerShare
from mailsrv.jmap import core, jsontext, push, sievescript
from mailsrv.jmap import email as _email  # noqa: F401  (registers the Email/Thread methods)
from mailsrv.jmap import filelink as _filelink  # noqa: F401  (FileLink/*, docs/files.md)
from mailsrv.jmap import mailbox as _mailbox  # noqa: F401  (registers the Mailbox methods)
from mailsrv.jmap import quota as _quota  # noqa: F401  (Quota, Blob)
from mailsrv.jmap import recall as _recall  # noqa: F401  (registers Email/recall, docs/recall.md)
from mailsrv.jmap import submission as _submission  # Identity, VacationResponse, EmailSubmission
from mailsrv.jmap.backend import MailBackend
from mailsrv.jmap.blobs import BLOB_RE, TooLarge, UploadStore
from mailsrv.jmap.errors import RequestError, limit, not_json
from mailsrv.jmap.limits import ConnectionLimiter, ConnLimits, LimitedSockSite
from mailsrv.jmap.objects import Collection
from mailsrv.jmap.pushsub import PushManager
from mailsrv.jmap.session import SERVER_CAPABILITIES, SHARED_CAPABILITIES, session_object
from mailsrv.jmap.sharedview import FolderHook, OwnFolders, SharedFolders, directory_sources
from mailsrv.jmap.vacation import Responder
from mailsrv.net.service import ServiceContext
from mailsrv.util.fsio import FileIO

logger = log.get("jmap")

#: Seconds a successful Basic login is remembered (saves an argon2 verification per request).
#: Each use re-checks the directory's login stamp (one cheap query), so a password change,
#: suspension or lockout refuses the old credentials at the next request, on every worker.
AUTH_CACHE_TTL = 60.0
CHUNK = 256 * 1024
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the directory's account id and login name (and the Account when known)."""

    id: str
    username: str
    account: Any = None


BackendFactory = Callable[[Principal], Awaitable[MailBackend]]
#: principal -> what is shared with it: ``mailsrv.directory.rights.OwnerShare`` (per-folder rights,
#: sharedview.py) or any object with ``owner`` and ``read_only`` (the whole account)
GrantsSource = Callable[[Principal], Awaitable[list[Any]]]


@dataclass(frozen=True)
class Access:
    """One account the caller may use: their own (personal) or one shared with them by a grant."""

    backend: MailBackend
    personal: bool
    read_only: bool


def problem(err: RequestError) -> web.Response:
    return web.json_response(err.problem(), status=err.status, content_type="application/problem+json")


#: The 401 where Basic is refused (plain HTTP): a client told to retry Basic would send the password in clear again.
NO_BASIC_HERE = ("authentication required: HTTP Basic only over TLS (the HTTPS listener), or a bearer token"
                 " (`mailsrv token issue USER --scope mail`)")


#: The Bearer challenge when a request sent a bearer token that was refused (RFC 6750 §3.1).
INVALID_TOKEN = 'Bearer realm="mailsrv", error="invalid_token", error_description="invalid or expired token"'

#: The Bearer challenge for a valid token issued without the JMAP scope (RFC 6750 §3.1: 403, and the scope needed).
INSUFFICIENT_SCOPE = 'Bearer realm="mailsrv", error="insufficient_scope", scope="mail"'

#: request key set by :meth:`JmapApp.authenticate` when a valid bearer token lacks the ``mail`` scope.
SCOPE_MISSING = web.RequestKey("mailsrv.scope_missing", bool)


def unauthorized(detail: str = "authentication required", *, basic: bool = True,
                 bad_token: bool = False) -> web.Response:
    """401 with the challenge of what this connection accepts (RFC 9110 §11.6.1): Basic where a password
    may be sent, else Bearer only. ``bad_token``: the request sent a bearer token that was refused, so the
    Bearer challenge says ``error="invalid_token"`` (RFC 6750 §3.1; without a token it carries no error
    code, §3) and comes where Basic is accepted too."""
    resp = web.json_response(
        {"type": "about:blank", "status": 401, "detail": detail}, status=401, content_type="application/problem+json"
    )
    if basic:
        resp.headers.add("WWW-Authenticate", 'Basic realm="mailsrv", charset="UTF-8"')
    if bad_token:
        resp.headers.add("WWW-Authenticate", INVALID_TOKEN)
    elif not basic:
        resp.headers.add("WWW-Authenticate", 'Bearer realm="mailsrv"')
    return resp


class JmapApp:
    """The aiohttp application; one per listener per worker."""

    def __init__(
        self,
        config: JmapConfig,
        auth: Any,
        backends: BackendFactory,
        uploads: UploadStore,
        secret: bytes,
        *,
        tls: bool,
        submitter: Any = None,
        push_ssl: ssl.SSLContext | None = None,
        limiter: ConnectionLimiter | None = None,
        grants: GrantsSource | None = None,
        folder_hook: FolderHook | None = None,
    ) -> None:
        self.config = config
        self.grants = grants
        #: a grantee's mailbox changes carry the folder's ACL entries along (sharedview.FolderHook)
        self.folder_hook = folder_hook
        self.limiter = limiter
        self.submitter = submitter
        #: mailsrv.recall.Recaller for Email/recall (set by JmapService; None: the method is unavailable)
        self.recaller: Any = None
        #: mailsrv.files.FileLinks: /files uploads, /f/ downloads, FileLink/* (set by JmapService; None: off)
        self.files: Any = None
        #: mailsrv.config.SieveConfig: SieveScript/* over the account's scripts (set by JmapService; None: off)
        self.sieve: Any = None
        #: ``[imap] shared_private_seen``: a grantee's $seen in shared accounts is their own (set by JmapService)
        self.private_seen = False
        #: (grantee account id, owner account id) -> (the owner's backend, the grantee's view of it)
        self._private_views: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.push = PushManager(push_ssl)
        self.vacation = Responder(submitter)
        self.auth = auth
        self.backends = backends
        self.uploads = uploads
        self.secret = secret
        self.tls = tls
        self._basic_cache: dict[bytes, tuple[float, Principal, int]] = {}  # -> (expiry, principal, generation)
        self._inflight: dict[str, int] = {}
        #: :meth:`_session_state` by the Session's varying parts
        self._session_states: dict[tuple[Any, ...], str] = {}
        self._uploads_inflight: dict[str, int] = {}
        self.websockets: set[web.WebSocketResponse] = set()
        self.streams: set[asyncio.Task[Any]] = set()

    # --- application ---------------------------------------------------------

    def make_app(self) -> web.Application:
        # client_max_size bounds request.read(); uploads stream from request.content instead.
        # the connection limits answer inside the CORS middleware, so a browser can read their 503
        middlewares: list[Any] = [self.cors] + ([self.limiter.middleware] if self.limiter is not None else [])
        app = web.Application(middlewares=middlewares, client_max_size=self.config.max_size_request)
        r = app.router
        r.add_route("GET", "/.well-known/jmap", self.well_known)
        r.add_route("GET", "/jmap/session", self.session)
        r.add_route("POST", "/jmap/api", self.api)
        r.add_route("POST", "/jmap/upload/{accountId}/", self.upload)
        r.add_route("POST", "/jmap/upload/{accountId}", self.upload)
        r.add_route("GET", "/jmap/download/{accountId}/{blobId}/{name}", self.download)
        r.add_route("GET", "/jmap/eventsource", self.eventsource)
        r.add_route("GET", "/jmap/ws", self.websocket)
        r.add_route("POST", "/jmap/token", self.token)
        if self.files is not None:  # big attachments through links (docs/files.md)
            from mailsrv.files.http import FileLinkHttp

            FileLinkHttp(self.files, self.authenticate, self.refuse, self.base_url,
                         self.config.max_concurrent_upload).install(app)
        app.on_startup.append(self.resume)
        app.on_shutdown.append(self._close_websockets)
        return app

    async def resume(self, app: web.Application | None = None) -> None:
        """After a (re)start: answer for enabled VacationResponses and verified PushSubscriptions.

        Account ids are a one-letter prefix and the directory's account id. Each worker
        tries; the per-account locks leave one of them doing the work.
        """
        root = self.uploads.root

        lifetime = self.config.upload_lifetime

        def scan() -> list[tuple[str, bool, bool]]:
            out: list[tuple[str, bool, bool]] = []
            if not root.is_dir():
                return out
            for d in root.iterdir():
                if d.is_dir():
                    expire_uploads(d, lifetime)
                vac = has_push = False
                try:
                    vac = bool(json.loads((d / "VacationResponse.json").read_bytes())["records"]
                               .get("singleton", {}).get("isEnabled"))
                except (OSError, ValueError, KeyError, AttributeError):
                    pass
                try:
                    subs = json.loads((d / "PushSubscription.json").read_bytes())["records"]
                    has_push = any(s.get("verified") for s in subs.values())
                except (OSError, ValueError, KeyError, AttributeError):
                    pass
                if vac or has_push:
                    out.append((d.name, vac, has_push))
            return out

        for account_id, vac, has_push in await asyncio.to_thread(scan):
            try:
                p = Principal(account_id[1:], "")
                be = await self.backends(p)
            except Exception as exc:  # a vanished account must not stop the others
                logger.warning("jmap.resume.failed", account=account_id, error=str(exc))
                continue
            if vac:
                await self.vacation.ensure(be, p, self._objects(be.account_id, "VacationResponse"),
                                     self._objects(be.account_id, "VacationSent"))
            if has_push:
                await self.push.ensure(be, self._objects(be.account_id, "PushSubscription"), self._accounts_source(p))

    async def _close_websockets(self, app: web.Application) -> None:
        for ws in list(self.websockets):
            await ws.close(code=1001, message=b"server shutdown")
        for task in list(self.streams):  # EventSource streams end at shutdown
            task.cancel()
        await self.push.close()
        await self.vacation.close()

    @web.middleware
    async def cors(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":
            resp: web.StreamResponse = web.Response(status=204)
        else:
            try:
                resp = await handler(request)
            except web.HTTPException as exc:
                # answered here (not re-raised) so that errors and redirects carry CORS headers too
                resp = web.Response(status=exc.status, headers={k: v for k, v in exc.headers.items()
                                                                if k.lower() in ("location", "allow")},
                                    text=exc.text, content_type="text/plain")
        allowed = self.config.cors_origins
        if origin and ("*" in allowed or origin in allowed):
            # credentials travel in the Authorization header, never cookies across origins
            resp.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
            if "*" not in allowed:
                resp.headers["Vary"] = "Origin"
            resp.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, PUT, OPTIONS"
            resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Accept, Last-Event-ID"
            resp.headers["Access-Control-Expose-Headers"] = "Content-Length, Content-Range, Content-Disposition"
            resp.headers["Access-Control-Max-Age"] = "86400"
        return resp

    def base_url(self, request: web.Request) -> str:
        if self.config.base_url:
            return self.config.base_url.rstrip("/")
        return f"{request.scheme}://{request.host}"

    # --- authentication -----------------------------------------------------

    async def authenticate(self, request: web.Request, allow_token: bool = False) -> Principal | None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        ip = peer[0] if peer else ""
        header = request.headers.get("Authorization", "")
        scheme, _, cred = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            return await self._basic(cred.strip(), ip, request.secure)
        if scheme == "bearer":
            r = await self.auth.bearer(cred.strip(), protocol="jmap", client_ip=ip)
            if not r.ok or r.account is None:
                return None
            if "mail" not in getattr(r, "scopes", frozenset({"mail"})):
                request[SCOPE_MISSING] = True  # refuse() answers 403 insufficient_scope, not 401
                return None
            return Principal(str(r.account.id), r.account.address, r.account)
        if allow_token:
            tok = request.query.get("access_token") or request.cookies.get("jmap_access")
            if tok:
                return await self.check_access_token(tok)
        return None

    def refuse(self, request: web.Request) -> web.Response:
        """The 401 for a request that :meth:`authenticate` did not accept (403 for a token without the scope)."""
        if request.get(SCOPE_MISSING):
            # RFC 6750 §3.1: the token is good but does not grant this resource; asking again will not help
            resp = web.json_response({"type": "about:blank", "status": 403, "detail": "the bearer token has no mail scope"
                                      " (`mailsrv token issue USER --scope mail`)"},
                                     status=403, content_type="application/problem+json")
            resp.headers["WWW-Authenticate"] = INSUFFICIENT_SCOPE
            return resp
        peer = request.transport.get_extra_info("peername") if request.transport else None
        basic = self.auth.plaintext_allowed(tls=request.secure or self.tls, client_ip=peer[0] if peer else "")
        if request.headers.get("Authorization", "")[:7].lower() == "bearer ":
            return unauthorized("invalid or expired bearer token", basic=basic, bad_token=True)
        return unauthorized() if basic else unauthorized(NO_BASIC_HERE, basic=False)

    async def _basic(self, cred: str, ip: str, secure: bool) -> Principal | None:
        if not self.auth.plaintext_allowed(tls=secure or self.tls, client_ip=ip):
            return None
        # the address is part of the key: login networks are per user
        key = hashlib.sha256(f"{ip}\0{cred}".encode()).digest()
        now = time.monotonic()
        hit = self._basic_cache.get(key)
        if hit is not None and hit[0] > now:
            stamp = await self.auth.login_stamp(int(hit[1].id))
            if stamp is not None and stamp.usable and stamp.generation == hit[2]:
                return hit[1]
            del self._basic_cache[key]  # changed password, suspended, locked: a full login decides
        try:
            user, _, password = base64.b64decode(cred, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        r = await self.auth.login(user, password, protocol="jmap", client_ip=ip, tls=secure or self.tls)
        if not r.ok or r.account is None:
            delay = getattr(r, "delay", 0.0) or 0.0
            if delay:
                await asyncio.sleep(min(delay, 10.0))  # tarpit (RFC-less; lockout policy)
            return None
        principal = Principal(str(r.account.id), r.account.address, r.account)
        stamp = await self.auth.login_stamp(r.account.id)
        if stamp is not None and stamp.usable:
            if len(self._basic_cache) > 10000:
                self._basic_cache.clear()
            self._basic_cache[key] = (now + AUTH_CACHE_TTL, principal, stamp.generation)
        return principal

    async def make_access_token(self, p: Principal) -> tuple[str, int]:
        """A URL token for ``p``, bound to their credentials generation (a password change ends it)."""
        stamp = await self.auth.login_stamp(int(p.id))
        generation = stamp.generation if stamp is not None else -1
        expires = int(time.time() + self.config.access_token_lifetime)
        body = base64.urlsafe_b64encode(json.dumps([p.id, p.username, expires, generation]).encode()).decode().rstrip("=")
        sig = hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{body}.{sig}", expires

    async def check_access_token(self, token: str) -> Principal | None:
        body, _, sig = token.partition(".")
        want = hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()[:32]
        if not sig.isascii() or not hmac.compare_digest(want, sig):  # compare_digest raises on non-ASCII str
            return None
        try:
            pid, user, expires, generation = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, TypeError):
            return None
        if not isinstance(expires, int) or expires < time.time() or not str(pid).isdigit():
            return None
        # like a cached Basic login: refused at once after a password change, suspension or lockout
        stamp = await self.auth.login_stamp(int(pid))
        if stamp is None or not stamp.usable or stamp.generation != generation:
            return None
        return Principal(str(pid), str(user))

    def _objects(self, account_id: str, type_: str) -> Collection:
        return Collection(self.uploads.root, self.uploads.io, account_id, type_)

    async def accounts(self, p: Principal) -> tuple[MailBackend, dict[str, Access]]:
        """The caller's own backend, and every account they may use by id (theirs first, then the
        accounts shared with them, read from the directory at each call: a revoke acts at once)."""
        be = await self.backends(p)
        # the own account also follows its submissions through the queue (push of EmailSubmission)
        be = _submission.tracking(be, self._objects(be.account_id, "EmailSubmission"), self.submitter)
        if self.sieve is not None:  # and its SieveScript state (ManageSieve and the CLI change it too)
            be = sievescript.tracking(be, self._objects(be.account_id, "SieveScript"),
                                      getattr(getattr(be, "acct", None), "root", None))
        if self.folder_hook is not None and p.id.isdigit():  # the owner's mailbox changes carry their ACL entries
            be = OwnFolders(be, int(p.id), self.folder_hook)
        out = {be.account_id: Access(be, True, False)}
        if self.grants is not None:
            for g in await self.grants(p):
                owner = g.owner
                try:
                    shared = await self.backends(Principal(str(owner.id), owner.address, owner))
                except Exception as exc:  # an owner whose store cannot be opened must not lock the grantee out
                    logger.warning("jmap.shared.unavailable", owner=owner.address, error=str(exc)[:200])
                    continue
                if isinstance(g, OwnerShare):  # the grantee's rights, folder by folder (as IMAP's)
                    if not g.lists_any():
                        continue
                    if self.private_seen:
                        shared = self._private_view(be, shared, g)
                    out.setdefault(shared.account_id,
                                   Access(SharedFolders(shared, g, self.folder_hook), False, not g.changes_any()))
                else:
                    out.setdefault(shared.account_id, Access(shared, False, bool(g.read_only)))
        return be, out

    def _private_view(self, own: MailBackend, shared: MailBackend, share: OwnerShare) -> MailBackend:
        """``shared`` with ``own``'s private \\Seen (storebackend.with_private_seen), one per pair and worker
        (its caches live as long as the owner's backend); private where ``share`` (the grantee's rights now)
        gives ``s``, the owner's \\Seen elsewhere."""
        from mailsrv.jmap.storebackend import follow_rights, same_store, with_private_seen

        key = (own.account_id, shared.account_id)
        got = self._private_views.get(key)
        if got is None or not same_store(got[0], shared):  # the sortOrder overlay is new at each request
            got = self._private_views[key] = (shared, with_private_seen(shared, own))
        follow_rights(got[1], share)
        return got[1]

    def _accounts_source(self, p: Principal) -> Callable[[], Awaitable[list[MailBackend]]]:
        """For long-lived watchers (push subscriptions): every backend ``p`` may see, read anew at each call."""
        async def source() -> list[MailBackend]:
            return [a.backend for a in (await self.accounts(p))[1].values()]

        return source

    def _session(self, request: web.Request, p: Principal, be: MailBackend,
                 access: dict[str, Access]) -> dict[str, Any]:
        shared = {aid: (a.backend.name, a.read_only) for aid, a in access.items() if not a.personal}
        files = None if self.files is None else {"maxSize": self.files.config.max_size,
                                                 "quota": self.files.config.quota,
                                                 "retentionDays": self.files.config.retention_days}
        sieve = None if self.sieve is None else sievescript.account_capability(self.sieve)
        return session_object(self.config, self.base_url(request), p.username, {be.account_id: be.name},
                              be.account_id, shared, files, sieve)

    def _session_state(self, request: web.Request, p: Principal, be: MailBackend, access: dict[str, Access]) -> str:
        """The Session object's ``state`` (RFC 8620 §3.4: in every API response), kept per what it is made
        of besides this app's fixed settings, not built and hashed (JSON, SHA-256) again at each request."""
        key = (self.base_url(request), p.username, be.account_id, be.name,
               tuple((aid, a.backend.name, a.read_only) for aid, a in access.items() if not a.personal))
        state = self._session_states.get(key)
        if state is None:
            if len(self._session_states) > 10000:
                self._session_states.clear()
            state = self._session_states[key] = self._session(request, p, be, access)["state"]
        return state

    async def _context(self, p: Principal) -> tuple[core.RequestContext, MailBackend]:
        return self._make_context(p, *await self.accounts(p))

    def _make_context(self, p: Principal, be: MailBackend,
                      access: dict[str, Access]) -> tuple[core.RequestContext, MailBackend]:
        ctx = core.RequestContext(
            config=self.config,
            username=p.username,
            accounts={aid: a.backend for aid, a in access.items()},
            capabilities=SERVER_CAPABILITIES,
            extra={"uploads": self.uploads, "objects": self._objects, "submitter": self.submitter, "principal": p,
                   "push": self.push, "vacation": self.vacation, "accounts": self._accounts_source(p),
                   "recaller": self.recaller, "files": self.files, "sieve": self.sieve},
            read_only=frozenset(aid for aid, a in access.items() if a.read_only),
            account_capabilities={aid: SHARED_CAPABILITIES for aid, a in access.items() if not a.personal},
        )
        return ctx, be

    # --- endpoints -----------------------------------------------------------

    async def well_known(self, request: web.Request) -> web.StreamResponse:
        # RFC 8620 §2.2: the well-known URI may redirect to the session resource.
        raise web.HTTPTemporaryRedirect(self.base_url(request) + "/jmap/session")

    async def session(self, request: web.Request) -> web.StreamResponse:
        p = await self.authenticate(request)
        if p is None:
            return self.refuse(request)
        be, access = await self.accounts(p)
        resp = web.json_response(self._session(request, p, be, access))
        resp.headers["Cache-Control"] = "no-cache, no-store, must-revalidate"
        return resp

    async def token(self, request: web.Request) -> web.StreamResponse:
        p = await self.authenticate(request)
        if p is None:
            return self.refuse(request)
        tok, expires = await self.make_access_token(p)
        resp = web.json_response({"accessToken": tok, "expires": expires})
        # browsers' EventSource sends cookies of its own origin: the same token as a cookie
        resp.set_cookie("jmap_access", tok, max_age=int(self.config.access_token_lifetime), path="/jmap",
                        httponly=True, secure=request.secure or self.tls, samesite="Strict")
        return resp

    async def api(self, request: web.Request) -> web.StreamResponse:
        p = await self.authenticate(request)
        if p is None:
            return self.refuse(request)
        try:
            body = await self._read_json(request)
        except RequestError as err:
            return problem(err)
        n = self._inflight.get(p.id, 0)
        if n >= self.config.max_concurrent_requests:
            return problem(limit("maxConcurrentRequests", "too many concurrent requests"))
        self._inflight[p.id] = n + 1
        try:
            be, access = await self.accounts(p)
            ctx, be = self._make_context(p, be, access)
            ctx.extra["base_url"] = self.base_url(request)  # for URLs in responses (FileLink/set)
            session_state = self._session_state(request, p, be, access)
            try:
                # a client that hangs up does not cut a request in the middle of its method calls
                result = await asyncio.shield(core.process(body, ctx, session_state))
            except RequestError as err:
                return problem(err)
        finally:
            self._inflight[p.id] -= 1
            if not self._inflight[p.id]:
                del self._inflight[p.id]
        return web.json_response(result, dumps=jsontext.dumps)  # Email/get's objects as encoded before

    async def _read_json(self, request: web.Request) -> Any:
        max_size = self.config.max_size_request
        if request.content_length is not None and request.content_length > max_size:
            raise limit("maxSizeRequest", f"request larger than {max_size} octets")
        data = bytearray()
        async for chunk in request.content.iter_chunked(CHUNK):
            data += chunk
            if len(data) > max_size:
                raise limit("maxSizeRequest", f"request larger than {max_size} octets")
        return parse_json(bytes(data))

    async def upload(self, request: web.Request) -> web.StreamResponse:
        p = await self.authenticate(request)
        if p is None:
            return self.refuse(request)
        _, access = await self.accounts(p)
        account_id = request.match_info["accountId"]
        if account_id not in access:
            return web.json_response({"type": "about:blank", "status": 404, "detail": "no such account"},
                                     status=404, content_type="application/problem+json")
        if access[account_id].read_only:
            return web.json_response({"type": "about:blank", "status": 403, "detail": "the account is read-only"},
                                     status=403, content_type="application/problem+json")
        cfg = self.config
        if request.content_length is not None and request.content_length > cfg.max_size_upload:
            return problem(RequestError(core_limit_type(), 413, "upload too large", limit="maxSizeUpload"))
        n = self._uploads_inflight.get(p.id, 0)
        if n >= cfg.max_concurrent_upload:
            return problem(limit("maxConcurrentUpload", "too many concurrent uploads"))
        self._uploads_inflight[p.id] = n + 1
        ctype = request.headers.get("Content-Type", "application/octet-stream")
        try:
            blob_id, size = await self.uploads.put(account_id, request.content.iter_chunked(CHUNK), ctype,
                                                   cfg.max_size_upload)
        except TooLarge:
            return problem(RequestError(core_limit_type(), 413, "upload too large", limit="maxSizeUpload"))
        finally:
            self._uploads_inflight[p.id] -= 1
            if not self._uploads_inflight[p.id]:
                del self._uploads_inflight[p.id]
        return web.json_response({"accountId": account_id, "blobId": blob_id, "type": ctype, "size": size},
                                 status=201)

    async def download(self, request: web.Request) -> web.StreamResponse:
        p = await self.authenticate(request, allow_token=True)
        if p is None:
            return self.refuse(request)
        _, access = await self.accounts(p)
        if request.match_info["accountId"] not in access:
            raise web.HTTPNotFound()
        be = access[request.match_info["accountId"]].backend
        blob_id = request.match_info["blobId"]
        name = request.match_info["name"]
        accept = request.query.get("accept") or "application/octet-stream"
        headers = {
            "Content-Type": accept,
            # RFC 6266 + RFC 8187: the name as given, UTF-8 percent-encoded
            "Content-Disposition": "attachment; filename*=UTF-8''" + quote(name, safe=""),
            "Cache-Control": "private, immutable, max-age=31536000",
        }
        path = await self.uploads.path(be.account_id, blob_id)
        if path is not None:
            resp = web.FileResponse(path, headers=headers)  # handles Range and If-Range
            return resp
        blob_path = getattr(be, "blob_path", None)
        if blob_path is not None:
            mpath = await blob_path(blob_id)
            if mpath is not None:
                try:
                    # streamed from the maildir file (sendfile), Range handled by aiohttp
                    return web.FileResponse(mpath, headers=headers)
                except OSError:
                    pass
        from mailsrv.jmap.email import read_blob

        data = await read_blob(be, self.uploads, blob_id)
        if data is None:
            raise web.HTTPNotFound()
        return bytes_response(request, data, headers)

    async def eventsource(self, request: web.Request) -> web.StreamResponse:
        p = await self.authenticate(request, allow_token=True)
        if p is None:
            return self.refuse(request)
        task = asyncio.current_task()
        assert task is not None
        self.streams.add(task)
        try:
            return await push.eventsource(request, self._accounts_source(p), self.config)
        finally:
            self.streams.discard(task)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        p = await self.authenticate(request, allow_token=True)
        if p is None:
            return self.refuse(request)
        ws = web.WebSocketResponse(protocols=("jmap",), max_msg_size=self.config.max_size_request, heartbeat=60.0)
        await ws.prepare(request)
        if ws.ws_protocol != "jmap":
            # RFC 8887 §4.2: the client must ask for the "jmap" subprotocol
            await ws.close(code=1002, message=b"subprotocol jmap required")
            return ws
        self.websockets.add(ws)
        try:
            await push.websocket_session(ws, self, p)
        finally:
            self.websockets.discard(ws)
        return ws


def core_limit_type() -> str:
    from mailsrv.jmap.errors import URN_ERROR

    return URN_ERROR + "limit"


def parse_json(data: bytes) -> Any:
    """Request JSON -> value; anything malformed is notJSON (RFC 8620 §3.6.1)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise not_json("the request is not UTF-8") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise not_json("the request is nested too deeply") from None
    except ValueError as exc:
        raise not_json(f"the request is not JSON: {exc}") from None


def bytes_response(request: web.Request, data: bytes, headers: dict[str, str]) -> web.Response:
    """A 200 or single-range 206 response (RFC 9110 §14) for an in-memory blob."""
    headers = {**headers, "Accept-Ranges": "bytes"}
    if "Range" not in request.headers:
        return web.Response(body=data, headers=headers)
    try:
        rng = request.http_range
    except ValueError:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
    start, stop = rng.start, rng.stop
    size = len(data)
    if start is None and stop is not None:  # suffix range "-N"
        start, stop = max(0, size + stop), size
    start = start or 0
    stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    return web.Response(status=206, body=data[start:stop], headers=headers)


def expire_uploads(d: Path, lifetime: float) -> int:
    """Remove uploads (and abandoned temp files) older than ``lifetime`` seconds (RFC 8620 §6.1:
    an unreferenced upload may be deleted after at least an hour). Imported mail is a hard link
    in the maildir, so it survives. Returns how many were removed."""
    cutoff = time.time() - lifetime
    removed = 0
    for f in d.iterdir():
        name = f.name
        if not (BLOB_RE.match(name) or name.endswith(".type") or name.startswith(".tmp.")):
            continue
        try:
            if f.stat().st_mtime < cutoff:
                f.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def load_secret(path: Path) -> bytes:
    """The key of URL access tokens, shared by every worker through a 0600 file."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(32))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # first writer wins; others read its key
    except FileExistsError:
        pass
    os.unlink(tmp)
    return path.read_bytes()


# --- the listener service -------------------------------------------------------


class JmapService:
    """The ``HttpService`` the worker's listener runs."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.runner: web.AppRunner | None = None
        self.limiter = ConnectionLimiter(ConnLimits.of(ctx.listener, ctx.config.limits), ctx.name)

    def _build(self) -> web.Application:
        cfg = self.ctx.config
        res = self.ctx.resources
        data_dir = cfg.server.data_dir
        io = res.get("fileio") or FileIO(4, "jmap-io")
        uploads = UploadStore(data_dir / cfg.jmap.upload_dir, io)
        factory: BackendFactory | None = res.get("jmap_backends")
        if factory is None and "store" in res:
            from mailsrv.jmap.storebackend import store_factory, with_sort_order

            factory = with_sort_order(store_factory(res["store"], res.get("directory"), data_dir,
                                                    lambda: res.get("policy")), uploads.root, io)
        if factory is None or "auth" not in res:
            return _unavailable_app(self.limiter)
        secret = load_secret(data_dir / cfg.jmap.upload_dir / ".token-key")
        submitter = None
        if "directory" in res and "store" in res:
            from mailsrv.jmap.submission import DirectorySubmitter

            submitter = DirectorySubmitter(res["directory"], res["store"], data_dir, res.get("archive"),
                                          sieve=cfg.sieve, max_hops=cfg.smtp.max_hops)
        directory = res.get("directory")
        grants: GrantsSource | None = None
        hook: FolderHook | None = None
        if directory is not None:
            grants, hook = directory_sources(directory, anyone=cfg.imap.acl_anyone)  # as IMAP's ACL

        app = JmapApp(cfg.jmap, res["auth"], factory, uploads, secret, tls=self.ctx.listener.tls == "implicit",
                      submitter=submitter, limiter=self.limiter, grants=grants, folder_hook=hook)
        if "directory" in res and "store" in res:
            from mailsrv.recall import Recaller

            app.recaller = Recaller.of(cfg, res["store"], res["directory"])
        if cfg.sieve.enabled and "store" in res:
            app.sieve = cfg.sieve
        app.private_seen = cfg.imap.shared_private_seen  # as IMAP's (docs/shared-mailboxes.md)
        if cfg.files.enabled:
            if "files" not in res:  # the worker's (mailsrv/worker.py); a service run without a worker makes one
                from mailsrv.files import FileLinks, files_root

                res["files"] = FileLinks(cfg.files, files_root(data_dir))
            app.files = res["files"]
            if submitter is not None:  # docs/files.md: big attachments as links (convert_over, per domain, user)
                from mailsrv.files.convert import link_base

                submitter.convert_with(res["files"], cfg.files.convert_over, link_base(cfg))
        return app.make_app()

    async def start(self, socks: list[socket.socket], ssl_context: ssl.SSLContext | None) -> None:
        app = self._build()
        # handler_cancellation: a push stream ends when its client goes away
        # keepalive_timeout: a connection silent between requests for the listener's idle time is closed
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.ctx.config.server.shutdown_grace,
            handler_cancellation=True, keepalive_timeout=self.limiter.limits.idle_timeout,
        )
        await self.runner.setup()
        for sock in socks:
            site = LimitedSockSite(self.runner, sock, self.limiter, ssl_context=ssl_context)
            await site.start()

    def protocol_factory(self) -> Callable[[], asyncio.Protocol]:
        """The per-connection protocol (mailsrv.net.listener: adopted and PROXY connections), after start."""
        assert self.runner is not None and self.runner.server is not None
        return self.limiter.protocol_factory(self.runner.server)

    async def stop(self, grace: float) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _unavailable_app(limiter: ConnectionLimiter | None = None) -> web.Application:
    async def unavailable(request: web.Request) -> web.Response:
        return web.json_response(
            {"type": "about:blank", "status": 503, "detail": "the mail store or authentication is not configured"},
            status=503,
            content_type="application/problem+json",
        )

    app = web.Application(middlewares=[limiter.middleware] if limiter is not None else [])
    app.router.add_route("*", "/{tail:.*}", unavailable)
    return app


def make_service(ctx: ServiceContext) -> JmapService:
    return JmapService(ctx)


__all__ = ["Access", "JmapApp", "JmapService", "Principal", "make_service", "WSMsgType"]
