"""Argument checking for method calls: every wrong type or unknown argument is invalidArguments."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mailsrv.jmap.core import RequestContext, is_id
from mailsrv.jmap.errors import MethodError, invalid_arguments

#: RFC 8620 §1.3: UnsignedInt is 0 .. 2^53-1
MAX_SAFE = 2**53 - 1


def check(args: dict[str, Any], allowed: Iterable[str]) -> None:
    unknown = set(args) - set(allowed)
    if unknown:
        raise invalid_arguments(f"unknown arguments: {sorted(unknown)}")


def ids(ctx: RequestContext, args: dict[str, Any], key: str, nullable: bool = True) -> list[str] | None:
    value = args.get(key)
    if value is None:
        if not nullable:
            raise invalid_arguments(f"{key} is required")
        return None
    if not isinstance(value, list):
        raise invalid_arguments(f"{key} must be an array of Ids")
    out = list(value)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise invalid_arguments(f"{key} must be an array of Ids")
        if v[:1] == "#":  # RFC 8620 §5.1: ids may be creation ids of this request ("#c1")
            r = ctx.resolve_id(v)
            if r is not None:
                out[i] = r
    return out


def string_list(args: dict[str, Any], key: str) -> list[str] | None:
    value = args.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid_arguments(f"{key} must be an array of strings")
    return value


def uint(args: dict[str, Any], key: str, default: int | None) -> int | None:
    value = args.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SAFE:
        raise invalid_arguments(f"{key} must be an UnsignedInt")
    return value


def integer(args: dict[str, Any], key: str, default: int) -> int:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_SAFE <= value <= MAX_SAFE:
        raise invalid_arguments(f"{key} must be an Int")
    return value


def boolean(args: dict[str, Any], key: str, default: bool) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise invalid_arguments(f"{key} must be a Boolean")
    return value


def string(args: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = args.get(key)
    if value is None:
        if required:
            raise invalid_arguments(f"{key} is required")
        return None
    if not isinstance(value, str):
        raise invalid_arguments(f"{key} must be a String")
    return value


def state(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise invalid_arguments(f"{key} must be a String")
    return value


def properties(args: dict[str, Any], key: str, known: Iterable[str], default: list[str]) -> list[str]:
    value = args.get(key)
    if value is None:
        return list(default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid_arguments(f"{key} must be an array of strings")
    known_set = set(known)
    for v in value:
        if v not in known_set:
            raise invalid_arguments(f"unknown property {v!r}")
    return list(dict.fromkeys(value))


def get_limit(ctx: RequestContext, n: int) -> None:
    if n > ctx.config.max_objects_in_get:
        raise MethodError("requestTooLarge", f"more than {ctx.config.max_objects_in_get} ids")


def set_limit(ctx: RequestContext, n: int) -> None:
    if n > ctx.config.max_objects_in_set:
        raise MethodError("requestTooLarge", f"more than {ctx.config.max_objects_in_set} objects")


def valid_id(value: Any) -> bool:
    return is_id(value)
