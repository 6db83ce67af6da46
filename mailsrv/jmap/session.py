"""The JMAP Session resource (RFC 8620 §2) and the capabilities this server has."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mailsrv.config import JmapConfig
from mailsrv.jmap.core import CORE, MAIL
from mailsrv.jmap.filelink import FILELINK
from mailsrv.jmap.mailbox import MAX_NAME
from mailsrv.jmap.query import COLLATIONS
from mailsrv.jmap.recall import RECALL
from mailsrv.jmap.sievescript import SIEVE

WEBSOCKET = "urn:ietf:params:jmap:websocket"
SUBMISSION = "urn:ietf:params:jmap:submission"
VACATION = "urn:ietf:params:jmap:vacationresponse"
QUOTA = "urn:ietf:params:jmap:quota"
BLOB = "urn:ietf:params:jmap:blob"
#: email sort properties Email/query knows (RFC 8621 §4.4.2)
EMAIL_SORT = ["receivedAt", "sentAt", "size", "from", "to", "subject", "hasKeyword", "allInThreadHaveKeyword", "someInThreadHaveKeyword", "id"]

#: every capability this server implements (a request's "using" may name only these)
SERVER_CAPABILITIES = frozenset({CORE, MAIL, WEBSOCKET, SUBMISSION, VACATION, QUOTA, BLOB, RECALL, FILELINK, SIEVE})
#: what an account shared with the caller supports: its mail, not sending or answering as its owner
SHARED_CAPABILITIES = frozenset({CORE, MAIL, QUOTA, BLOB})


def core_capability(cfg: JmapConfig) -> dict[str, Any]:
    return {
        "maxSizeUpload": cfg.max_size_upload,
        "maxConcurrentUpload": cfg.max_concurrent_upload,
        "maxSizeRequest": cfg.max_size_request,
        "maxConcurrentRequests": cfg.max_concurrent_requests,
        "maxCallsInRequest": cfg.max_calls_in_request,
        "maxObjectsInGet": cfg.max_objects_in_get,
        "maxObjectsInSet": cfg.max_objects_in_set,
        "collationAlgorithms": list(COLLATIONS),
    }


def mail_account_capability(cfg: JmapConfig) -> dict[str, Any]:
    return {
        "maxMailboxesPerEmail": None,
        "maxMailboxDepth": None,
        "maxSizeMailboxName": MAX_NAME,
        "maxSizeAttachmentsPerEmail": min(cfg.max_size_upload, 50 * 1024 * 1024),
        "emailQuerySortOptions": EMAIL_SORT,
        "mayCreateTopLevelMailbox": True,
    }


def session_object(cfg: JmapConfig, base: str, username: str, accounts: dict[str, str], primary: str,
                   shared: dict[str, tuple[str, bool]] | None = None,
                   filelink: dict[str, Any] | None = None, sieve: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Session object; ``accounts`` maps accountId -> name (the caller's own), ``shared`` accountId ->
    (name, read only) for accounts other users shared with the caller. URLs are absolute (RFC 8620 §2).
    ``filelink``: the ``urn:mailsrv:filelink`` capability when file links are on (docs/files.md);
    ``sieve``: the account's ``urn:ietf:params:jmap:sieve`` capability (RFC 9661 §2) when Sieve is on."""
    ws = "ws" + base[4:] if base.startswith("http") else base
    caps = {
        CORE: core_capability(cfg),
        MAIL: {},
        WEBSOCKET: {"url": ws + "/jmap/ws", "supportsPush": True},
        SUBMISSION: {},
        VACATION: {},
        QUOTA: {},
        BLOB: {},
        RECALL: {},  # Email/recall (docs/recall.md): the owner's own Sent mail, never a shared account's
    }
    acc_caps = {
        CORE: {},
        MAIL: mail_account_capability(cfg),
        # RFC 8621 §1.3.2: sendAt/FUTURERELEASE holds up to maxDelayedSend seconds (0: no delayed send)
        SUBMISSION: {"maxDelayedSend": cfg.max_delayed_send, "submissionExtensions": {}},
        VACATION: {},
        QUOTA: {},
        # RFC 9404 §4.1
        BLOB: {"maxSizeBlobSet": cfg.max_size_upload, "maxDataSources": 64,
               "supportedTypeNames": ["Mailbox", "Thread", "Email"], "supportedDigestAlgorithms": ["sha", "sha-256"]},
        RECALL: {},
    }
    if filelink is not None:  # big attachments through links, the caller's own account only
        caps[FILELINK] = filelink
        acc_caps[FILELINK] = {}
    if sieve is not None:  # RFC 9661 §2: an empty object in the session, the limits per account (own only)
        caps[SIEVE] = {}
        acc_caps[SIEVE] = sieve
    all_accounts = {
        aid: {"name": name, "isPersonal": True, "isReadOnly": False, "accountCapabilities": acc_caps}
        for aid, name in accounts.items()
    }
    for aid, (name, read_only) in (shared or {}).items():
        mail = {**acc_caps[MAIL], "mayCreateTopLevelMailbox": not read_only}
        all_accounts[aid] = {"name": name, "isPersonal": False, "isReadOnly": read_only,
                             "accountCapabilities": {c: (mail if c == MAIL else acc_caps[c])
                                                     for c in acc_caps if c in SHARED_CAPABILITIES}}
    session: dict[str, Any] = {
        "capabilities": caps,
        "accounts": all_accounts,
        "primaryAccounts": {c: primary for c in (MAIL, SUBMISSION, VACATION, QUOTA, BLOB) + ((SIEVE,) if sieve else ())},
        "username": username,
        "apiUrl": base + "/jmap/api",
        "downloadUrl": base + "/jmap/download/{accountId}/{blobId}/{name}?accept={type}",
        "uploadUrl": base + "/jmap/upload/{accountId}/",
        "eventSourceUrl": base + "/jmap/eventsource?types={types}&closeafter={closeafter}&ping={ping}",
    }
    session["state"] = hashlib.sha256(json.dumps(session, sort_keys=True).encode()).hexdigest()[:16]
    return session
