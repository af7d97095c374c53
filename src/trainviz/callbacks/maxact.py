"""``MaxActivationCallback``: the input each class, channel and unit responds to most, every N epochs (Strezoski &
Worring's *MaxOut*, with Fleuret's multi-scale edge prior as an option), and how it moves while the network learns.

The computation is :mod:`trainviz.probes.maxact` (on :func:`trainviz.ops.maxact.maximize`); this module is the
Lightning lifecycle around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.contract import Credit, Share
from trainviz.core.distributed import Collective, in_lockstep
from trainviz.probes.maxact import Channels, MaxActHistory, MaxActOptions, MaxActProbe, build_targets

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["MaxActivationCallback"]


class MaxActivationCallback(ProbeCallback):
    """Activation maximisation ("MaxOut") of classes, channels and units every N epochs: one image per target,
    all targets optimised together in one batch from the same per-target start each run, and at fit end a
    longer high-quality pass and each target's strip across epochs.

    The probe set only gives the input shape, the device and the normalisation (images are optimised as pixels in
    [0, 1] through a sigmoid and mapped to the model input); a run costs ``steps`` forward and backward passes of a
    batch of ``len(targets)`` images. See :func:`trainviz.ops.maxact.maximize` for the objective and defaults.

    Logged keys (step = epoch index; ``<target>`` is ``classes/<k>``, ``<layer>/channel_<c>`` or
    ``<layer>/unit_<i>_<j>...``, and ``<group>`` is ``classes`` or a layer name):
        - ``trainviz/maxact/<target>/activation`` (scalar): the activation the target's image reaches.
        - ``trainviz/maxact/<target>/moved`` (scalar, from the second run on): Pearson correlation of the
          target's image with its image at the previous run (1: the preferred input did not move).
        - ``trainviz/maxact/<group>/grid`` (image): the group's images captioned with target and activation.
        - ``trainviz/maxact/<group>/final`` (image, fit end, ``final_steps > 0``): the high-quality pass.
        - ``trainviz/maxact/<group>/evolution`` (image, fit end): each target's image across (at most
          ``max_strip`` evenly spaced) epochs.
        - ``trainviz/maxact/seconds``, ``trainviz/maxact/failures`` (scalars, from the base class).
        - artifacts: ``maxact/epoch_XXXX/images.npz`` (``images`` float16 ``(B, C, H, W)`` pixels, ``keys``,
          ``activation``), ``maxact/metrics.jsonl`` (:class:`~trainviz.probes.maxact.MaxActResult` records),
          PNGs of every image, and at fit end ``maxact/epoch_XXXX/final.npz``.

    Args:
        classes: class indices to maximise (their logits); ``None``: every class; ``[]``: none.
        layers: layers whose channels to maximise (mean over each channel's map).
        channels: per layer, the first N channels (an int), one list for every layer, or ``{layer: [c, ...]}``.
        units: single units, ``[(layer, (i, j, ...)), ...]`` (indices after the batch axis).
        steps: Adam steps per run (at the probe resolution).
        final_steps: steps of the fit-end high-quality pass (0: none).
        final_upscale: the fit-end pass optimises images this many times the probe side (needs a model that
            takes larger inputs, e.g. global pooling; checked at setup).
        lr: Adam learning rate.
        tv_weight: total-variation weight (a sum over the image; the seed's "TV weight").
        norm_weight: squared L2 norm weight of the model input (the seed's "Norm").
        edge_weight: Fleuret's multi-scale edge energy weight.
        smoothing: Gaussian blur sigma (pixels) of the result (the seed's "Smoothing"); ``None``: none.
        robust: Lucent's FFT parameterisation with decorrelated colour and jitter/scale/rotate transforms.
        max_strip: most epochs in an evolution strip.
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``, ``probe_size``
            (default 8: only the shape and normalisation are used), ``probe_seed`` (the start noise), ...).

    Raises:
        ValueError: in ``__init__``, for an argument of the wrong type or out of range (no target at all, an
            index not a non-negative int, a count not positive, a negative weight); at fit start, before the
            first epoch, when a layer is not found (the message names close matches), a class, channel or unit
            index is out of range for the model, or the model refuses the ``final_upscale`` size.

    Example:
        >>> import tempfile, pytorch_lightning as pl
        >>> from trainviz.callbacks.maxact import MaxActivationCallback
        >>> from trainviz.data import ShapesDataModule
        >>> from trainviz.models import DemoClassifier
        >>> cb = MaxActivationCallback(layers=["net.features"], channels=2, steps=2, final_steps=2)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[cb], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      default_root_dir=tempfile.mkdtemp())
        >>> trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule(n_train=32, n_val=16))
        >>> cb.done_epochs, cb.prober.keys()[4:]
        ([0], ['classes/4', 'classes/5', 'net.features/channel_0', 'net.features/channel_1'])
    """

    name = "maxact"
    budget_share = 0.25  # of default_callbacks(budget=)
    opt_in = True  # default_callbacks leaves it out unless asked for: an optimisation per run
    pixel_use = "maxact (MaxOut) optimises images as pixels in [0, 1]"
    needs_pixels = True  # acts on pixels in [0, 1]: refuses inputs declared not to be photos (pixels=False)
    default_probe_size = 8

    def __init__(
        self,
        classes: Sequence[int] | None = None,
        layers: Sequence[str] = (),
        channels: Channels = 8,
        *,
        units: Sequence[tuple[str, Sequence[int]]] = (),
        steps: int = 64,
        final_steps: int = 256,
        final_upscale: int = 1,
        lr: float = 0.05,
        tv_weight: float = 1e-3,
        norm_weight: float = 1e-4,
        edge_weight: float = 0.0,
        smoothing: float | None = None,
        robust: bool = False,
        max_strip: int = 12,
        probe_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(probe_size=probe_size, **kwargs)
        self.options = MaxActOptions.pick(locals())
        self._targets: list[Any] = []
        self._layers: dict[str, torch.nn.Module] = {}
        self.history = MaxActHistory()  # each run's images: `moved` and the strips
        self._final: tuple[int, Any] | None = None  # the fit-end pass: (its epoch, its result), on rank 0
        self.prober: MaxActProbe | None = None

    @property
    def _previous(self) -> dict[str, torch.Tensor]:
        return self.history.previous

    @property
    def _history(self) -> list[tuple[int, torch.Tensor]]:
        return self.history.runs

    @override
    def _state_args(self) -> dict[str, Any]:
        o = self.options
        what = {"classes": o.classes, "layers": o.layers, "units": o.units, "robust": o.robust}
        return {**super()._state_args(), **what}

    @override
    def _extra_state(self) -> dict[str, Any]:
        return self.history.state_dict()

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state)

    @override
    def _describe(self) -> str:
        layers = list(self._layers) or list(self.options.layers)
        return f"callback {self.name}, {len(self._targets)} targets, layers {layers}"

    # setup and running -----------------------------------------------------------------------------
    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def check(model: Any, example: torch.Tensor, _layers: dict[str, torch.nn.Module]) -> None:
            self._targets, self._layers = build_targets(model, example, self.options)
            upscale = self.options.final_upscale
            if upscale > 1:
                big = torch.nn.functional.interpolate(example[:1], scale_factor=upscale)
                try:
                    with torch.no_grad():
                        model(big)
                except Exception as err:
                    raise ValueError(
                        f"Expected the model to take inputs {upscale}x the probe size for "
                        f"`final_upscale={upscale}`, but it raised {type(err).__name__}: {err}"
                    ) from err

        self.setup_layers(pl_module, [], None, check)
        shown = None if self.display is None else self.display.channels
        args: dict[str, Any] = {"norm": self.norm, "seed": self.probe_seed, "shown": shown, "history": self.history}
        self.prober = MaxActProbe(self.probe, self.options, self._targets, layers=self._layers, **args)

    @override
    def _plan(self, credit: float | None, essential: bool, epoch: int) -> Any:
        assert self.prober is not None
        plan = self.prober.plan(Credit(credit, essential, epoch))
        for what, reason in self.prober.skipped:
            self._skip(epoch, what, reason)
        return plan

    @override
    def _share(self, pl_module: pl.LightningModule, group: Collective) -> Share[Any]:
        """A share of MaxOut is a set of targets: this process's part of the plan's."""
        self.device_probe(pl_module)  # the model's device: the ops follow its parameters
        return Share.of_items(self.plan.targets, group.shares, group.share_index)

    @override
    def _merge(self, parts: list[Any]) -> None:
        if self.sink is not None:  # after a resume: runs whose images the checkpoint lacks, read back
            self.history.catch_up(self.done_epochs, self.plan.epoch, lambda done: self.sink.read_npz(done, "images"))
        self.sink.write(self.prober.merge(parts, self.plan))

    def _alone(self, pl_module: pl.LightningModule, plan: Any) -> Any:
        """The plan's targets computed here as one share and merged (the fit-end pass)."""
        assert self.prober is not None
        self.device_probe(pl_module)
        partial = self.prober.compute(self.logits_model(pl_module), Share.of_items(plan.targets), plan, None)
        return self.prober.merge([partial], plan)

    @override
    def _fit_end_pass(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The high-quality pass (its pictures and arrays; its numbers are not a run's), planned on rank 0 from the
        runs it merged and computed there, or, when the model is sharded, by every rank in lockstep."""
        self._final = None
        group = Collective.of(trainer)
        decided, error = None, None
        if group.is_zero and self.prober is not None and self.history.runs and self.options.final_steps > 0:
            last = self.history.runs[-1][0]
            decided, error = self._attempt(
                pl_module, lambda: (last, self.prober.plan(Credit(None, True, last), final=True))
            )
        if group.lockstep:  # every rank takes part in the pass's forwards
            if not group.all_ok(error is None):
                return self._failed(trainer.current_epoch, error, "fit-end pass", group=group)
            decided = group.broadcast(decided)
        elif error is not None:
            return self._failed(trainer.current_epoch, error, "fit-end pass")
        if decided is None or not (group.is_zero or group.lockstep):
            return
        last, plan = decided
        with in_lockstep(group):
            final, error = self._attempt(pl_module, lambda: self._alone(pl_module, plan))
        if not (group.all_ok(error is None) if group.lockstep else error is None):
            return self._failed(last, error, "fit-end pass", group=group)
        self._final = (last, final) if group.is_zero else None

    @override
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super()._finish(trainer, pl_module)  # the evolution strips
        if self._final is not None:
            last, final = self._final
            for name, image in final.render().items():
                self.sink.image(name, image, last, artifact=True)
            for name, arrays in final.arrays().items():
                self.sink.npz(last, name, **arrays)
