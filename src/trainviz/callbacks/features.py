"""``FeatureMapCallback``: filters, internal activations and activation distributions of a fixed probe set during
training, after Fleuret's "Under the hood" (EE-559 lecture 8: 2-D linear units as lines, convnet filters as
images, internal layer activations as images, distributions of activations on a population of samples) and the
intermediate feature maps of test images of the interactive CNN visualisation paper.

The computation is :class:`trainviz.probes.features.FeatureProbe` (plan, compute a share, merge); this module is the
Lightning lifecycle around it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.contract import Credit
from trainviz.core.guard import preserve_rng, probe_guard
from trainviz.core.layers import model_layout
from trainviz.core.namespace import info
from trainviz.core.normalization import Normalization
from trainviz.core.probeset import ProbeSet, split_item, stratified_indices
from trainviz.probes.features import (
    FeatureConfig,
    FeatureOptions,
    FeatureProbe,
    auto_feature_layer,
    check_feature_layers,
    typed_layers,
)

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["FeatureMapCallback"]


class FeatureMapCallback(ProbeCallback):
    """Filters as images, activation maps of a few probe images, and the distribution of every layer's
    activations over the probe set, every N epochs.

    All layers come from ONE hooked forward per probe batch (no gradients). The channels shown are chosen once,
    at the first run: the ``n_channels`` of largest mean activation over the probe set, kept in the callback's
    state (checkpoints included) so every epoch shows the same ones. Filters are the first ``n_filters`` (and
    first ``filter_channels`` input channels) by construction, the same at every epoch. Definitions (unit,
    dead, sparsity, std) are in :mod:`trainviz.ops.features`.

    Logged keys (step = epoch index; ``<layer>`` is each resolved layer name):
        - ``trainviz/features/<layer>/dead_fraction`` (scalar): the fraction of units (channels of conv
          outputs, features of linear outputs, channels of tokens) never > 0 over all probe images and positions.
        - ``trainviz/features/<layer>/sparsity`` (scalar): the fraction of all output values that are <= 0.
        - ``trainviz/features/<layer>/mean``, ``.../std`` (scalars): mean and population std of all values.
        - ``trainviz/features/<layer>/activations`` (histogram): the layer's values (a uniform sample of at most
          ``hist_values``, drawn with a private generator).
        - ``trainviz/features/<layer>/histogram`` (image): the same values drawn as a histogram.
        - ``trainviz/features/<layer>/overlay`` (image, layers with feature maps and image inputs): rows of
          ``[image, each chosen channel upsampled over it]`` for ``n_images`` probe images (one per class first).
        - ``trainviz/features/<layer>/maps`` (image, layers with feature maps): the same maps in colour, each
          channel min-max scaled over the shown images.
        - ``trainviz/features/<filter layer>/filters`` (image): the filters of ``filter_layer`` (RGB when it has 3
          input channels, per-input-channel grayscale tiles otherwise) and of each of ``filter_layers``.
        - ``trainviz/features/<line layer>/lines`` (image): each unit of the linear layer with 2 inputs as its
          line ``w.x + b = 0`` over the layer's inputs on the probe set, coloured by class.
        - ``trainviz/features/seconds``, ``trainviz/features/failures`` (scalars, from the base class).
        - artifacts: ``features/epoch_XXXX/features.npz`` (``hist/<layer>``, ``unit_mean/<layer>``,
          ``unit_max/<layer>``, ``channels/<layer>``, ``maps/<layer>`` float16 ``(n_images, n_channels, h, w)``,
          ``shown_ids``, ``lines/<layer>/{points, labels, segments, visible, weight, bias, box}``),
          ``features/metrics.jsonl`` (:class:`~trainviz.probes.features.FeatureResult` records) and the PNGs above.

    Args:
        layers: layers whose outputs are shown and measured (see ``trainviz.list_layers(model)``), or ``"auto"``:
            the last module with a spatial 4-D output (as CAM, tokens of a ViT included); on a model without one
            (an MLP), the last ``torch.nn`` activation module (e.g. the ``nn.ReLU`` of seed 001's toy).
        n_images: probe images whose activation maps are shown.
        n_channels: channels shown per layer.
        filter_layer: the convolution drawn as images, ``"auto"`` (the first ``nn.Conv2d``; none on a model
            without one) or ``None``.
        filter_layers: deeper ``nn.Conv2d`` layers drawn as channel grids.
        n_filters: filters drawn per layer (the first ones).
        filter_channels: input channels drawn per filter in grayscale grids (the first ones).
        filter_scaling: ``"filter"`` (default, as the seed: each filter min-max scaled over all its weights) or
            ``"symmetric"`` (0 is mid-grey, scaled by the layer's largest absolute weight).
        line_layer: an ``nn.Linear`` with 2 inputs drawn as lines, ``"auto"`` (the first such layer; none on a
            model without one) or ``None``.
        hist_values: the most values per layer kept for the histograms.
        reshape: a callable turning a layer's output into feature maps ``(N, C, h, w)`` for token layouts other
            than the default (see :func:`trainviz.core.layers.to_feature_maps`).
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``, ``probe_size``
            (default 64), ``batch_size``, ``normalization``, ``output``, ...).

    Probe data may be images ``(C, H, W)`` or, for models on vectors such as seed 001's 2-D points, vectors
    ``(D,)``: those are kept in the probe set as ``(D, 1, 1)`` and given to the model as ``(N, D)``; they have
    no pixel normalisation and no overlays.

    Raises:
        ValueError: in ``__init__``, for an argument out of range (``layers`` empty or repeated, a count not a
            positive int, an unknown ``filter_scaling``, a layer argument not a name); at fit start, before the
            first epoch, when a layer is not found (the message names close matches), ``filter_layer`` or a
            ``filter_layers`` entry is not an ``nn.Conv2d``, ``line_layer`` is not an ``nn.Linear`` with 2 inputs,
            a layer's output cannot be laid out as feature maps, or the model's output is not logits.

    Example:
        >>> import tempfile, pytorch_lightning as pl
        >>> from trainviz.callbacks.features import FeatureMapCallback
        >>> from trainviz.data import ShapesDataModule
        >>> from trainviz.models import DemoClassifier
        >>> cb = FeatureMapCallback(layers=["net.features.0", "net.features"], probe_size=12, n_channels=4)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[cb], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      default_root_dir=tempfile.mkdtemp())
        >>> trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule(n_train=64, n_val=32))
        >>> cb.done_epochs, list(cb._filters), len(cb.channels["net.features"])
        ([0], ['net.features.0.0'], 4)
    """

    name = "features"
    budget_share = 0.1  # of default_callbacks(budget=)
    needs_pixels = False  # computes on the model's own inputs; only its pictures need a display mapping
    default_probe_size = 64

    def __init__(
        self,
        layers: Sequence[str] | str = ("auto",),
        n_images: int = 4,
        n_channels: int = 8,
        *,
        filter_layer: str | None = "auto",
        filter_layers: Sequence[str] = (),
        n_filters: int = 20,
        filter_channels: int = 15,
        filter_scaling: Literal["filter", "symmetric"] = "filter",
        line_layer: str | None = "auto",
        hist_values: int = 4096,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        probe_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(probe_size=probe_size, **kwargs)
        self.options = FeatureOptions.pick(locals())
        self._reshape: Callable[[torch.Tensor], torch.Tensor] | None = reshape
        self.input_shape: tuple[int, ...] | None = None  # vectors (D,) stored as (D, 1, 1) in the probe set
        self.channels: dict[str, list[int]] = {}  # the probe's history: chosen at the first run, kept
        self._layers: dict[str, nn.Module] = {}
        self._filters: dict[str, nn.Module] = {}
        self._rgb_filter: str | None = None  # `filter_layer`, drawn in colour when it sees RGB
        self._lines: dict[str, nn.Module] = {}
        self.prober: FeatureProbe | None = None

    # identity & state ------------------------------------------------------------------------------
    @override
    def _state_args(self) -> dict[str, Any]:
        return {**super()._state_args(), "layers": self.layers, "n_channels": self.n_channels}

    @override
    def _extra_state(self) -> dict[str, Any]:
        return {
            "channels": {k: list(v) for k, v in self.channels.items()},
            "input_shape": None if self.input_shape is None else list(self.input_shape),
        }

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.channels.clear()
        self.channels.update({k: [int(c) for c in v] for k, v in (state.get("channels") or {}).items()})
        shape = state.get("input_shape")
        self.input_shape = None if shape is None else tuple(int(s) for s in shape)

    @override
    def _on_probe_changed(self) -> None:
        self.channels.clear()

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, layers {list(self._layers) or list(self.layers)}"

    # vector inputs (seed 001's 2-D points) ---------------------------------------------------------
    @override
    def _draw(self, trainer: pl.Trainer, source: Any) -> None:
        first = split_item(source[0])[0] if not isinstance(source, ProbeSet) and len(source) else None
        if first is None or torch.as_tensor(first).dim() != 1:
            self.input_shape = None
            super()._draw(trainer, source)
            return
        from trainviz.core.probeset import _dataset_labels

        with preserve_rng():  # reading items may run random augmentations: keep the training stream
            torch.manual_seed(self.probe_seed)
            idx = stratified_indices(_dataset_labels(source), self._probe_size_for(source), self.probe_seed)
            items = [split_item(source[int(i)]) for i in idx]
        vectors = torch.stack([torch.as_tensor(x, dtype=torch.float32) for x, _, _ in items])
        self.input_shape = tuple(vectors.shape[1:])
        names = getattr(trainer.datamodule, "class_names", None) or getattr(source, "class_names", None)
        self.probe = ProbeSet(
            vectors[:, :, None, None],
            torch.tensor([lab for _, lab, _ in items], dtype=torch.long),
            torch.as_tensor(idx, dtype=torch.long),
            class_names=None if names is None else list(names),
        )

    @override
    def _resolve_normalization(self, trainer: pl.Trainer, source: Any) -> None:
        if self.input_shape is None:
            super()._resolve_normalization(trainer, source)
        else:  # vectors are not pixels: nothing to map back, no overlays
            self.norm, self.norm_source = Normalization.identity(self.probe.images.shape[1]), "identity"

    @override
    def example_batch(self, pl_module: pl.LightningModule, n: int = 2) -> torch.Tensor:
        x = super().example_batch(pl_module, n)
        return x if self.input_shape is None else x.reshape(x.shape[0], *self.input_shape)

    # setup and running -----------------------------------------------------------------------------
    def _config(self) -> FeatureConfig:
        return FeatureConfig(
            self._layers,
            filter_layers=self._filters,
            rgb_filters=self._rgb_filter,
            line_layers=self._lines,
            n_images=self.n_images,
            n_channels=self.n_channels,
            n_filters=self.n_filters,
            filter_channels=self.filter_channels,
            filter_scaling=self.filter_scaling,
            hist_values=self.hist_values,
            batch_size=self.batch_size,
            reshape=self._reshape,
            norm=self.norm,
            input_shape=self.input_shape,
            seed=self.probe_seed,
            display=self.display,
        )

    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        example = self.example_batch(pl_module, 1)
        with probe_guard(pl_module):  # the model's token and channels-last layout, unless `reshape=` says it
            model = self.logits_model(pl_module)
            self._reshape = self.options.reshape or model_layout(model, example)
            auto = auto_feature_layer(model, example, self._reshape) if "auto" in self.options.layers else None
        if auto is not None:
            info(f"trainviz: FeatureMapCallback layers='auto' resolved to {auto!r}", self._trainer)
        specs = list(dict.fromkeys(auto if s == "auto" else s for s in self.options.layers))
        self._filters, self._rgb_filter, self._lines = typed_layers(self.logits_model(pl_module), self.options)

        def check(model: Any, example: torch.Tensor, layers: dict[str, nn.Module]) -> None:
            self._layers = layers
            check_feature_layers(model, example, self._config())

        self._layers = self.setup_layers(pl_module, specs, self._reshape, check)
        self.prober = FeatureProbe(self.device_probe(pl_module), self._config(), channels=self.channels)

    @override
    def _plan(self, credit: float | None, essential: bool, epoch: int) -> Any:
        if super()._plan(credit, essential, epoch) is None:  # the last whole run does not fit the credit
            return None
        return self.prober.plan(Credit(credit, essential, epoch))
