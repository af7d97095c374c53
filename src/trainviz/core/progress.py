"""Progress of long trainviz work (a slow probe, the corruption cache, waiting for the embedding worker), shown
without fighting Lightning's progress bar.

Where it shows depends on ``trainer.progress_bar_callback``:

- a :class:`~pytorch_lightning.callbacks.TQDMProgressBar`: a ``tqdm`` bar with ``leave=False`` two lines below
  Lightning's while the work runs (``trainviz: robustness epoch 0: 74/82, corrupting pixelate 3 [00:02]``), then
  one line written with ``tqdm.write`` (above Lightning's bar) when it is done, e.g.
  ``trainviz: robustness epoch 0 took 6.0 s (82/82 corrupted rows cached)``;
- a :class:`~pytorch_lightning.callbacks.RichProgressBar`: a start line (when shown) and the end line printed on
  its rich console, which keeps the live display intact (without a console, Lightning's logger);
- no progress bar (``enable_progress_bar=False``, tests), another rank than zero: nothing.

Only long work shows: estimated (``estimate=``) or measured above :data:`LONG_SECONDS`. A display error never
reaches the work (every call is guarded), and nothing here draws random numbers or touches a tensor.

Example:
    >>> task = Task(None, "trainviz: demo")  # no trainer, no display: every call does nothing
    >>> with task:
    ...     task.update(1, 3, "first part")
    >>> task.done, task.total
    (1, 3)
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from trainviz.core.lightning_private import rich_console
from trainviz.core.namespace import info, is_instance

__all__ = ["LONG_SECONDS", "Reporter", "Task", "display_for", "task"]

LONG_SECONDS = 1.0
"""Work estimated or measured to take longer than this shows its progress."""

Reporter = Callable[[int, "int | None", str], None]
"""``report(done, total, note)``: what long work calls to say how far it is (``total`` may be ``None``)."""

_log = logging.getLogger(__name__)


def _tqdm_class() -> Any:
    # the class of Lightning's own bars: tqdm.auto (notebook widgets) when ipywidgets is installed
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm


class _Display:
    """Where the lines go: ``open`` a live part, ``refresh`` it, ``close`` it and ``write`` one line."""

    def open(self, desc: str, total: int | None) -> None:
        pass

    def refresh(self, done: int, total: int | None, note: str) -> None:
        pass

    def close(self) -> None:
        pass

    def write(self, line: str) -> None:
        pass


class _TqdmDisplay(_Display):
    def __init__(self, position: int) -> None:
        self.position = position
        self.bar: Any = None

    def open(self, desc: str, total: int | None) -> None:
        self.bar = _tqdm_class()(
            desc=desc,
            total=total,
            position=self.position,
            leave=False,
            file=sys.stdout,  # where Lightning's bars are
            dynamic_ncols=True,
            smoothing=0,
            bar_format="{desc}: {n_fmt}/{total_fmt}{postfix} [{elapsed}]" if total else "{desc}{postfix}",
        )

    def refresh(self, done: int, total: int | None, note: str) -> None:
        if self.bar is not None:
            if total is not None and self.bar.total != total:
                self.bar.total = total
            self.bar.n = done
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        bar, self.bar = self.bar, None
        if bar is not None:
            bar.close()

    def write(self, line: str) -> None:
        _tqdm_class().write(line, file=sys.stdout)


class _ConsoleDisplay(_Display):
    """A rich console (Lightning's ``RichProgressBar``): its ``print`` goes above the live display."""

    def __init__(self, console: Any) -> None:
        self.console = console

    def open(self, desc: str, total: int | None) -> None:
        self.write(f"{desc} ...")

    def write(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False)


class _LogDisplay(_Display):
    def __init__(self, trainer: Any = None) -> None:
        self.trainer = trainer

    def write(self, line: str) -> None:
        info(line, self.trainer)


def display_for(trainer: Any) -> _Display | None:
    """The display of ``trainer``'s progress bar, or ``None`` (no bar, disabled, not rank zero, no trainer)."""
    try:
        if trainer is None or not getattr(trainer, "is_global_zero", False):
            return None
        bar = getattr(trainer, "progress_bar_callback", None)
        if bar is None or not getattr(bar, "is_enabled", False):
            return None
        if is_instance(bar, "callbacks", "TQDMProgressBar"):  # of either Lightning namespace
            return _TqdmDisplay(2 * bar.process_position + 2)  # below the main and the validation bar
        if is_instance(bar, "callbacks", "RichProgressBar"):
            console = rich_console(bar)  # trainviz.core.lightning_private
            return _ConsoleDisplay(console) if console is not None else _LogDisplay(trainer)
        return _LogDisplay(trainer)
    except Exception as err:  # a display must never fail the work
        _log.debug("trainviz: no progress display: %r", err)
        return None


class Task:
    """One piece of work on ``trainer``'s display (see the module): shown live from the start when ``estimate``
    exceeds :data:`LONG_SECONDS`, else from the first :meth:`update` after that long, and summed up in one line
    at :meth:`close` when it was long. With no display (``trainer=None``, no progress bar) it only keeps counts.

    A context manager; :meth:`update` is a :data:`Reporter`. No call raises.
    """

    def __init__(self, trainer: Any, desc: str, total: int | None = None, *, estimate: float | None = None) -> None:
        self.desc, self.total, self.done, self.note = desc, total, 0, ""
        self.start = time.perf_counter()
        self.display: _Display | None = display_for(trainer)
        self.shown = False
        self.seconds: float | None = None  # set at close
        self.estimate = estimate
        if estimate is not None and estimate > LONG_SECONDS:
            self._show()

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _guard(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as err:  # a broken display is dropped; the work goes on
            _log.debug("trainviz: progress display failed: %r", err)
            self.display = None

    def _show(self) -> None:
        if self.display is not None and not self.shown:
            self.shown = True
            display = self.display
            about = f" (about {self.estimate:.1f} s)" if self.estimate is not None else ""
            self._guard(lambda: display.open(self.desc + about, self.total))
            self._guard(lambda: display.refresh(self.done, self.total, self.note))

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        """``done`` of ``total`` parts (``None``: unchanged), ``note``: what runs now."""
        self.done, self.note = int(done), str(note)
        if total is not None:
            self.total = int(total)
        if self.display is None:
            return
        if not self.shown and time.perf_counter() - self.start > LONG_SECONDS:
            self._show()
        elif self.shown:
            display = self.display
            self._guard(lambda: display.refresh(self.done, self.total, self.note))

    def line(self) -> str:
        """The summary line of the finished work."""
        counts = f"{self.done}/{self.total}" if self.total else ""
        detail = " ".join(part for part in (counts, self.note) if part)
        return f"{self.desc} took {self.seconds:.1f} s" + (f" ({detail})" if detail else "")

    def close(self) -> None:
        """End the live part; write the summary line when the work was long."""
        if self.seconds is not None:
            return
        self.seconds = time.perf_counter() - self.start
        display = self.display
        if display is None:
            return
        if self.shown:
            self._guard(display.close)
        if self.shown or self.seconds > LONG_SECONDS:
            self._guard(lambda: display.write(self.line()))


def task(trainer: Any, desc: str, total: int | None = None, estimate: float | None = None) -> Task:
    """A :class:`Task` on ``trainer``'s progress display (nothing shows without one, or on ranks other than 0)."""
    try:
        return Task(trainer, desc, total, estimate=estimate)
    except Exception:
        return Task(None, desc)
