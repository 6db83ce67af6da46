"""Every fuzz target, by name; the most exposed parsers first (the order of ``make fuzz``).

Modules are imported on demand so that ``python -m fuzz run`` imports mailsrv inside atheris'
instrumentation.
"""

from __future__ import annotations

import importlib

from fuzz.harness import Target

#: target name -> the module under fuzz/targets/ that defines it
INDEX = {
    "imap_command": "imap",
    "imap_session": "imap",
    "mime_message": "mime",
    "smtp_line": "smtp",
    "smtp_data": "smtp",
    "jmap_request": "jmap",
    "jmap_methods": "jmap",
    "pop3_command": "pop3",
    "pop3_body": "pop3",
    "managesieve_command": "sieve",
    "sieve_script": "sieve",
    "sasl": "sasl",
    "address": "mime",
    "mime_header": "mime",
    "imap_mutf7": "imap",
    "diff_mime": "speedups",
    "diff_linestuff": "speedups",
    "diff_tokenize": "speedups",
    "diff_search": "speedups",
    "diff_quota": "speedups",
    "diff_flaglines": "speedups",
}


def get(name: str) -> Target:
    """The target called ``name``; KeyError for an unknown one."""
    module = importlib.import_module(f"fuzz.targets.{INDEX[name]}")
    for target in module.TARGETS:
        if target.name == name:
            return target
    raise KeyError(name)
