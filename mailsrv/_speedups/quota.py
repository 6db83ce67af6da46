"""Quota accounting selector: the compiled ``quota_c`` or its twin ``quota_py``."""

from __future__ import annotations

from mailsrv._speedups import load

_impl = load("quota", twin="mailsrv._speedups.quota_py")

OK: int = _impl.OK
OVER_STORAGE: int = _impl.OVER_STORAGE
OVER_MESSAGES: int = _impl.OVER_MESSAGES
MAX_VALUE: int = _impl.MAX_VALUE
check = _impl.check
apply = _impl.apply
check_roots = _impl.check_roots
storage_units = _impl.storage_units
IMPLEMENTATION = "c" if _impl.__name__.endswith("_c") else "py"
