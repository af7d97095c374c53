"""``DecoderMapCallback``: per-class spatial maps before global pooling, during training, after Xiaohan Zhang,
"Visualization of encoder-decoder structure of Deep Convolutional Neural Network" (the encoder-decoder with group
convolution, its max-normalised maps of eq. 10, their evolution over epochs in section 5.1 and correct vs wrong
predictions with their confidence in section 5.2).

The computation is :class:`trainviz.probes.decoder_maps.DecoderMapProbe` (plan, compute a share, merge); this module
is the Lightning lifecycle around it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.contract import Credit
from trainviz.ops.class_maps import PatternTracker, Sharpness
from trainviz.probes.decoder_maps import (
    DecoderMapConfig,
    DecoderMapOptions,
    DecoderMapProbe,
    check_map_layer,
)

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["DecoderMapCallback"]


class DecoderMapCallback(ProbeCallback):
    """Per-class maps of a probe set (Zhang's encoder-decoder with group convolution): the maps themselves,
    each class's pattern, how stable the patterns are over training and when they form, and whether confident
    predictions have sharper maps.

    Works on any classifier whose logits are the global pooling of a layer with one channel per class
    (:class:`~trainviz.models.ClassMapNet`'s ``decoder.class_maps``, or a conv head with ``K`` output
    channels before GAP). One forward per probe batch gives both the logits and the maps.

    Maps are normalised by Zhang's eq. 10, ``f / max(f)``, after clamping negatives to 0 (the maps of
    ``ClassMapNet(decoder="seed003")``, Zhang's decoder, end in a ReLU and are non-negative; those of
    ``decoder="grouped"`` are signed; a map with no positive value shows as all zeros). A class's *pattern* is
    its mean normalised map over the probe images of that class; its *stability* is the Pearson correlation
    of the pattern with the previous run's; it *forms* at the first run from which the stability stays
    ``>= stability_threshold`` (:mod:`trainviz.ops.class_maps`). *Sharpness* of the predicted class's map
    (``"peak_to_mean"``: max / mean, or ``"entropy"``: 1 - normalised entropy) is related to the confidence
    ``P_k`` by Spearman's rank correlation, separately for correct and wrong predictions (Zhang, section 5.2).

    Logged keys (``trainviz/decoder_maps/...``, step = epoch index):
        - ``stability/<class>`` (scalars, from the second run; skipped when a pattern is flat) and
          ``mean_stability`` (their mean).
        - ``sharpness/corr_correct``, ``sharpness/corr_wrong`` (scalars): Spearman's rho of sharpness vs
          confidence within each group (written when the group has >= 3 predictions and is not constant);
          ``sharpness/mean_correct``, ``sharpness/mean_wrong`` (scalars): mean sharpness (when the group
          is not empty).
        - ``class_maps`` (image): for ``n_grid`` probe images (one per class first), every class's map
          with ``P_k`` (the 16 most probable classes when there are more).
        - ``class_means`` (image): each class's pattern with its image count and stability.
        - ``correct`` and ``wrong`` (images, Zhang's figures 6-7): up to ``n_examples`` correctly / wrongly
          predicted probe images, the predicted class's map over the image and alone, with true label,
          prediction and ``P_k``.
        - ``evolution`` (image, at fit end, step = last run; Zhang's figures 3-5): rows = the ``n_tracked``
          probe images, columns = runs (at most 16, evenly spread), the true class's map over the image.
        - ``formation_epochs`` (text, at fit end): markdown table of the epoch index at which each class's
          pattern formed and its last stability.
        - ``seconds``, ``failures`` (scalars, from the base class).
        - artifacts ``decoder_maps/epoch_XXXX/maps.npz`` (``maps`` float16 (N, K, h, w) normalised,
          ``probs``, ``labels``, ``ids``, ``class_means``, ``counts``), ``decoder_maps/metrics.jsonl``
          (:class:`~trainviz.probes.decoder_maps.DecoderMapResult` records: stability, sharpness, accuracy per
          run), ``decoder_maps/formation.json`` and the images above as ``decoder_maps/epoch_XXXX/<name>.png``.

    Args:
        layer: dotted name of the layer with the per-class maps, checked at setup (it must exist and give
            ``(N, K, H, W)`` with ``K`` = number of logits). A name that is not found is also looked up as
            a unique suffix (:func:`trainviz.core.layers.resolve_layer`), so ``"decoder.class_maps"`` finds
            ``"net.decoder.class_maps"``.
        n_tracked: probe images followed across epochs in the evolution strip.
        n_grid: probe images shown with all their class maps.
        n_examples: images in each of the correct / wrong grids.
        stability_threshold: stability from which a pattern counts as formed, in (0, 1].
        sharpness: ``"peak_to_mean"`` or ``"entropy"``.
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``,
            ``probe_size`` (default 96; give each class several images, e.g. 2-4 per class with many classes), ...).

    Raises:
        ValueError: in ``__init__``, for an argument out of range (``layer`` empty, a count not a positive int,
            ``stability_threshold`` outside (0, 1], an unknown ``sharpness``); at fit start, before the first
            epoch, when the layer is not found (the message names close matches) or does not give one map per
            logit, or the model's output is not logits.

    Example:
        >>> import tempfile, pytorch_lightning as pl
        >>> from trainviz.callbacks.decoder_maps import DecoderMapCallback
        >>> from trainviz.data import ShapesDataModule
        >>> from trainviz.models.lightning import ClassMapClassifier
        >>> cb = DecoderMapCallback(layer="decoder.class_maps", probe_size=12, n_tracked=2)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[cb], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      default_root_dir=tempfile.mkdtemp())
        >>> trainer.fit(ClassMapClassifier(num_classes=6, encoder="small"), ShapesDataModule(n_train=64, n_val=32))
        >>> cb.layer_name, cb.done_epochs
        ('net.decoder.class_maps', [0])
    """

    name = "decoder_maps"
    budget_share = 0.2  # of default_callbacks(budget=)
    opt_in = (
        True  # default_callbacks leaves it out unless asked for: needs a model with per-class maps (ClassMapClassifier)
    )
    needs_pixels = False  # computes on the model's own inputs; only its pictures need a display mapping
    default_probe_size = 96

    def __init__(
        self,
        layer: str = "decoder.class_maps",
        n_tracked: int = 4,
        n_grid: int = 4,
        *,
        n_examples: int = 8,
        stability_threshold: float = 0.9,
        sharpness: Sharpness = "peak_to_mean",
        probe_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(probe_size=probe_size, **kwargs)
        self.options = DecoderMapOptions.pick(locals())
        # the probe's history, kept across runs and in checkpoints (restored before the probe is built)
        self.tracker = PatternTracker(self.options.stability_threshold)
        self.tracked_maps: dict[int, torch.Tensor] = {}  # epoch -> (n_tracked, h, w) float16, CPU
        self.layer_name: str | None = None
        self.prober: DecoderMapProbe | None = None

    # identity & state ------------------------------------------------------------------------------
    @override
    def _state_args(self) -> dict[str, Any]:
        return {**super()._state_args(), "layer": self.layer}

    @override
    def _extra_state(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "tracked_maps": dict(self.tracked_maps)}

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state.get("tracker", {}))
        self.tracked_maps = {int(e): torch.as_tensor(m) for e, m in state.get("tracked_maps", {}).items()}

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, layer {self.layer_name or self.layer!r}"

    # setup and running -----------------------------------------------------------------------------
    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def check(model: Any, example: torch.Tensor, layers: dict[str, Any]) -> None:
            check_map_layer(model, next(iter(layers)), example)  # one map per logit; also checks `output=`

        try:
            self.layer_name = next(iter(self.setup_layers(pl_module, self.options.layer, check=check)))
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from err
        o = self.options
        config = DecoderMapConfig(
            self.layer_name,
            n_tracked=o.n_tracked,
            n_grid=o.n_grid,
            n_examples=o.n_examples,
            sharpness=o.sharpness,
            batch_size=self.batch_size,
            norm=self.norm,
            display=self.display,
        )
        probe = self.device_probe(pl_module)
        self.prober = DecoderMapProbe(probe, config, self.tracker, tracked_maps=self.tracked_maps)

    @override
    def _plan(self, credit: float | None, essential: bool, epoch: int) -> Any:
        if super()._plan(credit, essential, epoch) is None:  # the last whole run does not fit the credit
            return None
        return self.prober.plan(Credit(credit, essential, epoch))
