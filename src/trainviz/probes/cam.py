"""Class activation maps of a probe set with their localisation, faithfulness and drift scores (pure torch).

The maps are CAM (Zhou et al. 2016), Grad-CAM (Selvaraju et al. 2017) or Grad-CAM++ (Chattopadhay et al. 2018)
of several layers aggregated into one map, with guided Grad-CAM on top, as in Strezoski & Worring, "Plug-and-Play
Interactive Deep Network Visualization" (its *Reason* view), followed over epochs as Zhang follows his decoder
maps ("Visualization of encoder-decoder structure of Deep Convolutional Neural Network", section 5.1). The maths
is :mod:`trainviz.ops.cam`, :mod:`trainviz.ops.guided` and :mod:`trainviz.ops.localization`; :func:`compute` is
one run, :func:`evolution` the fit-end strip. :class:`~trainviz.callbacks.cam.CAMCallback` runs them.

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.core.probeset import ProbeSet
    >>> from trainviz.probes.cam import CAMConfig, CAMProbeResult, compute
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2)).eval()
    >>> probe = ProbeSet(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]), torch.arange(4))
    >>> result = compute(net, probe, CAMConfig({"1": net[1]}, deletion_steps=2), epoch=0)
    >>> sorted(result.per_map), CAMProbeResult.from_record(result.record()) == result
    (['1', 'aggregate'], True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from trainviz.core.common import class_names, example_indices, json_number, strip_epochs
from trainviz.core.display import Display, pictures
from trainviz.core.layers import Reshape
from trainviz.core.probeset import ProbeSet
from trainviz.core.result import Result
from trainviz.core.transfer import to_cpu
from trainviz.data.base import Normalization
from trainviz.ops.cam import CAMResult, class_activation_maps, class_mean_maps, shrink_maps
from trainviz.ops.guided import guided_grad_cam
from trainviz.ops.localization import (
    confidence_change,
    deletion_curve,
    energy_pointing_game,
    map_correlation,
    pointing_game,
    pointing_game_chance,
)
from trainviz.render.images import caption_tiles, colorize, image_grid, overlay_heatmaps, to_uint8, upscale
from trainviz.render.strips import evolution_strip, gradient_images

__all__ = ["CAMConfig", "CAMProbeResult", "class_maps", "compute", "evolution"]

STATE_SIDE = 32  # maps kept between runs (drift reference, evolution strips) are at most this many pixels a side
_GREEN, _RED = (20, 120, 40), (190, 30, 30)


@dataclass
class CAMConfig:
    """What a run computes and shows (the :class:`~trainviz.callbacks.cam.CAMCallback` arguments).

    Attributes:
        layers: the resolved ``{name: module}`` to explain.
        method, aggregate, fc_layer, reshape: see :func:`trainviz.ops.cam.class_activation_maps`.
        target: explain the ``"true"`` class or the ``"predicted"`` one.
        guided: also compute guided Grad-CAM.
        deletion_steps: steps of the deletion curve; pointing_tolerance: pixels by which masks grow.
        n_grid: images in the overlay grids; n_tracked: images in the layer rows and the evolution strip.
        max_strip: most epochs in the evolution strip.
        batch_size: images per forward; norm: model inputs back to pixels (``None``: the identity).
        display: how pictures show the inputs (:class:`~trainviz.core.display.Display`; ``None``: ``norm`` undone).
    """

    layers: dict[str, nn.Module]
    method: str = "gradcam"
    aggregate: str = "mean"
    target: str = "true"
    guided: bool = False
    fc_layer: str | None = None
    deletion_steps: int = 16
    pointing_tolerance: int = 0
    n_grid: int = 16
    n_tracked: int = 4
    max_strip: int = 12
    batch_size: int = 64
    reshape: Reshape = None
    norm: Normalization | None = None
    display: Display | None = None


@dataclass
class CAMProbeResult(Result):
    """One run. The record is flat: ``{"epoch", "target_probability", "pointing_game_chance" (with masks),
    "<key>/<metric>"}`` for each map key (every layer, and ``aggregate``) and metric (``pointing_game``,
    ``energy_pointing_game`` with masks; ``average_drop``, ``increase_in_confidence``, ``deletion_auc``;
    ``drift_correlation`` from the second run), ``None`` for non-finite values. The tensors and the pictures'
    inputs are not recorded and are ``None`` in a result read back.

    Shape:
        maps ``{key: (N, H, W)}``, probs ``(N, K)``, labels, ids and targets ``(N,)``, per_image
        ``{"<metric>/<key>": (N,) or (N, steps + 1)}``, small ``{key: (N, h, w)}`` float16 on the CPU,
        pixels ``(n_grid, C, H, W)`` in [0, 1].
    """

    epoch: int
    target_probability: float
    pointing_game_chance: float | None
    per_map: dict[str, dict[str, float]]
    maps: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    probs: torch.Tensor | None = field(default=None, repr=False, compare=False)
    labels: torch.Tensor | None = field(default=None, repr=False, compare=False)
    ids: torch.Tensor | None = field(default=None, repr=False, compare=False)
    targets: torch.Tensor | None = field(default=None, repr=False, compare=False)
    per_image: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    small: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    pixels: torch.Tensor | None = field(default=None, repr=False, compare=False)
    grid: list[int] | None = field(default=None, repr=False, compare=False)
    captions: list[str] | None = field(default=None, repr=False, compare=False)
    grid_labels: list[int] | None = field(default=None, repr=False, compare=False)
    correct: list[bool] | None = field(default=None, repr=False, compare=False)
    names: list[str] | None = field(default=None, repr=False, compare=False)
    counts: list[int] | None = field(default=None, repr=False, compare=False)
    guided: torch.Tensor | None = field(default=None, repr=False, compare=False)  # guided Grad-CAM of the grid
    n_rows: int = field(default=0, repr=False, compare=False)
    n_layers: int = field(default=0, repr=False, compare=False)

    def scalars(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {"target_probability": self.target_probability}
        if self.pointing_game_chance is not None:
            out["pointing_game_chance"] = self.pointing_game_chance
        for key, values in self.per_map.items():
            out.update({f"{key}/{name}": v for name, v in values.items()})
        return out

    def record(self) -> dict[str, Any]:
        return {"epoch": self.epoch, **{k: json_number(v) for k, v in self.scalars().items()}}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CAMProbeResult:
        per_map: dict[str, dict[str, float]] = {}
        for name, value in record.items():
            if "/" in name:
                key, metric = name.rsplit("/", 1)
                per_map.setdefault(key, {})[metric] = float("nan") if value is None else value
        return cls(record["epoch"], record["target_probability"], record.get("pointing_game_chance"), per_map)

    def render(self) -> dict[str, np.ndarray]:
        if self.maps is None:
            return {}
        idx, captions, names = self.grid, self.captions, self.names
        colours = [_GREEN if ok else _RED for ok in self.correct]
        ncols = min(8, len(idx))
        overlays = {key: overlay_heatmaps(self.pixels, m[idx]) for key, m in self.maps.items()}
        out = {f"{key}/overlay": image_grid(caption_tiles(t, captions, colours), ncols) for key, t in overlays.items()}
        if self.n_layers > 1:
            rows = range(self.n_rows)
            columns = [to_uint8(upscale(self.pixels[: self.n_rows]))] + [overlays[key] for key in self.maps]
            heads = ["input", *self.maps]
            labels = self.grid_labels
            tiles = np.stack([col[r] for r in rows for col in columns])
            tile_captions = [
                f"{heads[c]}\n{names[labels[r]]}" if c == 0 else heads[c] for r in rows for c in range(len(heads))
            ]
            out["layers"] = image_grid(caption_tiles(tiles, tile_captions), len(columns))
        means, _ = class_mean_maps(self.maps["aggregate"], self.labels, len(names))
        mean_captions = [f"{names[c]}\nn={n}" for c, n in enumerate(self.counts)]
        mean_tiles = caption_tiles(to_uint8(upscale(colorize(means))), mean_captions)
        out["aggregate/class_mean"] = image_grid(mean_tiles, min(8, len(names)))
        if self.guided is not None:
            tiles = to_uint8(upscale(gradient_images(self.guided)))
            out["aggregate/guided_grad_cam"] = image_grid(caption_tiles(tiles, captions, colours), ncols)
        return out

    def arrays(self) -> dict[str, dict[str, Any]]:
        if self.maps is None:
            return {}
        maps = {f"maps/{key}": m.half() for key, m in self.maps.items()}
        head = {"ids": self.ids, "labels": self.labels, "targets": self.targets, "probs": self.probs}
        return {"maps": {**head, **maps, **self.per_image}}

    def section(self) -> dict[str, Any]:
        """The report section: each map's localisation, faithfulness and drift over epochs, the overlays of every
        layer in one synchronised grid per epoch, the per-class mean maps and the fit-end evolution strip (see
        :meth:`Result.section <trainviz.core.result.Result.section>`); two runs compared: the CAM drift between
        them, the correlation of the maps of the same probe images (:func:`trainviz.report.compare.map_correlation`)."""
        keys = list(self.per_map)
        titles = {
            "pointing_game": ("Pointing game", "hit rate: the map's peak inside the object", [0, 1.02]),
            "energy_pointing_game": ("Energy pointing game", "map energy inside the object", [0, 1.02]),
            "average_drop": ("Average drop", "confidence drop keeping the map's region (lower is better)", None),
            "increase_in_confidence": ("Increase in confidence", "images whose confidence rises", [0, 1.02]),
            "deletion_auc": ("Deletion AUC", "area under the deletion curve (lower is better)", None),
            "drift_correlation": ("Drift", "correlation of each map with the previous run's", [-1, 1.02]),
        }
        curves: list[dict[str, Any]] = [
            {
                "title": "Target probability",
                "y": "probability",
                "y_range": [0, 1.02],
                "series": [{"name": "target class probability", "key": ["target_probability"]}],
            }
        ]
        for metric, (title, what, y_range) in titles.items():
            series = [{"name": k, "key": [f"{k}/{metric}"]} for k in keys if metric in self.per_map[k]]
            if metric == "pointing_game" and self.pointing_game_chance is not None:
                series.append({"name": "chance", "key": ["pointing_game_chance"]})
            if series:
                curves.append(
                    {
                        "title": title,
                        "description": f"{title}: {what}.",
                        "y": metric,
                        "y_range": y_range,
                        "series": series,
                    }
                )
        return {
            "version": 1,
            "order": 30,
            "title": "Class activation maps",
            "description": "Maps of each layer and their aggregate (Strezoski & Worring), followed over epochs: "
            "localisation (pointing game), faithfulness (average drop, increase in confidence, deletion) and drift.",
            "curves": curves,
            "compare": [
                {
                    "kind": "map_correlation",
                    "title": "CAM drift",
                    "description": "Pearson correlation of the Grad-CAM map",
                    "arrays": "maps",
                    "prefix": "maps/",
                    "main": "aggregate",
                }
            ],
            "galleries": [
                {
                    "title": "Maps per layer",
                    "description": "The same probe images under each layer's map and the aggregate (captions green "
                    "when the prediction is right, red when wrong); zoom one map and every map follows.",
                    "images": [f"{k}/overlay" for k in keys] + ["aggregate/guided_grad_cam"],
                    "labels": [*keys, "guided Grad-CAM"],
                    "maps": True,
                },
                {
                    "title": "Layers side by side",
                    "description": "Tracked images: the input, then each layer's map.",
                    "images": ["layers"],
                    "maps": True,
                },
                {
                    "title": "Per-class mean maps",
                    "description": "The aggregate map averaged over each class's probe images.",
                    "images": ["aggregate/class_mean"],
                    "maps": True,
                },
            ],
            "files": [
                {
                    "title": "Evolution",
                    "description": "Fit end: the tracked images' aggregate maps across epochs.",
                    "glob": "epoch_*/evolution.png",
                    "kind": "image",
                }
            ],
        }


def class_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: CAMConfig) -> CAMResult:
    """The maps of ``config.layers`` (and guided backpropagation with ``config.guided``) of ``images``.

    Raises:
        ValueError: the method does not apply to a layer (e.g. CAM without ``layer -> GAP -> linear``), a layer
            gives no feature maps, or the model does not return logits.
    """
    explain = guided_grad_cam if config.guided else class_activation_maps
    return explain(
        model,
        images,
        config.layers,
        labels if config.target == "true" else "predicted",
        method=config.method,  # type: ignore[arg-type]
        aggregate=config.aggregate,  # type: ignore[arg-type]
        fc_layer=config.fc_layer,
        batch_size=config.batch_size,
        reshape=config.reshape,
    )


def _map_metrics(
    model: nn.Module,
    probe: ProbeSet,
    targets: torch.Tensor,
    m: torch.Tensor,
    small: torch.Tensor,
    previous: torch.Tensor | None,
    config: CAMConfig,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Metrics of one stack of maps: means (scalars) and per-image values (arrays)."""
    values, arrays = {}, {}
    if probe.masks is not None:
        arrays["pointing_hit"] = pointing_game(m, probe.masks, config.pointing_tolerance)
        arrays["energy"] = energy_pointing_game(m, probe.masks)
        values["pointing_game"] = arrays["pointing_hit"].float().mean()
        values["energy_pointing_game"] = arrays["energy"].mean()
    batch = config.batch_size
    arrays["drop"], arrays["increase"] = confidence_change(model, probe.images, m, targets, batch_size=batch)
    arrays["deletion_curve"], arrays["deletion_auc"] = deletion_curve(
        model, probe.images, m, targets, steps=config.deletion_steps, batch_size=batch
    )
    values["average_drop"] = arrays["drop"].mean()
    values["increase_in_confidence"] = arrays["increase"].float().mean()
    values["deletion_auc"] = arrays["deletion_auc"].mean()
    if previous is not None and previous.shape == small.shape:
        arrays["drift"] = map_correlation(small.float(), previous.to(small.device).float())
        values["drift_correlation"] = arrays["drift"].nanmean()
    return values, arrays


def compute(
    model: nn.Module, probe: ProbeSet, config: CAMConfig, *, epoch: int, previous: dict[str, torch.Tensor] | None = None
) -> CAMProbeResult:
    """One run: the maps of every layer and their aggregate, localisation (with masks) and faithfulness scores,
    drift against ``previous`` (the last run's ``small`` maps), and what to show; one device-to-host copy.

    Raises:
        ValueError: see :func:`class_maps`.
    """
    result = class_maps(model, probe.images, probe.labels, config)
    maps = {**result.maps, "aggregate": result.aggregate}
    small = {key: shrink_maps(m, STATE_SIDE) for key, m in maps.items()}
    probs = result.logits.float().softmax(1)
    scalars = {"target_probability": probs.gather(1, result.targets[:, None]).mean()}
    if probe.masks is not None:
        scalars["pointing_game_chance"] = pointing_game_chance(probe.masks, config.pointing_tolerance).mean()
    per_image: dict[str, torch.Tensor] = {}
    for key, m in maps.items():
        if not (key == "aggregate" and len(result.maps) == 1):  # else the aggregate is the one layer's map
            values, arrays = _map_metrics(
                model, probe, result.targets, m, small[key], (previous or {}).get(key), config
            )
        scalars.update({f"{key}/{name}": v for name, v in values.items()})
        per_image.update({f"{name}/{key}": v for name, v in arrays.items()})
    idx = example_indices(probe.labels, config.n_grid)
    names = class_names(probe.class_names, result.logits.shape[1])
    conf, pred = probs[idx].max(1)
    counts = torch.bincount(probe.labels, minlength=len(names))[: len(names)]  # as class_mean_maps counts
    host = to_cpu(
        {
            **{f"scalar/{k}": v.float() for k, v in scalars.items()},
            **{f"small/{k}": v for k, v in small.items()},
            "labels": probe.labels[idx],
            "pred": pred,
            "conf": conf,
            "counts": counts,
        }
    )
    labels = [int(v) for v in host["labels"].tolist()]
    pred_host, conf_host = [int(v) for v in host["pred"].tolist()], host["conf"].tolist()
    floats = {k: float(host[f"scalar/{k}"]) for k in scalars}
    per_map: dict[str, dict[str, float]] = {}
    for name, value in floats.items():
        if "/" in name:
            key, metric = name.rsplit("/", 1)
            per_map.setdefault(key, {})[metric] = value
    pixels = probe.images[idx].float()
    return CAMProbeResult(
        epoch,
        floats["target_probability"],
        floats.get("pointing_game_chance"),
        per_map,
        maps=maps,
        probs=probs,
        labels=probe.labels,
        ids=probe.ids,
        targets=result.targets,
        per_image=per_image,
        small={k: torch.from_numpy(host[f"small/{k}"]).half() for k in small},
        pixels=pictures(pixels, config.norm, config.display),
        grid=idx,
        captions=[f"true {names[t]}\npred {names[p]} {c:.2f}" for t, p, c in zip(labels, pred_host, conf_host)],
        grid_labels=labels,
        correct=[t == p for t, p in zip(labels, pred_host)],
        names=names,
        counts=[int(n) for n in host["counts"].tolist()],
        guided=None if result.guided is None else _shown(result.guided_grad_cam[idx], config.display),
        n_rows=min(config.n_tracked, len(idx)),
        n_layers=len(result.maps),
    )


def _shown(tensor: torch.Tensor, display: Display | None) -> torch.Tensor:
    """The shown channels of an input-shaped tensor (a gradient image)."""
    return tensor if display is None else display.channels_of(tensor)


def evolution(
    history: list[tuple[int, torch.Tensor]], probe: ProbeSet, config: CAMConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit end: the strip of the ``n_tracked`` images' aggregated maps across at most ``max_strip`` evenly spaced
    runs of ``history`` (``(epoch, maps)`` pairs), and the arrays of ``evolution.npz`` (``maps``
    ``(epochs, n_tracked, h, w)``, ``epochs``, ``ids``)."""
    idx = example_indices(probe.labels, config.n_tracked)
    epochs = [e for e, _ in history]
    stack = torch.stack([m for _, m in history])
    keep = strip_epochs(list(range(len(epochs))), config.max_strip)
    names = class_names(probe.class_names, probe.num_classes)
    pixels = probe.images[idx].float()
    strip = evolution_strip(
        pictures(pixels, config.norm, config.display),
        stack[keep].float(),
        [epochs[i] for i in keep],
        [names[c] for c in probe.labels[idx].tolist()],
    )
    return strip, {"maps": stack, "epochs": np.asarray(epochs), "ids": probe.ids[idx]}
