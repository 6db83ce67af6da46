"""Shared /query machinery (RFC 8620 §5.5): filter operators, comparators, windowing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailsrv.jmap import args as A
from mailsrv.jmap.errors import MethodError, invalid_arguments

#: Deepest FilterOperator nesting accepted (a defence, not an RFC number).
MAX_FILTER_DEPTH = 32
COLLATIONS = ("i;ascii-numeric", "i;ascii-casemap", "i;unicode-casemap")


def compile_filter(
    node: Any, condition: Callable[[dict[str, Any]], Callable[[Any], bool]], depth: int = 0
) -> Callable[[Any], bool]:
    """A predicate from a Filter (FilterOperator | FilterCondition). ``condition`` compiles
    one FilterCondition and raises unsupportedFilter for what it does not know."""
    if depth > MAX_FILTER_DEPTH:
        raise MethodError("unsupportedFilter", f"filter nested deeper than {MAX_FILTER_DEPTH}")
    if not isinstance(node, dict):
        raise MethodError("unsupportedFilter", "a filter must be an object")
    if "operator" in node:
        if set(node) != {"operator", "conditions"} or not isinstance(node["conditions"], list):
            raise MethodError("unsupportedFilter", "FilterOperator needs operator and conditions")
        op = node["operator"]
        subs = [compile_filter(c, condition, depth + 1) for c in node["conditions"]]
        if op == "AND":
            return lambda x: all(f(x) for f in subs)
        if op == "OR":
            return lambda x: any(f(x) for f in subs)
        if op == "NOT":
            return lambda x: not any(f(x) for f in subs)
        raise MethodError("unsupportedFilter", f"unknown operator {op!r}")
    return condition(node)


def compile_sort(
    sort: Any, key_for: Callable[[dict[str, Any]], Callable[[Any], Any]]
) -> Callable[[list[Any]], list[Any]]:
    """A sorting function from a Comparator list. ``key_for`` raises unsupportedSort."""
    if sort is None:
        sort = []
    if not isinstance(sort, list):
        raise invalid_arguments("sort must be an array of Comparators")
    keys: list[tuple[Callable[[Any], Any], bool]] = []
    for comp in sort:
        if not isinstance(comp, dict) or not isinstance(comp.get("property"), str):
            raise invalid_arguments("a Comparator needs a property")
        extra = set(comp) - {"property", "isAscending", "collation", "keyword"}
        if extra:
            raise invalid_arguments(f"unknown Comparator members {sorted(extra)}")
        asc = comp.get("isAscending", True)
        if not isinstance(asc, bool):
            raise invalid_arguments("isAscending must be a Boolean")
        coll = comp.get("collation")
        if coll is not None and coll not in COLLATIONS:
            raise MethodError("unsupportedSort", f"unknown collation {coll!r}")
        keys.append((key_for(comp), asc))

    def run(items: list[Any]) -> list[Any]:
        # Stable sorts from the last comparator to the first give the multi-key order
        # (Python's sort is stable, also with reverse=True).
        out = list(items)
        for k, asc in reversed(keys):
            out.sort(key=k, reverse=not asc)
        return out

    return run


def window(ids: list[str], args: dict[str, Any]) -> tuple[list[str], int]:
    """(the page of ids, its position), per RFC 8620 §5.5 position/anchor/limit."""
    position = A.integer(args, "position", 0)
    limit = A.uint(args, "limit", None)
    anchor = args.get("anchor")
    total = len(ids)
    if anchor is not None:
        if not isinstance(anchor, str):
            raise invalid_arguments("anchor must be an Id")
        offset = A.integer(args, "anchorOffset", 0)
        try:
            idx = ids.index(anchor)
        except ValueError:
            raise MethodError("anchorNotFound") from None
        position = max(0, idx + offset)
    elif position < 0:
        position = max(0, total + position)
    end = total if limit is None else position + limit
    return ids[position:end], min(position, total)
