"""CPU affinity of a worker's threads under ``[server] pin_workers`` (Linux).

``pin_workers = true`` pins a worker and every thread it starts to one CPU. ``"loop"`` pins only its
event loop's thread and the threads that take the loop's hand-offs one at a time (the group-commit
rounds' express threads, :meth:`mailsrv.util.fsio.FileIO.express`): a lone session's round trip
loop -> round thread -> loop then wakes a thread on the CPU it left (~20-35 us against 50-70 across the
two vCPUs we measure on), while the background threads (pools, the reserve's refill, the usage writer)
may run on every CPU the master had, beside the loop. A thread inherits the affinity of the thread
that starts it (most are started from the pinned loop thread), so each background thread calls
:func:`background` first."""

from __future__ import annotations

import os

#: the CPUs background threads may run on, set in a worker pinned with ``"loop"`` (None: nothing to undo)
_everywhere: frozenset[int] | None = None


def pin_loop(cpu: int) -> None:
    """In a worker before it starts a thread: this thread (and the threads it starts, until they call
    :func:`background`) on ``cpu`` only; background threads keep the CPUs allowed now."""
    global _everywhere
    everywhere = frozenset(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    _everywhere = everywhere


def background() -> None:
    """First thing a background thread runs (a pool's initializer, a thread's target): the CPUs the
    worker had before :func:`pin_loop`; nothing when the loop is not pinned."""
    if _everywhere is not None:
        try:
            os.sched_setaffinity(0, _everywhere)
        except OSError:  # a CPU taken away since (a container's cpuset): this thread stays where it is
            pass


def loop_pinned() -> bool:
    """This worker's loop is pinned and its background threads are not (``pin_workers = "loop"``)."""
    return _everywhere is not None
