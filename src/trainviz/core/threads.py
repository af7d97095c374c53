"""Thread caps for trainviz's background work, so that training is not starved on small machines.

On a machine with 4 cores or fewer, UMAP (numba) and t-SNE or scikit-learn (OpenMP, BLAS) would each start as
many threads as there are cores, next to the training thread's own. :func:`background_threads` caps them at
one thread for the code run inside it (numba's cap is per thread, the others are threadpoolctl's limits).

Example:
    >>> from trainviz.core.threads import background_threads
    >>> with background_threads(max_cores=10**6) as n:
    ...     n
    1
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

__all__ = ["ACTIVITY", "SMALL_MACHINE_CORES", "Activity", "background_threads", "contention"]

SMALL_MACHINE_CORES = 4
"""At or below this many cores, background work runs on one thread."""

SMALL_MACHINE_CONTENTION = 2.5
"""Seconds of training a second of background work costs on a small machine (measured on 2 cores: a capped
embedding job of 1.2 s slowed the training steps by about 3 s; a Python thread holds the GIL between its numpy
calls, and torch's two threads wait for a preempted one)."""


def contention(max_cores: int = SMALL_MACHINE_CORES) -> float:
    """The prior for what a second of background work costs training, used to plan work before its effect is
    measured (the scheduler measures it: :class:`Activity`): :data:`SMALL_MACHINE_CONTENTION` on machines with
    ``max_cores`` cores or fewer, else 1."""
    return SMALL_MACHINE_CONTENTION if (os.cpu_count() or 1) <= max_cores else 1.0


@contextmanager
def background_threads(max_cores: int = SMALL_MACHINE_CORES) -> Iterator[int | None]:
    """Cap OpenMP/BLAS and numba threads of the code inside at one when the machine has ``max_cores`` or fewer.

    Yields the cap (``1``), or ``None`` on a larger machine (nothing is capped).
    """
    if (os.cpu_count() or 1) > max_cores:
        yield None
        return
    with ExitStack() as stack:
        from threadpoolctl import threadpool_limits

        stack.enter_context(threadpool_limits(limits=1))
        if importlib.util.find_spec("numba") is not None:
            import numba

            previous = numba.get_num_threads()
            numba.set_num_threads(1)  # thread-local in numba: only this worker thread
            stack.callback(numba.set_num_threads, previous)
        yield 1


class Activity:
    """When trainviz's background threads (the sinks' writer, the embedding worker) work, by owner (a callback's
    name): the overhead budget compares the training batches they overlapped with the batches they did not
    (:meth:`trainviz.core.budget.Scheduler.batch`). Process-wide, like the threads it watches; thread-safe.

    Example:
        >>> activity = Activity()
        >>> with activity.working("embedding"):
        ...     pass
        >>> start, end = activity.done[-1][1:]
        >>> list(activity.overlap(start, end)), activity.overlap(end + 1, end + 2)
        (['embedding'], {})
    """

    def __init__(self, keep: int = 4096) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.open: dict[int, tuple[str, float]] = {}  # running jobs: (owner, start)
        self.done: deque[tuple[str, float, float]] = deque(maxlen=keep)  # finished jobs (owner, start, end), by end

    @contextmanager
    def working(self, owner: str) -> Iterator[None]:
        """The code inside is background work of ``owner``."""
        key, start = next(self._ids), time.perf_counter()
        with self._lock:
            self.open[key] = (owner, start)
        try:
            yield
        finally:
            with self._lock:
                del self.open[key]
                self.done.append((owner, start, time.perf_counter()))

    def overlap(self, start: float, end: float) -> dict[str, float]:
        """Seconds of each owner's background work within ``[start, end]`` (running jobs count up to now). The
        scheduler asks at every training batch: the finished jobs are read from the newest back to the first that
        ended before ``start`` (they are kept in the order they ended), not all of them (50 us with 4,096 kept)."""
        now = time.perf_counter()
        out: dict[str, float] = {}
        with self._lock:
            jobs = [(owner, a, now) for owner, a in self.open.values()]  # running: up to now
            for owner, a, b in reversed(self.done):
                if b <= start:
                    break
                jobs.append((owner, a, b))
        for owner, a, b in jobs:
            seconds = min(b, end) - max(a, start)
            if seconds > 0:
                out[owner] = out.get(owner, 0.0) + seconds
        return out


ACTIVITY = Activity()
"""This process's background work (every trainviz thread reports to it)."""
