"""JSON Pointer (RFC 6901) evaluation with the JMAP ``*`` extension (RFC 8620 §3.7).

Pure functions over parsed JSON values. ``*`` applied to an array maps the
rest of the pointer over every item and flattens one level when the results
are themselves arrays.
"""

from __future__ import annotations

from typing import Any


class PointerError(ValueError):
    """The pointer is malformed or does not resolve in the value."""


def parse(pointer: str) -> list[str]:
    """Split a pointer into unescaped reference tokens. ``""`` is the whole document."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PointerError(f"pointer must start with '/': {pointer!r}")
    tokens = []
    for raw in pointer[1:].split("/"):
        # RFC 6901 §4: "~1" -> "/" first, then "~0" -> "~"; any other "~x" is invalid.
        i = raw.find("~")
        while i != -1:
            if i + 1 >= len(raw) or raw[i + 1] not in "01":
                raise PointerError(f"bad escape in pointer token {raw!r}")
            i = raw.find("~", i + 2)
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return tokens


def _index(token: str, size: int) -> int:
    # RFC 6901 §4: array indexes are decimal without leading zeros; "-" never resolves.
    if not token.isascii() or not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PointerError(f"not an array index: {token!r}")
    i = int(token)
    if i >= size:
        raise PointerError(f"array index {i} out of range")
    return i


def _walk(value: Any, tokens: list[str], pos: int) -> Any:
    while pos < len(tokens):
        token = tokens[pos]
        if isinstance(value, list):
            if token == "*":
                # RFC 8620 §3.7: map the rest over each item; flatten arrays one level.
                out: list[Any] = []
                for item in value:
                    res = _walk(item, tokens, pos + 1)
                    if isinstance(res, list):
                        out.extend(res)
                    else:
                        out.append(res)
                return out
            value = value[_index(token, len(value))]
        elif isinstance(value, dict):
            if token not in value:
                raise PointerError(f"no member {token!r}")
            value = value[token]
        else:
            raise PointerError(f"cannot descend into a {type(value).__name__} with {token!r}")
        pos += 1
    return value


def evaluate(value: Any, pointer: str) -> Any:
    """The value ``pointer`` designates in ``value``. Raises :class:`PointerError`."""
    return _walk(value, parse(pointer), 0)
