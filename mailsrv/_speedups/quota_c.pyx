# cython: language_level=3
"""Quota accounting hot path, compiled. The twin ``quota_py`` is the specification."""

from libc.stdint cimport int64_t

OK = 0
OVER_STORAGE = 1
OVER_MESSAGES = 2
MAX_VALUE = (1 << 62) - 1

cdef int64_t _MAX = (1 << 62) - 1


cdef inline int64_t _bound(object v) except -1:
    if v < 0 or v > MAX_VALUE:
        raise OverflowError(f"quota value {v} out of range")
    return <int64_t>v


def check(used_storage, used_messages, add_storage, add_messages, limit_storage, limit_messages):
    cdef int64_t us = _bound(used_storage)
    cdef int64_t um = _bound(used_messages)
    cdef int64_t a_s = _bound(add_storage)
    cdef int64_t a_m = _bound(add_messages)
    if limit_storage < -1 or limit_messages < -1 or limit_storage > MAX_VALUE or limit_messages > MAX_VALUE:
        raise OverflowError("quota limit out of range")
    cdef int64_t ls = <int64_t>limit_storage
    cdef int64_t lm = <int64_t>limit_messages
    if a_s == 0 and a_m == 0:
        return OK
    if ls >= 0 and us + a_s > ls:
        return OVER_STORAGE
    if lm >= 0 and um + a_m > lm:
        return OVER_MESSAGES
    return OK


def apply(used_storage, used_messages, sizes, int sign):
    if sign != 1 and sign != -1:
        raise ValueError("sign must be 1 or -1")
    cdef int64_t storage = _bound(used_storage)
    cdef int64_t messages = _bound(used_messages)
    cdef int64_t total = 0
    cdef int64_t count = 0
    cdef int64_t s
    for item in sizes:
        s = _bound(item)
        total += s
        if total > _MAX:
            raise OverflowError("quota value out of range")
        count += 1
    if sign > 0:
        storage += total
        messages += count
        if storage > _MAX or messages > _MAX:
            raise OverflowError("quota value out of range")
    else:
        storage = storage - total if storage > total else 0
        messages = messages - count if messages > count else 0
    return storage, messages


def check_roots(usages, limits, add_storage, add_messages):
    if len(usages) != len(limits):
        raise ValueError("usages and limits differ in length")
    cdef Py_ssize_t i
    for i in range(len(usages)):
        us, um = usages[i]
        ls, lm = limits[i]
        code = check(us, um, add_storage, add_messages, ls, lm)
        if code != OK:
            return i, code
    return -1, OK


def storage_units(octets):
    cdef int64_t o = _bound(octets)
    return (o + 1023) // 1024
