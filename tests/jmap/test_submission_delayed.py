"""EmailSubmission delayed send and undo (RFC 8621 §7, RFC 4865 FUTURERELEASE), over HTTP."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jmaptest import Client, Server

from mailsrv.jmap.errors import SetError
from mailsrv.jmap.submission import release_time

ALL = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission"]


async def draft_and_identity(client: Client, subject: str) -> tuple[str, str, str, str]:
    drafts = await client.mailbox_id("drafts")
    r = await client.call(
        ["Identity/get", {"accountId": "a1"}, "i"],
        ["Email/set", {"accountId": "a1", "create": {"m": {
            "mailboxIds": {drafts: True}, "keywords": {"$draft": True},
            "from": [{"email": "alice@example.test"}], "to": [{"email": "bob@example.test"}], "subject": subject,
            "textBody": [{"partId": "t"}], "bodyValues": {"t": {"value": "later"}}}}}, "e"], using=ALL)
    return r[0][1]["list"][0]["id"], r[1][1]["created"]["m"]["id"], drafts, await client.mailbox_id("sent")


def hold(params: dict[str, Any]) -> dict[str, Any]:
    return {"mailFrom": {"email": "alice@example.test", "parameters": params},
            "rcptTo": [{"email": "bob@example.test", "parameters": None}]}


def ts(date: str) -> float:
    return datetime.fromisoformat(date.replace("Z", "+00:00")).timestamp()


async def test_hold_then_cancel_with_on_success_updates(server: Server, client: Client) -> None:
    ident, eid, drafts, sent = await draft_and_identity(client, "held")
    t0 = time.time()
    r = await client.call(["EmailSubmission/set", {
        "accountId": "a1", "create": {"s": {"identityId": ident, "emailId": eid, "envelope": hold({"HOLDFOR": "3600"})}},
        "onSuccessUpdateEmail": {"#s": {f"mailboxIds/{drafts}": None, f"mailboxIds/{sent}": True,
                                        "keywords/$draft": None}}}, "s"], using=ALL)
    assert [x[0] for x in r] == ["EmailSubmission/set", "Email/set"]
    sub = r[0][1]["created"]["s"]
    assert sub["undoStatus"] == "pending" and abs(ts(sub["sendAt"]) - (t0 + 3600)) < 5
    assert r[1][1]["updated"] == {eid: None}
    assert server.submitter.sent == [] and len(server.submitter.held) == 1
    (qid, (send_at, mail_from, rcpts, _)), = server.submitter.held.items()
    assert abs(send_at - (t0 + 3600)) < 5 and rcpts == ["bob@example.test"] and mail_from == "alice@example.test"
    got = await client.call(["EmailSubmission/get", {"accountId": "a1", "ids": [sub["id"]]}, "g"],
                            ["EmailSubmission/query", {"accountId": "a1", "filter": {"undoStatus": "pending"}}, "q"],
                            using=ALL)
    assert got[0][1]["list"][0]["undoStatus"] == "pending" and "queueId" not in got[0][1]["list"][0]
    assert got[0][1]["list"][0]["deliveryStatus"]["bob@example.test"]["delivered"] == "queued"
    assert got[1][1]["ids"] == [sub["id"]]
    state = got[0][1]["state"]
    # undo: canceled, and the email goes back to Drafts through onSuccessUpdateEmail on the update
    r = await client.call(["EmailSubmission/set", {
        "accountId": "a1", "update": {sub["id"]: {"undoStatus": "canceled"}},
        "onSuccessUpdateEmail": {sub["id"]: {f"mailboxIds/{sent}": None, f"mailboxIds/{drafts}": True,
                                             "keywords/$draft": True}}}, "u"], using=ALL)
    assert [x[0] for x in r] == ["EmailSubmission/set", "Email/set"]
    assert r[0][1]["updated"] == {sub["id"]: None} and r[1][1]["updated"] == {eid: None}
    assert server.submitter.canceled == [qid]
    e = (await client.one("Email/get", {"ids": [eid], "properties": ["mailboxIds", "keywords"]}))["list"][0]
    assert e["mailboxIds"] == {drafts: True} and e["keywords"] == {"$draft": True}
    got = await client.call(["EmailSubmission/get", {"accountId": "a1", "ids": [sub["id"]]}, "g"],
                            ["EmailSubmission/changes", {"accountId": "a1", "sinceState": state}, "c"], using=ALL)
    assert got[0][1]["list"][0]["undoStatus"] == "canceled"
    assert got[1][1]["updated"] == [sub["id"]]
    # canceling again is a no-op; any other change is refused
    r = await client.call(["EmailSubmission/set", {"accountId": "a1", "update": {
        sub["id"]: {"undoStatus": "canceled"}, "nope": {"undoStatus": "canceled"}}}, "u"],
        ["EmailSubmission/set", {"accountId": "a1", "update": {sub["id"]: {"undoStatus": "final"}}}, "v"], using=ALL)
    assert r[0][1]["updated"] == {sub["id"]: None} and r[0][1]["notUpdated"]["nope"]["type"] == "notFound"
    assert r[1][1]["notUpdated"][sub["id"]]["type"] == "invalidProperties"
    assert server.submitter.canceled == [qid]


async def test_final_submissions_cannot_be_undone(server: Server, client: Client) -> None:
    ident, eid, _, _ = await draft_and_identity(client, "at once")
    r = await client.call(["EmailSubmission/set", {"accountId": "a1", "create": {
        "s": {"identityId": ident, "emailId": eid}}}, "s"], using=ALL)
    sub = r[0][1]["created"]["s"]
    assert sub["undoStatus"] == "final" and len(server.submitter.sent) == 1
    r = await client.call(["EmailSubmission/set", {"accountId": "a1", "update": {
        sub["id"]: {"undoStatus": "canceled"}}, "onSuccessDestroyEmail": [sub["id"]]}, "u"], using=ALL)
    assert r[0][1]["notUpdated"][sub["id"]]["type"] == "cannotUnsend"
    assert len(r) == 1  # nothing succeeded: no implicit Email/set, the email stays
    assert (await client.one("Email/get", {"ids": [eid], "properties": ["id"]}))["list"] != []


async def test_release_time_makes_it_final(server: Server, client: Client) -> None:
    ident, eid, _, _ = await draft_and_identity(client, "soon")
    until = datetime.fromtimestamp(int(time.time()) + 2, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = await client.call(["EmailSubmission/set", {"accountId": "a1", "create": {
        "s": {"identityId": ident, "emailId": eid, "envelope": hold({"HOLDUNTIL": until})}},
        "onSuccessDestroyEmail": ["#s"]}, "s"], using=ALL)
    sub = r[0][1]["created"]["s"]
    assert sub["undoStatus"] == "pending" and sub["sendAt"] == until
    assert r[1][1]["destroyed"] == [eid]
    # too close to the release: the queue may be sending it, so it is no longer undoable
    r = await client.call(["EmailSubmission/set", {"accountId": "a1", "update": {
        sub["id"]: {"undoStatus": "canceled"}}}, "u"], using=ALL)
    assert r[0][1]["notUpdated"][sub["id"]]["type"] == "cannotUnsend"
    deadline = time.monotonic() + 10
    while True:  # poll with a deadline: after sendAt the submission reads as final
        got = await client.call(["EmailSubmission/get", {"accountId": "a1", "ids": [sub["id"]]}, "g"], using=ALL)
        if got[0][1]["list"][0]["undoStatus"] == "final":
            break
        assert time.time() < ts(until) + 1 and time.monotonic() < deadline, got
        await asyncio.sleep(0.2)
    assert time.time() >= ts(until)


async def test_bad_delays(server: Server, client: Client) -> None:
    ident, eid, _, _ = await draft_and_identity(client, "bad")
    far = datetime.fromtimestamp(time.time() + 8 * 86400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cases = {
        "toolong": {"envelope": hold({"HOLDFOR": str(8 * 86400)})},
        "notnum": {"envelope": hold({"HOLDFOR": "soon"})},
        "nonascii": {"envelope": hold({"HOLDFOR": "\u00b2"})},  # str.isdigit() accepts it, int() does not
        "both": {"envelope": hold({"HOLDFOR": "60", "HOLDUNTIL": far})},
        "farsendat": {"sendAt": far},
        "baddate": {"envelope": hold({"HOLDUNTIL": "tomorrow"})},
    }
    r = await client.call(["EmailSubmission/set", {"accountId": "a1", "create": {
        k: {"identityId": ident, "emailId": eid, **v} for k, v in cases.items()}}, "s"], using=ALL)
    nc = r[0][1]["notCreated"]
    assert set(nc) == set(cases) and {v["type"] for v in nc.values()} == {"invalidProperties"}
    assert nc["farsendat"]["properties"] == ["sendAt"] and nc["toolong"]["properties"] == ["envelope"]
    assert server.submitter.held == {} and server.submitter.sent == []
    # sendAt given at create (deviation, see release_time) holds too; a past time sends at once
    past = datetime.fromtimestamp(time.time() - 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    soon = datetime.fromtimestamp(time.time() + 600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = await client.call(["EmailSubmission/set", {"accountId": "a1", "create": {
        "p": {"identityId": ident, "emailId": eid, "sendAt": past},
        "f": {"identityId": ident, "emailId": eid, "sendAt": soon}}}, "s"], using=ALL)
    assert r[0][1]["created"]["p"]["undoStatus"] == "final" and r[0][1]["created"]["f"]["undoStatus"] == "pending"
    assert len(server.submitter.sent) == 1 and len(server.submitter.held) == 1


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(params=st.one_of(json_values, st.dictionaries(st.sampled_from(["HOLDFOR", "holduntil", "HOLDUNTIL", "BODY"]),
                                                     json_values | st.from_regex(r"\A[0-9]{1,12}\Z"), max_size=3)),
       send_at=st.none() | json_values | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()))
def test_release_time_takes_any_json(params: Any, send_at: Any) -> None:
    """The FUTURERELEASE parameters are client input: a time in (now, now + max], None, or invalidProperties."""
    now = time.time()
    obj = {} if send_at is None else {"sendAt": send_at}
    try:
        until = release_time(obj, {"mailFrom": {"email": "a@b.test", "parameters": params}}, 7 * 86400, now)
    except SetError as exc:
        assert exc.type == "invalidProperties"
        return
    assert until is None or now < until <= now + 7 * 86400
