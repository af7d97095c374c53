"""``ProbeCallback``: the base of every trainviz callback.

It owns what every probe needs and nothing else: the cadence (every N epochs at the end of the training
epoch, after its last validation, so the probe sees the epoch's final weights; optionally once more at the
end of training), the compute contract across processes (every rank computes its share of the probe set,
rank 0 merges and writes: :meth:`run`), the fixed :class:`~trainviz.core.probeset.ProbeSet`, the no-trace guard, fault
isolation (a failing probe warns once and training goes on; ``strict=True`` re-raises), checkpoint state,
and the cost of each run logged as ``trainviz/<callback>/seconds``.

Subclasses set ``name``, build ``self.prober`` (their :class:`~trainviz.core.contract.Probe`) in :meth:`_setup`
(environment checks too), and may extend :meth:`_plan`, :meth:`_share` and :meth:`_merge`, :meth:`_finish`
(fit-end outputs) and :meth:`_extra_state`/:meth:`_load_extra_state`. A probe of one's own without a ``prober``
implements :meth:`_run`, which runs on rank 0 alone.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch
from typing_extensions import override

from trainviz.core.budget import BudgetRunner, Scheduler, check_budget, synchronize
from trainviz.core.checks import check_choice, check_positive_int
from trainviz.core.clean_forward import CleanForward, CleanView, Reducer
from trainviz.core.common import WarnOnce
from trainviz.core.contract import Share, is_whole
from trainviz.core.display import Display
from trainviz.core.distributed import Collective, in_lockstep
from trainviz.core.guard import probe_guard
from trainviz.core.lightning_private import is_last_batch
from trainviz.core.namespace import callback_base, info
from trainviz.core.normalization import Normalization
from trainviz.core.outputs import LogitsModel, OutputSpec
from trainviz.core.pixels import NormalizationSpec
from trainviz.core.probeset import ProbeSet
from trainviz.core.progress import Task, task
from trainviz.core.source import ProbeSource
from trainviz.core.strategy import check_strategy
from trainviz.sinks import BackgroundWriter, Sink
from trainviz.sinks.registry import make_sink, release_sinks, say_once

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback
else:
    Callback = callback_base()  # the Callback of every installed Lightning namespace (trainviz.core.namespace)

__all__ = ["ProbeCallback", "check_choice", "check_positive_int", "make_sink", "release_sinks"]

T = TypeVar("T")


class _Via(Generic[T]):
    """A callback attribute kept by one of its parts: ``probe = _Via("source")`` reads and sets ``self.source.probe``
    (``attr`` when the part names it otherwise)."""

    def __init__(self, part: str, attr: str | None = None) -> None:
        self.part, self.attr = part, attr

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = self.attr or name

    def __get__(self, obj: Any, objtype: Any = None) -> T:
        return self if obj is None else getattr(getattr(obj, self.part), self.attr)  # type: ignore[return-value]

    def __set__(self, obj: Any, value: T) -> None:
        setattr(getattr(obj, self.part), self.attr, value)


class ProbeCallback(Callback):
    """Base class: cadence, rank, probe set, guard, fault isolation, state, cost.

    Args:
        every_n_epochs: run every N epochs (at the end of the epoch, after its validation).
        probe_size: number of probe examples (class-stratified, fixed for the whole run); ``None`` takes the
            callback's default (``default_probe_size``), or the whole split when it is smaller.
        probe_seed: seed of the probe draw and of any randomness in the probe.
        split: where the probe set is drawn from, ``"val"`` (default) or ``"train"``.
        probe_data: a dataset or :class:`ProbeSet` to use instead of the trainer's data.
        normalization: maps model inputs back to pixels in [0, 1], for corruptions, adversarial probes and
            pictures: a :class:`~trainviz.data.Normalization` or a ``(mean, std)`` pair. ``None`` (default)
            takes, in this order, ``default_callbacks(normalization=)``, the datamodule's ``normalization``
            attribute, a torchvision ``Normalize`` in the probe dataset's transform pipeline, or the identity
            (see :mod:`trainviz.core.pixels`). Setup raises ``ValueError`` if the probe images do not map into [0, 1].
        pixels: whether the inputs are photos with a mapping to pixels in [0, 1] (default ``True``; trainviz never
            guesses). ``False`` declares they are not (CT in Hounsfield units, spectrograms, standardised bands):
            there is no pixel mapping to check, pictures of the inputs are scaled per image and channel to their
            1st-99th percentiles for display only (:mod:`trainviz.core.display`), and a callback that acts on
            pixels (``needs_pixels``: corruptions, adversarial probes, MaxOut) refuses to be built.
        display_channels: the input channels pictures show: ``None`` (default: all of 1 or 3 channels, else the
            first), one index, or three shown as red, green, blue (e.g. ``[3, 1, 0]`` of RGB plus infrared).
        batch_size: probe batch size.
        run_at_fit_end: run once more when training ends if the last epoch was not a run.
        strict: re-raise probe errors instead of warning (for debugging).
        log_name: replaces the callback's name in tags and artifact folders
            (``trainviz/<log_name>/...``), so two instances of one callback do not write over each other.
        output: where the logits are in what the model returns (:mod:`trainviz.core.outputs`): ``None`` (default: a
            tensor, the first element of a tuple, ``.logits``, or a dict's ``"logits"``), a key, an index or a
            callable ``out -> logits``; checked at fit start, before the first epoch.
        budget: the largest fraction of training wall time this callback may take, background work included
            (see :mod:`trainviz.core.budget`); ``None`` (default) runs everything at its cadence. The first and the
            last epoch always produce a result, scaled down to its essential part if the credit is short; runs
            and parts that do not fit are skipped and logged as ``trainviz/budget/<callback>/skipped``.

    Raises:
        ValueError: in ``__init__``, an argument of the wrong type or out of range (the message names it and the
            valid values); at setup, before the first epoch: no data to draw the probe set from, a split smaller
            than ``probe_size``, probe images that do not map into [0, 1] with the resolved normalisation, or a
            model output that ``output=`` cannot turn into logits.

    Example:
        A probe of one's own: the base draws the probe set, guards the run and isolates its failures.

        >>> import tempfile
        >>> import pytorch_lightning as pl
        >>> from trainviz.callbacks.base import ProbeCallback
        >>> from trainviz.data import ShapesDataModule
        >>> from trainviz.models import DemoClassifier
        >>> class MeanLogit(ProbeCallback):
        ...     name = "mean_logit"
        ...     def _run(self, trainer, pl_module, epoch):
        ...         logits = self.logits_model(pl_module)(self.device_probe(pl_module).images)
        ...         self.sink.scalar("mean", logits.mean(), epoch)
        >>> cb = MeanLogit(probe_size=12)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[cb], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      default_root_dir=tempfile.mkdtemp())
        >>> trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule(n_train=64, n_val=32))
        >>> cb.done_epochs, len(cb.probe)
        ([0], 12)
    """

    name: ClassVar[str] = "probe"
    """The callback's name: its tags (``trainviz/<name>/...``), artifact folder and ``default_callbacks`` keyword."""
    default_probe_size: ClassVar[int] = 64
    needs_pixels: ClassVar[bool] = True
    """Whether the probe acts on pixels in [0, 1] (corrupts, attacks or optimises them) and so cannot run on inputs
    declared not to be photos (``pixels=False``). Probes that compute on the model's own inputs set ``False``."""
    pixel_use: ClassVar[str] = ""
    """With ``needs_pixels``: what it does to pixels, for the warning of ``default_callbacks(pixels=False)``."""
    budget_share: ClassVar[float] = 0.25
    """The callback's weight when :func:`trainviz.default_callbacks` divides its ``budget`` (``BUDGET_SHARES``):
    its fraction until every callback of the suite has run once, then the pool is fitted to what each costs
    (:meth:`trainviz.core.budget.Scheduler.fit`)."""
    budget_interval: ClassVar[int] = 1
    """In a pooled budget: the runs it aims for, every ``budget_interval`` times ``every_n_epochs`` epochs."""
    opt_in: ClassVar[bool] = False
    """Whether :func:`trainviz.default_callbacks` leaves it out unless asked for (``<name>={}``)."""

    # the probe source's options and state, under the names subclasses use (trainviz.core.source)
    probe_size = _Via[int]("source")
    probe_seed = _Via[int]("source")
    split = _Via[str]("source")
    probe_data = _Via[Any]("source")
    normalization = _Via[Normalization | None]("source")
    shared_normalization = _Via[Normalization | None]("source")  # set by default_callbacks(normalization=)
    pixels = _Via[bool]("source")
    display_channels = _Via[tuple[int, ...] | None]("source")
    output = _Via[OutputSpec]("source")
    probe = _Via[ProbeSet | None]("source")
    norm = _Via[Normalization | None]("source")
    norm_source = _Via[str | None]("source")
    display = _Via[Display | None]("source")
    _device_probe = _Via[ProbeSet | None]("source", "on_device")
    # the budget runner's (trainviz.core.budget)
    scheduler = _Via[Scheduler | None]("budget_runner")
    _last_cost = _Via[float | None]("budget_runner", "last_cost")  # seconds of the last whole run (training thread)

    def __init__(
        self,
        every_n_epochs: int = 1,
        probe_size: int | None = None,
        probe_seed: int = 0,
        *,
        split: str = "val",
        probe_data: Any = None,
        normalization: NormalizationSpec = None,
        batch_size: int = 64,
        run_at_fit_end: bool = True,
        strict: bool = False,
        log_name: str | None = None,
        budget: float | None = None,
        output: OutputSpec = None,
        pixels: bool = True,
        display_channels: int | list[int] | None = None,
    ) -> None:
        super().__init__()
        if log_name is not None:
            if not isinstance(log_name, str) or not log_name or "/" in log_name:
                raise ValueError(f"Expected `log_name` to be a non-empty string without '/', got {log_name!r}.")
            self.name = log_name  # type: ignore[misc]  # an instance's own name
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)
        cls = type(self)
        self.source = ProbeSource(
            cls.__name__, probe_size, probe_seed, split=split, probe_data=probe_data, normalization=normalization,
            output=output, pixels=pixels, display_channels=display_channels,
            default_probe_size=cls.default_probe_size, needs_pixels=cls.needs_pixels,
        )  # fmt: skip
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.run_at_fit_end = bool(run_at_fit_end)
        self.budget = check_budget(budget)
        self.pooled_budget = False  # default_callbacks' share of its budget: fitted with the others' at run time
        self.clean_forward: CleanForward | None = None  # the Trainer's, shared by callbacks probing the same images
        self.budget_runner = BudgetRunner(self.name)
        self.plan: Any = True  # what this run contains, from `_plan` (True: everything)
        self.prober: Any = None  # the capability's probe (trainviz.core.contract.Probe), built at fit start
        self.strict = bool(strict)
        self.sink: Sink | None = None
        self.done_epochs: list[int] = []
        self.failures = 0
        self._trainer: pl.Trainer | None = None
        self._pending: int | None = None  # from a checkpoint: an epoch probed just after it was saved
        self._attempted: set[int] = set()  # epochs tried in this process (a failed run is not retried at fit end)
        self._warn = WarnOnce()  # per process: a resumed run warns again on its first failure
        self.progress = Task(None, self.name)  # the running work's progress (`self.progress.update`); idle between runs

    def __getattr__(self, name: str) -> Any:
        """A capability's options read as attributes (``cb.method``, ``cb.steps``); their one home is ``options``
        (:mod:`trainviz.core.options`)."""
        options = self.__dict__.get("options")
        if options is not None and name in options.names():
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # identity & state ------------------------------------------------------------------------------
    def _state_args(self) -> dict[str, Any]:
        """Arguments that distinguish two instances of the callback (subclasses extend)."""
        return {
            "name": self.name,
            "every_n_epochs": self.every_n_epochs,
            "probe_size": self.probe_size,
            "probe_seed": self.probe_seed,
        }

    @property
    @override
    def state_key(self) -> str:
        """Kept until an attribute of the callback is set (:meth:`__setattr__`): Lightning reads it at every hook
        call of every callback, several times a training batch, and building it took up to 53 us (robustness's
        options key): with the suite present but never running, a training batch took 1.034x the bare fit's when it
        was built at each call, 1.006x with it kept (BENCHMARKS.md, round 6)."""
        key = self.__dict__.get("_state_key")
        if key is None:
            key = self.__dict__["_state_key"] = self._generate_state_key(**self._state_args())
        return key

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__.pop("_state_key", None)  # the arguments of the state key may have changed
        super().__setattr__(name, value)

    def _pending_epoch(self) -> int | None:
        """The epoch a checkpoint saved now would miss: saved at the validation that ends an epoch's training
        batches, before this epoch's probe (which runs right after, in ``on_train_epoch_end``)."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit" or not trainer.validating:
            return None
        epoch = trainer.current_epoch
        return epoch if is_last_batch(trainer) and self._due(trainer) and epoch not in self.done_epochs else None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "probe": None if self.probe is None else self.probe.state_dict(),
            "done_epochs": list(self.done_epochs),
            "pending_epoch": self._pending_epoch(),
            "failures": self.failures,
            "extra": self._extra_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("probe") is not None:
            self.source.replace(ProbeSet.from_state_dict(state_dict["probe"]))
            self._on_probe_changed()
        self.done_epochs = list(state_dict.get("done_epochs", []))
        self._pending = state_dict.get("pending_epoch")
        self.failures = int(state_dict.get("failures", 0))
        self._load_extra_state(state_dict.get("extra") or {})

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def _on_probe_changed(self) -> None:
        """Called when the probe set is replaced (resume): drop caches built from it."""

    # setup: the probe source (trainviz.core.source); subclasses may override these steps ---------------
    def _probe_source(self, trainer: pl.Trainer) -> Any:
        """The data the probe set is drawn from: ``probe_data``, else the dataset of the trainer's ``split``."""
        return self.source.find(trainer)

    def _probe_size_for(self, source: Any) -> int:
        return self.source.size_for(source)

    def _draw(self, trainer: pl.Trainer, source: Any) -> None:
        self.source.draw(trainer, source)

    def _resolve_normalization(self, trainer: pl.Trainer, source: Any) -> None:
        self.source.resolve_normalization(trainer, source)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Draw the probe set (data checks) and open the sink. Model checks wait for :meth:`on_fit_start`,
        when the model is configured, restored and on its device."""
        if stage != "fit":
            return
        with self._setting_up(trainer):
            self._setup_fit(trainer)

    @contextlib.contextmanager
    def _setting_up(self, trainer: pl.Trainer) -> Iterator[None]:
        """Set-up work (drawing the probe set, opening sinks, model checks) is trainviz's cost too: the budget's
        clock starts before it (the first call wins) and it is booked like a probe's time on the training thread."""
        interval = self.every_n_epochs * self.budget_interval
        self.budget_runner.start(trainer, self.budget, pooled=self.pooled_budget, interval=interval)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.budget_runner.charge(time.perf_counter() - start)

    def _setup_fit(self, trainer: pl.Trainer) -> None:
        check_strategy(trainer, type(self).__name__)  # on every rank: a sharded model is refused by all of them
        self._trainer = trainer
        source = self._probe_source(trainer)
        if self.probe is None:
            if source is None:
                raise self.source.missing()
            if isinstance(source, ProbeSet):
                self.probe = source
            elif len(source) >= self._probe_size_for(source):
                self._draw(trainer, source)
            # else: a split smaller than the probe size. A resumed run's checkpoint brings its probe set (restored
            # after setup); otherwise the draw at fit start raises, still before the first epoch.
        self.source.data = source
        log_dir = trainer.log_dir or trainer.default_root_dir  # a collective under DDP: every rank calls it
        if trainer.is_global_zero:
            # fast_dev_run: probes still run (their errors show) but nothing is written
            if trainer.fast_dev_run:
                self.sink = Sink(self.name, None, None, background=BackgroundWriter())
            else:
                self.sink = make_sink(trainer, self.name, log_dir, self)
                if self.budget is not None:
                    self.budget_runner.sink = make_sink(trainer, "budget", log_dir, self)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with self._setting_up(trainer):
            self._start_fit(trainer, pl_module)

    def _start_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is None and self.source.data is not None:
            self._draw(trainer, self.source.data)
        self._same_probe_everywhere(trainer)
        if self.probe is not None:
            if self.pixels:
                self._resolve_normalization(trainer, self.source.data)
            else:
                self.norm, self.norm_source = None, None
            self.source.resolve_display(lambda message: say_once(trainer, message))
            self._setup(trainer, pl_module)

    def _same_probe_everywhere(self, trainer: pl.Trainer) -> None:
        """With several processes, every rank probes rank 0's probe set: the ranks compare fingerprints and, where
        they differ (a random transform in the validation pipeline, data made per process), rank 0 sends its set and
        warns. Shares cut from different sets would mix them, and a sharded model's ranks, which compute the whole
        set in lockstep, would make different calls and hang."""
        group = Collective.of(trainer)
        if group.world == 1:
            return
        mine = None if self.probe is None else self.probe.fingerprint()
        if group.all_ok(group.broadcast(mine) == mine):
            return
        state = group.broadcast(self.probe.state_dict() if group.is_zero and self.probe is not None else None)
        if state is not None:
            self.source.replace(ProbeSet.from_state_dict(state))
            self._on_probe_changed()
        if group.is_zero:
            warnings.warn(
                f"trainviz: {type(self).__name__}'s probe set differs between processes (a random transform in the "
                "validation pipeline, or data made per process?); every process now probes rank 0's, so the results "
                "are one set's. Make the probe data the same on every rank (or pass `probe_data=`) to silence this.",
                stacklevel=2,
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a restore from an earlier checkpoint, artifacts of the abandoned epochs must go. A checkpoint
        # saved at an epoch's last validation did not know the probe that ran after it: its artifacts tell.
        if self.sink is not None:
            if self._pending is not None and self._pending in self.sink.epochs():
                self.done_epochs = sorted({*self.done_epochs, self._pending})
            self.sink.prune_after(max(self.done_epochs, default=-1))
        self._pending = None

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Subclass model checks (layers exist, ...), at fit start before the first epoch. Raise
        ``ValueError`` with a clear message."""

    # what probes are given (trainviz.core.source) ------------------------------------------------------
    def device_probe(self, pl_module: pl.LightningModule) -> ProbeSet:
        """The probe set on the model's device and dtype (moved once, cached)."""
        return self.source.device_probe(pl_module)

    def logits_model(self, pl_module: pl.LightningModule) -> LogitsModel:
        """``pl_module`` as a model returning logits ``(N, K)`` (``output=`` applied), with the module's own
        layer names and hooks (:class:`~trainviz.core.outputs.LogitsModel`): what the ops are given."""
        return self.source.logits_model(pl_module)

    def example_indices(self, n: int) -> list[int]:
        """``n`` probe indices to show (:func:`trainviz.core.common.example_indices`)."""
        return self.source.example_indices(n)

    def example_batch(self, pl_module: pl.LightningModule, n: int = 2) -> torch.Tensor:
        """The first ``n`` probe images on the model's device and dtype (setup checks)."""
        return self.source.example_batch(pl_module, n)

    def setup_layers(
        self, pl_module: pl.LightningModule, specs: Any, reshape: Any = None, check: Any = None
    ) -> dict[str, torch.nn.Module]:
        """The setup sequence of a layer probe: an example batch, the guard, :func:`resolve_layers` on the
        logits model (``"auto"`` is logged with what it chose), then ``check(model, example, layers)``, which
        raises if the method does not apply to this model."""
        layers, auto = self.source.setup_layers(pl_module, specs, self.example_batch(pl_module), reshape, check)
        if auto:
            info(f"trainviz: {type(self).__name__} layers='auto' resolved to {list(layers)}", self._trainer)
        return layers

    # cadence, budget and running -----------------------------------------------------------------
    def _due(self, trainer: pl.Trainer) -> bool:
        return trainer.state.fn == "fit" and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the epoch's last validation (if any), so the probe sees the epoch's final weights whatever
        # `val_check_interval` and `check_val_every_n_epoch` are.
        if self._due(trainer):
            self.run(trainer, pl_module, trainer.current_epoch)

    def _is_last(self, trainer: pl.Trainer, epoch: int) -> bool:
        max_epochs = trainer.max_epochs
        return bool(trainer.should_stop) or (max_epochs is not None and max_epochs > 0 and epoch >= max_epochs - 1)

    def _ahead(self, trainer: pl.Trainer, epoch: int) -> int | None:
        """Epochs between ``epoch`` and the fit's last (0: it is the last; ``None``: not known, no ``max_epochs``),
        for which the budget holds back what the last run needs (:meth:`Scheduler.hold
        <trainviz.core.budget.Scheduler.hold>`)."""
        if self._is_last(trainer, epoch):
            return 0
        max_epochs = trainer.max_epochs
        return max_epochs - 1 - epoch if max_epochs is not None and max_epochs > 0 else None

    def _plan(self, credit: float | None, essential: bool, epoch: int) -> Any:
        """What the run contains, given ``credit`` seconds (``None``: no budget, everything due runs); ``None``
        skips the run. A capability's probe decides (``probe.plan(Credit(credit, essential, epoch))``, see
        :mod:`trainviz.core.contract`).

        ``essential`` runs (the first and the last epoch) must return a plan. The default runs whole when the
        last whole run cost no more than the credit. Subclasses with parts (corruptions, UMAP) scale them and
        may call :meth:`_skip` for each part they leave out.
        """
        if credit is None or essential or self._last_cost is None or self._last_cost <= credit:
            return True
        self._skip(epoch, "run", f"last run took {self._last_cost:.2f} s, credit {credit:.2f} s")
        return None

    def _clean_view(
        self, trainer: pl.Trainer, layers: Mapping[str, torch.nn.Module] | None = None, reduce: Reducer | None = None
    ) -> CleanView:
        """This callback's handle on the Trainer's shared clean forward of its probe set (at setup: the logits,
        and ``layers`` through ``reduce``; :mod:`trainviz.core.clean_forward`)."""
        if self.clean_forward is None:
            self.clean_forward = CleanForward.of(trainer)
        fingerprint = self.probe.fingerprint()
        self.clean_forward.want(fingerprint, self.state_key, layers, reduce)
        return CleanView(self.clean_forward, fingerprint, self.state_key)

    def _budget_floor(self) -> float | None:
        """An elastic callback's seconds for its least run (its plan scales to any credit above it); ``None``
        (default): it runs whole or waits, and needs what its runs cost."""
        return None

    def _ran(self, seconds: float) -> None:
        """A run took ``seconds`` (its plan is ``self.plan``), before the budget books it: subclasses keep what
        their plans price."""

    def _least_cost(self) -> float | None:
        """Seconds of its least run (what a pool may lend it when its credit is short, :meth:`Scheduler.lend
        <trainviz.core.budget.Scheduler.lend>`): by default the last whole run's (it runs whole or waits);
        ``None`` before one."""
        return self._last_cost

    def _whole_cost(self) -> float | None:
        """Seconds of a run with all it has due at its cadence, which its pool is fitted to (``None``: its mean
        run): a callback whose plan leaves a dear part out under a short credit says what that part would add."""
        return None

    def _skip(self, epoch: int, what: str, reason: str) -> None:
        self.budget_runner.skip(epoch, what, reason)

    def _charge_background(self, seconds: float) -> None:
        """Book background work (a worker thread's job; what it costs training is measured on the batches beside it,
        :meth:`trainviz.core.budget.Scheduler.batch`)."""
        self.budget_runner.charge(seconds, foreground=False)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, final: bool = False) -> None:
        """Run the probe for ``epoch`` once, guarded, timed, fault-isolated and, with a ``budget``, planned to fit the
        credit (``final``: the fit-end run, which is essential).

        The compute contract (:mod:`trainviz.core.contract`) across every process of the run
        (:class:`~trainviz.core.distributed.Collective`): rank 0 plans and every rank gets its plan and state; every
        rank computes its share of the probe set (a rank may have none); every rank learns whether any share failed
        and, if so, they skip together (rank 0 warns); rank 0 merges the partials into the result one process would
        have computed and writes it; every rank learns whether that worked. A probe of one's own without a
        ``prober`` runs :meth:`_run` on rank 0 alone."""
        if self.prober is None and not trainer.is_global_zero:
            return
        if epoch in self.done_epochs or epoch in self._attempted or self.probe is None:
            return
        group = Collective.of(trainer) if self.prober is not None else Collective()
        synchronize(pl_module.device)  # the training step's queued work is not the probe's
        start = time.perf_counter()
        decided, error = None, None  # rank 0's (plan, state): plan None skips the run
        if group.is_zero:
            essential = final or not self.done_epochs or self._is_last(trainer, epoch)
            ahead = 0 if final else self._ahead(trainer, epoch)
            decided, error = self._attempt(pl_module, lambda: self._decide(essential, epoch, ahead))
        if not group.all_ok(error is None):  # planning failed on rank 0: every rank skips this run
            self._attempted.add(epoch)
            return self._failed(epoch, error, "plan", group=group)
        self.plan, state = group.broadcast(decided)
        if self.plan is None:
            return
        self._attempted.add(epoch)
        # long runs show on the progress bar (trainviz.core.progress); the estimate is the last whole run
        with self._progress(trainer, f"epoch {epoch}", self._last_cost):
            if self.prober is None:
                partial, error = self._attempt(pl_module, lambda: self._run(trainer, pl_module, epoch))
            else:
                partial, error = self._attempt(pl_module, lambda: self._compute(pl_module, group, state))
            if not group.all_ok(error is None):
                return self._failed(epoch, error, group=group)
            if self.prober is not None:
                gathering = time.perf_counter()
                parts = group.gather(partial)
                gathered = time.perf_counter() - gathering
                if group.is_zero:
                    _, error = self._attempt(pl_module, lambda: self._merge(parts or []))
                if not group.all_ok(error is None):
                    return self._failed(epoch, error, group=group)
        self.done_epochs.append(epoch)
        synchronize(pl_module.device)
        seconds = time.perf_counter() - start
        self._ran(seconds)
        # every rank its own: the slowest counts at the end
        self.budget_runner.ran(seconds, is_whole(self.plan), epoch, self._least_cost())
        if group.is_zero:
            if self.sink is not None:
                self.sink.scalar("seconds", seconds, epoch)
                if group.world > 1:  # rank 0's wait for every share and the transfer of the partials
                    self.sink.scalar("gather_seconds", gathered, epoch)
                for sink in (self.sink, self.budget_runner.sink):  # earlier scalars for loggers written here (CSV)
                    if sink is not None:
                        sink.deliver()

    def _decide(self, essential: bool, epoch: int, ahead: int | None = None) -> tuple[Any, Any]:
        """Rank 0: the run's plan (through the budget runner; ``ahead``: the epochs before the fit's last) and, when
        it runs, the probe's state for every share."""
        self.plan = True  # `_plan` may read it
        busy = self.sink.busy_seconds() if self.sink is not None else 0.0
        plan = self.budget_runner.plan(
            self._plan, essential, epoch, busy, self._budget_floor(), self._least_cost(), self._whole_cost(), ahead
        )
        return plan, (self.prober.state() if self.prober is not None and plan is not None else None)

    def _attempt(self, pl_module: pl.LightningModule, work: Callable[[], Any]) -> tuple[Any, Exception | None]:
        """``work()`` inside the no-trace guard: its value and no error, or ``None`` and the error it raised."""
        try:
            with probe_guard(pl_module):
                return work(), None
        except Exception as err:
            return None, err

    # the compute contract ----------------------------------------------------------------------------
    def _share(self, pl_module: pl.LightningModule, group: Collective) -> Share[Any]:
        """This process's share: its contiguous part of the probe set on the model's device (all of it alone)."""
        return Share.of(self.device_probe(pl_module), group.shares, group.share_index)

    def _compute(self, pl_module: pl.LightningModule, group: Collective, state: Any) -> Any:
        """This process's partial result: the probe's ``compute`` on the share, with the plan and rank 0's state (in
        lockstep with a sharded model: :func:`~trainviz.core.distributed.in_lockstep`)."""
        with in_lockstep(group):
            return self.prober.compute(self.logits_model(pl_module), self._share(pl_module, group), self.plan, state)

    def _merge(self, parts: list[Any]) -> None:
        """Rank 0: the partials of every share (in rank order) merged into the run's result, written."""
        self.sink.write(self.prober.merge(parts, self.plan))

    @contextlib.contextmanager
    def _progress(self, trainer: pl.Trainer, what: str, estimate: float | None = None) -> Iterator[Task]:
        """``self.progress`` for the duration: a :class:`~trainviz.core.progress.Task` on the trainer's progress bar,
        shown when the work is long (estimated or measured over a second); idle again afterwards."""
        self.progress = task(trainer, f"trainviz: {self.name} {what}", estimate=estimate)
        try:
            yield self.progress
        finally:
            self.progress.close()
            self.progress = Task(None, self.name)

    # fault isolation -------------------------------------------------------------------------------
    def _failed(self, epoch: int, err: Exception | None, what: str = "probe", group: Collective | None = None) -> None:
        """A probe (or its background part, ``what``) failed, here (``err``) or, with several processes, on another
        rank (``err`` ``None``): re-raise with ``strict``, else count it, warn the first time in this process (the
        rank that failed and rank 0), and log the count."""
        if err is None:
            err = RuntimeError("it failed on another process (that process warned with the error)")
        if self.strict:
            raise err
        self.failures += 1
        quiet = group is not None and not group.is_zero and "another process" in str(err)
        if not quiet:
            self._warn(
                f"trainviz: {type(self).__name__} {what} failed at epoch {epoch} ({self._describe()}): "
                f"{type(err).__name__}: {err}. Training goes on; later failures of this callback are counted "
                f"in `{self.sink.tag('failures') if self.sink else 'failures'}`. Pass strict=True to raise."
            )
        if self.sink is not None:
            self.sink.scalar("failures", self.failures, epoch)

    def _describe(self) -> str:
        """Short description for warnings (subclasses add their layers)."""
        return f"callback {self.name}"

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        """One run in this process alone: the contract with the whole probe set as the share (what benchmarks
        call). A probe of one's own without a ``prober`` overrides it (see the class example); :meth:`run` then
        calls it on rank 0."""
        if self.prober is None:
            raise NotImplementedError(f"{type(self).__name__} builds no `prober` in `_setup`: implement `_run`.")
        self._merge([self._compute(pl_module, Collective(), self.prober.state())])

    def _fit_end_pass(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fit-end work that runs the model (MaxOut's high-quality pass), before :meth:`_finish`: called on every rank,
        so that a sharded model's ranks (``Collective.lockstep``) take part in its forwards together. None here."""

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fit-end outputs built from all runs (the probe's :meth:`~trainviz.core.contract.Probe.evolution`: strips
        across epochs), written. Runs on rank zero."""
        end = self.prober.evolution() if self.prober is not None else None
        if end is not None and self.sink is not None:
            self.sink.write_fit_end(end)

    # the fit's end ---------------------------------------------------------------------------------
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before the strategy's teardown moves the model to the CPU.
        if self.run_at_fit_end and trainer.current_epoch > 0:
            self.run(trainer, pl_module, trainer.current_epoch - 1, final=True)
        start = time.perf_counter()
        self._fit_end_pass(trainer, pl_module)
        if trainer.is_global_zero and self.probe is not None:
            try:
                with self._progress(trainer, "fit end"), probe_guard(pl_module):
                    self._finish(trainer, pl_module)
            except Exception as err:
                if self.strict:
                    raise
                warnings.warn(
                    f"trainviz: {type(self).__name__} fit-end summary failed: {type(err).__name__}: {err}", stacklevel=2
                )
            self.budget_runner.charge(time.perf_counter() - start)  # fit-end work counts against the budget too
        self._flush()
        if self.sink is not None:  # and the writer's last CPU seconds (the wait for them above is not booked twice)
            self.budget_runner.set_writer(self.sink.busy_seconds())

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.budget_runner.stop(Collective.of(trainer))  # every callback's fit-end work ran in on_train_end

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.budget_runner.batch_start(pl_module.device)  # the budget measures what trainviz's threads cost training

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.budget_runner.batch_end(pl_module.device)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._flush()
        release_sinks(self)  # Lightning skips `teardown` after an exception

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._flush()
            if self.clean_forward is not None:
                self.clean_forward.clear()  # the last forward's tensors go with the fit
            scheduler = Scheduler.of(trainer)
            if scheduler is not None and trainer.is_global_zero and not trainer.fast_dev_run:
                say_once(trainer, scheduler.overhead_line())  # the first callback to tear down says it
            release_sinks(self)
            Scheduler.forget(trainer)  # after on_fit_end, where the manifest reads it

    def _flush(self) -> None:
        for sink in (self.sink, self.budget_runner.sink):
            if sink is not None:
                sink.flush()
