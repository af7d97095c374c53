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
from trainviz.core.checks import check_bool, check_choice, check_layers, check_positive_int
from trainviz.ops.cam import AGGREGATES, METHODS
from trainviz.probes.cam import CAMConfig, class_maps, compute, evolution

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
    layer, and the aggregate when there are several layers).

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
        - ``trainviz/cam/<layer or aggregate>/average_drop`` and ``.../increase_in_confidence`` (scalars,
          fractions in [0, 1]): the target probability when the input is multiplied by the map, with 0
          (the normalisation mean colour for normalised inputs) where the map is 0.
        - ``trainviz/cam/<layer or aggregate>/deletion_auc`` (scalar): area under the target probability as the
          most salient pixels are replaced by 0 in ``deletion_steps`` steps (lower: more faithful).
        - ``trainviz/cam/<layer or aggregate>/drift_correlation`` (scalar, from the second run on): mean
          Pearson correlation of each probe image's map with its map at the previous run (1: stable),
          computed on maps shrunk to at most 32 pixels a side.
        - ``trainviz/cam/target_probability`` (scalar): mean probability of the explained class.
        - ``trainviz/cam/evolution`` (image, at fit end, step = last epoch): the ``n_tracked`` images' aggregated
          maps across (at most ``max_strip`` evenly spaced) epochs.
        - ``trainviz/cam/seconds``, ``trainviz/cam/failures`` (scalars, from the base class).
        - artifacts: ``cam/epoch_XXXX/maps.npz`` (``maps/<key>`` float16 ``(N, H, W)``, ``ids``, ``labels``,
          ``targets``, ``probs``, and per image ``pointing_hit/<key>``, ``energy/<key>``, ``drop/<key>``,
          ``increase/<key>``, ``deletion_curve/<key>``, ``deletion_auc/<key>``, ``drift/<key>``),
          ``cam/metrics.jsonl`` (:class:`~trainviz.probes.cam.CAMProbeResult` records: the scalars of each run),
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
            ``method``, ``aggregate`` or ``target``, a count not a positive int, ``fc_layer`` without
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
        target: Literal["true", "predicted"] = "true",
        guided: bool = False,
        n_tracked: int = 4,
        n_grid: int = 16,
        fc_layer: str | None = None,
        deletion_steps: int = 16,
        pointing_tolerance: int = 0,
        max_strip: int = 12,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        probe_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(probe_size=probe_size, **kwargs)
        self.layers = check_layers("layers", layers)
        self.method = check_choice("method", method, METHODS)
        self.aggregate = check_choice("aggregate", aggregate, AGGREGATES)
        self.target = check_choice("target", target, ("true", "predicted"))
        self.guided = check_bool("guided", guided)
        self.n_tracked = check_positive_int("n_tracked", n_tracked)
        self.n_grid = check_positive_int("n_grid", n_grid)
        if fc_layer is not None and (not isinstance(fc_layer, str) or method != "cam"):
            got = f"got {fc_layer!r} with method={method!r}"
            raise ValueError(f"Expected `fc_layer` to be a layer name used with method='cam', {got}.")
        self.fc_layer = fc_layer
        self.deletion_steps = check_positive_int("deletion_steps", deletion_steps)
        if isinstance(pointing_tolerance, bool) or not isinstance(pointing_tolerance, int) or pointing_tolerance < 0:
            raise ValueError(f"Expected `pointing_tolerance` to be a non-negative int, got {pointing_tolerance!r}.")
        self.pointing_tolerance = pointing_tolerance
        self.max_strip = check_positive_int("max_strip", max_strip)
        if reshape is not None and not callable(reshape):
            raise ValueError(f"Expected `reshape` to be a callable (N, T, C) -> (N, C, h, w) or None, got {reshape!r}.")
        self.reshape = reshape
        self._layers: dict[str, torch.nn.Module] = {}
        self._history: list[tuple[int, torch.Tensor]] = []  # (epoch, tracked aggregate maps) on the CPU, float16
        self._previous: dict[str, torch.Tensor] = {}  # last run's maps (shrunk, CPU, float16) per key, for drift

    # identity & state ------------------------------------------------------------------------------
    @override
    def _state_args(self) -> dict[str, Any]:
        choices = {"method": self.method, "aggregate": self.aggregate, "target": self.target, "guided": self.guided}
        return {**super()._state_args(), "layers": self.layers, **choices}

    @override
    def _extra_state(self) -> dict[str, Any]:
        return {
            "history_epochs": [e for e, _ in self._history],
            "history_maps": torch.stack([m for _, m in self._history]) if self._history else None,
            "previous": dict(self._previous),
        }

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        maps = state.get("history_maps")
        self._history = [] if maps is None else list(zip(state.get("history_epochs", []), maps.unbind(0)))
        self._previous = dict(state.get("previous") or {})

    @override
    def _on_probe_changed(self) -> None:
        self._history, self._previous = [], {}

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, method {self.method}, layers {list(self._layers) or list(self.layers)}"

    # setup and running -----------------------------------------------------------------------------
    def _config(self, layers: dict[str, torch.nn.Module]) -> CAMConfig:
        return CAMConfig(
            layers,
            self.method,
            self.aggregate,
            self.target,
            self.guided,
            self.fc_layer,
            self.deletion_steps,
            self.pointing_tolerance,
            self.n_grid,
            self.n_tracked,
            self.max_strip,
            self.batch_size,
            self.reshape,
            self.norm,
            self.display,
        )

    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def check(model: Any, example: torch.Tensor, layers: dict[str, torch.nn.Module]) -> None:
            labels = self.probe.labels[: example.shape[0]].to(example.device)
            class_maps(model, example, labels, self._config(layers))  # raises if the method or `output=` does not apply

        self._layers = self.setup_layers(pl_module, list(self.layers), self.reshape, check)

    @override
    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        probe = self.device_probe(pl_module)
        config = self._config(self._layers)
        result = compute(self.logits_model(pl_module), probe, config, epoch=epoch, previous=self._previous)
        self.sink.write(result)
        self._previous = result.small
        self._history.append((epoch, result.small["aggregate"][self.example_indices(self.n_tracked)]))

    @override
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._history:
            return
        strip, arrays = evolution(self._history, self.probe, self._config(self._layers))
        last = self._history[-1][0]
        self.sink.image("evolution", strip, last, artifact=True)
        self.sink.npz(last, "evolution", **arrays)
