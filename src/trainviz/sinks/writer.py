"""A background thread that performs sink writes so the training loop does not wait for disk.

Example:
    >>> w = BackgroundWriter()
    >>> out = []
    >>> w.submit(out.append, 1)
    >>> w.flush(); out
    [1]
    >>> w.close()
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from trainviz.core.threads import ACTIVITY

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """One daemon thread draining a FIFO queue of write jobs.

    A failing job warns (once per error type) and the next job runs. ``flush()`` blocks until every
    job submitted before it is done. ``synchronous=True`` runs jobs inline (useful in tests and debugging).
    """

    def __init__(self, synchronous: bool = False) -> None:
        self.synchronous = synchronous
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self.busy: dict[str, float] = {}  # CPU seconds of work per owner (``submit_as``), for the overhead budget

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="trainviz-writer", daemon=True)
                self._thread.start()

    def _execute(self, fn: Callable[..., Any], args: tuple, kwargs: dict, owner: str = "") -> None:
        start = time.thread_time()  # the job's CPU seconds: waiting for the GIL or a core is not its work
        try:
            with ACTIVITY.working(owner):
                fn(*args, **kwargs)
        except Exception as err:  # a failed write must not stop the others or training
            kind = type(err).__name__
            if kind not in self._warned:
                self._warned.add(kind)
                warnings.warn(f"trainviz: a background write failed ({kind}: {err}); later writes go on.", stacklevel=2)
        finally:
            self.busy[owner] = self.busy.get(owner, 0.0) + time.thread_time() - start

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._execute(*job)
            finally:
                self._queue.task_done()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(*args, **kwargs)``. Arguments must not be mutated afterwards (pass copies)."""
        self.submit_as("", fn, *args, **kwargs)

    def submit_as(self, owner: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """:meth:`submit`, with the job's CPU seconds added to ``busy[owner]``."""
        if self.synchronous:
            self._execute(fn, args, kwargs, owner)
            return
        self._ensure_thread()
        self._queue.put((fn, args, kwargs, owner))

    def flush(self) -> None:
        """Wait until all queued jobs are done."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.join()

    def close(self) -> None:
        """Flush and stop the thread."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._thread = None
