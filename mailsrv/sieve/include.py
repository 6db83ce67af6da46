"""RFC 6609 include: the scripts a script includes, found and compiled before it runs.

Pure: the caller gives a ``read(location, name)`` that returns a script's text or None (delivery reads
the account's own scripts and the global directory, mailsrv.delivery.sieve). Every script reachable
through includes is compiled once, by (location, name); at most MAX_INCLUDES of them. A missing one is
not an error here: running its ``include`` is, unless ``:optional`` (RFC 6609 §3.2). Nesting and loops
are checked when the script runs (mailsrv.sieve.interp: MAX_INCLUDE_DEPTH).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from mailsrv.sieve.grammar import MAX_SCRIPT_SIZE, SieveError
from mailsrv.sieve.lang import Action, If, Include, Script, compile

#: distinct scripts one script may reach through includes (Pigeonhole's sieve_include_max_includes)
MAX_INCLUDES = 255


def includes(commands: tuple[Action, ...]) -> Iterator[Include]:
    """Every include command of ``commands``, nested blocks too."""
    for c in commands:
        if isinstance(c, Include):
            yield c
        elif isinstance(c, If):
            for _, body in c.branches:
                yield from includes(body)
            if c.orelse is not None:
                yield from includes(c.orelse)


def resolve(main: Script, read: Callable[[str, str], str | None], max_size: int = MAX_SCRIPT_SIZE) -> Script:
    """``main`` with every script its includes reach, compiled (Script.includes). Raises SieveError
    when one of them does not compile (the message names it) or there are more than MAX_INCLUDES."""
    found: dict[tuple[str, str], Script | None] = {}
    todo = [main]
    while todo:
        for inc in includes(todo.pop().commands):
            key = (inc.location, inc.name)
            if key in found:
                continue
            if len(found) >= MAX_INCLUDES:
                raise SieveError(1, f"include: more than {MAX_INCLUDES} scripts")
            text = read(*key)
            if text is None:
                found[key] = None
                continue
            try:
                script = compile(text, max_size)
            except SieveError as e:
                raise SieveError(e.line, f"{inc.location} script {inc.name!r}: {e.message}") from None
            found[key] = script
            todo.append(script)
    return replace(main, includes=found) if found else main
