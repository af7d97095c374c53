"""Activation maximisation of classes, channels and units during training (Strezoski & Worring's *MaxOut*), pure
torch, on the compute contract (:mod:`trainviz.core.contract`): :class:`MaxActOptions` are the user options,
declared once; :class:`MaxActProbe` plans a run (:class:`MaxActPlan`: the epoch, the targets, the steps),
computes a share of the targets (every target of the share optimised in one batch by
:func:`trainviz.ops.maxact.maximize`, each from its own seeded start, so a target's image does not depend on the
share it is in) and merges the shares into one :class:`MaxActResult` (with how far each preferred image moved
since the previous run, from :class:`MaxActHistory`); :func:`evolution` draws the fit-end strips.
:class:`~trainviz.callbacks.maxact.MaxActivationCallback` runs them.

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.core.contract import Credit, Share
    >>> from trainviz.core.probeset import ProbeSet
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2)).eval()
    >>> probe = ProbeSet(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), torch.arange(2))
    >>> targets = [("logit", 0), ("logit", 1), ("channel", "0", 3)]
    >>> prober = MaxActProbe(probe, MaxActOptions(steps=4), targets, layers={"0": net[0]})
    >>> plan = prober.plan(Credit(epoch=0))
    >>> result = prober.merge([prober.compute(net, s, plan, None) for s in prober.shares(plan, 2)], plan)
    >>> sorted(result.render()), MaxActResult.from_record(result.record()) == result
    (['0/grid', 'classes/grid'], True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from trainviz.core.checks import check_bool, check_float, check_int, check_positive_int
from trainviz.core.common import class_names, json_number, strip_epochs
from trainviz.core.contract import Credit, FitEnd, Probe, Share
from trainviz.core.hooks import capture
from trainviz.core.layers import resolve_layer
from trainviz.core.names import Metric
from trainviz.core.normalization import Normalization
from trainviz.core.options import Options
from trainviz.core.outputs import expect_logits
from trainviz.core.probeset import ProbeSet
from trainviz.core.result import Result
from trainviz.core.transfer import to_cpu
from trainviz.ops.maxact import Target, maximize, parse_target, target_key
from trainviz.probes.maxact_names import NAMES, any_target
from trainviz.render.images import caption_tiles, image_grid, to_uint8, upscale

__all__ = [
    "MaxActHistory",
    "MaxActOptions",
    "MaxActPartial",
    "MaxActPlan",
    "MaxActProbe",
    "MaxActResult",
    "build_targets",
    "evolution",
    "group_of",
    "image_correlation",
    "label_of",
]

Channels = Union[int, Sequence[int], Mapping[str, Sequence[int]]]
TILE = 64  # tiles are upscaled (nearest) to at least this many pixels a side


def _indices(name: str, value: Any, allow_empty: bool = False, distinct: bool = True) -> list[int]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and (allow_empty or len(value) > 0)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    if not ok or (distinct and len(set(value)) != len(value)):
        what = "distinct non-negative ints" if distinct else "non-negative ints"
        raise ValueError(f"Expected `{name}` to be a list of {what}, got {value!r}.")
    return [int(v) for v in value]


@dataclass(frozen=True, kw_only=True)
class MaxActOptions(Options):
    """The options of MaxOut, declared once (the callback's keyword arguments, its YAML preset, the probe); see
    :class:`~trainviz.callbacks.maxact.MaxActivationCallback` for each, and :func:`trainviz.ops.maxact.maximize`
    for the objective and its weights.

    Raises:
        ValueError: an option of the wrong type or out of range (the message names it), or no target at all.
    """

    classes: Sequence[int] | None = None
    layers: Sequence[str] = ()
    channels: Channels = 8
    units: Sequence[tuple[str, Sequence[int]]] = ()
    steps: int = 64
    final_steps: int = 256
    final_upscale: int = 1
    lr: float = 0.05
    tv_weight: float = 1e-3
    norm_weight: float = 1e-4
    edge_weight: float = 0.0
    smoothing: float | None = None
    robust: bool = False
    max_strip: int = 12

    def check(self) -> None:
        layers = self.layers
        if (
            isinstance(layers, str)
            or not all(isinstance(n, str) and n for n in layers)
            or len(set(layers)) != len(layers)
        ):
            raise ValueError(f"Expected `layers` to be a list of distinct layer names, got {layers!r}.")
        channels: Channels = self.channels
        if isinstance(channels, Mapping):
            if set(channels) - set(layers):
                raise ValueError(f"Expected the keys of `channels` among `layers` {list(layers)}, got {channels!r}.")
            channels = {k: _indices(f"channels[{k!r}]", v) for k, v in channels.items()}
        elif isinstance(channels, int) and not isinstance(channels, bool):
            channels = check_positive_int("channels", channels)
        else:
            channels = _indices("channels", channels)
        units = []
        for unit in self.units:
            if not (isinstance(unit, Sequence) and len(unit) == 2 and isinstance(unit[0], str) and bool(unit[0])):
                raise ValueError(f"Expected each of `units` to be a (layer, (i, j, ...)) pair, got {unit!r}.")
            units.append((unit[0], tuple(_indices(f"units index of {unit[0]!r}", unit[1], distinct=False))))
        classes = None if self.classes is None else _indices("classes", self.classes, allow_empty=True)
        if classes == [] and not layers and not units:
            raise ValueError("Expected at least one target: `classes` (None for all), `layers` or `units`.")
        self.set(classes=classes, layers=tuple(layers), channels=channels, units=units)
        self.set(
            steps=check_positive_int("steps", self.steps),
            final_steps=check_int("final_steps", self.final_steps, minimum=0),
            final_upscale=check_positive_int("final_upscale", self.final_upscale),
            lr=check_float("lr", self.lr, 0, strict_minimum=True),
            tv_weight=check_float("tv_weight", self.tv_weight, 0),
            norm_weight=check_float("norm_weight", self.norm_weight, 0),
            edge_weight=check_float("edge_weight", self.edge_weight, 0),
            smoothing=None if self.smoothing is None else check_float("smoothing", self.smoothing, 0),
            robust=check_bool("robust", self.robust),
            max_strip=check_positive_int("max_strip", self.max_strip),
        )


def build_targets(
    model: nn.Module, example: torch.Tensor, options: MaxActOptions
) -> tuple[list[Target], dict[str, nn.Module]]:
    """The targets of ``options`` and ``{name: module}`` of their layers, checked against the model (class count,
    channel count, unit shape) with one forward of ``example[:1]``.

    Raises:
        ValueError: an unknown layer (naming close matches), or an index out of range for the model.
    """
    specs = [*options.layers, *(u[0] for u in options.units)]
    names = {spec: resolve_layer(model, spec)[0] for spec in specs}
    modules = {name: resolve_layer(model, name)[1] for name in names.values()}
    with torch.no_grad(), capture(model, modules) as acts:
        out = model(example[:1])
    k = expect_logits(out).shape[1] if options.classes != [] else 0
    targets: list[Target] = []
    for c in list(range(k)) if options.classes is None else options.classes:
        if c >= k:
            raise ValueError(f"Expected `classes` below the model's {k} classes, got {c}.")
        targets.append(("logit", c))
    for spec in options.layers:
        name = names[spec]
        width = acts[name].shape[1] if acts[name].dim() > 1 else 0
        chosen = options.channels.get(spec, []) if isinstance(options.channels, Mapping) else options.channels
        for ch in list(range(min(chosen, width))) if isinstance(chosen, int) else chosen:
            if ch >= width:
                raise ValueError(f"Expected channels of layer {name!r} below its {width} channels, got {ch}.")
            targets.append(("channel", name, ch))
    for spec, index in options.units:
        name, shape = names[spec], tuple(acts[names[spec]].shape[1:])
        if len(index) != len(shape) or any(i >= s for i, s in zip(index, shape)):
            raise ValueError(f"Expected a unit index of layer {name!r} within its output shape {shape}, got {index}.")
        targets.append(("unit", name, tuple(index)))
    return targets, modules


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


@dataclass(kw_only=True)
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
        """The metrics of :data:`~trainviz.probes.maxact_names.NAMES`, by their names."""
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
        return cls(epoch=record["epoch"], activation=activation, moved=dict(record.get("moved") or {}))

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
            reached, moved = (_named([f"{keys[i]}/{m}" for i in rows], m) for m in ("activation", "moved"))
            curves.append(
                {
                    "title": f"{reached.heading}: {group}",
                    "description": reached.text,
                    "y": "activation",
                    "series": [{"name": keys[i], "key": ["activation", keys[i]]} for i in rows],
                }
            )
            curves.append(
                {
                    "title": f"{moved.heading}: {group}",
                    "description": moved.text,
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


def _named(keys: list[str], metric: str) -> Metric:
    """The metric of a curve's keys (:data:`~trainviz.probes.maxact_names.NAMES`): theirs when they are of one
    metric, else ``metric`` worded for any target (a layer's channels and units together)."""
    metrics = {NAMES.metric(k) for k in keys}
    return metrics.pop() if len(metrics) == 1 else any_target(metric)


# the compute contract ------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class MaxActPlan:
    """What a run optimises (plain data): the ``targets`` in order, ``steps`` Adam steps, images ``upscale``
    times the probe side; ``final``: the fit-end high-quality pass (no ``moved``, kept out of the history)."""

    epoch: int
    targets: tuple[Target, ...]
    steps: int
    upscale: int = 1
    final: bool = False

    @property
    def whole(self) -> bool:
        """A per-epoch run: its cost is the next one's estimate (:func:`trainviz.core.contract.is_whole`)."""
        return not self.final


@dataclass
class MaxActPartial:
    """One share's targets: their ``keys``, optimised ``images`` ``(n, C, H, W)`` pixels and ``activation``
    ``(n,)``, CPU float32 (``n`` may be 0)."""

    keys: list[str]
    images: torch.Tensor
    activation: torch.Tensor


class MaxActHistory:
    """Each run's images (CPU float16): ``previous`` ``{key: (C, H, W)}`` of the last run (for ``moved``) and
    ``runs`` ``[(epoch, (B, C, H, W))]`` (the strips); checkpointed by the callback."""

    def __init__(self) -> None:
        self.previous: dict[str, torch.Tensor] = {}
        self.runs: list[tuple[int, torch.Tensor]] = []

    def add(self, epoch: int, keys: Sequence[str], images: torch.Tensor) -> None:
        images = images.half()
        self.previous = {key: images[i] for i, key in enumerate(keys)}
        self.runs.append((epoch, images))

    def state_dict(self) -> dict[str, Any]:
        images = torch.stack([m for _, m in self.runs]) if self.runs else None
        return {"previous": dict(self.previous), "history_epochs": [e for e, _ in self.runs], "history": images}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        images = state.get("history")
        self.runs = [] if images is None else list(zip(state.get("history_epochs", []), images.unbind(0)))
        self.previous = dict(state.get("previous") or {})

    def catch_up(self, done: Sequence[int], epoch: int, read: Callable[[int], Mapping[str, Any] | None]) -> None:
        """After a resume from a checkpoint saved before an epoch's probe ran (at its last validation), read the
        images of ``done`` runs before ``epoch`` that the history lacks back (``read(epoch)``: the run's
        ``images.npz`` arrays or ``None``)."""
        have = {e for e, _ in self.runs}
        for run in sorted(e for e in done if e < epoch and e not in have):
            arrays = read(run)
            if arrays is not None:
                self.runs.append((run, torch.from_numpy(arrays["images"]).half()))
                if run == max(done):
                    self.previous = dict(zip(arrays["keys"].tolist(), self.runs[-1][1].unbind(0)))
        self.runs.sort(key=lambda item: item[0])


class MaxActProbe(Probe[MaxActPlan, MaxActPartial, MaxActResult]):
    """MaxOut on the compute contract: a share is a set of targets (:meth:`shares`), each optimised from its own
    seeded start, so the merged result does not depend on how the targets were split.

    Args:
        probe: the probe set (only its input shape and class names are used).
        options: the user options.
        targets: the targets (:func:`build_targets`), in order.
        layers: ``{name: module}`` of the layers they name.
        norm: pixels -> model input (``None``: the identity).
        seed: the base seed of the per-target starting noise.
        shown: the channels pictures show (``None``: all, for 1 or 3 channels).
        history: the earlier runs (``moved``, strips); updated by :meth:`merge` (a new one when not given).
    """

    def __init__(
        self,
        probe: ProbeSet,
        options: MaxActOptions,
        targets: Sequence[Target],
        *,
        layers: Mapping[str, nn.Module] | None = None,
        norm: Normalization | None = None,
        seed: int = 0,
        shown: tuple[int, ...] | None = None,
        history: MaxActHistory | None = None,
    ) -> None:
        super().__init__(probe)
        self.options, self.targets, self.layers = options, tuple(targets), dict(layers or {})
        self.norm, self.seed, self.shown = norm, seed, shown
        self.history = MaxActHistory() if history is None else history
        self.shape = tuple(int(v) for v in probe.images.shape[1:])
        self.cost: float | None = None  # seconds of the last run's compute and merge
        self.skipped: list[tuple[str, str]] = []  # what the last plan left out, and why
        self._start: float | None = None

    def keys(self) -> list[str]:
        return [target_key(t) for t in self.targets]

    def labels(self) -> list[str]:
        return [label_of(t, self.probe.class_names) for t in self.targets]

    def plan(self, credit: Credit, *, final: bool = False) -> MaxActPlan | None:
        """Every target for ``steps`` (``final``: the fit-end pass, ``final_steps`` at ``final_upscale``), or
        ``None`` when the last run cost more than a credit that is not essential."""
        self.skipped = []
        cost, seconds = self.cost, credit.seconds
        if not (final or seconds is None or credit.essential or cost is None or cost <= seconds):
            self.skipped = [("run", f"last run took {cost:.2f} s, credit {seconds:.2f} s")]
            return None
        if final:
            return MaxActPlan(
                epoch=credit.epoch,
                targets=self.targets,
                steps=self.options.final_steps,
                upscale=self.options.final_upscale,
                final=True,
            )
        return MaxActPlan(epoch=credit.epoch, targets=self.targets, steps=self.options.steps)

    def shares(self, plan: MaxActPlan, world: int) -> list[Share[list[Any]]]:
        """Every rank's share of the plan's targets, in rank order."""
        return [Share.of_items(plan.targets, world, rank) for rank in range(world)]

    def compute(self, model: nn.Module, share: Share[Any], plan: MaxActPlan, state: Any) -> MaxActPartial:
        """The share's targets optimised in one batch (one device-to-host copy)."""
        self._start = time.perf_counter()
        c, h, w = self.shape
        size = (c, h * plan.upscale, w * plan.upscale)
        if len(share) == 0:
            return MaxActPartial([], torch.zeros(0, *size), torch.zeros(0))
        o = self.options
        out = maximize(
            model,
            list(share.data),
            size,
            steps=plan.steps,
            lr=o.lr,
            tv_weight=o.tv_weight,
            norm_weight=o.norm_weight,
            edge_weight=o.edge_weight,
            smoothing=o.smoothing,
            robust=o.robust,
            normalization=self.norm,
            seed=self.seed,
            layers=self.layers,
        )
        host = to_cpu({"images": out.images.float(), "activation": out.activation.float()})
        return MaxActPartial(
            out.keys, torch.from_numpy(host["images"]).float(), torch.from_numpy(host["activation"]).float()
        )

    def merge(self, partials: Sequence[MaxActPartial], plan: MaxActPlan) -> MaxActResult:
        """The shares in target order, each target's ``moved`` (the correlation of its image with its image at
        the previous run), and the run added to the history (not the fit-end pass)."""
        keys = [k for p in partials for k in p.keys]
        images = torch.cat([p.images for p in partials])
        activation = torch.cat([p.activation for p in partials])
        moved: dict[str, float | None] = dict.fromkeys(keys)
        previous = {} if plan.final else self.history.previous
        have = [i for i, k in enumerate(keys) if k in previous and previous[k].shape == images.shape[1:]]
        if have:
            before = torch.stack([previous[keys[i]] for i in have]).float()
            for i, value in zip(have, image_correlation(images[have], before).tolist()):
                moved[keys[i]] = value
        result = MaxActResult(
            epoch=plan.epoch,
            activation=dict(zip(keys, activation.double().tolist())),
            moved=moved,
            images=images,
            labels=[label_of(t, self.probe.class_names) for t in plan.targets],
            final=plan.final,
            shown=self.shown,
        )
        if not plan.final:
            self.history.add(plan.epoch, keys, images)
        if self._start is not None:
            self.cost, self._start = time.perf_counter() - self._start, None
        return result

    def evolution(self) -> FitEnd | None:
        """Fit end: per group, each target's image across epochs (``<group>/evolution``, :func:`evolution`);
        ``None`` before the first run. The high-quality fit-end pass needs the model: the callback runs it."""
        if not self.history.runs:
            return None
        return FitEnd(self.history.runs[-1][0], images=evolution(self.history, self, self.options))


def _channels(images: torch.Tensor, shown: tuple[int, ...] | None) -> torch.Tensor:
    return images if shown is None else images[:, list(shown)]


def evolution(history: MaxActHistory, probe: MaxActProbe, options: MaxActOptions) -> dict[str, np.ndarray]:
    """Fit end: per group, rows of each target's image across at most ``max_strip`` evenly spaced runs of the
    ``history``, captioned with the target and the epoch (``{}`` when the last run has other targets).

    Returns:
        ``{"<group>/evolution": (H, W, 3) uint8}``.
    """
    runs, keys, labels = history.runs, probe.keys(), probe.labels()
    if not runs or len(runs[-1][1]) != len(keys):
        return {}
    keep = strip_epochs(list(range(len(runs))), options.max_strip)
    epochs = [runs[i][0] for i in keep]
    stack = torch.stack([runs[i][1].float() for i in keep])  # (E, B, C, H, W)
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(group_of(key), []).append(i)
    out = {}
    for group, rows in groups.items():
        images = stack[:, rows].transpose(0, 1).reshape(-1, *stack.shape[2:])  # row-major: target, then epoch
        captions = [f"{labels[r]}\nepoch {e}" for r in rows for e in epochs]
        tiles = caption_tiles(to_uint8(upscale(_channels(images, probe.shown), TILE)), captions)
        out[f"{group}/evolution"] = image_grid(tiles, len(epochs))
    return out
