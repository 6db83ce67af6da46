"""The fuzz harness keeps working: every target replays its seeds cleanly, then fuzzes for a
couple of seconds under atheris without a crash (make fuzz runs the real campaigns)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fuzz import targets
from fuzz.harness import CORPUS, Mismatch, Target, restore_logged

ROOT = Path(__file__).resolve().parents[2]
NAMES = list(targets.INDEX)
#: Seconds of fuzzing per target in make test (two targets at a time).
SLICE_SECONDS = 2


@pytest.fixture(autouse=True)
def _loggers_given_back() -> Iterator[None]:
    """The IMAP and JMAP targets make their modules' logger.exception raise (a [SERVERBUG] or serverFail
    is a crash under the fuzzer); in this process the tests after these must find them logging."""
    yield
    restore_logged()


@pytest.mark.parametrize("name", NAMES)
def test_seeds_replay_cleanly(name: str) -> None:
    target = targets.get(name)
    seeds = list(target.seeds())
    assert seeds, f"{name} has no seeds"
    for seed in seeds:
        target.one(seed)


def test_corpus_seeds_are_read_from_the_shared_corpus() -> None:
    assert CORPUS.is_dir(), CORPUS
    # the MIME target starts from every message of the shared corpus (never copied into the repo)
    assert len(list(targets.get("mime_message").seeds())) > 150
    assert not (ROOT / "fuzz" / "corpus").is_dir() or not any(
        (ROOT / "fuzz" / "corpus").rglob("*.eml")), "corpus messages must not be copied into the repo"


def test_a_target_lets_declared_errors_through_and_raises_on_others() -> None:
    def parse(data: bytes) -> None:
        if data.startswith(b"bad"):
            raise ValueError("declared")
        if data.startswith(b"bug"):
            raise KeyError("a bug")

    t = Target("t", parse, lambda: [], (ValueError,), max_len=8)
    t.one(b"bad input")
    with pytest.raises(KeyError):
        t.one(b"bug")
    t.one(b"12345678bug")  # cut to max_len first


def test_a_differential_mismatch_is_a_crash() -> None:
    assert not issubclass(Mismatch, tuple(targets.get("diff_mime").errors) or ())


def _fuzz(name: str, tmp: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items()}
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz", "run", name, "--seconds", str(SLICE_SECONDS), "--rss-mb", "1024",
         "--corpus", str(tmp / name), "--crashes", str(tmp / "crashes")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def slice_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(NAMES, pool.map(lambda n: _fuzz(n, tmp), NAMES), strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_fuzzes_briefly_without_a_crash(name: str, slice_results: dict[str, tuple[int, str]]) -> None:
    rc, out = slice_results[name]
    assert rc == 0, out[-3000:]
    runs = re.search(r"stat::number_of_executed_units: (\d+)", out)
    assert runs and int(runs.group(1)) > 0, out[-3000:]


def test_a_replayed_target_leaves_the_loggers_as_they_were() -> None:
    """A target replayed here used to leave mailsrv.imap.session's logger raising: a later test's
    handler failure escaped instead of answering [SERVERBUG] (tests/imap/test_session.py)."""
    from mailsrv.imap import session
    from mailsrv.jmap import core

    before = (session.logger, core.logger)
    for name in ("imap_session", "jmap_request"):
        target = targets.get(name)
        target.one(next(iter(target.seeds())))
    # while replaying, both raise (what the fuzzer counts as a crash) ...
    assert type(session.logger).__name__ == "_RaiseLogged" and type(core.logger).__name__ == "_RaiseLogged"
    # ... and afterwards they log again
    restore_logged()
    assert (session.logger, core.logger) == before
