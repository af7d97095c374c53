"""Filters, activations and activation distributions of a probe set (pure torch), after the first sections of
Fleuret's "Under the hood" (EE-559 lecture 8: the 2-D linear units as lines, convnet filters as images, internal
layer activations as images, distributions of activations over a population) and the intermediate feature maps of
test images of the interactive CNN visualisation paper (seed 002).

:class:`FeatureProbe` is one run under the compute contract (:mod:`trainviz.core.contract`). On a share, ONE
hooked forward per probe batch captures every layer at once (:func:`trainviz.core.hooks.capture`, plus the inputs of
the line layers in the same forward); each layer's statistics are accumulated on the device as mergeable sums, counts,
mean and M2 (the updates of :class:`~trainviz.ops.features.ActivationStatsAccumulator`) and a histogram sample keyed by
the one-process random stream at the values' global positions, and the share's part moves to the host in one
transfer (:class:`FeaturePartial`). :meth:`FeatureProbe.merge` reduces the parts over all images, exactly as one
process would (the sample is the values of smallest keys over the whole set), chooses the channels shown (kept in the
probe's history from the first run) and builds the pictures. The run has no parts: its plan is ``True``.
:func:`compute` is that in one process; :class:`FeatureOptions` are the options of
:class:`~trainviz.callbacks.features.FeatureMapCallback`, which runs it.

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.core.probeset import ProbeSet
    >>> from trainviz.probes.features import FeatureConfig, FeatureResult, compute
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2)).eval()
    >>> probe = ProbeSet(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]), torch.arange(4))
    >>> result = compute(net, probe, FeatureConfig({"1": net[1]}, filter_layers={"0": net[0]}, n_channels=2), epoch=0)
    >>> sorted(result.scalars()), len(result.channels["1"])
    (['1/dead_fraction', '1/mean', '1/sparsity', '1/std'], 2)
    >>> FeatureResult.from_record(result.record()) == result
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from trainviz.core.checks import check_choice, check_layers, check_positive_int
from trainviz.core.common import class_names, example_indices, json_number
from trainviz.core.contract import Credit, Probe, Share
from trainviz.core.display import Display, pictures
from trainviz.core.hooks import capture, first_tensor
from trainviz.core.layers import Layout, Reshape, find_last_spatial_layer, resolve_layer, to_feature_maps
from trainviz.core.normalization import Normalization
from trainviz.core.options import Options
from trainviz.core.outputs import to_logits
from trainviz.core.probeset import ProbeSet
from trainviz.core.result import Result
from trainviz.core.transfer import to_cpu, to_host, whole
from trainviz.ops.features import (
    FILTER_SCALINGS,
    filter_tiles,
    line_segments,
    plot_box,
    select_channels,
    unit_view,
)
from trainviz.probes.features_names import NAMES
from trainviz.render.features import activation_grids, filter_grid, histogram_panel, line_plot

__all__ = [
    "METRICS",
    "FeatureConfig",
    "FeatureOptions",
    "FeaturePartial",
    "FeatureProbe",
    "FeatureResult",
    "LayerPartial",
    "auto_activation_layer",
    "auto_feature_layer",
    "check_feature_layers",
    "compute",
    "model_inputs",
    "typed_layers",
]

METRICS = ("dead_fraction", "mean", "std", "sparsity")
_NOT_ACTIVATIONS = (nn.MultiheadAttention, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d)


def _optional_layer(name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"Expected `{name}` to be a layer name, 'auto' or None, got {value!r}.")
    return value


@dataclass(frozen=True, kw_only=True)
class FeatureOptions(Options):
    """The user options of :class:`~trainviz.callbacks.features.FeatureMapCallback` (declared once; the callback's
    docstring says what each does).

    Attributes:
        layers: layer names or ``"auto"``; n_images, n_channels: images and channels shown per layer.
        filter_layer: the convolution drawn as images, ``"auto"`` or ``None``; filter_layers: deeper convolutions.
        n_filters, filter_channels: filters and input channels drawn; filter_scaling: one of
            :data:`~trainviz.ops.features.FILTER_SCALINGS`.
        line_layer: an ``nn.Linear`` with 2 inputs drawn as lines, ``"auto"`` or ``None``.
        hist_values: the most values per layer kept for the histograms.
        reshape: a callable turning a token layer's output into feature maps, or ``None``.
    """

    layers: tuple[str, ...] = ("auto",)
    n_images: int = 4
    n_channels: int = 8
    filter_layer: str | None = "auto"
    filter_layers: tuple[str, ...] = ()
    n_filters: int = 20
    filter_channels: int = 15
    filter_scaling: str = "filter"
    line_layer: str | None = "auto"
    hist_values: int = 4096
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None

    def check(self) -> None:
        if self.reshape is not None and not callable(self.reshape):
            raise ValueError(
                f"Expected `reshape` to be a callable (N, T, C) -> (N, C, h, w) or None, got {self.reshape!r}."
            )
        self.set(
            layers=check_layers("layers", self.layers),
            n_images=check_positive_int("n_images", self.n_images),
            n_channels=check_positive_int("n_channels", self.n_channels),
            filter_layer=_optional_layer("filter_layer", self.filter_layer),
            filter_layers=() if not self.filter_layers else check_layers("filter_layers", self.filter_layers),
            n_filters=check_positive_int("n_filters", self.n_filters),
            filter_channels=check_positive_int("filter_channels", self.filter_channels),
            filter_scaling=check_choice("filter_scaling", self.filter_scaling, FILTER_SCALINGS),
            line_layer=_optional_layer("line_layer", self.line_layer),
            hist_values=check_positive_int("hist_values", self.hist_values),
        )


_DEFAULTS = FeatureOptions()


@dataclass
class FeatureConfig:
    """What a run computes and shows: the options (defaults from :class:`FeatureOptions`) with the layers resolved,
    and what setup resolves.

    Attributes:
        layers: the resolved ``{name: module}`` whose outputs are shown and measured.
        filter_layers: ``{name: nn.Conv2d}`` whose weights are drawn; ``rgb_filters`` names the one drawn in
            colour when it has 3 input channels (the first conv layer), the others are channel grids.
        line_layers: ``{name: nn.Linear}`` with 2 inputs whose units are drawn as lines over their inputs.
        n_images: probe images whose maps are shown (one per class first); n_channels: channels per layer.
        n_filters, filter_channels, filter_scaling: see :func:`trainviz.ops.features.filter_tiles`.
        hist_values: the most values per layer kept for the histograms (a uniform sample when there are more).
        batch_size: images per forward; reshape: token layouts (see :func:`trainviz.core.layers.to_feature_maps`).
        norm: model inputs back to pixels for the overlays (``None``: the identity).
        display: how pictures show the inputs (:class:`~trainviz.core.display.Display`; ``None``: ``norm`` undone).
        input_shape: the per-example shape the model takes when the probe images hold vectors ``(N, D, 1, 1)``
            (non-image inputs such as 2-D points); ``None`` for images.
        seed: seed of the histogram sampling generator.
    """

    layers: dict[str, nn.Module]
    _: KW_ONLY
    filter_layers: dict[str, nn.Module] = field(default_factory=dict)
    rgb_filters: str | None = None
    line_layers: dict[str, nn.Module] = field(default_factory=dict)
    n_images: int = _DEFAULTS.n_images
    n_channels: int = _DEFAULTS.n_channels
    n_filters: int = _DEFAULTS.n_filters
    filter_channels: int = _DEFAULTS.filter_channels
    filter_scaling: str = _DEFAULTS.filter_scaling
    hist_values: int = _DEFAULTS.hist_values
    batch_size: int = 64
    reshape: Reshape = None
    norm: Normalization | None = None
    input_shape: tuple[int, ...] | None = None
    seed: int = 0
    display: Display | None = None


@dataclass(kw_only=True)
class FeatureResult(Result):
    """One run. The record is flat: ``{"epoch", "<layer>/<metric>" (metric in dead_fraction, mean, std,
    sparsity; ``None`` when not finite), "channels": {layer: [shown channel indices]}}``. The pictures' inputs
    are not recorded and are ``None`` in a result read back.

    Shape:
        samples ``{layer: (S,)}``, unit_mean and unit_max ``{layer: (U,)}``, maps ``{layer: (n_images,
        n_channels, h, w)}`` in [0, 1] (each channel min-max scaled over the shown images), pixels
        ``(n_images, C, H, W)`` in [0, 1]; filters ``{layer: (tiles (M, 1 or 3, kh, kw), ncols)}``; lines
        ``{layer: {"points" (N, 2), "labels" (N,), "segments" (K, 2, 2), "visible" (K,), "weight" (K, 2),
        "bias" (K,), "box" (4,)}}`` (numpy).
    """

    epoch: int
    per_layer: dict[str, dict[str, float]]
    channels: dict[str, list[int]]
    samples: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    unit_mean: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    unit_max: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    maps: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    pixels: torch.Tensor | None = field(default=None, repr=False, compare=False)
    captions: list[str] | None = field(default=None, repr=False, compare=False)
    shown_ids: np.ndarray | None = field(default=None, repr=False, compare=False)
    filters: dict[str, tuple[torch.Tensor, int]] | None = field(default=None, repr=False, compare=False)
    lines: dict[str, dict[str, np.ndarray]] | None = field(default=None, repr=False, compare=False)
    names: list[str] | None = field(default=None, repr=False, compare=False)

    def scalars(self) -> dict[str, float | None]:
        """The metrics of :data:`~trainviz.probes.features_names.NAMES`, by their names."""
        return {f"{layer}/{name}": v for layer, values in self.per_layer.items() for name, v in values.items()}

    def record(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            **{k: json_number(v) for k, v in self.scalars().items()},
            "channels": {k: list(v) for k, v in self.channels.items()},
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> FeatureResult:
        per_layer: dict[str, dict[str, float]] = {}
        for name, value in record.items():
            if "/" in name:
                layer, metric = name.rsplit("/", 1)
                per_layer.setdefault(layer, {})[metric] = float("nan") if value is None else value
        channels = {k: [int(c) for c in v] for k, v in (record.get("channels") or {}).items()}
        return cls(epoch=record["epoch"], per_layer=per_layer, channels=channels)

    def histograms(self) -> dict[str, Any]:
        return {f"{layer}/activations": s for layer, s in (self.samples or {}).items() if s.size}

    def render(self) -> dict[str, np.ndarray]:
        if self.samples is None:
            return {}
        out: dict[str, np.ndarray] = {}
        for layer, (tiles, ncols) in (self.filters or {}).items():
            out[f"{layer}/filters"] = filter_grid(tiles, ncols)
        for layer, maps in (self.maps or {}).items():
            overlay, raw = activation_grids(
                torch.from_numpy(maps).float(), self.channels[layer], self.pixels, self.captions
            )
            if overlay is not None:
                out[f"{layer}/overlay"] = overlay
            out[f"{layer}/maps"] = raw
        for layer, line in (self.lines or {}).items():
            title = f"{layer}: {int(line['visible'].sum())}/{len(line['visible'])} units"
            out[f"{layer}/lines"] = line_plot(
                torch.from_numpy(line["points"]),
                torch.from_numpy(line["labels"]).long(),
                torch.from_numpy(line["segments"]),
                torch.from_numpy(line["visible"]).bool(),
                tuple(float(v) for v in line["box"]),  # type: ignore[arg-type]
                title=title,
            )
        for layer, sample in self.samples.items():
            if sample.size:
                out[f"{layer}/histogram"] = histogram_panel(sample, layer)
        return out

    def arrays(self) -> dict[str, dict[str, Any]]:
        if self.samples is None:
            return {}
        data: dict[str, Any] = {"shown_ids": self.shown_ids}
        for layer in self.per_layer:
            data[f"hist/{layer}"] = self.samples[layer].astype(np.float32)
            data[f"unit_mean/{layer}"] = self.unit_mean[layer].astype(np.float32)
            data[f"unit_max/{layer}"] = self.unit_max[layer].astype(np.float32)
        for layer, maps in (self.maps or {}).items():
            data[f"channels/{layer}"] = np.asarray(self.channels[layer], dtype=np.int64)
            data[f"maps/{layer}"] = maps.astype(np.float16)
        for layer, line in (self.lines or {}).items():
            data.update({f"lines/{layer}/{k}": v for k, v in line.items()})
        return {"features": data}

    def section(self) -> dict[str, Any]:
        """The report section: dead fraction, mean, std and sparsity of each layer over epochs, then galleries of
        the filters, the activation maps (over the inputs and raw), the 2-D units' lines and the histograms (see
        :meth:`Result.section <trainviz.core.result.Result.section>`)."""
        layers = list(self.per_layer)
        y_ranges = {"dead_fraction": [0, 1.02], "mean": None, "std": None, "sparsity": [0, 1.02]}
        named = {metric: NAMES[f"{{layer}}/{metric}"] for metric in y_ranges}  # the name table's words
        curves = [
            {
                "title": named[metric].heading,
                "description": named[metric].text,
                "y": metric,
                "y_range": y_range,
                "series": [{"name": layer, "key": [f"{layer}/{metric}"]} for layer in layers],
            }
            for metric, y_range in y_ranges.items()
        ]
        filters = list(self.filters or {}) if self.filters is not None else []
        lines = list(self.lines or {}) if self.lines is not None else []
        mapped = list(self.maps or {}) if self.maps is not None else layers
        galleries = [
            {
                "title": "Filters",
                "description": "Convolution weights as images: the first layer in colour when it sees RGB, deeper "
                "layers as grids of the first input channels (columns) of the first filters (rows).",
                "images": [f"{k}/filters" for k in filters],
                "labels": filters,
            },
            {
                "title": "Activations over the input",
                "description": "The most active channels (chosen at the first run, fixed afterwards) of each layer "
                "on a few probe images, upsampled over the image.",
                "images": [f"{k}/overlay" for k in mapped],
                "labels": mapped,
                "maps": True,
            },
            {
                "title": "Activation maps",
                "description": "The same channels as raw maps (each channel scaled over the shown images).",
                "images": [f"{k}/maps" for k in mapped],
                "labels": mapped,
                "maps": True,
            },
            {
                "title": "Units as lines",
                "description": "Each unit of a linear layer with 2 inputs as its line w.x + b = 0 over the probe "
                "points coloured by class.",
                "images": [f"{k}/lines" for k in lines],
                "labels": lines,
            },
            {
                "title": "Activation histograms",
                "description": "Every layer's output values on the probe set (a fixed-size uniform sample).",
                "images": [f"{k}/histogram" for k in layers],
                "labels": layers,
            },
        ]
        return {
            "version": 1,
            "order": 33,
            "title": "Filters and activations",
            "description": "What the units are (filters, lines of 2-D units) and what they do (activation maps and "
            "the distribution of each layer's activations: dead units, sparsity, mean and spread) over epochs.",
            "curves": curves,
            "galleries": [g for g in galleries if g["images"]],  # type: ignore[index]
        }


def model_inputs(images: torch.Tensor, config: FeatureConfig) -> torch.Tensor:
    """Probe images as the model takes them: vectors stored as ``(N, D, 1, 1)`` back to ``(N, *input_shape)``."""
    return images if config.input_shape is None else images.reshape(images.shape[0], *config.input_shape)


@contextmanager
def _capture_inputs(modules: Mapping[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """The (first tensor) input of each module in the forwards inside the block, detached; hooks removed in
    ``finally``."""
    inputs: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            tensor = first_tensor(args)
            if tensor is not None:
                inputs[name] = tensor.detach()

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_pre_hook(make_hook(name)))
        yield inputs
    finally:
        for h in handles:
            h.remove()


def _maps(x: torch.Tensor, config: FeatureConfig, name: str) -> torch.Tensor | None:
    """A layer's output as feature maps, or ``None`` for vector outputs ``(N, F)`` (distributions only)."""
    if x.dim() == 2 and (config.reshape is None or isinstance(config.reshape, Layout)):
        return None
    return to_feature_maps(x, config.reshape, name)


def check_feature_layers(model: nn.Module, example: torch.Tensor, config: FeatureConfig) -> None:
    """One forward of ``example`` (model inputs) with every layer hooked: each must return a tensor, and each
    non-vector output must become feature maps (:func:`trainviz.core.layers.to_feature_maps`).

    Raises:
        ValueError: a layer is not called or returns no tensor, cannot be laid out as maps (naming it), or the
            model's output is not logits.
    """
    with torch.no_grad(), capture(model, config.layers) as acts, _capture_inputs(config.line_layers) as inputs:
        to_logits(model(example))
    for name in config.layers:
        if name not in acts:
            raise ValueError(f"Layer {name!r} returned no tensor in a forward pass (is it called by the model?).")
        _maps(acts[name], config, name)
    for name in config.line_layers:
        if name not in inputs or inputs[name].dim() != 2 or inputs[name].shape[1] != 2:
            got = tuple(inputs[name].shape) if name in inputs else "nothing"
            raise ValueError(f"Expected the line layer {name!r} to take 2-D points (N, 2), got {got}.")


def auto_activation_layer(model: nn.Module) -> str | None:
    """The fallback of ``layers="auto"`` on models without spatial outputs: the last activation module
    (``torch.nn`` activations such as ``nn.ReLU``, ``nn.GELU``, ``nn.Tanh``, in registration order), or ``None``."""
    chosen = None
    for name, module in model.named_modules():
        is_activation = type(module).__module__ == "torch.nn.modules.activation"
        if name and is_activation and not isinstance(module, _NOT_ACTIVATIONS):
            chosen = name
    return chosen


def auto_feature_layer(model: nn.Module, example: torch.Tensor, reshape: Reshape) -> str:
    """What ``layers="auto"`` means: the last module with a spatial output or, on a model without one, the last
    activation module (:func:`auto_activation_layer`).

    Raises:
        ValueError: there is neither.
    """
    try:
        auto = find_last_spatial_layer(model, example, reshape)
    except ValueError:
        auto = auto_activation_layer(model)
    if auto is None:
        raise ValueError(
            "FeatureMapCallback: `layers='auto'` found no module with a spatial output and no activation "
            "module; pass layer names (see `trainviz.list_layers(model)`)."
        )
    return auto


def _typed_layer(model: nn.Module, spec: str, kind: str) -> tuple[str, nn.Module] | None:
    def fits(m: nn.Module) -> bool:
        return isinstance(m, nn.Conv2d) if kind == "conv" else isinstance(m, nn.Linear) and m.in_features == 2

    if spec == "auto":
        return next(((n, m) for n, m in model.named_modules() if n and fits(m)), None)
    name, module = resolve_layer(model, spec)
    if not fits(module):
        what = "an nn.Conv2d" if kind == "conv" else "an nn.Linear with in_features=2"
        raise ValueError(f"Expected layer {name!r} to be {what}, got {type(module).__name__}.")
    return name, module


def typed_layers(
    model: nn.Module, options: FeatureOptions
) -> tuple[dict[str, nn.Module], str | None, dict[str, nn.Module]]:
    """``(filter_layers, rgb_filter, line_layers)`` of ``options``: ``"auto"`` is the first ``nn.Conv2d`` (the
    first ``nn.Linear`` with 2 inputs), or none; ``rgb_filter`` is ``filter_layer``'s resolved name.

    Raises:
        ValueError: a layer is not found, or is not of its kind.
    """
    filters: dict[str, nn.Module] = {}
    rgb = None
    for i, spec in enumerate(([options.filter_layer] if options.filter_layer else []) + list(options.filter_layers)):
        found = _typed_layer(model, spec, "conv")
        if found is not None:
            filters[found[0]] = found[1]
            if i == 0 and options.filter_layer is not None:
                rgb = found[0]
    found = _typed_layer(model, options.line_layer, "line") if options.line_layer else None
    return filters, rgb, {} if found is None else {found[0]: found[1]}


@dataclass(kw_only=True)
class LayerPartial:
    """One layer's statistics over one share, mergeable over shares (CPU; definitions in
    :mod:`trainviz.ops.features`).

    Attributes:
        count: values covered; unit_count: images x positions covered; nonpositive: values ``<= 0`` (exact counts).
        unit_sum, unit_max: per unit; mean, m2: of all values (float32, Chan's parallel update).
        keys, values: the share's histogram sample, the values of smallest keys (keys of the one-process stream at
            the values' global positions, so the merged sample is the one-process sample).
        channel_sum, channel_count: sums of the feature maps per channel and the positions they cover (layers with
            maps; ``None`` otherwise); maps: the shown images' maps (all channels) in this share.

    Shape:
        unit_sum, unit_max ``(U,)``; keys, values ``(S,)``; channel_sum ``(C,)``; maps ``(n, C, h, w)``.
    """

    count: int
    unit_count: int
    nonpositive: int
    unit_sum: torch.Tensor
    unit_max: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    channel_sum: torch.Tensor | None = None
    channel_count: int = 0
    maps: torch.Tensor | None = None


@dataclass(kw_only=True)
class FeaturePartial:
    """One share's part (CPU).

    Attributes:
        layers: each layer's :class:`LayerPartial` (absent for an empty share).
        shown: positions (in the run's list of shown images) of the shown images in this share, in order;
            shown_pred: their predictions.
        points: each line layer's inputs ``(n, 2)`` on the share's images.
        weights: what does not depend on images, from the share starting at 0 only: ``tiles/<layer>`` (filter
            tiles), ``weight/<layer>`` and ``bias/<layer>`` (line layers).
    """

    layers: dict[str, LayerPartial]
    shown: list[int]
    shown_pred: torch.Tensor
    points: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)


class _KeyStream:
    """A layer's random histogram keys at the share's values: the one-process stream (a generator seeded with
    ``seed``, one ``rand`` call per global batch), replayed over the global batches before the share."""

    def __init__(self, seed: int, batches: list[tuple[int, int]], start: int) -> None:
        self.seed, self.batches, self.start = seed, batches, start
        self.generator: torch.Generator | None = None

    def keys(self, lo: int, hi: int, per_image: int, device: torch.device) -> torch.Tensor:
        """The keys of images ``lo`` to ``hi`` (global; inside the global batch that holds them)."""
        if self.generator is None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed)
            for b0, b1 in self.batches:  # the calls one process made before the share's first batch
                if b1 <= self.start:
                    torch.rand((b1 - b0) * per_image, generator=self.generator, device=device)
        b0, b1 = next((b0, b1) for b0, b1 in self.batches if b0 <= lo < b1)
        keys = torch.rand((b1 - b0) * per_image, generator=self.generator, device=device)
        return keys[(lo - b0) * per_image : (hi - b0) * per_image]


class _LayerStats:
    """One layer's statistics over a share's batches, on the device: the updates of
    :class:`~trainviz.ops.features.ActivationStatsAccumulator`, with exact counts and keys from a
    :class:`_KeyStream`."""

    def __init__(self, max_values: int, stream: _KeyStream) -> None:
        self.max_values, self.stream = max_values, stream
        self.count = self.unit_count = 0
        self.t: dict[str, torch.Tensor] = {}
        self.channel_count = 0

    def update(self, x: torch.Tensor, lo: int, hi: int) -> None:
        v = unit_view(x.detach()).float()
        flat = v.reshape(-1)
        m = flat.numel()
        if m == 0:
            return
        t = self.t
        if not t:
            zero = torch.zeros((), device=v.device)
            t.update(unit_sum=torch.zeros(v.shape[1], device=v.device), nonpositive=zero.long(), mean=zero, m2=zero)
            t["unit_max"] = torch.full((v.shape[1],), float("-inf"), device=v.device)
        elif t["unit_sum"].shape[0] != v.shape[1]:
            raise ValueError(f"Expected {t['unit_sum'].shape[0]} units in every batch, got {v.shape[1]}.")
        t["unit_sum"] += v.sum((0, 2))
        t["unit_max"] = torch.maximum(t["unit_max"], v.amax((0, 2)))
        self.unit_count += v.shape[0] * v.shape[2]
        t["nonpositive"] += (flat <= 0).sum()
        batch_mean = flat.mean()
        batch_m2 = ((flat - batch_mean) ** 2).sum()
        total = self.count + m
        delta = batch_mean - t["mean"]
        t["mean"] = t["mean"] + delta * (m / total)
        t["m2"] = t["m2"] + batch_m2 + delta**2 * (self.count * m / total)
        self.count = total
        keys = self.stream.keys(lo, hi, m // (hi - lo), flat.device)
        if "keys" in t:
            keys, flat = torch.cat([t["keys"], keys]), torch.cat([t["values"], flat])
        if keys.numel() > self.max_values:
            keep = torch.topk(keys, self.max_values, largest=False, sorted=False).indices
            keys, flat = keys[keep], flat[keep]
        t["keys"], t["values"] = keys, flat

    def add_maps(self, maps: torch.Tensor) -> None:
        sums = maps.float().sum((0, 2, 3))
        self.t["channel_sum"] = sums if "channel_sum" not in self.t else self.t["channel_sum"] + sums
        self.channel_count += maps.shape[0] * maps.shape[2] * maps.shape[3]


def _combine(parts: list[LayerPartial], max_values: int) -> tuple[dict[str, torch.Tensor], LayerPartial]:
    """One layer's partials reduced over all images: the statistics as in
    :meth:`ActivationStatsAccumulator.result <trainviz.ops.features.ActivationStatsAccumulator.result>`."""
    total = parts[0]
    for p in parts[1:]:
        count = total.count + p.count
        delta = p.mean - total.mean
        total = LayerPartial(
            count=count,
            unit_count=total.unit_count + p.unit_count,
            nonpositive=total.nonpositive + p.nonpositive,
            unit_sum=total.unit_sum + p.unit_sum,
            unit_max=torch.maximum(total.unit_max, p.unit_max),
            mean=total.mean + delta * (p.count / count),
            m2=total.m2 + p.m2 + delta**2 * (total.count * p.count / count),
            keys=torch.cat([total.keys, p.keys]),
            values=torch.cat([total.values, p.values]),
        )
    keys, values = total.keys, total.values
    if keys.numel() > max_values:
        keep = torch.topk(keys, max_values, largest=False, sorted=False).indices
        keys, values = keys[keep], values[keep]
    stats = {
        "dead_fraction": (total.unit_max <= 0).float().mean(),
        "sparsity": torch.tensor(float(total.nonpositive)) / total.count,
        "mean": total.mean,
        "std": (total.m2 / total.count).clamp_min(0).sqrt(),
        "unit_mean": total.unit_sum / max(1, total.unit_count),
        "unit_max": total.unit_max,
        "sample": values[torch.argsort(keys)],  # a sample independent of how the images were split
    }
    return stats, total


class FeatureProbe(Probe[bool, FeaturePartial, FeatureResult]):
    """The features probe: each share's mergeable layer statistics, shown maps and line inputs; merged, every
    layer's statistics over the whole set, the channels shown (from the history ``channels``, else chosen now and
    kept), the maps, filters and lines.

    Args:
        probe: the whole probe set (labels, shown images and pictures come from it).
        config: what a run computes and shows.
        channels: the history of shown channels, ``{layer: [channel]}`` (updated at merge with the layers it
            lacks; ``None``: a new one).
    """

    def __init__(self, probe: ProbeSet, config: FeatureConfig, *, channels: dict[str, list[int]] | None = None) -> None:
        super().__init__(probe)
        self.config = config
        self.channels = {} if channels is None else channels
        self.epoch = 0

    def plan(self, credit: Credit) -> bool:
        """No parts: the whole run (``True``); the epoch is kept for the result."""
        self.epoch = credit.epoch
        return True

    def compute(self, model: nn.Module, share: Share[ProbeSet], plan: bool, state: Any) -> FeaturePartial:
        """One hooked forward per batch (the global batches, cut to the share; no gradients), one device-to-host
        copy.

        Raises:
            ValueError: see :func:`check_feature_layers`.
        """
        config, layers, lines = self.config, self.config.layers, self.config.line_layers
        batches = list(self.probe.batches(config.batch_size))
        stats = {n: _LayerStats(config.hist_values, _KeyStream(config.seed, batches, share.start)) for n in layers}
        shown = example_indices(self.probe.labels, config.n_images)
        mine = [(pos, i) for pos, i in enumerate(shown) if share.start <= i < share.stop]
        kept: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        points: dict[str, list[torch.Tensor]] = {name: [] for name in lines}
        preds = []
        with torch.no_grad(), capture(model, layers) as acts, _capture_inputs(lines) as inputs:
            for b0, b1 in batches:
                lo, hi = max(b0, share.start), min(b1, share.stop)
                if lo >= hi:
                    continue
                acts.clear()
                inputs.clear()
                images = share.data.images[lo - share.start : hi - share.start]
                pred = to_logits(model(model_inputs(images, config))).argmax(1)
                rows = [i - lo for _, i in mine if lo <= i < hi]
                preds.append(pred[rows])
                for name in layers:
                    if name not in acts:
                        raise ValueError(f"Layer {name!r} returned no tensor in a forward pass.")
                    stats[name].update(acts[name], lo, hi)
                    maps = _maps(acts[name], config, name)
                    if maps is not None:
                        stats[name].add_maps(maps)
                        kept[name].append(maps[rows].float())
                for name in lines:
                    points[name].append(inputs[name].float())
        tensors: dict[str, torch.Tensor] = {}
        for name, s in stats.items():
            tensors.update({f"{name}/{k}": v for k, v in s.t.items()})
            if kept[name]:
                tensors[f"{name}/maps"] = torch.cat(kept[name])
        tensors.update({f"points/{name}": torch.cat(p) for name, p in points.items() if p})
        if preds:
            tensors["shown_pred"] = torch.cat(preds)
        weights = self._weights() if share.start == 0 and len(share) else {}
        host = to_host({**tensors, **{f"weights/{k}": v for k, v in weights.items()}})
        parts = {}
        for name, s in stats.items():
            if not s.count:
                continue
            t = {k: host[f"{name}/{k}"] for k in s.t}
            parts[name] = LayerPartial(
                count=s.count,
                unit_count=s.unit_count,
                nonpositive=int(t["nonpositive"]),
                unit_sum=t["unit_sum"],
                unit_max=t["unit_max"],
                mean=t["mean"],
                m2=t["m2"],
                keys=t["keys"],
                values=t["values"],
                channel_sum=t.get("channel_sum"),
                channel_count=s.channel_count,
                maps=host.get(f"{name}/maps"),
            )
        return FeaturePartial(
            layers=parts,
            shown=[pos for pos, _ in mine],
            shown_pred=host.get("shown_pred", torch.zeros(0, dtype=torch.long)),
            points={name: host[f"points/{name}"] for name in lines if f"points/{name}" in host},
            weights={k: host[f"weights/{k}"] for k in weights},
        )

    def _weights(self) -> dict[str, torch.Tensor]:
        """What does not depend on the images: filter tiles and the line layers' weights."""
        config, out = self.config, {}
        for name, module in config.filter_layers.items():
            rgb = None if name == config.rgb_filters else False
            kernel = whole(cast(nn.Conv2d, module).weight)
            scaling = cast(Any, config.filter_scaling)
            tiles, ncols = filter_tiles(kernel, config.n_filters, config.filter_channels, scaling, rgb)
            out[f"tiles/{name}"], out[f"ncols/{name}"] = tiles, torch.tensor(ncols)
        for name, module in config.line_layers.items():
            linear = cast(nn.Linear, module)
            weight = whole(linear.weight).float()
            out[f"weight/{name}"] = weight
            bias = linear.bias
            out[f"bias/{name}"] = torch.zeros_like(weight[:, 0]) if bias is None else whole(bias).float()
        return out

    def merge(self, partials: Sequence[FeaturePartial], plan: bool) -> FeatureResult:
        """Every layer's statistics over all images, the channels and maps shown, the filters and lines."""
        config, probe = self.config, self.probe
        weights = {k: v for p in partials for k, v in p.weights.items()}  # from the share starting at 0
        per_layer, samples, unit_mean, unit_max, maps, chosen = {}, {}, {}, {}, {}, {}
        for name in config.layers:
            parts = [p.layers[name] for p in partials if name in p.layers]
            stats, total = _combine(parts, config.hist_values)
            per_layer[name] = {m: float(stats[m].float()) for m in METRICS}
            samples[name] = stats["sample"].double().numpy()
            unit_mean[name], unit_max[name] = stats["unit_mean"].double().numpy(), stats["unit_max"].double().numpy()
            if parts[0].channel_sum is None:
                continue
            sums = torch.stack([cast(torch.Tensor, p.channel_sum) for p in parts]).sum(0)
            means = sums / sum(p.channel_count for p in parts)
            given = self.channels.get(name)
            if given is not None and len(given) and max(given) < means.shape[0]:
                chosen[name] = torch.as_tensor(list(given), dtype=torch.long)
            else:
                chosen[name] = select_channels(means, config.n_channels)
            stack = torch.cat([p.maps for p in parts if p.maps is not None])[:, chosen[name]]
            lo = stack.amin((0, 2, 3), keepdim=True)
            span = stack.amax((0, 2, 3), keepdim=True) - lo
            shown_maps = torch.where(span > 0, (stack - lo) / span.clamp_min(1e-30), torch.zeros_like(stack))
            maps[name] = shown_maps.double().numpy().astype(np.float32)
        for name, c in chosen.items():
            self.channels.setdefault(name, [int(v) for v in c])
        shown = example_indices(probe.labels, config.n_images)
        order = [pos for p in partials for pos in p.shown]
        shown_pred = torch.cat([p.shown_pred for p in partials])[torch.argsort(torch.as_tensor(order))]
        labels = probe.labels.cpu()
        lines: dict[str, dict[str, np.ndarray]] = {}
        for name in config.line_layers:
            pts = torch.cat([p.points[name] for p in partials if name in p.points])
            box = plot_box(pts)
            weight, bias = weights[f"weight/{name}"], weights[f"bias/{name}"]
            segments, visible = line_segments(weight, bias, box)
            lines[name] = {
                "points": pts.numpy().astype(np.float32),
                "labels": labels.numpy().astype(np.int64),
                "segments": segments.float().numpy(),
                "visible": visible.numpy().astype(bool),
                "weight": weight.numpy().astype(np.float32),
                "bias": bias.numpy().astype(np.float32),
                "box": np.asarray(box, dtype=np.float64),
            }
        images = probe.images[shown].float()
        pixels = None
        if config.input_shape is None and (config.display is not None or images.shape[1] in (1, 3)):
            pixels = torch.from_numpy(to_cpu({"p": pictures(images, config.norm, config.display)})["p"]).float()
        shown_labels = labels[shown]
        top = int(shown_pred.max()) if len(shown_pred) else 0
        names = class_names(probe.class_names, max(probe.num_classes, top + 1))
        captions = [f"true {names[int(t)]}\npred {names[int(p)]}" for t, p in zip(shown_labels, shown_pred)]
        filters = {
            name: (weights[f"tiles/{name}"].float(), int(weights[f"ncols/{name}"])) for name in config.filter_layers
        }
        return FeatureResult(
            epoch=self.epoch,
            per_layer=per_layer,
            channels={name: [int(c) for c in v] for name, v in chosen.items()},
            samples=samples,
            unit_mean=unit_mean,
            unit_max=unit_max,
            maps=maps,
            pixels=pixels,
            captions=captions,
            shown_ids=probe.ids[shown].cpu().numpy().astype(np.int64),
            filters=filters,
            lines=lines,
            names=names,
        )


def compute(
    model: nn.Module,
    probe: ProbeSet,
    config: FeatureConfig,
    *,
    epoch: int,
    channels: Mapping[str, list[int]] | None = None,
) -> FeatureResult:
    """One run (:class:`FeatureProbe` in one process): every layer's statistics over the probe set, the maps of
    ``n_images`` images for the channels in ``channels`` (or, for a layer not in it, the ``n_channels`` channels of
    largest mean activation over the probe set: :func:`~trainviz.ops.features.select_channels`), the filters, and
    the lines of 2-D units over their inputs. One hooked forward per batch (no gradients).

    Raises:
        ValueError: see :func:`check_feature_layers`.
    """
    prober = FeatureProbe(probe, config, channels={k: list(v) for k, v in (channels or {}).items()})
    result = prober.run(model, Credit(epoch=epoch))
    assert result is not None
    return result
