"""The overhead budget: what share of training wall time trainviz's probes may take, and who decides what runs.

One :class:`Scheduler` serves every trainviz callback of a Trainer (:meth:`Scheduler.for_trainer`: the callbacks of the
Trainer hold it, there is no process-wide registry). It measures
the training time (wall time since fit start, less the time the training thread spent in probes) and keeps one
ledger per callback: its budget fraction and the seconds it has spent, in the training thread and in the
background (UMAP and t-SNE). A callback's credit is ``fraction * training_seconds - spent``; at each epoch end
the callback asks for a plan that fits its credit (:meth:`ProbeCallback._plan
<trainviz.callbacks.base.ProbeCallback._plan>`): the robustness suite picks which corruptions run, the
embedding callback whether UMAP and t-SNE run, the others run whole or wait. The first and the last epoch
always produce a result (scaled down to what is essential if the credit is short), so every evolution has
both ends; the overshoot this allows is the cost of those essential parts. Each callback's side of it (its
ledger, the plan of each run, what it books and logs) is one :class:`BudgetRunner`.

Example:
    >>> from trainviz.core.budget import Scheduler
    >>> s = Scheduler()
    >>> s.register("cam", 0.1)
    >>> s.start(now=0.0)
    >>> s.charge("cam", 1.0, foreground=True)
    >>> round(s.credit("cam", now=31.0), 6)  # 30 s of training (31 s wall less 1 s of probe) at 10%, less 1 s spent
    2.0
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from trainviz.core.threads import contention

__all__ = ["BudgetRunner", "Ledger", "Scheduler", "check_budget"]


def check_budget(value: Any, name: str = "budget") -> float | None:
    """``None`` or a fraction in (0, 1]; anything else is a ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(
            f"Expected `{name}` to be None (run everything at its cadence) or the largest fraction of training "
            f"time the probes may take, in (0, 1] (e.g. 0.1), got {value!r}."
        )
    return float(value)


@dataclass
class Ledger:
    """One callback's account: its fraction, what it spent, and its runs and skips."""

    fraction: float
    _: KW_ONLY
    foreground: float = 0.0
    background: float = 0.0  # worker threads (UMAP, t-SNE), weighted by contention
    writer: float = 0.0  # the sink's writer thread (PNG, npz, TensorBoard), weighted by contention
    runs: int = 0
    skips: list[dict[str, Any]] = field(default_factory=list)

    @property
    def spent(self) -> float:
        return self.foreground + self.background + self.writer


class Scheduler:
    """Training time, and each callback's budget ledger (thread-safe: background work charges from its thread)."""

    def __init__(self) -> None:
        self.ledgers: dict[str, Ledger] = {}
        self.started: float | None = None
        self.stopped: float | None = None  # the fit's end: the clock stands still after it
        self.forgotten = False  # its fit tore down: the Trainer's next fit makes a new one
        self._lock = threading.Lock()

    @classmethod
    def of(cls, trainer: Any) -> Scheduler | None:
        """The scheduler of ``trainer``'s fit if one of its callbacks has a budget, else ``None``: the one its
        callbacks hold (``callback.scheduler``), no process-wide registry."""
        for callback in getattr(trainer, "callbacks", None) or []:
            scheduler = getattr(callback, "scheduler", None)
            if isinstance(scheduler, Scheduler) and not scheduler.forgotten:
                return scheduler
        return None

    @classmethod
    def forget(cls, trainer: Any) -> None:
        """``trainer``'s fit ended: its scheduler stays with its callbacks (to read), another ``fit`` starts a new
        clock and ledgers."""
        scheduler = cls.of(trainer)
        while scheduler is not None:
            scheduler.forgotten = True
            scheduler = cls.of(trainer)

    @classmethod
    def for_trainer(cls, trainer: Any) -> Scheduler:
        """The scheduler shared by every trainviz callback of ``trainer`` (made by the first to ask)."""
        return cls.of(trainer) or cls()

    def register(self, name: str, fraction: float) -> None:
        with self._lock:
            if name not in self.ledgers:
                self.ledgers[name] = Ledger(fraction)

    def start(self, now: float | None = None) -> None:
        """Start the training clock (fit start; the first call wins)."""
        if self.started is None:
            self.started = time.perf_counter() if now is None else now

    def stop(self, now: float | None = None) -> None:
        """Stop the training clock at the fit's end, after every fit-end probe (the first call wins): the fit-end
        line and the manifest then give the same estimate."""
        if self.stopped is None:
            self.stopped = time.perf_counter() if now is None else now

    def training_seconds(self, now: float | None = None) -> float:
        """Wall time since :meth:`start` (until :meth:`stop`), less the time the training thread spent in trainviz
        probes."""
        if self.started is None:
            return 0.0
        now = time.perf_counter() if now is None else now
        if self.stopped is not None:
            now = min(now, self.stopped)
        with self._lock:
            held = sum(ledger.foreground for ledger in self.ledgers.values())
        return max(0.0, now - self.started - held)

    def credit(self, name: str, now: float | None = None) -> float:
        """Seconds callback ``name`` may still spend: ``fraction * training_seconds - spent``."""
        train = self.training_seconds(now)
        with self._lock:
            ledger = self.ledgers[name]
            return ledger.fraction * train - ledger.spent

    def charge(self, name: str, seconds: float, *, foreground: bool, run: bool = False) -> None:
        """Book ``seconds`` of work of callback ``name`` (``foreground``: the training thread waited for it;
        ``run``: one probe run, counted)."""
        with self._lock:
            ledger = self.ledgers[name]
            ledger.runs += int(run)
            if foreground:
                ledger.foreground += seconds
            else:
                ledger.background += seconds

    def set_writer(self, name: str, seconds: float) -> None:
        """Set the (weighted) seconds the sink's writer thread has worked for callback ``name`` so far."""
        with self._lock:
            self.ledgers[name].writer = seconds

    def skip(self, name: str, epoch: int, what: str, reason: str) -> None:
        """Record that part of a run (``what``) of callback ``name`` did not fit at ``epoch``."""
        with self._lock:
            self.ledgers[name].skips.append({"epoch": epoch, "what": what, "reason": reason})

    def overhead(self, now: float | None = None) -> tuple[float | None, float]:
        """The run's own estimate of what trainviz cost this fit, and the budget: ``(spent / training seconds, sum
        of the callbacks' fractions)``. ``spent`` is the probes' time on the training thread plus the background
        and writer threads' time weighted by contention; the slowdown of training batches while trainviz works is
        not measured (yet), so the estimate is a lower bound. ``None`` before any training time."""
        train = self.training_seconds(now)
        with self._lock:
            spent = sum(ledger.spent for ledger in self.ledgers.values())
            budget = sum(ledger.fraction for ledger in self.ledgers.values())
        return (spent / train if train > 0 else None), budget

    def overhead_line(self) -> str:
        """The fit-end line: "trainviz took X% of this fit (budget Y%)", with what X counts."""
        share, budget = self.overhead()
        took = "an unmeasured share" if share is None else f"{100 * share:.1f}%"
        return (
            f"trainviz took {took} of this fit (budget {100 * budget:.1f}%): its probes' time on the training thread "
            "and its background threads' (weighted by contention), over the training time; the slowdown of training "
            "batches while it works is not counted, so this is a lower bound."
        )

    def summary(self) -> dict[str, Any]:
        """Plain values for the manifest: training seconds, the overhead estimate (:meth:`overhead`) and, per
        callback, fraction, spent seconds and skips."""
        train = self.training_seconds()
        share, budget = self.overhead()
        with self._lock:
            return {
                "training_seconds": round(train, 3),
                "overhead": {"estimate": None if share is None else round(share, 4), "budget": round(budget, 4)},
                "callbacks": {
                    name: {
                        "fraction": ledger.fraction,
                        "foreground_seconds": round(ledger.foreground, 3),
                        "background_seconds": round(ledger.background, 3),
                        "writer_seconds": round(ledger.writer, 3),
                        "share_of_training": round(ledger.spent / train, 4) if train > 0 else None,
                        "runs": ledger.runs,
                        "skipped": list(ledger.skips),
                    }
                    for name, ledger in self.ledgers.items()
                },
            }


class BudgetRunner:
    """One callback's side of the budget: its ledger in the Trainer's :class:`Scheduler`, the plan of each run, what
    it books, and the ``trainviz/budget/<name>/...`` scalars (``credit_seconds``, ``skipped``, ``share``) on
    ``sink``. Without a budget (``scheduler`` is ``None``) every run is whole and nothing is booked, but
    :attr:`last_cost` (the last whole run's seconds) is still kept: progress estimates use it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.scheduler: Scheduler | None = None
        self.sink: Any = None  # the "budget" sink (rank zero, with a budget)
        self.last_cost: float | None = None

    def start(self, trainer: Any, fraction: float | None) -> None:
        """At fit start: join the Trainer's scheduler with ``fraction`` (``None``: no budget) and start its clock."""
        if fraction is not None:
            self.scheduler = Scheduler.for_trainer(trainer)
            self.scheduler.register(self.name, fraction)
            self.scheduler.start()

    def plan(
        self, planner: Callable[[float | None, bool, int], Any], essential: bool, epoch: int, writer_seconds: float
    ) -> Any:
        """What the run of ``epoch`` contains: ``planner(credit, essential, epoch)`` (``None``: skip it), with the
        credit ``None`` without a budget (everything due runs), given the writer thread's ``writer_seconds``."""
        if self.scheduler is None:
            return planner(None, essential, epoch)
        self.scheduler.set_writer(self.name, writer_seconds * contention())
        credit = self.scheduler.credit(self.name)
        plan = planner(credit, essential, epoch)
        if self.sink is not None:
            self.sink.scalar(f"{self.name}/credit_seconds", credit, epoch)
            self.sink.scalar(f"{self.name}/skipped", float(plan is None), epoch)
        return plan

    def ran(self, seconds: float, whole: bool, epoch: int) -> None:
        """A run of ``epoch`` took ``seconds`` (``whole``: everything ran, so it is the cost estimate of the next)."""
        if whole:
            self.last_cost = seconds
        if self.scheduler is not None:
            self.scheduler.charge(self.name, seconds, foreground=True, run=True)
            if self.sink is not None:
                train = self.scheduler.training_seconds()
                spent = self.scheduler.ledgers[self.name].spent
                self.sink.scalar(f"{self.name}/share", spent / train if train > 0 else 0.0, epoch)

    def charge(self, seconds: float, foreground: bool = True) -> None:
        """Book ``seconds`` of work outside a run: fit-end work (``foreground``), or background work, weighted by
        what it costs training (:func:`trainviz.core.threads.contention`)."""
        if self.scheduler is not None:
            self.scheduler.charge(self.name, seconds if foreground else seconds * contention(), foreground=foreground)

    def skip(self, epoch: int, what: str, reason: str) -> None:
        if self.scheduler is not None:
            self.scheduler.skip(self.name, epoch, what, reason)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
