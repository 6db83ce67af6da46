"""The delivery's look at a recipient's Sieve state without coroutines (``Pass.kept``, used by
LocalDelivery for every recipient): it answers "the plain keep" only when ``apply`` would, and never
from stale data: a retry ledger that appears, a script activated (once the filter's look at the
account is due again, as before), the filter turned off."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mailsrv.config import SieveConfig
from mailsrv.delivery import sieve_ledger
from mailsrv.delivery.local import LocalOutcome
from mailsrv.delivery.sieve import SieveFilter
from mailsrv.sieve.scripts import put_script, set_active
from mailsrv.store import account_root

MSG = b"Message-ID: <m1@remote.test>\r\nSubject: x\r\n\r\nbody\r\n"


def _acct(tmp_path: Path, aid: int = 7) -> Any:
    acct = SimpleNamespace(id=aid, address=f"u{aid}@example.test", store="", domain="example.test")
    account_root(tmp_path, acct.id, acct.store).mkdir(parents=True)
    return acct


async def _answers(filt: SieveFilter, acct: Any, spool: Path) -> tuple[bool, list[tuple[str, frozenset[str]]]]:
    """(kept, what apply answers) for one message to ``acct``."""
    p = filt.begin(SimpleNamespace(store=SimpleNamespace(hostname="mx.example.test")), spool, MSG, "a@remote.test")
    kept = p.kept(acct)
    return kept, await p.apply(acct.address, acct, "INBOX", LocalOutcome())


async def test_kept_agrees_with_apply_and_sees_a_new_ledger(tmp_path: Path) -> None:
    filt = SieveFilter(SieveConfig(), tmp_path)
    acct = _acct(tmp_path)
    spool = tmp_path / "spool"
    # never looked at: apply (which looks) answers
    assert await _answers(filt, acct, spool) == (False, [("INBOX", frozenset())])
    assert await _answers(filt, acct, spool) == (True, [("INBOX", frozenset())])
    # a former attempt's ledger appears (another worker answered 451 after the copy): seen at once
    root = account_root(tmp_path, acct.id, acct.store)
    sieve_ledger.record(root, "k", "<m1@remote.test>", ["copy:Other"])
    kept, copies = await _answers(filt, acct, spool)
    assert not kept and copies == [("INBOX", frozenset())]  # apply read the ledger: not this message's copy
    (root / sieve_ledger.LEDGER_DB).unlink()
    assert (await _answers(filt, acct, spool))[0]


async def test_kept_sees_an_activated_script_when_the_filter_looks_again(tmp_path: Path) -> None:
    filt = SieveFilter(SieveConfig(), tmp_path, check_interval=0.05)
    acct = _acct(tmp_path)
    spool = tmp_path / "spool"
    await _answers(filt, acct, spool)
    assert (await _answers(filt, acct, spool))[0]
    root = account_root(tmp_path, acct.id, acct.store)
    put_script(root, "main", 'require "fileinto"; fileinto "Lists";')
    set_active(root, "main")
    entry = filt._cache[acct.id]
    entry.checked -= filt.check_interval  # the look is due: as after check_interval seconds
    kept, copies = await _answers(filt, acct, spool)
    assert not kept and copies == [("Lists", frozenset())]
    assert not (await _answers(filt, acct, spool))[0]  # a script: apply runs it, every message


async def test_kept_is_never_the_answer_with_the_filter_off_or_another_account(tmp_path: Path) -> None:
    filt = SieveFilter(replace(SieveConfig(), enabled=False), tmp_path)
    acct = _acct(tmp_path)
    spool = tmp_path / "spool"
    for _ in range(2):
        assert await _answers(filt, acct, spool) == (False, [("INBOX", frozenset())])
    on = SieveFilter(SieveConfig(), tmp_path)
    await _answers(on, acct, spool)
    assert not (await _answers(on, _acct(tmp_path, 8), spool))[0]  # an account not looked at yet
