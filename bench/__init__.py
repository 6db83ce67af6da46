"""mailsrv benchmark harness (`python -m bench SCENARIO [--size smoke|full] [--json FILE]`).

A scenario is a module ``bench/<name>.py`` with::

    def run(size: str) -> dict    # size is "smoke" (seconds, used by make test) or "full"

returning ``{"scenario": name, "results": [ {"name": ..., "unit": ..., "value": ...,
"baseline": {"name": ..., "value": ...} | None, "ratio": float | None, ...}, ... ],
"notes": [...]}``. Baselines are measured in the same run; a missing baseline
is reported as missing (``baseline: None`` with a note), never invented.
"""
