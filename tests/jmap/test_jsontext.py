"""Responses encoded from kept texts (jsontext.py, email.email_object) are json.dumps's bytes, and
never stale: a change of keywords, mailboxes or of the properties asked makes a new text."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jmaptest import USING, Client

from mailsrv.jmap import email as E
from mailsrv.jmap.backend import EmailMeta
from mailsrv.jmap.jsontext import DEPTH, Encoded, dumps

# every code point, lone surrogates included (json.dumps escapes them: \udcff)
TEXT = st.text(st.characters(codec=None, categories=None), max_size=12)
SCALARS = (st.none() | st.booleans() | TEXT | st.integers() | st.integers(min_value=2**64, max_value=2**400)
           | st.integers(max_value=-(2**64)) | st.floats(allow_nan=True, allow_infinity=True))
KEYS = TEXT | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                    | st.dictionaries(KEYS, inner, max_size=4), max_leaves=25)


def _encode_lists(value: Any, draw: Any, depth: int) -> Any:
    """``value`` with some of its lists (within ``depth`` and deeper) made Encoded lists."""
    if isinstance(value, dict):
        return {k: _encode_lists(v, draw, depth - 1) for k, v in value.items()}
    if isinstance(value, list):
        items = [_encode_lists(v, draw, depth - 1) for v in value]
        if draw(st.booleans()):
            return Encoded(items, [json.dumps(i) for i in items])
        return items
    return value


@given(JSON, st.data())
def test_dumps_is_json_dumps(value: Any, data: st.DataObject) -> None:
    value = _encode_lists(value, data.draw, DEPTH + 1)
    # an Encoded list in a method's arguments: dumps writes this envelope itself, splicing what it finds
    envelope = {"methodResponses": [["Email/get", {"list": value, "x": [value], "e": Encoded([value], [json.dumps(value)])},
                                     "c"], ["Core/echo", value, "e"]], "sessionState": "s"}
    for v in (value, envelope, [value, {"@type": "Response", **envelope}]):
        assert dumps(v) == json.dumps(v)


def test_dumps_examples() -> None:
    items = [{"subject": "caf\u00e9 \u20ac \U0001f600", "x": "\udcff\ud800", "n": 2**100, "f": -1e300},
             {}, [], {"nan": math.nan, "inf": -math.inf}]
    enc = Encoded(items, [json.dumps(i) for i in items])
    resp = {"methodResponses": [["Email/get", {"accountId": "a", "list": enc, "notFound": []}, "g"],
                                ["Email/get", {"list": Encoded([], [])}, "h"], ["Core/echo", {}, "e"]],
            "sessionState": "s", "createdIds": {}}
    assert dumps(resp) == json.dumps(resp)
    assert '"x": "\\udcff\\ud800"' in dumps(resp) and "\\u20ac \\ud83d\\ude00" in dumps(resp)
    assert dumps({1: enc, None: [enc]}) == json.dumps({1: enc, None: [enc]})  # keys json.dumps makes text of
    assert dumps([[[[[[enc]]]]]]) == json.dumps([[[[[[enc]]]]]])  # deeper than DEPTH: encoded as a list


def test_encoded_list_is_not_changed() -> None:
    enc = Encoded([1, 2], ["1", "2"])
    for change in (lambda: enc.append(3), lambda: enc.extend([3]), lambda: enc.insert(0, 3), lambda: enc.pop(),
                   lambda: enc.remove(1), lambda: enc.clear(), lambda: enc.sort(), lambda: enc.reverse(),
                   lambda: enc.__setitem__(0, 5), lambda: enc.__delitem__(0), lambda: enc.__iadd__([3])):
        with pytest.raises(TypeError):
            change()
    assert enc == [1, 2] and dumps({"a": enc}) == '{"a": [1, 2]}'


RAW = (b"From: =?utf-8?q?J=C3=B6rg?= <j@x.test>\r\nTo: a@example.test\r\nSubject: caf\xe9 \xff\xfe \xe2\x82\xac\r\n"
       b"Date: Wed, 17 May 2000 19:35:05 -0400\r\n\r\nbody \xe9\xe9 \xf0\x9f\x98\x80 \"quoted\" \\ \t\r\n")


def test_email_object_text_follows_meta_and_form() -> None:
    meta = EmailMeta("Mjt1", "Bjt1", "T1", frozenset({"m1"}), frozenset({"$seen"}), len(RAW), 1.0e9)
    opts = E.BodyOptions({})
    shape = E.Shape(["id", "subject", "keywords", "preview"], [], opts)
    obj, text = E.email_object(meta, RAW, [], opts, None, shape)
    assert text == json.dumps(obj) and obj["keywords"] == {"$seen": True}
    again = EmailMeta(*(getattr(meta, f) for f in ("id", "blob_id", "thread_id", "mailbox_ids", "keywords", "size",
                                                   "received_at")))
    assert E.email_object(again, None, [], opts, None, shape) == (obj, text)  # an equal meta: kept, no bytes read
    flagged = EmailMeta("Mjt1", "Bjt1", "T1", frozenset({"m1"}), frozenset({"$seen", "$flagged"}), len(RAW), 1.0e9)
    obj2, text2 = E.email_object(flagged, None, [], opts, None, shape)
    assert obj2["keywords"] == {"$flagged": True, "$seen": True} and text2 == json.dumps(obj2) != text
    other = E.Shape(["id", "subject", "mailboxIds", "preview"], [], opts)  # same content properties, other form
    assert other.key == shape.key and other.text_key != shape.text_key
    obj_m, text_m = E.email_object(flagged, None, [], opts, None, other)
    assert list(obj_m) == ["id", "subject", "mailboxIds", "preview"] and text_m == json.dumps(obj_m)
    moved = EmailMeta("Mjt1", "Bjt1", "T1", frozenset({"m2"}), flagged.keywords, len(RAW), 1.0e9)
    obj3, text3 = E.email_object(moved, None, [], opts, None, other)
    assert obj3 == {"id": "Mjt1", "subject": obj["subject"], "mailboxIds": {"m2": True}, "preview": obj["preview"]}
    assert text3 == json.dumps(obj3)


async def _raw(client: Client, calls: list[list[Any]]) -> bytes:
    async with client.http.post(client.server.url + "/jmap/api", headers=client.headers,
                                data=json.dumps({"using": USING, "methodCalls": calls})) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json; charset=utf-8"
        return await r.read()


async def test_responses_are_json_dumps_bytes_and_follow_changes(client: Client) -> None:
    ids = [await client.import_message(RAW), await client.import_message(RAW.replace(b"caf", b"tea")),
           await client.import_message(b"Subject: plain\r\n\r\nx\r\n")]
    props = ["subject", "from", "receivedAt", "keywords", "preview", "mailboxIds", "textBody", "bodyValues"]
    echo = {"big": 2**200, "neg": -(2**70), "f": 1.5e300, "s": "\udcff caf\u00e9 \U0001f600", "e": [], "o": {}}
    calls = [["Email/query", {"accountId": "a1", "sort": [{"property": "receivedAt"}]}, "q"],
             ["Email/get", {"accountId": "a1", "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                            "properties": props, "fetchAllBodyValues": True}, "g"],
             ["Core/echo", echo, "e"],
             ["Email/get", {"accountId": "a1", "ids": [*ids, "Mnone"], "properties": ["id", "keywords"]}, "k"],
             ["Email/get", {"accountId": "a1", "#ids": {"resultOf": "g", "name": "Email/get", "path": "/list/*/id"},
                            "properties": ["threadId"]}, "t"]]
    first = await _raw(client, calls)
    # the bytes json.dumps makes of the same value (separators, \u escapes, key order, the echoed big int)
    parsed = json.loads(first)
    assert first == json.dumps(parsed).encode()
    resp = parsed["methodResponses"]
    assert resp[2][1] == echo and "\\udcff caf\\u00e9 \\ud83d\\ude00" in first.decode()
    assert [e["id"] for e in resp[1][1]["list"]] == ids and resp[1][1]["list"][0]["subject"].startswith("caf\u00e9 \u00ff")
    assert resp[3][1]["notFound"] == ["Mnone"] and len(resp[4][1]["list"]) == 3  # a reference into a kept list
    assert await _raw(client, calls) == first  # kept texts: the same bytes
    # a keyword and a mailbox change show at once (the kept text is of the old metadata)
    created = await client.one("Mailbox/set", {"create": {"n": {"name": "Kept"}}})
    archive = created["created"]["n"]["id"]
    inbox = await client.mailbox_id("inbox")
    await client.one("Email/set", {"update": {ids[0]: {"keywords/$flagged": True},
                                              ids[1]: {f"mailboxIds/{archive}": True, f"mailboxIds/{inbox}": None}}})
    after = await _raw(client, calls)
    parsed = json.loads(after)
    assert after == json.dumps(parsed).encode() and after != first
    got = {e["id"]: e for e in parsed["methodResponses"][1][1]["list"]}
    assert got[ids[0]]["keywords"] == {"$flagged": True} and got[ids[1]]["mailboxIds"] == {archive: True}
    assert got[ids[2]] == json.loads(first)["methodResponses"][1][1]["list"][2]
    assert parsed["methodResponses"][3][1]["list"][0] == {"id": ids[0], "keywords": {"$flagged": True}}
    # the same message in another form (other metadata properties, same content ones): its own text
    for props2 in (["keywords"], ["receivedAt"], ["size", "keywords"]):
        got2 = (await client.one("Email/get", {"ids": [ids[0]], "properties": props2}))["list"][0]
        assert list(got2) == ["id", *props2]


async def test_mailbox_get_bytes_follow_counts_names_and_properties(client: Client) -> None:
    get = [["Mailbox/get", {"accountId": "a1"}, "m"]]
    first = await _raw(client, get)
    assert first == json.dumps(json.loads(first)).encode() and await _raw(client, get) == first
    inbox = await client.mailbox_id("inbox")
    await client.import_message(RAW)
    after = json.loads(await _raw(client, get))["methodResponses"][0][1]["list"]
    box = next(m for m in after if m["id"] == inbox)
    assert (box["totalEmails"], box["unreadEmails"]) == (1, 1)
    await client.one("Mailbox/set", {"update": {inbox: {"isSubscribed": False}}})
    box = (await client.one("Mailbox/get", {"ids": [inbox]}))["list"][0]
    assert box["isSubscribed"] is False and box["myRights"]["mayDelete"] is True
    some = (await client.one("Mailbox/get", {"ids": [inbox], "properties": ["name", "unreadEmails"]}))["list"]
    assert some == [{"id": inbox, "name": "Inbox", "unreadEmails": 1}]
