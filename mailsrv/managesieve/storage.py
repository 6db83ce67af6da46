"""What a ManageSieve session sees of an account's scripts: a small interface and its file-backed form.

:class:`AccountScripts` runs the blocking calls of :mod:`mailsrv.sieve.scripts` in a
thread pool (the worker's store I/O pool) with the ``[sieve]`` limits; they raise
:class:`~mailsrv.sieve.scripts.ScriptError` subclasses for refusals and
:class:`ScriptsUnavailable` when the file system fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mailsrv.config import SieveConfig
from mailsrv.sieve import scripts as S

T = TypeVar("T")


class ScriptsUnavailable(Exception):
    """The account's script directory cannot be read or written now (``NO (TRYLATER)``)."""


class Scripts(Protocol):
    """One account's scripts (RFC 5804 §2.5-2.12)."""

    async def list(self) -> list[tuple[str, bool]]: ...

    async def get(self, name: str) -> str: ...

    async def put(self, name: str, text: str) -> None: ...

    async def check(self, text: str) -> None: ...

    async def check_space(self, name: str, size: int) -> None: ...

    async def set_active(self, name: str | None) -> None: ...

    async def delete(self, name: str) -> None: ...

    async def rename(self, old: str, new: str) -> None: ...


Runner = Callable[[Callable[[], Any]], Awaitable[Any]]


def pool_runner(run: Callable[..., Awaitable[Any]] | None = None) -> Runner:
    """``run(fn)`` through ``run`` (e.g. ``Store.io.run``), or the loop's default executor."""
    if run is not None:
        return lambda fn: run(fn)
    return lambda fn: asyncio.get_running_loop().run_in_executor(None, fn)


class AccountScripts:
    """The scripts under one account's maildir root (``mailsrv.store.account_root``)."""

    def __init__(self, root: Path, config: SieveConfig, run: Runner) -> None:
        self.root = root
        self.config = config
        self._run_fn = run

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await self._run_fn(partial(fn, *args, **kwargs))
        except OSError as exc:
            raise ScriptsUnavailable(f"{type(exc).__name__}: {exc.strerror or exc}") from exc

    @property
    def _limits(self) -> dict[str, int]:
        return {"max_size": self.config.max_script_size, "max_scripts": self.config.max_scripts}

    async def list(self) -> list[tuple[str, bool]]:
        return await self._run(S.list_scripts, self.root)

    async def get(self, name: str) -> str:
        return await self._run(S.get_script, self.root, name)

    async def put(self, name: str, text: str) -> None:
        await self._run(S.put_script, self.root, name, text, **self._limits)

    async def check(self, text: str) -> None:
        await self._run(S.validate, text, self.config.max_script_size)

    async def check_space(self, name: str, size: int) -> None:
        await self._run(S.check_space, self.root, name, size, **self._limits)

    async def set_active(self, name: str | None) -> None:
        await self._run(S.set_active, self.root, name)

    async def delete(self, name: str) -> None:
        await self._run(S.delete_script, self.root, name)

    async def rename(self, old: str, new: str) -> None:
        await self._run(S.rename_script, self.root, old, new)
