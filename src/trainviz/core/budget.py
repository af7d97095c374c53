"""The overhead budget: what share of training wall time trainviz's probes may take, and who decides what runs.

One :class:`Scheduler` serves every trainviz callback of a Trainer (:meth:`Scheduler.for_trainer`: the callbacks of the
Trainer hold it, there is no process-wide registry). It keeps one ledger per callback: its budget fraction and what
it cost the fit, measured in the run:

- the seconds the training thread spent in its probes (runs and fit-end work);
- the slowdown of the training batches that ran beside its background work (the sinks' writer thread, the
  embedding worker: :data:`trainviz.core.threads.ACTIVITY`): each such batch's time less the median time of this
  run's batches that ran beside no trainviz work, shared among the callbacks in proportion to their seconds of work
  in the batch (:meth:`Scheduler.batch`). This is the background threads' real effect, not a fixed weight;
- or, when more, the seconds that background work displaced: its CPU seconds times the share of the machine's cores
  the fit keeps busy (:meth:`Scheduler.cpu_load`). Work beside a probe run or validation slows no training batch,
  but where training saturates the cores its CPU seconds are still seconds the fit's threads could not run.

The training time is the fit's wall time less those extra seconds: an estimate of the bare fit. A callback's credit
is ``(1 - margin) * fraction * training_seconds - spent``, where a fit's margin (:data:`MARGIN`, 5%) is left for
what runs beyond the plans (the writer's last pictures, fit-end work, runs dearer than priced); at each epoch end
the callback asks for a plan that fits its credit
(:meth:`ProbeCallback._plan <trainviz.callbacks.base.ProbeCallback._plan>`): the robustness suite picks which
corruptions run, the embedding callback whether UMAP and t-SNE run, the others run whole or wait. The first and the
last epoch always produce a result (scaled down to what is essential if the credit is short), so every evolution has
both ends. A first run dearer than its credit leaves a debt that later plans repay; for the last, each callback
holds back, before the last epoch, the credit its essential run would lack (:meth:`Scheduler.hold`), so it is paid
from credit saved. Each callback's side of it (its ledger, the plan of each run, what it books and logs) is one
:class:`BudgetRunner`. At the fit's end, with several processes, the slowest rank's estimate counts
(:meth:`Scheduler.stop`).

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

import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import torch

from trainviz.core.threads import ACTIVITY

__all__ = ["MARGIN", "BudgetRunner", "Ledger", "Scheduler", "check_budget"]


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
    """One callback's account: its fraction, what it cost, and its runs and skips."""

    fraction: float
    _: KW_ONLY
    foreground: float = 0.0  # the training thread in its probes
    background: float = 0.0  # its worker threads' CPU seconds (UMAP, t-SNE)
    writer: float = 0.0  # the sink's writer thread's CPU seconds (PNG, npz, TensorBoard)
    slowdown: float = 0.0  # measured: the training batches' extra seconds beside its background work
    load: float = 1.0  # the share of the machine's cores the fit kept busy, when its background seconds were booked
    runs: int = 0
    run_seconds: float = 0.0  # the part of `foreground` spent in its runs (not set-up or fit-end work)
    pooled: bool = False  # its fraction is part of a pool shared by fitting (default_callbacks' budget)
    interval: int = 1  # the epochs between the runs it aims for (cadence times its budget interval)
    floor: float | None = None  # an elastic callback's seconds per run at its least (its plan takes any credit)
    fitted: float | None = None  # its fraction of the pool as last fitted (None: `fraction`)
    loan: float = 0.0  # seconds of credit lent to it (positive) or by it (negative) within its pool: `Scheduler.lend`
    least: float | None = None  # a fixed-cost callback's seconds for its least run, as it last said (`lend`)
    whole: float | None = None  # ... and for a run with all it has due at its cadence (None: its mean run, `need`)
    reserve: float = 0.0  # seconds of its credit held back for its essential last run (`Scheduler.hold`)
    skips: list[dict[str, Any]] = field(default_factory=list)

    @property
    def displaced(self) -> float:
        """Seconds its background threads took from the fit: their CPU seconds times the share of the cores the
        fit keeps busy (on a machine the fit saturates, each CPU second of background work is a second the fit's
        threads could not run; on one with idle cores, little)."""
        return (self.background + self.writer) * self.load

    @property
    def spent(self) -> float:
        """Its probes' seconds on the training thread plus what its background work cost the fit: the measured
        slowdown of the training batches beside it, or the seconds it displaced (:attr:`displaced`) when more
        (work that ran beside probes or validation slows no training batch, but its CPU seconds still count)."""
        return self.foreground + max(0.0, self.slowdown, self.displaced)

    @property
    def share(self) -> float:
        """The fraction its credit is reckoned from: the fitted one in a pool, else its own."""
        return self.fraction if self.fitted is None else self.fitted

    @property
    def need(self) -> float | None:
        """Seconds per run it needs: an elastic callback's floor, else its runs' mean cost (their seconds on the
        training thread plus what its background work cost, as in :attr:`spent`); ``None`` before a run."""
        if self.floor is not None:
            return self.floor
        return (self.run_seconds + max(0.0, self.slowdown, self.displaced)) / self.runs if self.runs else None


CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
"""The cores this process may use (:meth:`Scheduler.cpu_load`)."""

BASELINE_BATCHES = 3
"""Batches beside no trainviz work needed before a busy batch's slowdown is measured (earlier ones wait)."""

MARGIN = 0.05
"""The part of each callback's allowance that a fit's plans leave unplanned (:meth:`Scheduler.for_trainer`): what
a run spends beyond its plan comes out of it, so that the fit's total stays within the budget. That is the work
after the last plan (the fit-end summaries, the writer thread's work beyond what was held for the last run), the
essential parts of the first run when its credit is short, and a run that costs more than its parts were priced.
Round 4 of ``benchmarks/budget_overhead.py`` planned to the whole budget: the runs' own estimate went over it by up
to 6% of it (0.106 at 0.1), and its median was 2% under it (0.098)."""

SLACK = 1.25
"""A pool's callbacks of fixed cost get up to this times what their cadence needs when the pool allows (a run that
costs more than the mean does not then cost the next), before the elastic ones share the rest."""


def fit_pool(
    total: float, needs: dict[str, float], elastic: set[str], least: dict[str, float] | None = None
) -> dict[str, float]:
    """Divide a pool's fraction ``total`` among callbacks by what they need (``needs``: fractions of training time
    each needs to run at its cadence; for the ``elastic`` ones, whose plan takes whatever credit it has
    (robustness), their floor: the least run), meeting the needs in turn, each with up to :data:`SLACK` times it
    while the pool allows (a run that costs more than its mean, or a dear first run, does not then cost the next):

    1. the fixed-cost callbacks' least runs (``least``: the fraction of each one's least run, e.g. CAM's maps
       without the faithfulness scores; its need when not given) and the elastic floors, alike;
    2. the rest of the fixed needs (the parts their plans leave out first, e.g. CAM's faithfulness scores), in
       proportion to them;
    3. what is left to the elastic callbacks, in proportion to their floors (without any, to the fixed-cost ones,
       in proportion to their needs).

    When not even the least runs and the floors fit, every callback gets the same part of them.

    Example:
        >>> def fitted(*args):
        ...     return {name: round(fraction, 6) for name, fraction in fit_pool(*args).items()}
        >>> fitted(0.1, {"cam": 0.03, "dynamics": 0.01, "robustness": 0.02}, {"robustness"})  # 1.25x, the rest
        {'cam': 0.0375, 'dynamics': 0.0125, 'robustness': 0.05}
        >>> fitted(0.1, {"cam": 0.05, "robustness": 0.03}, {"robustness"})  # 0.08 fits, 1.25x of it does not
        {'cam': 0.0625, 'robustness': 0.0375}
        >>> fitted(0.1, {"cam": 0.1, "robustness": 0.1}, {"robustness"})  # twice the pool: half of each need
        {'cam': 0.05, 'robustness': 0.05}
        >>> # 1.25x CAM's maps (0.0125) and the floor (0.075), then 0.0125 of the 0.05 its faithfulness scores need
        >>> fitted(0.1, {"cam": 0.06, "robustness": 0.06}, {"robustness"}, {"cam": 0.01})
        {'cam': 0.025, 'robustness': 0.075}
    """
    least = least or {}
    low = {
        name: need if name in elastic else min(need, max(0.0, least.get(name, need))) for name, need in needs.items()
    }
    first = sum(low.values())
    if first <= 0:
        return {name: total / len(needs) for name in needs}
    if first >= total:
        return {name: total * need / first for name, need in low.items()}
    fitted = {name: min(SLACK, total / first) * need for name, need in low.items()}
    extras = {name: needs[name] - low[name] for name in needs if name not in elastic}
    left, lacking = total - sum(fitted.values()), sum(extras.values())
    if lacking > 0:
        scale = min(SLACK, left / lacking)
        for name, extra in extras.items():
            fitted[name] += scale * extra
        left -= scale * lacking
    takers = {name: needs[name] for name in (elastic & set(needs)) or needs}
    weight = sum(takers.values())
    for name, need in takers.items():
        fitted[name] += left * (need / weight if weight > 0 else 1 / len(takers))
    return fitted


class Scheduler:
    """Training time, and each callback's budget ledger (thread-safe: background work charges from its thread)."""

    def __init__(self, margin: float = 0.0) -> None:
        self.margin = margin  # the part of each allowance its plans leave unplanned (a fit's: MARGIN)
        self.ledgers: dict[str, Ledger] = {}
        self.started: float | None = None
        self.stopped: float | None = None  # the fit's end: the clock stands still after it
        self.forgotten = False  # its fit tore down: the Trainer's next fit makes a new one
        self.timer: str | None = None  # the callback whose batch hooks time the training batches (the first)
        self.quiet: deque[float] = deque(maxlen=512)  # seconds of recent batches beside no trainviz work
        self.busy_batches = 0
        self.other_slowdown = 0.0  # slowdown beside the work of trainviz threads without a ledger (the manifest)
        self._unsettled: list[tuple[float, dict[str, float]]] = []  # busy batches before a baseline
        self._batch_start: float | None = None
        self.processes = 1
        self.slowest: float | None = None  # with several processes: the largest rank's estimate, agreed at stop
        self._clock: tuple[float, float] | None = None  # wall and process CPU seconds at start (`cpu_load`)
        self._load: float | None = None  # the fit's load, kept at stop
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
        """The scheduler shared by every trainviz callback of ``trainer`` (made by the first to ask), whose plans
        keep :data:`MARGIN` of each allowance for what a fit spends beyond them."""
        return cls.of(trainer) or cls(margin=MARGIN)

    def register(self, name: str, fraction: float, *, pooled: bool = False, interval: int = 1) -> None:
        """A callback's ledger with its ``fraction`` of training time (``pooled``: part of a pool divided by what
        its callbacks need, :meth:`fit`; ``interval``: the epochs between the runs it aims for)."""
        with self._lock:
            if name not in self.ledgers:
                self.ledgers[name] = Ledger(fraction, pooled=pooled, interval=max(1, int(interval)))
            self.timer = self.timer or name

    # the training batches ---------------------------------------------------------------------------
    def batch(self, start: float, end: float) -> None:
        """A training batch ran from ``start`` to ``end``: beside no trainviz work it joins the baseline, beside
        some its time less the baseline (the median of the quiet batches) is the slowdown, shared among the owners of
        the work in proportion to their seconds in it."""
        overlap = ACTIVITY.overlap(start, end)
        with self._lock:
            if not overlap:
                self.quiet.append(end - start)
                if self._unsettled and len(self.quiet) >= BASELINE_BATCHES:
                    self._settle()
                return
            self.busy_batches += 1
            self._unsettled.append((end - start, overlap))
            if len(self.quiet) >= BASELINE_BATCHES:
                self._settle()

    def baseline(self) -> float | None:
        """The median seconds of this run's batches beside no trainviz work (``None`` before there are any)."""
        with self._lock:
            return statistics.median(self.quiet) if self.quiet else None

    def _settle(self) -> None:
        """Book the busy batches waiting for a baseline (lock held)."""
        base = statistics.median(self.quiet) if self.quiet else None
        if base is None:
            return
        for seconds, overlap in self._unsettled:
            extra, total = seconds - base, sum(overlap.values())
            for owner, busy in overlap.items():
                share = extra * busy / total
                if owner in self.ledgers:
                    self.ledgers[owner].slowdown += share
                else:
                    self.other_slowdown += share
        self._unsettled = []

    def _slowdown(self) -> float:
        """The measured slowdown of every owner (lock held)."""
        return max(0.0, sum(ledger.slowdown for ledger in self.ledgers.values()) + self.other_slowdown)

    def start(self, now: float | None = None) -> None:
        """Start the training clock (fit start; the first call wins)."""
        if self.started is None:
            self.started = time.perf_counter() if now is None else now
            self._clock = (time.perf_counter(), time.process_time())

    def cpu_load(self) -> float:
        """The share of the machine's cores this process has kept busy since :meth:`start`: its CPU seconds (every
        thread's) over the wall seconds times the cores it may use, in [0, 1]; 1 in the first second. About 1 where
        training saturates the cores (a CPU fit on 2 cores), about 1/16 where one thread drives a GPU beside 15 idle
        cores: what a background CPU second takes from the fit (:attr:`Ledger.displaced`)."""
        if self._load is not None:
            return self._load
        if self._clock is None or time.perf_counter() - self._clock[0] < 1.0:
            return 1.0
        wall, cpu = time.perf_counter() - self._clock[0], time.process_time() - self._clock[1]
        return min(1.0, max(0.0, cpu / (wall * CORES)))

    def stop(self, now: float | None = None, group: Any = None) -> None:
        """Stop the training clock at the fit's end, after every fit-end probe (the first call wins): the fit-end
        line and the manifest then give the same estimate. With ``group`` (a
        :class:`~trainviz.core.distributed.Collective` of several processes; every rank's first call passes it) the
        ranks agree on the slowest rank's estimate, which the fit's time is."""
        if self.stopped is not None:
            return
        self.stopped = time.perf_counter() if now is None else now
        self._load = self.cpu_load()
        with self._lock:
            self._settle()
        if group is not None and group.world > 1:
            share, _ = self.overhead()
            self.processes, self.slowest = group.world, group.largest(-1.0 if share is None else share)

    def training_seconds(self, now: float | None = None) -> float:
        """Wall time since :meth:`start` (until :meth:`stop`), less what trainviz added to it: the training thread's
        time in its probes and the measured slowdown of training batches (the bare fit's estimate)."""
        if self.started is None:
            return 0.0
        now = time.perf_counter() if now is None else now
        if self.stopped is not None:
            now = min(now, self.stopped)
        with self._lock:
            held = sum(ledger.foreground for ledger in self.ledgers.values()) + self._slowdown()
        return max(0.0, now - self.started - held)

    def credit(self, name: str, now: float | None = None) -> float:
        """Seconds callback ``name`` may still plan for: its allowance, ``(1 - margin) * fraction *
        training_seconds``, less what it spent (in a pool, its fitted fraction, :meth:`fit`, and the loans it took
        or gave, :meth:`lend`). The ``margin`` (a fit's: :data:`MARGIN`) is what it may spend beyond its plans.

        Example:
            >>> s = Scheduler(margin=0.05)
            >>> s.register("cam", 0.1)
            >>> s.start(now=0.0)
            >>> round(s.credit("cam", now=20.0), 6)  # 0.95 of 10% of 20 s
            1.9
        """
        train = self.training_seconds(now)
        with self._lock:
            ledger = self.ledgers[name]
            return self._allowance(ledger, train) - ledger.spent + ledger.loan - ledger.reserve

    def _allowance(self, ledger: Ledger, train: float) -> float:
        """What a ledger's plans may spend in ``train`` seconds of training (:meth:`credit`)."""
        return (1.0 - self.margin) * ledger.share * train

    def lend(self, name: str, seconds: float, now: float | None = None) -> float:
        """Callback ``name`` (in a pool) wants ``seconds`` for its least run (an elastic one: its floor): when its
        credit is short, the other fixed-cost callbacks of its pool lend it what they can spare (their credit beyond
        their own least run, as they last said, else their :attr:`Ledger.need`, and beyond what they hold), so a
        transient debt (the set-up, a dear first run, a run that cost more than the mean) does not skip a run that
        the pool as a whole can pay for. The pool's credit and the budget do not change: a loan moves credit
        between ledgers. The elastic callbacks lend nothing; one short of its floor borrows only what it holds for
        its last run (:meth:`hold`) and has not borrowed yet, so that holding does not cost it a run the pool's
        spare can pay for (otherwise its credit builds up for its next run). Returns the credit after the loans."""
        credit, train = self.credit(name, now), self.training_seconds(now)
        with self._lock:
            ledger = self.ledgers[name]
            elastic = ledger.floor is not None
            short = seconds - credit
            if elastic:
                short = min(short, ledger.reserve - ledger.loan)
            else:
                ledger.least = seconds
            if not ledger.pooled or short <= 0:
                return credit
            given = 0.0
            for other, lender in self.ledgers.items():
                if other == name or not lender.pooled or lender.floor is not None or given >= short:
                    continue
                keep = lender.least if lender.least is not None else lender.need
                spare = self._allowance(lender, train) - lender.spent + lender.loan - lender.reserve - (keep or 0.0)
                loan = min(short - given, max(0.0, spare))
                lender.loan -= loan
                ledger.loan += loan
                given += loan
            return credit + given

    def hold(
        self, name: str, ahead: int | None, epochs: int, least: float | None = None, now: float | None = None
    ) -> float:
        """Hold back, from callback ``name``'s credit, what its essential last run would lack, ``ahead`` epochs
        before the fit's last (``None``: not known, e.g. no ``max_epochs``; 0: this is the last, and what was held
        is spent now). The last run takes its least run (``least``, else what it last said, :attr:`Ledger.least`;
        an elastic callback's floor; else its mean run, :attr:`Ledger.need`) plus its background work's part of a
        run (the writer's last pictures come after the last plan); the credit that reaches it is what the training
        up to it brings: ``min(interval, ahead)`` mean epochs (of the ``epochs`` so far) at its allowance. The
        rest is held, so the runs before the last spend only beyond it and the last run's essential parts are paid
        from credit saved, not a reason to exceed the budget. Returns the seconds held.

        Example:
            >>> s = Scheduler()
            >>> s.register("cam", 0.01)
            >>> s.start(now=0.0)
            >>> s.charge("cam", 0.3, foreground=True, run=True)  # its first run: 0.3 s
            >>> round(s.hold("cam", ahead=4, epochs=1, now=10.3), 6)  # 0.3 s, and an epoch of 10 s brings 0.1 s
            0.2
            >>> round(s.credit("cam", now=10.3), 6)  # 0.1 s earned, 0.3 s spent, 0.2 s held
            -0.4
            >>> s.hold("cam", ahead=0, epochs=5, now=50.3)  # the last epoch: nothing held
            0.0
        """
        train = self.training_seconds(now)
        with self._lock:
            ledger = self.ledgers[name]
            ledger.reserve = 0.0
            if ahead is None or ahead <= 0 or epochs < 1 or train <= 0:
                return 0.0
            background = max(0.0, ledger.slowdown, ledger.displaced) / ledger.runs if ledger.runs else 0.0
            least = least if least is not None else ledger.least
            if ledger.floor is not None:
                last = ledger.floor + background
            elif least is not None:
                last = least + background
            else:
                last = ledger.need or 0.0  # its mean run, its background work's part included
            brings = self._allowance(ledger, train / epochs * min(ledger.interval, ahead))
            ledger.reserve = max(0.0, last - brings)
            return ledger.reserve

    def fit(self, epochs: int, now: float | None = None) -> None:
        """Divide the pool (the ``pooled`` ledgers' fractions, summed) by what each callback needs to run at its
        interval, after ``epochs`` epochs of training: its seconds per run (:attr:`Ledger.need`) over its interval
        times the mean epoch's training seconds, as a fraction (:func:`fit_pool`; a fixed-cost callback's run with
        all it has due, :attr:`Ledger.whole`, when it said, e.g. CAM's maps and its amortised faithfulness scores,
        measured or estimated, even while a short credit leaves them out), and, for the fixed-cost ones, its least
        run (:attr:`Ledger.least`; each with its background work's part of a run), met first when the pool is
        short. Before every pooled callback has a cost, the fractions stay as given. The pool's sum is kept, so the
        fit's budget is the same, and so is the credit left to the pool as a whole: a callback's credit is reckoned
        from its fitted fraction over the whole fit so far, less what it spent."""
        train = self.training_seconds(now)
        with self._lock:
            pool = {name: ledger for name, ledger in self.ledgers.items() if ledger.pooled}
            needs = {name: need for name, ledger in pool.items() if (need := ledger.need) is not None}
            if len(pool) < 2 or len(needs) < len(pool) or epochs < 1 or train <= 0:
                return
            epoch = train / epochs
            elastic = {name for name, ledger in pool.items() if ledger.floor is not None}
            least = {}
            for name, ledger in pool.items():
                if name in elastic or not ledger.runs:
                    continue
                background = (needs[name] * ledger.runs - ledger.run_seconds) / ledger.runs  # its part of a run
                if ledger.whole is not None:
                    needs[name] = ledger.whole + background
                if ledger.least is not None:
                    least[name] = ledger.least + background
            fitted = fit_pool(
                sum(ledger.fraction for ledger in pool.values()),
                {name: need / (pool[name].interval * epoch) for name, need in needs.items()},
                elastic,
                {name: seconds / (pool[name].interval * epoch) for name, seconds in least.items()},
            )
            for name, fraction in fitted.items():
                pool[name].fitted = fraction

    def set_whole(self, name: str, seconds: float | None) -> None:
        """Callback ``name`` (of fixed cost) needs ``seconds`` for a run with all it has due at its cadence
        (``None``: its mean run, :attr:`Ledger.need`), which :meth:`fit` divides the pool by."""
        with self._lock:
            self.ledgers[name].whole = seconds

    def set_floor(self, name: str, seconds: float | None) -> None:
        """Callback ``name`` is elastic (its plan takes whatever credit it has) and needs ``seconds`` per run at
        its least (``None``: not elastic)."""
        with self._lock:
            self.ledgers[name].floor = seconds

    def charge(
        self, name: str, seconds: float, *, foreground: bool, run: bool = False, least: float | None = None
    ) -> None:
        """Book ``seconds`` of work of callback ``name`` (``foreground``: the training thread waited for it, else
        CPU seconds of a background thread; ``run``: one probe run, counted; ``least``: the seconds its least run now
        takes, :meth:`lend`)."""
        with self._lock:
            ledger = self.ledgers[name]
            ledger.least = ledger.least if least is None else least
            ledger.runs += int(run)
            ledger.run_seconds += seconds if run and foreground else 0.0
            if foreground:
                ledger.foreground += seconds
            else:
                ledger.background += seconds
                ledger.load = self.cpu_load()

    def set_writer(self, name: str, seconds: float) -> None:
        """Set the CPU seconds the sink's writer thread has worked for callback ``name`` so far (what they cost the
        fit: the slowdown of the training batches beside them, :meth:`batch`, or what they displaced,
        :attr:`Ledger.displaced`)."""
        load = self.cpu_load()
        with self._lock:
            self.ledgers[name].writer = seconds
            self.ledgers[name].load = load

    def skip(self, name: str, epoch: int, what: str, reason: str) -> None:
        """Record that part of a run (``what``) of callback ``name`` did not fit at ``epoch``."""
        with self._lock:
            self.ledgers[name].skips.append({"epoch": epoch, "what": what, "reason": reason})

    def overhead(self, now: float | None = None) -> tuple[float | None, float]:
        """The run's own estimate of what trainviz cost this fit against a bare fit, and the budget: ``(extra /
        (fit seconds - extra), sum of the callbacks' fractions)``. ``extra`` is the probes' time on the training
        thread plus what trainviz's background work cost: the measured slowdown of training batches beside it
        (:meth:`batch`) or, when more, the seconds it displaced (:attr:`Ledger.displaced`). The fit's seconds less
        ``extra`` is :meth:`training_seconds` (which holds out what was measured on the wall clock: the probes' time
        and the slowdown). With several processes, after :meth:`stop`, the slowest rank's. ``None`` before any
        training time."""
        train = self.training_seconds(now)
        with self._lock:
            extra = sum(ledger.spent for ledger in self.ledgers.values()) + max(0.0, self.other_slowdown)
            budget = sum(ledger.fraction for ledger in self.ledgers.values())
        if self.slowest is not None:
            return (self.slowest if self.slowest >= 0 else None), budget
        return (extra / train if train > 0 else None), budget

    def overhead_line(self) -> str:
        """The fit-end line: "trainviz took X% of this fit (budget Y%)", with what X counts."""
        share, budget = self.overhead()
        took = "an unmeasured share" if share is None else f"{100 * share:.1f}%"
        slowest = f"; the slowest of {self.processes} processes" if self.processes > 1 else ""
        return (
            f"trainviz took {took} of this fit (budget {100 * budget:.1f}%): its probes' time on the training thread "
            "plus the measured slowdown of the training batches that ran beside its background work (against this "
            "run's batches beside none) or, when more, that work's CPU seconds times the share of the cores the fit "
            f"keeps busy, over the fit's time less those seconds{slowest}."
        )

    def summary(self) -> dict[str, Any]:
        """Plain values for the manifest: training seconds, the overhead estimate (:meth:`overhead`) with how the
        slowdown was measured and, per callback, fraction, seconds and skips."""
        train = self.training_seconds()
        share, budget = self.overhead()
        base = self.baseline()
        with self._lock:
            return {
                "training_seconds": round(train, 3),
                "overhead": {
                    "estimate": None if share is None else round(share, 4),
                    "budget": round(budget, 4),
                    "margin": self.margin,  # the part of each allowance the plans left unplanned
                    "slowdown_seconds": round(self._slowdown(), 3),
                    "batches": {
                        "quiet": len(self.quiet),
                        "busy": self.busy_batches,
                        "baseline_seconds": None if base is None else round(base, 5),
                    },
                    "processes": self.processes,
                    "cpu_load": round(self.cpu_load(), 3),
                },
                "callbacks": {
                    name: {
                        "fraction": round(ledger.share, 8),
                        "fraction_given": ledger.fraction,
                        "pooled": ledger.pooled,
                        "need_seconds": None if ledger.need is None else round(ledger.need, 3),
                        "loan_seconds": round(ledger.loan, 3),
                        "foreground_seconds": round(ledger.foreground, 3),
                        "background_seconds": round(ledger.background, 3),
                        "writer_seconds": round(ledger.writer, 3),
                        "slowdown_seconds": round(ledger.slowdown, 3),
                        "displaced_seconds": round(ledger.displaced, 3),
                        "share_of_training": round(ledger.spent / train, 4) if train > 0 else None,
                        "runs": ledger.runs,
                        "skipped": list(ledger.skips),
                    }
                    for name, ledger in self.ledgers.items()
                },
            }


def synchronize(device: Any) -> None:
    """Wait for ``device``'s queued work (a CUDA device; anything else has none), so that a time read next is the
    work's."""
    if isinstance(device, torch.device) and device.type == "cuda":
        torch.cuda.synchronize(device)


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

    def start(self, trainer: Any, fraction: float | None, pooled: bool = False, interval: int = 1) -> None:
        """At fit start: join the Trainer's scheduler with ``fraction`` (``None``: no budget; ``pooled`` and
        ``interval``: :meth:`Scheduler.register`) and start its clock."""
        if fraction is not None:
            self.scheduler = Scheduler.for_trainer(trainer)
            self.scheduler.register(self.name, fraction, pooled=pooled, interval=interval)
            self.scheduler.start()

    def plan(
        self,
        planner: Callable[[float | None, bool, int], Any],
        essential: bool,
        epoch: int,
        writer_seconds: float,
        floor: float | None = None,
        least: float | None = None,
        whole: float | None = None,
        ahead: int | None = None,
    ) -> Any:
        """What the run of ``epoch`` contains: ``planner(credit, essential, epoch)`` (``None``: skip it), with the
        credit ``None`` without a budget (everything due runs), given the writer thread's ``writer_seconds`` and,
        for an elastic callback, the ``floor`` seconds of its least run. In a pool, the fractions are fitted to
        what each callback needs first (:meth:`Scheduler.fit`), and a callback of fixed cost short of the ``least``
        seconds its next run takes (what is essential to it, e.g. CAM's maps without the faithfulness scores) may
        borrow them from the others' spare credit, and an elastic one short of its ``floor`` what it holds for its
        last run (:meth:`Scheduler.lend`); ``whole``: what a run with all it has due takes, which the pool is fitted
        to (:meth:`Scheduler.set_whole`); ``ahead``: the epochs before the fit's last (``None``: not known), for
        which the credit its last run would lack is held back (:meth:`Scheduler.hold`)."""
        if self.scheduler is None:
            return planner(None, essential, epoch)
        self.set_writer(writer_seconds)
        self.scheduler.set_floor(self.name, floor)
        self.scheduler.set_whole(self.name, whole)
        self.scheduler.fit(epoch + 1)
        held = self.scheduler.hold(self.name, ahead, epoch + 1, least)
        credit = self.scheduler.credit(self.name)
        if least is not None or floor is not None:  # short of its least run: its pool may lend it the difference
            credit = self.scheduler.lend(self.name, least if floor is None else floor)
        plan = planner(credit, essential, epoch)
        if self.sink is not None:
            self.sink.scalar(f"{self.name}/credit_seconds", credit, epoch)
            self.sink.scalar(f"{self.name}/fraction", self.scheduler.ledgers[self.name].share, epoch)
            self.sink.scalar(f"{self.name}/skipped", float(plan is None), epoch)
            self.sink.scalar(f"{self.name}/held_seconds", held, epoch)
        return plan

    def ran(self, seconds: float, whole: bool, epoch: int, least: float | None = None) -> None:
        """A run of ``epoch`` took ``seconds`` (``whole``: everything ran, so it is the cost estimate of the next;
        ``least``: what its least run now takes, which its pool's loans leave it, :meth:`Scheduler.lend`)."""
        if whole:
            self.last_cost = seconds
        if self.scheduler is not None:
            self.scheduler.charge(self.name, seconds, foreground=True, run=True, least=least)
            if self.sink is not None:
                train = self.scheduler.training_seconds()
                spent = self.scheduler.ledgers[self.name].spent
                self.sink.scalar(f"{self.name}/share", spent / train if train > 0 else 0.0, epoch)

    def charge(self, seconds: float, foreground: bool = True) -> None:
        """Book ``seconds`` of work outside a run: fit-end work (``foreground``), or background work (its seconds;
        what it cost training is measured on the batches beside it, :meth:`Scheduler.batch`)."""
        if self.scheduler is not None:
            self.scheduler.charge(self.name, seconds, foreground=foreground)

    def set_writer(self, seconds: float) -> None:
        """The writer thread's CPU seconds for this callback so far (:meth:`Scheduler.set_writer`)."""
        if self.scheduler is not None:
            self.scheduler.set_writer(self.name, seconds)

    def batch_start(self, device: Any) -> None:
        """A training batch starts (the scheduler's timing callback only; the device synchronised first)."""
        if self.scheduler is not None and self.scheduler.timer == self.name:
            synchronize(device)
            self.scheduler._batch_start = time.perf_counter()

    def batch_end(self, device: Any) -> None:
        """The training batch ends: its time goes to the scheduler (:meth:`Scheduler.batch`)."""
        scheduler = self.scheduler
        if scheduler is not None and scheduler.timer == self.name and scheduler._batch_start is not None:
            synchronize(device)
            scheduler.batch(scheduler._batch_start, time.perf_counter())
            scheduler._batch_start = None

    def skip(self, epoch: int, what: str, reason: str) -> None:
        if self.scheduler is not None:
            self.scheduler.skip(self.name, epoch, what, reason)

    def stop(self, group: Any = None) -> None:
        if self.scheduler is not None:
            self.scheduler.stop(group=group)
