"""The JSON text of API responses: ``json.dumps``'s bytes, with parts encoded earlier spliced in.

A method may answer with an :class:`Encoded` list (Email/get's ``list``: each Email object's text is
kept with the derived properties, email.py), which carries its own JSON text; :func:`dumps` takes that
text instead of encoding the list again. The result is the same string as ``json.dumps(value)``
(separators ``", "`` and ``": "``, ``ensure_ascii``, key order as inserted): tests/jmap/test_jsontext.py
compares the two on every kind of value.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _string  # json.dumps's, for str (ensure_ascii)
from typing import Any, NoReturn

#: how deep :func:`dumps` looks for :class:`Encoded` lists: Response -> methodResponses -> invocation
#: -> arguments -> value (a WebSocket Response has the same depth, RFC 8887 §4.3)
DEPTH = 4


class Encoded(list[Any]):
    """A list whose JSON text is known: ``texts`` holds ``json.dumps`` of each item, made with them.

    Contract: never changed after it is made (the texts would be stale); the methods that change a
    list raise ``TypeError``. Its items are read as any list's (result references, RFC 8620 §3.7)."""

    __slots__ = ("texts",)

    def __init__(self, items: list[Any], texts: list[str]) -> None:
        """``texts[i]`` is ``json.dumps(items[i])``."""
        super().__init__(items)
        self.texts = texts

    def _frozen(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("an Encoded list is not changed (its JSON text is made)")

    append = extend = insert = remove = pop = clear = sort = reverse = _frozen
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _frozen


def _splices(value: Any) -> bool:
    """Whether a method response's arguments hold an :class:`Encoded` list (where methods put them).
    One found nowhere else is still right: json.dumps encodes it as the list it is."""
    calls = value.get("methodResponses") if type(value) is dict else None
    if type(calls) is list:
        for inv in calls:
            if type(inv) is list and len(inv) == 3 and type(inv[1]) is dict:
                for v in inv[1].values():
                    if type(v) is Encoded:
                        return True
    return False


def _parts(value: Any, depth: int, out: list[str]) -> None:
    """Append the pieces of ``value``'s text to ``out`` (joined once at the end: a response of 50
    Emails is not copied at each level)."""
    t = type(value)
    if t is Encoded:
        if value.texts:
            out.append("[")
            for text in value.texts:  # into the one join (a join of the texts first copies them twice)
                out.append(text)
                out.append(", ")
            out[-1] = "]"
        else:
            out.append("[]")
    elif t is str:  # what json.dumps does for each (its own functions), without its calls around them
        out.append(_string(value))
    elif t is int:
        out.append(int.__repr__(value))
    elif value is None or t is bool:
        out.append("null" if value is None else "true" if value else "false")
    elif depth and t is dict and all(type(k) is str for k in value):
        # only str keys: json.dumps turns others (int, bool, None, float) into text its own way
        sep = "{"
        for k, v in value.items():
            out.append(sep)
            out.append(_string(k))
            out.append(": ")
            _parts(v, depth - 1, out)
            sep = ", "
        out.append("}" if sep == ", " else "{}")
    elif depth and t is list:
        sep = "["
        for v in value:
            out.append(sep)
            _parts(v, depth - 1, out)
            sep = ", "
        out.append("]" if sep == ", " else "[]")
    else:
        out.append(json.dumps(value))


def dumps(value: Any) -> str:
    """``json.dumps(value)``, the same string, with the text of the :class:`Encoded` lists it holds
    (within :data:`DEPTH` levels, in a Response that has one in a method's arguments) taken as it is."""
    if not _splices(value):
        return json.dumps(value)
    out: list[str] = []
    _parts(value, DEPTH, out)
    return "".join(out)
