"""``POST /api/v1/recall``: an administrator recalls a message for a user in their scope (docs/recall.md).

The scope rule is the directory's (``Actor.require_address``): a domain administrator recalls only
for users of their domains, a department administrator for users of their departments.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mailsrv import log
from mailsrv.directory import NotFound
from mailsrv.directory.scope import Actor
from mailsrv.recall import Recaller, RecallError

if TYPE_CHECKING:
    from mailsrv.admin.server import AdminApi

logger = log.get("admin")

PATH = "/recall"
BODY = {"type": "object", "required": ["sender", "message_id"], "properties": {
    "sender": {"type": "string"}, "message_id": {"type": "string"}}}
SUMMARY = ("Recall a message a user in scope sent: unread local copies are removed "
           '(results per recipient: recalled, read, expired, "not found", external)')


def register(api: AdminApi, recaller: Recaller | None, prefix: str) -> None:
    """Add the route (and its OpenAPI entry); answers 503 when this process has no store."""
    from mailsrv.admin.server import _problem

    api.routes.append(("POST", PATH, SUMMARY, BODY))

    async def handler(request: web.Request) -> web.StreamResponse:
        who = await api._admin(request)
        if isinstance(who, web.Response):
            return who
        try:
            data: Any = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _problem(400, "the body is not JSON")
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("sender", "message_id")):
            return _problem(400, "sender and message_id (strings) are required")
        sender, message_id = data["sender"], data["message_id"]

        def check(d: Any) -> None:
            actor = Actor.admin(d, who)
            actor.require_address(d, sender)
            acct = d.account_by_address(sender)
            if acct is None:
                raise NotFound(f"no local user {sender}")
            # the recall acts on the account: an alias in scope may belong to a user of another domain
            actor.require_address(d, acct.address)

        refused = await api.scoped(check)
        if isinstance(refused, web.Response):
            return refused
        if recaller is None:
            return _problem(503, "this server has no mail store")
        try:
            results = await recaller.recall(sender, message_id)
        except RecallError as exc:
            return _problem(400, str(exc))
        logger.info("admin.call", admin=who, method=request.method, path=request.path,
                    recalled=sum(r.status == "recalled" for r in results))
        # truncated: [recall] max_accounts cut the scan short, the results may be incomplete
        return web.json_response({"sender": sender, "message_id": message_id,
                                  "results": [r.as_dict() for r in results], "truncated": results.truncated})

    api.app.router.add_route("POST", prefix + PATH, handler)
