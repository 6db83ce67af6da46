"""What a fuzz target is: bytes in, only the parser's documented errors out, bounded in size.

No mailsrv import at module level: ``python -m fuzz run`` imports the targets inside atheris'
instrumentation so that mailsrv's bytecode reports coverage.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: The shared corpus of real messages (read at run time, never copied into the repo).
CORPUS = Path(os.environ.get("MAILSRV_CORPUS", REPO.parent / "shared" / "corpus"))


class Mismatch(AssertionError):
    """A differential target: the compiled module and its pure-Python twin disagree."""


@dataclass(frozen=True)
class Target:
    """One fuzz target.

    ``run(data)`` feeds ``data`` to the parser; it may raise one of ``errors`` (what the parser
    documents for bad input), anything else is a bug. ``seeds()`` gives the starting corpus;
    ``max_len`` bounds the input (libFuzzer's -max_len, and the replay cuts to it).
    """

    name: str
    run: Callable[[bytes], object]
    seeds: Callable[[], Iterable[bytes]]
    errors: tuple[type[BaseException], ...] = ()
    max_len: int = 4096

    def one(self, data: bytes) -> None:
        """Feed one input; raises only when the parser misbehaved."""
        try:
            self.run(data[: self.max_len])
        except self.errors:
            pass


class _RaiseLogged:
    """Stands in for a module's logger: what it would log as an unexpected exception propagates."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def exception(self, event: str, exc: BaseException, **fields: Any) -> None:
        raise exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


#: modules whose logger :func:`raise_logged` replaced (for :func:`restore_logged`)
_PATCHED: list[Any] = []


def raise_logged(module: Any) -> None:
    """Make ``module.logger.exception`` raise: the server turns a handler's unexpected exception
    into a reply (serverFail, [SERVERBUG]) and logs it; under the fuzzer it is a crash. Targets call
    it at each input (cheap once done), so it holds again after :func:`restore_logged`."""
    if not isinstance(module.logger, _RaiseLogged):
        module.logger = _RaiseLogged(module.logger)
        _PATCHED.append(module)


def restore_logged() -> None:
    """Give back the loggers :func:`raise_logged` replaced: a target replayed inside a test run
    (tests/fuzz) must not leave other tests' servers raising what they should log and answer."""
    while _PATCHED:
        module = _PATCHED.pop()
        if isinstance(module.logger, _RaiseLogged):
            module.logger = module.logger.real


def corpus_messages(limit: int = 20000) -> list[bytes]:
    """The shared corpus' messages (CRLF-normalised, cut to ``limit`` bytes); [] without the corpus."""
    if not CORPUS.is_dir():
        return []
    sys.path.insert(0, str(REPO / "tests" / "mime"))
    try:
        from corpus_files import message_paths, normalise
    finally:
        sys.path.remove(str(REPO / "tests" / "mime"))
    return [normalise((CORPUS / rel).read_bytes())[:limit] for rel in message_paths(CORPUS)]


def corpus_header_values(names: tuple[bytes, ...], limit: int = 2000) -> list[bytes]:
    """Unfolded values of the header fields ``names`` (lower case) across the corpus' messages."""
    out: list[bytes] = []
    for msg in corpus_messages():
        head = msg.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t")
        for line in head.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if colon and name.strip().lower() in names:
                out.append(value.strip()[:limit])
    return out


def test_constants(pattern: str, keep: Callable[[bytes], bool], limit: int = 400) -> list[bytes]:
    """String and bytes literals of the test files matching ``pattern`` (under tests/) that ``keep``
    accepts (as UTF-8 bytes): the inputs the tests already use, as seeds."""
    out: dict[bytes, None] = {}
    for path in sorted((REPO / "tests").glob(pattern)):
        try:
            tree = ast.parse(path.read_text("utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
                value = node.value.encode("utf-8", "surrogatepass") if isinstance(node.value, str) else node.value
                if keep(value):
                    out[value] = None
    return list(out)[:limit]


def write_seeds(target: Target, folder: Path) -> int:
    """Write the target's seeds into ``folder`` (named by content hash); returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for seed in target.seeds():
        seed = seed[: target.max_len]
        (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        n += 1
    return n


def split(data: bytes, parts: int) -> Iterator[bytes]:
    """The rest of ``data`` cut into ``parts`` pieces at offsets its first ``parts - 1`` bytes choose
    (for chunked feeds); the pieces joined are ``data[parts - 1:]``."""
    if not data or parts < 2:
        yield data
        return
    head, body = data[: parts - 1], data[parts - 1 :]
    cuts = sorted(b * len(body) // 256 for b in head)
    prev = 0
    for c in cuts:
        yield body[prev:c]
        prev = c
    yield body[prev:]
