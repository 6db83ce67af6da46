"""Quota accounting hot path, pure-Python twin (the specification of ``quota_c``).

RFC 9208 resources: STORAGE (counted here in octets; reported in units of
1024 octets) and MESSAGE. All values are non-negative integers below 2**62;
a limit of -1 means unlimited.
"""

from __future__ import annotations

from collections.abc import Sequence

#: check() results
OK = 0
OVER_STORAGE = 1
OVER_MESSAGES = 2

#: largest value accepted anywhere (the compiled twin uses int64)
MAX_VALUE = (1 << 62) - 1


def _bound(v: int) -> int:
    if v < 0 or v > MAX_VALUE:
        raise OverflowError(f"quota value {v} out of range")
    return v


def check(used_storage: int, used_messages: int, add_storage: int, add_messages: int,
          limit_storage: int, limit_messages: int) -> int:
    """Would adding ``add_storage`` octets in ``add_messages`` messages exceed a limit?

    Returns OK, OVER_STORAGE or OVER_MESSAGES (storage is checked first).
    Adding nothing (both adds 0) is always OK, even above the limit.
    """
    _bound(used_storage)
    _bound(used_messages)
    _bound(add_storage)
    _bound(add_messages)
    if limit_storage < -1 or limit_messages < -1 or limit_storage > MAX_VALUE or limit_messages > MAX_VALUE:
        raise OverflowError("quota limit out of range")
    if add_storage == 0 and add_messages == 0:
        return OK
    if limit_storage >= 0 and used_storage + add_storage > limit_storage:
        return OVER_STORAGE
    if limit_messages >= 0 and used_messages + add_messages > limit_messages:
        return OVER_MESSAGES
    return OK


def apply(used_storage: int, used_messages: int, sizes: Sequence[int], sign: int) -> tuple[int, int]:
    """New (storage, messages) after adding (sign=1) or removing (sign=-1) messages of ``sizes``.

    Never goes below zero: removing more than is accounted (the index had
    drifted) clamps at 0.
    """
    if sign not in (1, -1):
        raise ValueError("sign must be 1 or -1")
    storage = _bound(used_storage)
    messages = _bound(used_messages)
    total = 0
    for s in sizes:
        total += _bound(s)
        if total > MAX_VALUE:
            raise OverflowError("quota value out of range")
    count = len(sizes)
    if sign > 0:
        storage += total
        messages += count
        if storage > MAX_VALUE or messages > MAX_VALUE:
            raise OverflowError("quota value out of range")
    else:
        storage = max(0, storage - total)
        messages = max(0, messages - count)
    return storage, messages


def check_roots(usages: Sequence[tuple[int, int]], limits: Sequence[tuple[int, int]],
                add_storage: int, add_messages: int) -> tuple[int, int]:
    """:func:`check` over several quota roots at once (RFC 9208 §3: every root of a mailbox applies).

    ``usages[i]`` is (storage, messages) of root i, ``limits[i]`` its (storage, messages)
    limits (-1 = unlimited); both sequences have the same length. Returns
    (index of the first root that would be exceeded, its check() result), or (-1, OK).
    """
    if len(usages) != len(limits):
        raise ValueError("usages and limits differ in length")
    for i in range(len(usages)):
        us, um = usages[i]
        ls, lm = limits[i]
        code = check(us, um, add_storage, add_messages, ls, lm)
        if code != OK:
            return i, code
    return -1, OK


def storage_units(octets: int) -> int:
    """RFC 9208 §5.1: STORAGE usage and limits are in units of 1024 octets (rounded up)."""
    _bound(octets)
    return (octets + 1023) // 1024
