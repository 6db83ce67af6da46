"""``Email/recall`` (capability ``urn:mailsrv:recall``, a mailsrv extension; docs/recall.md).

The caller names Emails of their own Sent mailbox; for each, the unread local copies of that
message are taken back from its recipients (mailsrv.recall). Arguments: ``accountId`` (the caller's
personal account) and ``emailIds``. Response: ``accountId``, ``recalled`` (emailId -> list of
``{recipient, status}``) and ``notRecalled`` (emailId -> SetError: ``notFound`` when the id
is not an Email of the account's Sent mailbox, ``forbidden`` when recall is disabled).
"""

from __future__ import annotations

from typing import Any

from mailsrv.jmap.core import RequestContext, is_id, registry
from mailsrv.jmap.errors import MethodError, SetError, invalid_arguments
from mailsrv.recall import RecallError

RECALL = "urn:mailsrv:recall"
#: Email ids one call may name (each is a whole recall: a scan of the organisation's indexes)
MAX_IDS = 16


@registry.add("Email/recall", RECALL)
async def email_recall(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    be = ctx.account(args)
    ids = args.get("emailIds")
    if not isinstance(ids, list) or not ids or not all(is_id(i) for i in ids):
        raise invalid_arguments("emailIds must be a non-empty array of Ids")
    if len(ids) > MAX_IDS:
        raise MethodError("requestTooLarge", f"at most {MAX_IDS} emailIds per call")
    recaller = ctx.extra.get("recaller")
    principal = ctx.extra.get("principal")
    acct = getattr(be, "acct", None)
    if recaller is None or principal is None or acct is None:
        raise MethodError("serverUnavailable", "recall needs the mail store of this server")
    sent = {i.name for i in await acct.list_mailboxes() if i.special_use == "\\Sent"}
    recalled: dict[str, list[dict[str, Any]]] = {}
    not_recalled: dict[str, Any] = {}
    truncated: list[str] = []  # mailsrv: ids whose scan [recall] max_accounts cut short (results may be incomplete)
    for eid in dict.fromkeys(ids):
        msgid = await _sent_message_id(acct, eid, sent)
        if msgid is None:
            not_recalled[eid] = SetError("notFound", "not an Email of your Sent mailbox with a Message-ID").to_json()
            continue
        try:
            results = await recaller.recall(principal.username, msgid)
        except RecallError as exc:
            not_recalled[eid] = SetError("forbidden", str(exc)).to_json()
            continue
        # not the recipient's mailbox: the name of a folder of theirs is none of the sender's business
        recalled[eid] = [{"recipient": r.recipient, "status": r.status} for r in results]
        if results.truncated:
            truncated.append(eid)
    return {"accountId": args["accountId"], "recalled": recalled, "notRecalled": not_recalled, "truncated": truncated}


async def _sent_message_id(acct: Any, email_id: str, sent: set[str]) -> str | None:
    for mailbox, uid in await acct.find_email(email_id):
        if mailbox in sent:
            st = (await acct.structures(mailbox, [uid])).get(uid)
            if st is not None and st.message_id:
                return str(st.message_id)
    return None
