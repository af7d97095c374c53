"""``ProbeCallback``: the base of every trainviz callback.

It owns what every probe needs and nothing else: the cadence (every N epochs at the end of the training
epoch, after its last validation, so the probe sees the epoch's final weights; optionally once more at the
end of training), rank-zero computing and writing (other
ranks neither write nor wait), the fixed :class:`~trainviz.probeset.ProbeSet`, the no-trace guard, fault
isolation (a failing probe warns once and training goes on; ``strict=True`` re-raises), checkpoint state,
and the cost of each run logged as ``trainviz/<callback>/seconds``.

Subclasses set ``name``, implement :meth:`_run` and may extend :meth:`_setup` (environment checks),
:meth:`_finish` (fit-end outputs) and :meth:`_extra_state`/:meth:`_load_extra_state`.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

from trainviz.checks import check_choice, check_positive_int
from trainviz.data.base import Normalization
from trainviz.guard import model_device, model_dtype, preserve_rng, probe_guard
from trainviz.probeset import ProbeSet
from trainviz.sinks import ArtifactStore, BackgroundWriter, Sink, find_summary_writer, open_summary_writer

__all__ = ["ProbeCallback", "check_choice", "check_positive_int", "make_sink"]


# One TensorBoard writer, artifact store and background thread per log folder, shared by all callbacks.
_SHARED: dict[str, tuple[Any, ArtifactStore, BackgroundWriter]] = {}


def make_sink(trainer: pl.Trainer, name: str, log_dir: str) -> Sink:
    """The :class:`Sink` of callback ``name``, sharing writer, store and thread with the others in ``log_dir``."""
    return Sink(name, *_shared_outputs(trainer, log_dir))


def _shared_outputs(trainer: pl.Trainer, log_dir: str) -> tuple[Any, ArtifactStore, BackgroundWriter]:
    key = os.path.abspath(log_dir)
    writer = find_summary_writer(trainer)
    if key in _SHARED:
        old_writer, store, background = _SHARED[key]
        if writer is None:
            writer = old_writer
    else:
        store, background = ArtifactStore(os.path.join(log_dir, "trainviz")), BackgroundWriter()
    if writer is None:
        writer = open_summary_writer(os.path.join(log_dir, "tensorboard"))
    _SHARED[key] = (writer, store, background)
    return writer, store, background


def _dataset_of(loader: Any) -> Any:
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    if isinstance(loader, dict):
        loader = next(iter(loader.values()), None)
    return getattr(loader, "dataset", None)


class ProbeCallback(Callback):
    """Base class: cadence, rank, probe set, guard, fault isolation, state, cost.

    Args:
        every_n_epochs: run every N epochs (at the end of the epoch, after its validation).
        probe_size: number of probe examples (class-stratified, fixed for the whole run).
        probe_seed: seed of the probe draw and of any randomness in the probe.
        split: where the probe set is drawn from, ``"val"`` (default) or ``"train"``.
        probe_data: a dataset or :class:`ProbeSet` to use instead of the trainer's data.
        normalization: maps model inputs back to pixels for display (default: the datamodule's
            ``normalization`` attribute if it has one, else the identity).
        batch_size: probe batch size.
        run_at_fit_end: run once more when training ends if the last epoch was not a run.
        strict: re-raise probe errors instead of warning (for debugging).
        log_name: replaces the callback's name in tags and artifact folders
            (``trainviz/<log_name>/...``), so two instances of one callback do not write over each other.
    """

    name: ClassVar[str] = "probe"

    def __init__(
        self,
        every_n_epochs: int = 1,
        probe_size: int = 64,
        probe_seed: int = 0,
        split: str = "val",
        probe_data: Any = None,
        normalization: Normalization | None = None,
        batch_size: int = 64,
        run_at_fit_end: bool = True,
        strict: bool = False,
        log_name: str | None = None,
    ) -> None:
        super().__init__()
        if log_name is not None:
            if not isinstance(log_name, str) or not log_name or "/" in log_name:
                raise ValueError(f"Expected `log_name` to be a non-empty string without '/', got {log_name!r}.")
            self.name = log_name
        self.every_n_epochs = check_positive_int("every_n_epochs", every_n_epochs)
        self.probe_size = check_positive_int("probe_size", probe_size)
        self.batch_size = check_positive_int("batch_size", batch_size)
        if isinstance(probe_seed, bool) or not isinstance(probe_seed, int):
            raise ValueError(f"Expected `probe_seed` to be an int, got {probe_seed!r}.")
        self.probe_seed = probe_seed
        self.split = check_choice("split", split, ("val", "train"))
        self.probe_data = probe_data
        self.normalization = normalization
        self.run_at_fit_end = bool(run_at_fit_end)
        self.strict = bool(strict)
        self.probe: ProbeSet | None = None
        self.sink: Sink | None = None
        self.done_epochs: list[int] = []
        self.failures = 0
        self._device_probe: ProbeSet | None = None
        self._attempted: set[int] = set()  # epochs tried in this process (a failed run is not retried at fit end)
        self._warned = False  # per process: a resumed run warns again on its first failure

    # identity & state ------------------------------------------------------------------------------
    def _state_args(self) -> dict[str, Any]:
        """Arguments that distinguish two instances of the callback (subclasses extend)."""
        return {"name": self.name, "every_n_epochs": self.every_n_epochs, "probe_size": self.probe_size, "probe_seed": self.probe_seed}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**self._state_args())

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "probe": None if self.probe is None else self.probe.state_dict(),
            "done_epochs": list(self.done_epochs),
            "failures": self.failures,
            "extra": self._extra_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("probe") is not None:
            self.probe = ProbeSet.from_state_dict(state_dict["probe"])
            self._device_probe = None
            self._on_probe_changed()
        self.done_epochs = list(state_dict.get("done_epochs", []))
        self.failures = int(state_dict.get("failures", 0))
        self._load_extra_state(state_dict.get("extra") or {})

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def _on_probe_changed(self) -> None:
        """Called when the probe set is replaced (resume): drop caches built from it."""

    # setup -----------------------------------------------------------------------------------------
    def _probe_source(self, trainer: pl.Trainer) -> Any:
        """The dataset of the trainer's ``split`` dataloader (datamodule, model hook or ``fit`` argument)."""
        if self.probe_data is not None:
            return self.probe_data
        loop = trainer.fit_loop.epoch_loop.val_loop if self.split == "val" else trainer.fit_loop
        source = loop._data_source  # Lightning's record of where the split's dataloaders come from
        if source.instance is None or not source.is_defined():
            return None
        return _dataset_of(source.dataloader())

    def _resolve_normalization(self, trainer: pl.Trainer, channels: int) -> Normalization:
        if self.normalization is not None:
            return self.normalization
        dm_norm = getattr(trainer.datamodule, "normalization", None)
        return dm_norm if isinstance(dm_norm, Normalization) else Normalization.identity(channels)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Draw the probe set (data checks) and open the sink. Model checks wait for :meth:`on_fit_start`,
        when the model is configured, restored and on its device."""
        if stage != "fit":
            return
        if self.probe is None:
            source = self._probe_source(trainer)
            if source is None:
                what = "validation" if self.split == "val" else "training"
                raise ValueError(
                    f"{type(self).__name__} needs {what} data to draw its probe set from: pass "
                    f"`{self.split}_dataloaders` to `fit`, use a datamodule with `{self.split}_dataloader`, "
                    "or give `probe_data=`."
                )
            if isinstance(source, ProbeSet):
                self.probe = source
            else:
                class_names = getattr(trainer.datamodule, "class_names", None)
                with preserve_rng():  # reading items may run random augmentations: keep the training stream
                    torch.manual_seed(self.probe_seed)
                    self.probe = ProbeSet.from_dataset(source, self.probe_size, self.probe_seed, class_names=class_names)
        self.norm = self._resolve_normalization(trainer, self.probe.images.shape[1])
        log_dir = trainer.log_dir or trainer.default_root_dir  # a collective under DDP: every rank calls it
        if trainer.is_global_zero:
            # fast_dev_run: probes still run (their errors show) but nothing is written
            self.sink = Sink(self.name, None, None, BackgroundWriter()) if trainer.fast_dev_run else make_sink(trainer, self.name, log_dir)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is not None:
            self._setup(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a restore from an earlier checkpoint, artifacts of the abandoned epochs must go.
        if self.sink is not None:
            self.sink.prune_after(max(self.done_epochs, default=-1))

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Subclass model checks (layers exist, ...), at fit start before the first epoch. Raise
        ``ValueError`` with a clear message."""

    # running ---------------------------------------------------------------------------------------
    def device_probe(self, pl_module: pl.LightningModule) -> ProbeSet:
        """The probe set on the model's device and dtype (moved once, cached)."""
        device, dtype = model_device(pl_module), model_dtype(pl_module)
        cached = self._device_probe
        if cached is None or cached.images.device != device or cached.images.dtype != dtype:
            self._device_probe = self.probe.to(device, dtype)
        return self._device_probe

    def example_indices(self, n: int) -> list[int]:
        """``n`` probe indices to show: the first image of each class, then the rest in order."""
        labels = self.probe.labels.tolist()
        firsts = [labels.index(c) for c in sorted(set(labels))]
        taken = set(firsts)
        return (firsts + [i for i in range(len(labels)) if i not in taken])[:n]

    def _due(self, trainer: pl.Trainer) -> bool:
        return trainer.state.fn == "fit" and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the epoch's last validation (if any), so the probe sees the epoch's final weights whatever
        # `val_check_interval` and `check_val_every_n_epoch` are.
        if self._due(trainer):
            self.run(trainer, pl_module, trainer.current_epoch)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        """Run the probe for ``epoch`` once (rank zero only), guarded, timed and fault-isolated."""
        if not trainer.is_global_zero or epoch in self.done_epochs or epoch in self._attempted or self.probe is None:
            return
        self._attempted.add(epoch)
        start = time.perf_counter()
        try:
            with probe_guard(pl_module):
                self._run(trainer, pl_module, epoch)
        except Exception as err:
            if self.strict:
                raise
            self.failures += 1
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"trainviz: {type(self).__name__} probe failed at epoch {epoch} ({self._describe()}): "
                    f"{type(err).__name__}: {err}. Training goes on; later failures of this callback are counted "
                    f"in `{self.sink.tag('failures') if self.sink else 'failures'}`. Pass strict=True to raise.",
                    stacklevel=2,
                )
            if self.sink is not None:
                self.sink.scalar("failures", self.failures, epoch)
            return
        self.done_epochs.append(epoch)
        if self.sink is not None:
            self.sink.scalar("seconds", time.perf_counter() - start, epoch)

    def _describe(self) -> str:
        """Short description for warnings (subclasses add their layers)."""
        return f"callback {self.name}"

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fit-end outputs built from all runs (evolution strips, summaries). Runs on rank zero."""

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before the strategy's teardown moves the model to the CPU.
        if self.run_at_fit_end and trainer.current_epoch > 0:
            self.run(trainer, pl_module, trainer.current_epoch - 1)
        if trainer.is_global_zero and self.probe is not None:
            try:
                with probe_guard(pl_module):
                    self._finish(trainer, pl_module)
            except Exception as err:
                if self.strict:
                    raise
                warnings.warn(f"trainviz: {type(self).__name__} fit-end summary failed: {type(err).__name__}: {err}", stacklevel=2)
        self._flush()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._flush()

    def _flush(self) -> None:
        if self.sink is not None:
            self.sink.flush()
