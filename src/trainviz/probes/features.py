"""Filters, activations and activation distributions of a probe set (pure torch), after the first sections of
Fleuret's "Under the hood" (EE-559 lecture 8: the 2-D linear units as lines, convnet filters as images, internal
layer activations as images, distributions of activations over a population) and the intermediate feature maps of
test images of the interactive CNN visualisation paper (seed 002).

:func:`compute` is one run: ONE hooked forward per probe batch captures every layer at once
(:func:`trainviz.core.hooks.capture`, plus the inputs of the line layers in the same forward); the statistics are
accumulated on the device (:class:`~trainviz.ops.features.ActivationStatsAccumulator`) and everything shown moves
to the host in one transfer. :class:`~trainviz.callbacks.features.FeatureMapCallback` runs it.

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

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from trainviz.core.common import class_names, example_indices, json_number
from trainviz.core.display import Display, pictures
from trainviz.core.hooks import capture, first_tensor
from trainviz.core.layers import Layout, Reshape, to_feature_maps
from trainviz.core.outputs import to_logits
from trainviz.core.probeset import ProbeSet
from trainviz.core.result import Result
from trainviz.core.transfer import to_cpu
from trainviz.data.base import Normalization
from trainviz.ops.features import (
    ActivationStatsAccumulator,
    filter_tiles,
    line_segments,
    plot_box,
    select_channels,
)
from trainviz.render.features import activation_grids, filter_grid, histogram_panel, line_plot

__all__ = [
    "METRICS",
    "FeatureConfig",
    "FeatureResult",
    "auto_activation_layer",
    "check_feature_layers",
    "compute",
    "model_inputs",
]

METRICS = ("dead_fraction", "mean", "std", "sparsity")
_NOT_ACTIVATIONS = (nn.MultiheadAttention, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d)


@dataclass
class FeatureConfig:
    """What a run computes and shows (the :class:`~trainviz.callbacks.features.FeatureMapCallback` arguments).

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
    filter_layers: dict[str, nn.Module] = field(default_factory=dict)
    rgb_filters: str | None = None
    line_layers: dict[str, nn.Module] = field(default_factory=dict)
    n_images: int = 4
    n_channels: int = 8
    n_filters: int = 20
    filter_channels: int = 15
    filter_scaling: str = "filter"
    hist_values: int = 4096
    batch_size: int = 64
    reshape: Reshape = None
    norm: Normalization | None = None
    input_shape: tuple[int, ...] | None = None
    seed: int = 0
    display: Display | None = None


@dataclass
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
        return cls(record["epoch"], per_layer, channels)

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
        titles = {
            "dead_fraction": ("Dead units", "fraction of units never > 0 on the probe set", [0, 1.02]),
            "mean": ("Mean activation", "mean of every value of the layer's output on the probe set", None),
            "std": ("Activation spread", "standard deviation of every value of the layer's output", None),
            "sparsity": ("Sparsity", "fraction of the output's values <= 0", [0, 1.02]),
        }
        curves = [
            {
                "title": title,
                "description": f"{title}: {what}.",
                "y": metric,
                "y_range": y_range,
                "series": [{"name": layer, "key": [f"{layer}/{metric}"]} for layer in layers],
            }
            for metric, (title, what, y_range) in titles.items()
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


def compute(
    model: nn.Module,
    probe: ProbeSet,
    config: FeatureConfig,
    *,
    epoch: int,
    channels: Mapping[str, list[int]] | None = None,
) -> FeatureResult:
    """One run: every layer's statistics over the probe set, the maps of ``n_images`` images for the channels in
    ``channels`` (or, for a layer not in it, the ``n_channels`` channels of largest mean activation over the probe
    set: :func:`~trainviz.ops.features.select_channels`), the filters, and the lines of 2-D units over their
    inputs. One hooked forward per batch (no gradients) and one device-to-host copy.

    Raises:
        ValueError: see :func:`check_feature_layers`.
    """
    layers, lines = config.layers, config.line_layers
    accs = {name: ActivationStatsAccumulator(config.hist_values, config.seed) for name in layers}
    channel_sum: dict[str, torch.Tensor] = {}
    channel_count: dict[str, int] = {}
    shown = example_indices(probe.labels, config.n_images)
    kept: dict[str, list[tuple[int, torch.Tensor]]] = {name: [] for name in layers}
    points: dict[str, list[torch.Tensor]] = {name: [] for name in lines}
    preds = []
    with torch.no_grad(), capture(model, layers) as acts, _capture_inputs(lines) as inputs:
        for start, stop in probe.batches(config.batch_size):
            acts.clear()
            inputs.clear()
            preds.append(to_logits(model(model_inputs(probe.images[start:stop], config))).argmax(1))
            rows = [(pos, i - start) for pos, i in enumerate(shown) if start <= i < stop]
            for name in layers:
                if name not in acts:
                    raise ValueError(f"Layer {name!r} returned no tensor in a forward pass.")
                accs[name].update(acts[name])
                maps = _maps(acts[name], config, name)
                if maps is None:
                    continue
                sums = maps.float().sum((0, 2, 3))
                channel_sum[name] = sums if name not in channel_sum else channel_sum[name] + sums
                channel_count[name] = channel_count.get(name, 0) + maps.shape[0] * maps.shape[2] * maps.shape[3]
                if rows:
                    picked = maps[[r for _, r in rows]].float()
                    kept[name].extend((pos, picked[j]) for j, (pos, _) in enumerate(rows))
            for name in lines:
                points[name].append(inputs[name].float())
    stats = {name: acc.result() for name, acc in accs.items()}
    chosen: dict[str, torch.Tensor] = {}
    shown_maps: dict[str, torch.Tensor] = {}
    for name in channel_sum:
        means = channel_sum[name] / channel_count[name]
        given = (channels or {}).get(name)
        if given is not None and len(given) and max(given) < means.shape[0]:
            chosen[name] = torch.as_tensor(list(given), dtype=torch.long, device=means.device)
        else:
            chosen[name] = select_channels(means, config.n_channels)
        stack = torch.stack([m for _, m in sorted(kept[name], key=lambda pair: pair[0])])[:, chosen[name]]
        lo = stack.amin((0, 2, 3), keepdim=True)
        span = stack.amax((0, 2, 3), keepdim=True) - lo
        shown_maps[name] = torch.where(span > 0, (stack - lo) / span.clamp_min(1e-30), torch.zeros_like(stack))
    line_data: dict[str, torch.Tensor] = {}
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for name, module in lines.items():
        pts = torch.cat(points[name])
        boxes[name] = box = plot_box(pts)
        linear = cast(nn.Linear, module)
        weight = linear.weight.detach().float()
        bias = None if linear.bias is None else linear.bias.detach().float()
        segments, visible = line_segments(weight, bias, box)
        line_data.update(
            {
                f"{name}/points": pts,
                f"{name}/segments": segments.float(),
                f"{name}/visible": visible.float(),
                f"{name}/weight": weight,
                f"{name}/bias": torch.zeros(weight.shape[0], device=weight.device) if bias is None else bias,
            }
        )
    tiles: dict[str, tuple[torch.Tensor, int]] = {}
    for name, module in config.filter_layers.items():
        rgb = None if name == config.rgb_filters else False
        kernel = cast(nn.Conv2d, module).weight
        tiles[name] = filter_tiles(kernel, config.n_filters, config.filter_channels, config.filter_scaling, rgb)  # type: ignore[arg-type]
    pred = torch.cat(preds)
    images = probe.images[shown].float()
    pixels = None
    if config.input_shape is None and (config.display is not None or images.shape[1] in (1, 3)):
        pixels = pictures(images, config.norm, config.display)
    host = to_cpu(
        {
            **({} if pixels is None else {"pixels": pixels}),
            **{f"{m}/{name}": getattr(s, m).float() for name, s in stats.items() for m in METRICS},
            **{f"sample/{name}": s.sample for name, s in stats.items()},
            **{f"unit_mean/{name}": s.unit_mean for name, s in stats.items()},
            **{f"unit_max/{name}": s.unit_max for name, s in stats.items()},
            **{f"channels/{name}": c.float() for name, c in chosen.items()},
            **{f"maps/{name}": m for name, m in shown_maps.items()},
            **{f"tiles/{name}": t for name, (t, _) in tiles.items()},
            **{f"line/{k}": v for k, v in line_data.items()},
            "shown_labels": probe.labels[shown].float(),
            "shown_pred": pred[shown].float(),
            "shown_ids": probe.ids[shown].float(),
            "labels": probe.labels.float(),
        }
    )
    names = class_names(probe.class_names, max(probe.num_classes, int(host["shown_pred"].max(initial=0)) + 1))
    per_layer = {name: {m: float(host[f"{m}/{name}"]) for m in METRICS} for name in layers}
    captions = [f"true {names[int(t)]}\npred {names[int(p)]}" for t, p in zip(host["shown_labels"], host["shown_pred"])]
    line_out: dict[str, dict[str, np.ndarray]] = {
        name: {
            "points": host[f"line/{name}/points"].astype(np.float32),
            "labels": host["labels"].astype(np.int64),
            "segments": host[f"line/{name}/segments"].astype(np.float32),
            "visible": host[f"line/{name}/visible"].astype(bool),
            "weight": host[f"line/{name}/weight"].astype(np.float32),
            "bias": host[f"line/{name}/bias"].astype(np.float32),
            "box": np.asarray(boxes[name], dtype=np.float64),
        }
        for name in lines
    }
    return FeatureResult(
        epoch,
        per_layer,
        {name: [int(c) for c in host[f"channels/{name}"]] for name in chosen},
        samples={name: host[f"sample/{name}"] for name in layers},
        unit_mean={name: host[f"unit_mean/{name}"] for name in layers},
        unit_max={name: host[f"unit_max/{name}"] for name in layers},
        maps={name: host[f"maps/{name}"].astype(np.float32) for name in shown_maps},
        pixels=None if pixels is None else torch.from_numpy(host["pixels"]).float(),
        captions=captions,
        shown_ids=host["shown_ids"].astype(np.int64),
        filters={name: (torch.from_numpy(host[f"tiles/{name}"]).float(), ncols) for name, (_, ncols) in tiles.items()},
        lines=line_out,
        names=names,
    )
