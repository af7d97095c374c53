"""Activation maximisation of classes, channels and units during training (Strezoski & Worring's *MaxOut*), pure
torch: :func:`compute` is one run (every target optimised in one batch by :func:`trainviz.ops.maxact.maximize`,
with how far each preferred image moved since the previous run), :func:`evolution` the fit-end strips.
:class:`~trainviz.callbacks.maxact.MaxActivationCallback` runs them.

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.probes.maxact import MaxActConfig, MaxActResult, compute
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2)).eval()
    >>> config = MaxActConfig([("logit", 0), ("logit", 1), ("channel", "0", 3)], {"0": net[0]}, (3, 8, 8), steps=4)
    >>> result = compute(net, config, epoch=0)
    >>> sorted(result.render()), MaxActResult.from_record(result.record()) == result
    (['0/grid', 'classes/grid'], True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from trainviz.core.common import class_names, json_number, strip_epochs
from trainviz.core.result import Result
from trainviz.core.transfer import to_cpu
from trainviz.data.base import Normalization
from trainviz.ops.maxact import Target, maximize, parse_target
from trainviz.render.images import caption_tiles, image_grid, to_uint8, upscale

__all__ = ["MaxActConfig", "MaxActResult", "compute", "evolution", "group_of", "image_correlation", "label_of"]

TILE = 64  # tiles are upscaled (nearest) to at least this many pixels a side


@dataclass
class MaxActConfig:
    """What to optimise and how (see :func:`trainviz.ops.maxact.maximize` for the weights).

    Attributes:
        targets: the targets, e.g. ``("logit", k)``, ``("channel", layer, c)``, ``("unit", layer, (i, ...))``.
        layers: ``{name: module}`` of the layers the targets name.
        shape: the model input shape ``(C, H, W)`` (the probe set's).
        class_names: display names of the classes (captions).
    """

    targets: list[Target]
    layers: dict[str, nn.Module]
    shape: tuple[int, int, int]
    steps: int = 64
    lr: float = 0.05
    tv_weight: float = 1e-3
    norm_weight: float = 1e-4
    edge_weight: float = 0.0
    smoothing: float | None = None
    robust: bool = False
    seed: int = 0
    norm: Normalization | None = None
    class_names: list[str] | None = None
    display_channels: tuple[int, ...] | None = None  # the channels pictures show (None: all, for 1 or 3 channels)


def group_of(key: str) -> str:
    """The grid a target key belongs to: ``"classes"`` or its layer name."""
    return key.rsplit("/", 1)[0]


def label_of(target: Target, names: Sequence[str] | None = None) -> str:
    """A short caption: the class name, ``ch <c>`` or ``unit <i,j,..>``."""
    kind, _, index = parse_target(target)
    if kind == "logit":
        return class_names(names, index[0] + 1)[index[0]]
    return f"ch {index[0]}" if kind == "channel" else "unit " + ",".join(str(i) for i in index)


def image_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each image of ``a`` with the same image of ``b`` (NaN for a constant image).

    Shape:
        ``(B, ...)``, ``(B, ...)`` -> ``(B,)``
    """
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).float()


@dataclass
class MaxActResult(Result):
    """One run: each target's final activation and how far its image moved since the previous run (``None`` on
    the first run), with the images to show.

    Record (``maxact/metrics.jsonl``): ``{"epoch", "activation": {key: value}, "moved": {key: value or None}}``.
    """

    epoch: int
    activation: dict[str, float]
    moved: dict[str, float | None]
    images: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (B, C, H, W) pixels, CPU
    labels: list[str] | None = field(default=None, repr=False, compare=False)
    final: bool = field(default=False, repr=False, compare=False)
    shown: tuple[int, ...] | None = field(default=None, repr=False, compare=False)  # channels shown (None: all)

    def scalars(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for key, value in self.activation.items():
            out[f"{key}/activation"] = value
            out[f"{key}/moved"] = self.moved.get(key)
        return out

    def record(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "activation": {k: json_number(v) for k, v in self.activation.items()},
            "moved": {k: None if v is None else json_number(v) for k, v in self.moved.items()},
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> MaxActResult:
        activation = {k: float("nan") if v is None else float(v) for k, v in record["activation"].items()}
        return cls(record["epoch"], activation, dict(record.get("moved") or {}))

    def groups(self) -> dict[str, list[int]]:
        """``{group: [target index, ...]}`` in target order."""
        out: dict[str, list[int]] = {}
        for i, key in enumerate(self.activation):
            out.setdefault(group_of(key), []).append(i)
        return out

    def render(self) -> dict[str, np.ndarray]:
        if self.images is None:
            return {}
        keys, values = list(self.activation), list(self.activation.values())
        labels = self.labels or keys
        tiles = to_uint8(upscale(_channels(self.images.float(), self.shown), TILE))
        out = {}
        for group, rows in self.groups().items():
            captions = [f"{labels[i]}\nact {values[i]:.3g}" for i in rows]
            grid = image_grid(caption_tiles(tiles[rows], captions), min(8, len(rows)))
            out[f"{group}/{'final' if self.final else 'grid'}"] = grid
        return out

    def arrays(self) -> dict[str, dict[str, Any]]:
        if self.images is None:
            return {}
        return {
            "final" if self.final else "images": {
                "images": self.images.half(),
                "keys": np.asarray(list(self.activation)),
                "activation": np.asarray(list(self.activation.values()), dtype=np.float64),
            }
        }

    def section(self) -> dict[str, Any]:
        """The report section: activation and movement of each target over epochs, one curve pair per group
        (classes, each layer), the per-epoch grids, and the fit-end strips and high-quality pass."""
        groups = self.groups()
        keys = list(self.activation)
        curves: list[dict[str, Any]] = []
        for group, rows in groups.items():
            curves.append(
                {
                    "title": f"Activation reached: {group}",
                    "description": "Each target's activation on its optimised image (higher: a stronger response).",
                    "y": "activation",
                    "series": [{"name": keys[i], "key": ["activation", keys[i]]} for i in rows],
                }
            )
            curves.append(
                {
                    "title": f"Moved: {group}",
                    "description": "Correlation of each target's image with its image at the previous run "
                    "(1: the preferred input did not change).",
                    "y": "correlation",
                    "y_range": [-1, 1.02],
                    "series": [{"name": keys[i], "key": ["moved", keys[i]]} for i in rows],
                }
            )
        return {
            "version": 1,
            "order": 45,
            "title": "Maximum activation (MaxOut)",
            "description": "The input each class, channel and unit responds to most (Strezoski & Worring's MaxOut; "
            "Fleuret's maximum response samples), optimised from the same start every epoch.",
            "curves": curves,
            "galleries": [
                {
                    "title": "Preferred inputs",
                    "description": "One grid per group, captioned with the target and its activation.",
                    "images": [f"{g}/grid" for g in groups],
                    "labels": list(groups),
                    "maps": True,
                }
            ],
            "files": [
                {
                    "title": "High-quality pass",
                    "description": "Fit end: every target optimised for longer.",
                    "glob": "epoch_*/*final.png",
                    "kind": "image",
                },
                {
                    "title": "Evolution",
                    "description": "Fit end: each target's image across epochs.",
                    "glob": "epoch_*/*evolution.png",
                    "kind": "image",
                },
            ],
        }


def compute(
    model: nn.Module,
    config: MaxActConfig,
    *,
    epoch: int,
    previous: dict[str, torch.Tensor] | None = None,
    steps: int | None = None,
    upscale_by: int = 1,
    final: bool = False,
) -> MaxActResult:
    """One run: every target optimised in one batch, its activation, and ``moved`` (the correlation of its image
    with ``previous[key]``, the last run's images); one device-to-host copy.

    Args:
        model: the network returning logits (a :class:`~trainviz.core.outputs.LogitsModel`).
        config: what to optimise.
        epoch: the run's epoch.
        previous: ``{key: image (C, H, W)}`` of the previous run.
        steps: overrides ``config.steps`` (the fit-end pass).
        upscale_by: optimise images ``upscale_by`` times the input side (models with global pooling).
        final: the fit-end pass (images named ``<group>/final``, arrays ``final.npz``).
    """
    c, h, w = config.shape
    out = maximize(
        model,
        config.targets,
        (c, h * upscale_by, w * upscale_by),
        steps=config.steps if steps is None else steps,
        lr=config.lr,
        tv_weight=config.tv_weight,
        norm_weight=config.norm_weight,
        edge_weight=config.edge_weight,
        smoothing=config.smoothing,
        robust=config.robust,
        normalization=config.norm,
        seed=config.seed,
        layers=config.layers,
    )
    keys = out.keys
    tensors = {"images": out.images.float(), "activation": out.activation.float()}
    have = [i for i, k in enumerate(keys) if previous and k in previous and previous[k].shape == out.images.shape[1:]]
    if have:
        before = torch.stack([previous[keys[i]] for i in have]).to(out.images.device, torch.float32)
        tensors["moved"] = image_correlation(out.images[have].float(), before)
    host = to_cpu(tensors)
    moved: dict[str, float | None] = dict.fromkeys(keys)
    for j, i in enumerate(have):
        moved[keys[i]] = float(host["moved"][j])
    return MaxActResult(
        epoch,
        {k: float(v) for k, v in zip(keys, host["activation"].tolist())},
        moved,
        images=torch.from_numpy(host["images"]).float(),
        labels=[label_of(t, config.class_names) for t in config.targets],
        final=final,
        shown=config.display_channels,
    )


def _channels(images: torch.Tensor, shown: tuple[int, ...] | None) -> torch.Tensor:
    return images if shown is None else images[:, list(shown)]


def evolution(
    history: list[tuple[int, torch.Tensor]],
    keys: list[str],
    labels: list[str],
    max_strip: int = 12,
    shown: tuple[int, ...] | None = None,
) -> dict[str, np.ndarray]:
    """Fit end: per group, rows of each target's image across at most ``max_strip`` evenly spaced runs of
    ``history`` (``(epoch, images (B, C, H, W))`` pairs), captioned with the target and the epoch.

    Returns:
        ``{"<group>/evolution": (H, W, 3) uint8}``.
    """
    keep = strip_epochs(list(range(len(history))), max_strip)
    epochs = [history[i][0] for i in keep]
    stack = torch.stack([history[i][1].float() for i in keep])  # (E, B, C, H, W)
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(group_of(key), []).append(i)
    out = {}
    for group, rows in groups.items():
        images = stack[:, rows].transpose(0, 1).reshape(-1, *stack.shape[2:])  # row-major: target, then epoch
        captions = [f"{labels[r]}\nepoch {e}" for r in rows for e in epochs]
        tiles = caption_tiles(to_uint8(upscale(_channels(images, shown), TILE)), captions)
        out[f"{group}/evolution"] = image_grid(tiles, len(epochs))
    return out
