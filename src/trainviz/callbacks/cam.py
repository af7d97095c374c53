"""``CAMCallback``: class activation maps of a fixed probe set during training: CAM (Zhou et al. 2016), Grad-CAM
(Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018) over several layers aggregated into one map,
with guided Grad-CAM, as Strezoski & Worring's "Plug-and-Play Interactive Deep Network Visualization" shows them,
and their evolution over epochs as in Zhang, "Visualization of encoder-decoder structure of Deep Convolutional
Neural Network" (section 5.1).

The computation is :mod:`trainviz.probes.cam`; this module is the Lightning lifecycle around it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.clean_forward import CleanForward
from trainviz.core.contract import Credit
from trainviz.core.distributed import Collective
from trainviz.probes.cam import CAMConfig, CAMHistory, CAMOptions, CAMProbe, class_maps

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["CAMCallback"]


class CAMCallback(ProbeCallback):
    """Class activation maps (CAM, Grad-CAM, Grad-CAM++, optionally guided) of a fixed probe set every N
    epochs: overlays per layer and aggregated, per-class mean maps, localisation and faithfulness scores,
    drift between runs, and at fit end one strip per tracked image of its map across epochs.

    All layers come from one forward and one ``torch.autograd.grad`` per probe batch
    (:func:`trainviz.ops.cam.class_activation_maps`); guided Grad-CAM adds one backward to the input.
    The faithfulness scores run ``2 + deletion_steps + 1`` forward passes of the probe set per map (each
    layer, and the aggregate when there are several layers), most of a run's cost: they run at the first run and
    every ``faithfulness_every``-th run after it, and under a ``budget`` they are what is left out first when the
    run does not fit its credit (a skipped part in the manifest's budget; the next run has them again); the maps,
    localisation and drift run at every run. Each record says whether the run had them (``"faithfulness"``).

    Logged keys (step = epoch index; ``<layer>`` is each resolved layer name, and ``aggregate`` the layers
    combined, which with one layer is that layer's map):
        - ``trainviz/cam/<layer>/overlay``, ``trainviz/cam/aggregate/overlay`` (images): the first ``n_grid``
          probe images (one per class first) under their map, captioned with the true class, the
          predicted class and its probability (green when right, red when wrong).
        - ``trainviz/cam/layers`` (image, several layers only): rows of ``[input, each layer, aggregate]``.
        - ``trainviz/cam/aggregate/class_mean`` (image): mean aggregated map of each true class.
        - ``trainviz/cam/aggregate/guided_grad_cam`` (image, ``guided=True``): guided Grad-CAM of the grid images.
        - ``trainviz/cam/<layer or aggregate>/pointing_game`` and ``.../energy_pointing_game`` (scalars, only
          when the probe set has masks, e.g. the ``shapes`` data) and ``trainviz/cam/pointing_game_chance``
          (the mean mask area fraction: what a random point scores).
        - ``trainviz/cam/<layer or aggregate>/average_drop`` and ``.../increase_in_confidence`` (scalars, at the
          runs with the faithfulness scores, fractions in [0, 1]): the target probability when the input is
          multiplied by the map, with 0 (the normalisation mean colour for normalised inputs) where the map is 0.
        - ``trainviz/cam/<layer or aggregate>/deletion_auc`` (scalar, at the runs with the faithfulness scores): area
          under the target probability as the most salient pixels are replaced by 0 in ``deletion_steps`` steps
          (lower: more faithful).
        - ``trainviz/cam/<layer or aggregate>/drift_correlation`` (scalar, from the second run on): mean
          Pearson correlation of each probe image's map with its map at the previous run (1: stable),
          computed on maps shrunk to at most 32 pixels a side.
        - ``trainviz/cam/target_probability`` (scalar): mean probability of the explained class.
        - ``trainviz/cam/evolution`` (image, at fit end, step = last epoch): the ``n_tracked`` images' aggregated
          maps across (at most ``max_strip`` evenly spaced) epochs.
        - ``trainviz/cam/seconds``, ``trainviz/cam/failures`` (scalars, from the base class).
        - artifacts: ``cam/epoch_XXXX/maps.npz`` (``maps/<key>`` float16 ``(N, H, W)``, ``ids``, ``labels``,
          ``targets``, ``probs``, and per image ``pointing_hit/<key>``, ``energy/<key>``, ``drift/<key>`` and, at
          the runs with the faithfulness scores, ``drop/<key>``, ``increase/<key>``, ``deletion_curve/<key>``,
          ``deletion_auc/<key>``), ``cam/metrics.jsonl`` (:class:`~trainviz.probes.cam.CAMProbeResult` records:
          the scalars of each run and ``"faithfulness"``, whether it had the faithfulness scores),
          PNGs of every image above, and at fit end ``cam/epoch_XXXX/evolution.npz`` (``maps``
          ``(epochs, n_tracked, h, w)``, ``epochs``, ``ids``).

    Args:
        layers: layer names (see ``trainviz.list_layers(model)``) or ``"auto"`` (the last module with a 4-D
            output); resolved at setup.
        method: ``"gradcam"``, ``"gradcam++"`` or ``"cam"`` (final linear weights x feature maps; needs
            ``layer -> global average pooling -> linear``, checked at setup).
        aggregate: how several layers combine: ``"mean"`` or ``"max"`` of the per-layer maps (each min-max
            scaled at its own resolution, resized to the input), min-max scaled again.
        target: explain the ``"true"`` class or the ``"predicted"`` one.
        guided: also compute guided Grad-CAM (one more backward pass per batch).
        n_tracked: probe images followed across epochs in the evolution strip.
        n_grid: probe images in the overlay grids.
        fc_layer: for ``method="cam"``, the final linear layer (default: the model's last ``nn.Linear``).
        deletion_steps: steps of the deletion curve.
        faithfulness_every: run the faithfulness scores (average drop, increase in confidence, deletion curve)
            at the first run and every ``faithfulness_every``-th run after it (default 1: every run); under a
            ``budget`` a run whose credit is short leaves them out first.
        pointing_tolerance: pixels by which masks grow for the pointing game.
        max_strip: most epochs shown in the evolution strip.
        reshape: a callable turning a layer's output into feature maps ``(N, C, h, w)``, for token layouts
            other than the default (tokens ``(N, T, C)`` on a square grid, a class token first dropped; see
            :func:`trainviz.core.layers.tokens_to_grid`). ``layers="auto"`` on a vision transformer picks the last
            token layer whose patch tokens get a gradient (:mod:`trainviz.core.layers`) and logs its choice.
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``,
            ``probe_size`` (default 64), ``batch_size``, ...).

    Raises:
        ValueError: in ``__init__``, for an argument out of range (``layers`` empty or repeated, an unknown
            ``method``, ``aggregate`` or ``target``, a count or ``faithfulness_every`` not a positive int,
            ``fc_layer`` without
            ``method="cam"``); at fit start, before the first epoch, when a layer is not found (the message names
            close matches), gives no feature maps, or the method does not apply to it (CAM without
            ``layer -> GAP -> linear``), or the model's output is not logits.

    Example:
        >>> import tempfile, pytorch_lightning as pl
        >>> from trainviz.callbacks.cam import CAMCallback
        >>> from trainviz.data import ShapesDataModule
        >>> from trainviz.models import DemoClassifier
        >>> cb = CAMCallback(layers=["net.features.1", "net.features"], probe_size=12, deletion_steps=2)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[cb], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      default_root_dir=tempfile.mkdtemp())
        >>> trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule(n_train=64, n_val=32))
        >>> cb.done_epochs, list(cb._layers)
        ([0], ['net.features.1', 'net.features'])
    """

    name = "cam"
    budget_share = 0.25  # of default_callbacks(budget=)
    needs_pixels = False  # computes on the model's own inputs; only its pictures need a display mapping
    default_probe_size = 64

    def __init__(
        self,
        layers: Sequence[str] | str = ("auto",),
        method: Literal["gradcam", "gradcam++", "cam"] = "gradcam",
        aggregate: Literal["mean", "max"] = "mean",
        *,
        target: Literal["true", "predicted"] = "true",
        guided: bool = False,
        n_tracked: int = 4,
        n_grid: int = 16,
        fc_layer: str | None = None,
        deletion_steps: int = 16,
        faithfulness_every: int = 1,
        pointing_tolerance: int = 0,
        max_strip: int = 12,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        probe_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(probe_size=probe_size, **kwargs)
        self.options = CAMOptions.pick(locals())
        self._layers: dict[str, torch.nn.Module] = {}
        self.history = CAMHistory()  # the evolution strip's maps and the drift reference, kept in the checkpoint
        self.prober: CAMProbe | None = None

    # identity & state ------------------------------------------------------------------------------
    @override
    def _state_args(self) -> dict[str, Any]:
        o = self.options
        choices = {"method": o.method, "aggregate": o.aggregate, "target": o.target, "guided": o.guided}
        return {**super()._state_args(), "layers": o.layers, **choices}

    @override
    def _extra_state(self) -> dict[str, Any]:
        return self.history.state_dict()

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state)

    @override
    def _on_probe_changed(self) -> None:
        self.history.clear()

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, method {self.options.method}, layers {list(self._layers) or list(self.layers)}"

    # setup and running -----------------------------------------------------------------------------
    def _config(self, layers: dict[str, torch.nn.Module]) -> CAMConfig:
        return CAMConfig(layers, self.options, batch_size=self.batch_size, norm=self.norm, display=self.display)

    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def check(model: Any, example: torch.Tensor, layers: dict[str, torch.nn.Module]) -> None:
            labels = self.probe.labels[: example.shape[0]].to(example.device)
            class_maps(model, example, labels, self._config(layers))  # raises if the method or `output=` does not apply

        self._layers = self.setup_layers(pl_module, list(self.options.layers), self.options.reshape, check)
        self.prober = CAMProbe(self.probe, self._config(self._layers), self.history)
        # its gradients keep it off the shared clean forward, whose price estimates its parts before it runs them
        self.prober.image_seconds = lambda: CleanForward.of(trainer).image_seconds()
        self.prober.shares = Collective.of(trainer).shares  # each rank explains its share of the probe set

    @override
    def _least_cost(self) -> float | None:
        """Its maps' last seconds: the faithfulness scores are borrowed for by no one (they run when its own
        credit allows)."""
        return None if self.prober is None else self.prober.costs.get("maps")

    @override
    def _whole_cost(self) -> float | None:
        """Its maps and its faithfulness scores every ``faithfulness_every``-th run, measured or estimated
        (:meth:`~trainviz.probes.cam.CAMProbe.estimates`): what its pool is fitted to, so that a short credit
        that left the scores out does not shrink its share until they never run."""
        return None if self.prober is None else self.prober.whole_cost()

    @override
    def _plan(self, credit: float | None, essential: bool, epoch: int) -> Any:
        """The probe's plan (:meth:`~trainviz.probes.cam.CAMProbe.plan`): under a budget, a run whose due
        faithfulness scores do not fit runs without them and a run whose maps do not fit is skipped (unless
        essential), each logged as skipped."""
        plan = self.prober.plan(Credit(credit, essential, epoch))
        for what, reason in self.prober.skipped:
            self._skip(epoch, what, reason)
        return plan
