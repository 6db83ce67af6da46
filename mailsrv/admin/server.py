"""Admin API HTTP service (aiohttp): JSON in and out, bearer tokens with the "admin" scope.

Every handler resolves the token to an administrator, then runs one scoped
operation of ``mailsrv.directory.ops`` on the directory's thread pool; a
change is visible to every worker at once (the directory has no cache).
Errors are RFC 9457 problem details.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mailsrv import log
from mailsrv.admin import filesettings, openapi
from mailsrv.admin import lists as policy_lists
from mailsrv.admin import recall as admin_recall
from mailsrv.auth import Authenticator
from mailsrv.auth import tokens as token_mod
from mailsrv.directory import (
    Conflict,
    Directory,
    DirectoryError,
    NotFound,
    PermissionDenied,
    SyncDirectory,
    ops,
)
from mailsrv.directory.scope import Actor
from mailsrv.net.service import ServiceContext
from mailsrv.recall import Recaller

logger = log.get("admin")

PREFIX = "/api/v1"
#: Largest request body accepted (a JSON import of a big directory goes through the CLI).
MAX_BODY = 1 << 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _problem(status: int, detail: str) -> web.Response:
    titles = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
              413: "Payload Too Large", 503: "Service Unavailable"}
    resp = web.json_response({"type": "about:blank", "title": titles.get(status, "Error"), "status": status,
                              "detail": detail}, status=status, content_type="application/problem+json")
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="mailsrv-admin"'
    return resp


class AdminApi:
    """The aiohttp application over one directory and authenticator."""

    def __init__(self, directory: Directory, auth: Authenticator, *,
                 forget_usage: Callable[[str], None] | None = None, recaller: Recaller | None = None) -> None:
        self.directory = directory
        self.auth = auth
        #: takes a deleted account's usage out of its domain's quota total (the store's UsageBook.forget)
        self.forget_usage = forget_usage
        self.routes: list[tuple[str, str, str, dict[str, Any] | None]] = []
        self.app = web.Application(client_max_size=MAX_BODY)
        self._table()
        admin_recall.register(self, recaller, PREFIX)  # docs/recall.md
        self.document = openapi.build(self.routes, PREFIX)
        self.app.router.add_get(PREFIX + "/openapi.json", self._openapi)

    def _user_del(self, d: SyncDirectory, actor: Actor, address: str) -> dict[str, Any]:
        acct = d.account_by_address(address)
        out = ops.user_del(d, actor, address)
        if acct is not None and self.forget_usage is not None:  # its mail no longer counts for the domain
            self.forget_usage(str(acct.id))
        return out

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.document)

    # -- plumbing ----------------------------------------------------------------------------

    def _add(self, method: str, path: str, summary: str, body: dict[str, Any] | None,
             fn: Callable[[SyncDirectory, Actor, web.Request, dict[str, Any]], Any], *,
             hash_password: bool = False) -> None:
        self.routes.append((method, path, summary, body))

        async def handler(request: web.Request) -> web.StreamResponse:
            who = await self._admin(request)
            if isinstance(who, web.Response):
                return who
            data: dict[str, Any] = {}
            if body is not None:
                try:
                    data = await request.json()
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return _problem(400, "the body is not JSON")
                except web.HTTPRequestEntityTooLarge:
                    return _problem(413, "request body too large")
                if not isinstance(data, dict):
                    return _problem(400, "the body must be a JSON object")
            if hash_password:
                pw = data.pop("password", None)
                if pw is not None:
                    if not isinstance(pw, str) or len(pw) < 8:
                        return _problem(400, "password must be a string of at least 8 characters")
                    data["secrets"] = await self.auth.hash_password(pw)
            result = await self.scoped(lambda sd: fn(sd, Actor.admin(sd, who), request, data))
            if isinstance(result, web.Response):
                return result
            logger.info("admin.call", admin=who, method=request.method, path=request.path)
            return web.json_response(result, dumps=lambda o: json.dumps(o, default=str))

        self.app.router.add_route(method, PREFIX + path, handler)

    async def scoped(self, fn: Callable[[SyncDirectory], Any]) -> Any:
        """``fn(sync_directory)`` on the directory's pool; its errors as problem responses (returned)."""
        try:
            return await self.directory.run(fn)
        except PermissionDenied as exc:
            return _problem(403, str(exc))
        except NotFound as exc:
            return _problem(404, str(exc))
        except Conflict as exc:
            return _problem(409, str(exc))
        except (DirectoryError, ValueError, TypeError, KeyError) as exc:
            return _problem(400, str(exc) if not isinstance(exc, KeyError) else f"missing field {exc}")

    async def _admin(self, request: web.Request) -> str | web.Response:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _problem(401, "a bearer token is required")
        peer = request.remote or "?"
        res = await self.auth.bearer(token.strip(), protocol="admin", client_ip=peer)
        if not res.ok or res.account is None:
            return _problem(401, "invalid token")
        if "admin" not in res.scopes:
            return _problem(403, "this token does not carry the admin scope")
        return res.account.address

    # -- the routes ------------------------------------------------------------------------------

    def _table(self) -> None:
        s = {"type": "object"}
        str_ = {"type": "string"}
        count = {"type": "integer", "minimum": 0}
        limit = {"type": ["integer", "null"], "minimum": 0}  # null: unlimited
        a = self._add
        m = lambda r, k: r.match_info[k]  # noqa: E731

        a("GET", "/domains", "List domains in scope", None, lambda d, ac, r, b: ops.domain_list(d, ac))
        a("POST", "/domains", "Add a domain (super)", {**s, "required": ["name"], "properties": {
            "name": str_, "max_users": count, "max_storage": count,
            "networks": {"type": "array", "items": str_}}},
          lambda d, ac, r, b: ops.domain_add(d, ac, b["name"], max_users=b.get("max_users"),
                                             max_storage=b.get("max_storage"), networks=tuple(b.get("networks", ()))))
        a("PATCH", "/domains/{name}", "Change a domain", {**s, "properties": {
            "catchall": {"type": ["string", "null"]}, "networks": {"type": "array", "items": str_},
            "max_users": limit, "max_storage": limit}},
          lambda d, ac, r, b: ops.domain_set(d, ac, m(r, "name"), **_pick(b, "catchall", "networks", "max_users", "max_storage")))
        a("DELETE", "/domains/{name}", "Delete an empty domain (super)", None,
          lambda d, ac, r, b: ops.domain_del(d, ac, m(r, "name")))

        user_props = {"display_name": str_, "dept": {"type": ["string", "null"]}, "title": str_, "phone": str_,
                      "quota_bytes": limit, "quota_messages": limit,
                      "may_send_outside": {"type": "boolean"}, "networks": {"type": "array", "items": str_},
                      "state": {"enum": ["active", "suspended"]}}
        a("GET", "/users", "List users in scope (?domain=)", None,
          lambda d, ac, r, b: ops.user_list(d, ac, r.query.get("domain")))
        a("POST", "/users", "Add a user", {**s, "required": ["address"], "properties": {
            "address": str_, "password": str_, **user_props}},
          lambda d, ac, r, b: ops.user_add(d, ac, b["address"], b.get("secrets"), **_user_fields(b)),
          hash_password=True)
        a("GET", "/users/{address}", "Show a user", None, lambda d, ac, r, b: ops.user_show(d, ac, m(r, "address")))
        a("PATCH", "/users/{address}", "Change a user", {**s, "properties": user_props},
          lambda d, ac, r, b: ops.user_set(d, ac, m(r, "address"), **_user_fields(b, with_state=True)))
        a("DELETE", "/users/{address}", "Delete a user (the store is kept)", None,
          lambda d, ac, r, b: self._user_del(d, ac, m(r, "address")))
        a("POST", "/users/{address}/password", "Set a user's password", {**s, "required": ["password"],
                                                                           "properties": {"password": str_}},
          lambda d, ac, r, b: ops.user_passwd(d, ac, m(r, "address"), b["secrets"]), hash_password=True)

        a("GET", "/aliases", "List aliases in scope (?domain=)", None,
          lambda d, ac, r, b: ops.alias_list(d, ac, r.query.get("domain")))
        a("POST", "/aliases", "Add an alias", {**s, "required": ["alias", "user"], "properties": {"alias": str_, "user": str_}},
          lambda d, ac, r, b: ops.alias_add(d, ac, b["alias"], b["user"]))
        a("DELETE", "/aliases/{alias}", "Delete an alias", None, lambda d, ac, r, b: ops.alias_del(d, ac, m(r, "alias")))

        policy = {"enum": ["anyone", "members", "listed", "domain"]}
        a("GET", "/groups", "List groups and departments in scope (?domain=&kind=group|dept)", None,
          lambda d, ac, r, b: ops.group_list(d, ac, r.query.get("domain"), r.query.get("kind")))
        a("POST", "/groups", "Add a group", {**s, "required": ["address"], "properties": {
            "address": str_, "name": str_, "post_policy": policy}},
          lambda d, ac, r, b: ops.group_add(d, ac, b["address"], name=b.get("name", ""),
                                            post_policy=b.get("post_policy", "anyone")))
        a("GET", "/groups/{address}", "Show a group or department", None,
          lambda d, ac, r, b: ops.group_show(d, ac, m(r, "address")))
        a("PATCH", "/groups/{address}", "Change a group", {**s, "properties": {"name": str_, "post_policy": policy}},
          lambda d, ac, r, b: ops.group_set(d, ac, m(r, "address"), **_pick(b, "name", "post_policy")))
        a("DELETE", "/groups/{address}", "Delete a group or department", None,
          lambda d, ac, r, b: ops.group_del(d, ac, m(r, "address")))
        a("POST", "/groups/{address}/members", "Add a member", {**s, "required": ["member"], "properties": {"member": str_}},
          lambda d, ac, r, b: ops.member_add(d, ac, m(r, "address"), b["member"]))
        a("DELETE", "/groups/{address}/members/{member}", "Remove a member", None,
          lambda d, ac, r, b: ops.member_del(d, ac, m(r, "address"), m(r, "member")))
        a("POST", "/groups/{address}/senders", 'Allow an address to post (policy "listed")',
          {**s, "required": ["sender"], "properties": {"sender": str_}},
          lambda d, ac, r, b: ops.sender_add(d, ac, m(r, "address"), b["sender"]))
        a("DELETE", "/groups/{address}/senders/{sender}", "Remove a listed sender", None,
          lambda d, ac, r, b: ops.sender_del(d, ac, m(r, "address"), m(r, "sender")))
        a("POST", "/groups/{address}/send-as", "Let a user send as the group address",
          {**s, "required": ["user"], "properties": {"user": str_}},
          lambda d, ac, r, b: ops.send_as_grant(d, ac, m(r, "address"), b["user"]))
        a("DELETE", "/groups/{address}/send-as/{user}", "Withdraw send-as", None,
          lambda d, ac, r, b: ops.send_as_revoke(d, ac, m(r, "address"), m(r, "user")))
        a("POST", "/depts", "Add a department", {**s, "required": ["address"], "properties": {
            "address": str_, "name": str_, "parent": {"type": ["string", "null"]}}},
          lambda d, ac, r, b: ops.dept_add(d, ac, b["address"], name=b.get("name", ""), parent=b.get("parent")))
        a("POST", "/depts/{address}/move", "Move a department", {**s, "properties": {"parent": {"type": ["string", "null"]}}},
          lambda d, ac, r, b: ops.dept_move(d, ac, m(r, "address"), b.get("parent")))

        a("POST", "/admins", "Grant an administrator scope", {**s, "required": ["user", "scope"], "properties": {
            "user": str_, "scope": {"enum": ["super", "domain", "dept"]}, "target": {"type": ["string", "null"]}}},
          lambda d, ac, r, b: ops.admin_grant(d, ac, b["user"], b["scope"], b.get("target")))
        a("POST", "/admins/revoke", "Revoke administrator scopes", {**s, "required": ["user"], "properties": {
            "user": str_, "scope": {"enum": ["super", "domain", "dept"]}, "target": {"type": ["string", "null"]}}},
          lambda d, ac, r, b: ops.admin_revoke(d, ac, b["user"], b.get("scope"), b.get("target")))

        a("POST", "/tokens", "Issue a token for a user in scope (the secret is returned once)", {
            **s, "required": ["user"], "properties": {"user": str_, "scopes": {"type": "array", "items": {"enum": ["mail", "admin"]}},
                                                     "label": str_, "ttl": {"type": ["number", "null"]}}},
          _issue_token)
        a("DELETE", "/tokens/{id}", "Revoke a token", None, _revoke_token)

        a("GET", "/lockout", "Login failure counters and locks (super)", None,
          lambda d, ac, r, b: ops.lockout_list(d, ac, time.time()))
        a("POST", "/lockout/clear", "Clear counters of a user or IP, or all (super)", {**s, "properties": {"key": str_}},
          lambda d, ac, r, b: ops.lockout_clear(d, ac, b.get("key")))
        policy_lists.register(a)  # block and allow lists (docs/policy.md "Lists")
        filesettings.register(a)  # convert_over per domain and user (docs/files.md "Per domain and per user")


def _pick(b: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: b[k] for k in keys if k in b}


def _user_fields(b: dict[str, Any], with_state: bool = False) -> dict[str, Any]:
    out = _pick(b, "display_name", "dept", "title", "phone", "quota_bytes", "quota_messages", "may_send_outside")
    if "networks" in b:
        out["networks"] = tuple(b["networks"])
    if with_state and "state" in b:
        out["state"] = b["state"]
    return out


def _issue_token(d: SyncDirectory, actor: Actor, r: web.Request, b: dict[str, Any]) -> Any:
    actor.require_address(d, b["user"])
    scopes = set(b.get("scopes") or ["mail"])
    if "admin" in scopes and not d.admin_scopes(b["user"]):
        raise DirectoryError(f"{b['user']} is not an administrator")
    tid, secret = token_mod.issue(d, b["user"], scopes, label=str(b.get("label", "")), ttl=b.get("ttl"))
    return {"id": tid, "user": b["user"].lower(), "scopes": sorted(scopes), "token": secret}


def _revoke_token(d: SyncDirectory, actor: Actor, r: web.Request, b: dict[str, Any]) -> Any:
    try:
        tid = int(r.match_info["id"])
    except ValueError:
        raise DirectoryError("token id is a number") from None
    owner = d.token_owner(tid)
    if owner is None:
        raise NotFound(f"no token {tid}")
    actor.require_address(d, owner)
    return {"id": tid, "revoked": d.revoke_token(tid)}


class AdminService:
    """The listener-facing service (HttpService protocol of mailsrv.net.listener)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.runner: web.AppRunner | None = None
        self._own = False

    async def start(self, socks: list[socket.socket], ssl_context: ssl.SSLContext | None) -> None:
        res = self.ctx.resources
        if "auth" not in res:  # not wired by the worker: open our own
            from mailsrv.auth import worker_resources

            res.update(worker_resources(self.ctx.config))
            self._own = True
        store = res.get("store")
        cfg = self.ctx.config
        recaller = Recaller.of(cfg, store, res["directory"]) if store is not None else None
        api = AdminApi(res["directory"], res["auth"],
                       forget_usage=store.usage.forget if store is not None else None, recaller=recaller)
        self.runner = web.AppRunner(api.app, access_log=None, handle_signals=False,
                                    shutdown_timeout=self.ctx.config.server.shutdown_grace)
        await self.runner.setup()
        for sock in socks:
            await web.SockSite(self.runner, sock, ssl_context=ssl_context).start()

    def protocol_factory(self) -> Callable[[], asyncio.Protocol]:
        """The per-connection protocol (mailsrv.net.listener: adopted and PROXY connections), after start."""
        assert self.runner is not None and self.runner.server is not None
        return self.runner.server

    async def stop(self, grace: float) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def make_service(ctx: ServiceContext) -> AdminService:
    return AdminService(ctx)
