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
    >>> from trainviz.probes.cam import CAMConfig, CAMOptions, CAMProbeResult, compute
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2)).eval()
    >>> probe = ProbeSet(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]), torch.arange(4))
    >>> result = compute(net, probe, CAMConfig({"1": net[1]}, CAMOptions(deletion_steps=2)), epoch=0)
    >>> sorted(result.per_map), CAMProbeResult.from_record(result.record()) == result
    (['1', 'aggregate'], True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from trainviz.core.checks import check_bool, check_choice, check_layers, check_positive_int
from trainviz.core.common import class_names, example_indices, json_number, strip_epochs
from trainviz.core.contract import Credit, FitEnd, Probe, Share
from trainviz.core.display import Display, pictures
from trainviz.core.layers import Reshape
from trainviz.core.normalization import Normalization
from trainviz.core.options import Options
from trainviz.core.probeset import ProbeSet
from trainviz.core.result import Result
from trainviz.core.transfer import to_host
from trainviz.ops.cam import AGGREGATES, METHODS, CAMResult, class_activation_maps, class_mean_maps, shrink_maps
from trainviz.ops.guided import guided_grad_cam
from trainviz.ops.localization import (
    confidence_change,
    deletion_curve,
    energy_pointing_game,
    map_correlation,
    pointing_game,
    pointing_game_chance,
)
from trainviz.probes.cam_names import NAMES
from trainviz.render.images import caption_tiles, colorize, image_grid, overlay_heatmaps, to_uint8, upscale
from trainviz.render.strips import evolution_strip, gradient_images

__all__ = [
    "CAMConfig",
    "CAMHistory",
    "CAMOptions",
    "CAMPartial",
    "CAMPlan",
    "CAMProbe",
    "CAMProbeResult",
    "class_maps",
    "compute",
    "evolution",
]

STATE_SIDE = 32  # maps kept between runs (drift reference, evolution strips) are at most this many pixels a side
_FAITHFUL_SCALARS = ("average_drop", "increase_in_confidence", "deletion_auc")  # the amortised scores
_GREEN, _RED = (20, 120, 40), (190, 30, 30)


@dataclass(frozen=True, kw_only=True)
class CAMOptions(Options):
    """The user's options of :class:`~trainviz.callbacks.cam.CAMCallback` (declared once: the callback's flat keyword
    arguments and the YAML presets are these), checked on construction.

    Attributes:
        layers: layer names or ``"auto"``, resolved at setup.
        method, aggregate, fc_layer, reshape: see :func:`trainviz.ops.cam.class_activation_maps`.
        target: explain the ``"true"`` class or the ``"predicted"`` one.
        guided: also compute guided Grad-CAM.
        n_tracked: images in the layer rows and the evolution strip; n_grid: images in the overlay grids.
        deletion_steps: steps of the deletion curve; pointing_tolerance: pixels by which masks grow.
        faithfulness_every: the faithfulness scores (average drop, increase in confidence, deletion curve: the
            extra forwards) run at the first run and every ``faithfulness_every``-th run after it.
        max_strip: most epochs in the evolution strip.
    """

    layers: Sequence[str] | str = ("auto",)
    method: str = "gradcam"
    aggregate: str = "mean"
    target: str = "true"
    guided: bool = False
    n_tracked: int = 4
    n_grid: int = 16
    fc_layer: str | None = None
    deletion_steps: int = 16
    faithfulness_every: int = 1
    pointing_tolerance: int = 0
    max_strip: int = 12
    reshape: Reshape = None

    def check(self) -> None:
        if self.fc_layer is not None and (not isinstance(self.fc_layer, str) or self.method != "cam"):
            got = f"got {self.fc_layer!r} with method={self.method!r}"
            raise ValueError(f"Expected `fc_layer` to be a layer name used with method='cam', {got}.")
        if self.reshape is not None and not callable(self.reshape):
            raise ValueError(
                f"Expected `reshape` to be a callable (N, T, C) -> (N, C, h, w) or None, got {self.reshape!r}."
            )
        tolerance = self.pointing_tolerance
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
            raise ValueError(f"Expected `pointing_tolerance` to be a non-negative int, got {tolerance!r}.")
        self.set(
            layers=check_layers("layers", self.layers),
            method=check_choice("method", self.method, METHODS),
            aggregate=check_choice("aggregate", self.aggregate, AGGREGATES),
            target=check_choice("target", self.target, ("true", "predicted")),
            guided=check_bool("guided", self.guided),
            n_tracked=check_positive_int("n_tracked", self.n_tracked),
            n_grid=check_positive_int("n_grid", self.n_grid),
            deletion_steps=check_positive_int("deletion_steps", self.deletion_steps),
            faithfulness_every=check_positive_int("faithfulness_every", self.faithfulness_every),
            max_strip=check_positive_int("max_strip", self.max_strip),
        )


@dataclass
class CAMConfig:
    """What a run computes and shows: the options and what setup resolved.

    Attributes:
        layers: the resolved ``{name: module}`` to explain.
        options: the user's :class:`CAMOptions`.
        batch_size: images per forward; norm: model inputs back to pixels (``None``: the identity).
        display: how pictures show the inputs (:class:`~trainviz.core.display.Display`; ``None``: ``norm`` undone).
    """

    layers: dict[str, nn.Module]
    options: CAMOptions = field(default_factory=CAMOptions)
    _: KW_ONLY
    batch_size: int = 64
    norm: Normalization | None = None
    display: Display | None = None


@dataclass(frozen=True)
class CAMPlan:
    """What a CAM run computes: every map with its localisation scores, and the faithfulness scores (the extra
    forwards: average drop, increase in confidence, deletion curve) when they run.

    Attributes:
        faithfulness: the faithfulness scores run (when due: the first run and every ``faithfulness_every``-th).
        whole: everything due runs (:func:`trainviz.core.contract.is_whole`; ``False``: the budget left the due
            faithfulness scores out).
    """

    faithfulness: bool = True
    whole: bool = True


@dataclass(kw_only=True)
class CAMProbeResult(Result):
    """One run. The record is flat: ``{"epoch", "faithfulness", "target_probability", "pointing_game_chance" (with
    masks), "<key>/<metric>"}`` for each map key (every layer, and ``aggregate``) and metric (``pointing_game``,
    ``energy_pointing_game`` with masks; ``average_drop``, ``increase_in_confidence``, ``deletion_auc`` when the
    faithfulness scores ran this run, which ``faithfulness`` says; ``drift_correlation`` from the second run),
    ``None`` for non-finite values. The tensors and the pictures' inputs are not recorded and are ``None`` in a
    result read back.

    Shape:
        maps ``{key: (N, H, W)}``, probs ``(N, K)``, labels, ids and targets ``(N,)``, per_image
        ``{"<metric>/<key>": (N,) or (N, steps + 1)}``, small ``{key: (N, h, w)}`` float16 on the CPU,
        pixels ``(n_grid, C, H, W)`` in [0, 1].
    """

    epoch: int
    target_probability: float
    pointing_game_chance: float | None
    per_map: dict[str, dict[str, float]]
    faithfulness: bool = True
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
        """The metrics of :data:`~trainviz.probes.cam_names.NAMES`, by their names."""
        out: dict[str, float | None] = {"target_probability": self.target_probability}
        if self.pointing_game_chance is not None:
            out["pointing_game_chance"] = self.pointing_game_chance
        for key, values in self.per_map.items():
            out.update({f"{key}/{name}": v for name, v in values.items()})
        return out

    def record(self) -> dict[str, Any]:
        scalars = {k: json_number(v) for k, v in self.scalars().items()}
        return {"epoch": self.epoch, "faithfulness": self.faithfulness, **scalars}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CAMProbeResult:
        per_map: dict[str, dict[str, float]] = {}
        for name, value in record.items():
            if "/" in name:
                key, metric = name.rsplit("/", 1)
                per_map.setdefault(key, {})[metric] = float("nan") if value is None else value
        return cls(
            epoch=record["epoch"],
            target_probability=record["target_probability"],
            pointing_game_chance=record.get("pointing_game_chance"),
            per_map=per_map,
            faithfulness=bool(record.get("faithfulness", True)),  # records before amortisation: every run had them
        )

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
        :meth:`Result.section <trainviz.core.result.Result.section>`; the faithfulness curves have every map key
        whether or not this run had them, and show the runs that did); two runs compared: the CAM drift between
        them, the correlation of the maps of the same probe images (:func:`trainviz.report.compare.map_correlation`)."""
        keys = list(self.per_map)
        y_ranges = {
            "pointing_game": [0, 1.02],
            "energy_pointing_game": [0, 1.02],
            "average_drop": None,
            "increase_in_confidence": [0, 1.02],
            "deletion_auc": None,
            "drift_correlation": [-1, 1.02],
        }
        probability = NAMES["target_probability"]
        curves: list[dict[str, Any]] = [
            {
                "title": probability.heading,
                "description": probability.text,
                "y": "probability",
                "y_range": [0, 1.02],
                "series": [{"name": "target class probability", "key": ["target_probability"]}],
            }
        ]
        for metric, y_range in y_ranges.items():
            named = NAMES[f"{{map}}/{metric}"]  # titles and descriptions: the name table
            series = [
                {"name": k, "key": [f"{k}/{metric}"]}
                for k in keys
                if metric in self.per_map[k] or metric in _FAITHFUL_SCALARS
            ]
            if metric == "pointing_game" and self.pointing_game_chance is not None:
                series.append({"name": "chance", "key": ["pointing_game_chance"]})
            if series:
                curves.append(
                    {
                        "title": named.heading,
                        "description": named.text,
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
    """The maps of ``config.layers`` (and guided backpropagation with ``guided``) of ``images``.

    Raises:
        ValueError: the method does not apply to a layer (e.g. CAM without ``layer -> GAP -> linear``), a layer
            gives no feature maps, or the model does not return logits.
    """
    options = config.options
    explain = guided_grad_cam if options.guided else class_activation_maps
    return explain(
        model,
        images,
        config.layers,
        labels if options.target == "true" else "predicted",
        method=options.method,  # type: ignore[arg-type]
        aggregate=options.aggregate,  # type: ignore[arg-type]
        fc_layer=options.fc_layer,
        batch_size=config.batch_size,
        reshape=options.reshape,
    )


def _localisation(share: ProbeSet, m: torch.Tensor, config: CAMConfig) -> dict[str, torch.Tensor]:
    """Per-image localisation of one stack of maps of a share (with masks; none without): no forward."""
    if share.masks is None:
        return {}
    return {
        "pointing_hit": pointing_game(m, share.masks, config.options.pointing_tolerance),
        "energy": energy_pointing_game(m, share.masks),
    }


def _faithfulness(
    model: nn.Module, share: ProbeSet, targets: torch.Tensor, m: torch.Tensor, config: CAMConfig
) -> dict[str, torch.Tensor]:
    """Per-image faithfulness of one stack of maps of a share: ``2 + deletion_steps + 1`` forwards."""
    batch, arrays = config.batch_size, {}
    arrays["drop"], arrays["increase"] = confidence_change(model, share.images, m, targets, batch_size=batch)
    arrays["deletion_curve"], arrays["deletion_auc"] = deletion_curve(
        model, share.images, m, targets, steps=config.options.deletion_steps, batch_size=batch
    )
    return arrays


def _per_key(
    maps: dict[str, torch.Tensor], n_layers: int, metrics: Callable[[torch.Tensor], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """``{"<metric>/<key>": (n,) or (n, steps + 1)}`` of ``metrics(map)`` for each map key; with one layer the
    aggregate is that layer's map and gets its arrays again."""
    out: dict[str, torch.Tensor] = {}
    arrays: dict[str, torch.Tensor] = {}
    for key, m in maps.items():
        if not (key == "aggregate" and n_layers == 1):
            arrays = metrics(m)
        out.update({f"{name}/{key}": v for name, v in arrays.items()})
    return out


_LOCALISATION = ("pointing_hit", "energy")  # per-image arrays, in the order they are kept
_FAITHFULNESS = ("drop", "increase", "deletion_curve", "deletion_auc")
_MEANS = {  # per-image array -> the scalar that is its mean over the probe set
    "pointing_hit": "pointing_game",
    "energy": "energy_pointing_game",
    "drop": "average_drop",
    "increase": "increase_in_confidence",
    "deletion_auc": "deletion_auc",
}


@dataclass(kw_only=True)
class CAMPartial:
    """What one share computes (CPU tensors, in share order): the maps, their per-image metrics, the guided
    Grad-CAM of the share's grid images, and the seconds of its parts (``{"maps": s, "faithfulness": s}``, the
    latter only when they ran).

    Shape:
        maps and small ``{key: (n, H, W)}`` and ``(n, h, w)``, probs ``(n, K)``, targets ``(n,)``, per_image
        ``{"<metric>/<key>": (n,) or (n, steps + 1)}``, chance ``(n,)`` with masks, guided
        ``{global index: (C, H, W)}``.
    """

    maps: dict[str, torch.Tensor]
    small: dict[str, torch.Tensor]
    probs: torch.Tensor
    targets: torch.Tensor
    per_image: dict[str, torch.Tensor]
    chance: torch.Tensor | None
    guided: dict[int, torch.Tensor] | None
    n_layers: int
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class CAMHistory:
    """What CAM keeps between runs (saved in the callback's checkpoint state): the tracked images' aggregate maps
    per run (the evolution strip), the last run's small maps (the drift reference), on the CPU in float16, and the
    epochs of the runs that had the faithfulness scores."""

    runs: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    previous: dict[str, torch.Tensor] = field(default_factory=dict)
    faithfulness_epochs: list[int] = field(default_factory=list)

    def faithfulness_due(self, every: int) -> bool:
        """The first run, then once ``every`` runs have passed since the last run with the faithfulness scores
        (every ``every``-th run; scores the budget left out come at the next run).

        Example:
            >>> h = CAMHistory(faithfulness_epochs=[0])
            >>> h.runs = [(e, torch.zeros(1)) for e in (0, 1)]
            >>> CAMHistory().faithfulness_due(3), h.faithfulness_due(3), h.faithfulness_due(2)
            (True, False, True)
        """
        if not self.faithfulness_epochs:
            return True
        last = self.faithfulness_epochs[-1]
        return sum(e > last for e, _ in self.runs) + 1 >= every

    def state_dict(self) -> dict[str, Any]:
        return {
            "history_epochs": [e for e, _ in self.runs],
            "history_maps": torch.stack([m for _, m in self.runs]) if self.runs else None,
            "previous": dict(self.previous),
            "faithfulness_epochs": list(self.faithfulness_epochs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        maps = state.get("history_maps")
        epochs = list(state.get("history_epochs", []))
        self.runs = [] if maps is None else list(zip(epochs, maps.unbind(0)))
        self.previous = dict(state.get("previous") or {})
        self.faithfulness_epochs = list(state.get("faithfulness_epochs", epochs))  # older states: every run had them

    def clear(self) -> None:
        self.runs, self.previous, self.faithfulness_epochs = [], {}, []


class CAMProbe(Probe[CAMPlan, CAMPartial, CAMProbeResult]):
    """The CAM capability under the compute contract (:mod:`trainviz.core.contract`).

    ``compute`` explains a share's images (one forward and one ``autograd.grad`` per batch, plus the faithfulness
    forwards when the plan has them) and scores each map per image; ``merge`` concatenates the shares, averages the
    scores over the whole probe set, measures drift against the previous run and builds the pictures, then records
    the run in ``history``. It keeps the seconds of the last run's parts (:attr:`costs`: the maps with their
    localisation, and the faithfulness scores), from which :meth:`plan` decides under a budget.

    Args:
        probe: the whole probe set (on any device: merge reads labels, masks and the grid images).
        config: the options and the resolved layers.
        history: kept across runs (a fresh one by default).
        epoch: the epoch the next merge is for (set by the caller before each run).
    """

    def __init__(self, probe: ProbeSet, config: CAMConfig, history: CAMHistory | None = None) -> None:
        super().__init__(probe)
        self.config = config
        self.history = history if history is not None else CAMHistory()
        self.epoch = 0
        self.costs: dict[str, float] = {}  # seconds of the last run's maps ("maps") and faithfulness ("faithfulness")
        self.skipped: list[tuple[str, str]] = []  # the parts the last plan left out, with why
        # seconds of one image's plain forward on the model as it is (the shared clean forward's price), from which
        # a budget's plan estimates the parts not measured yet; None: an unmeasured part counts as fitting
        self.image_seconds: Callable[[], float | None] | None = None
        self.shares = 1  # the parts the probe set is cut into, one per process (each prices its largest)

    def estimates(self) -> dict[str, float]:
        """The parts not measured yet, priced in plain forwards of the probe set at :attr:`image_seconds`: the maps
        one forward and one backward (about 3 forwards), the faithfulness scores ``3 + deletion_steps`` forwards
        per map (each layer, and the aggregate of several), each for the largest of the :attr:`shares` the probe set
        is cut into across processes (the whole set in one process): the slowest rank's part. Empty without a price.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> probe = ProbeSet(torch.rand(8, 3, 4, 4), torch.arange(8) % 2, torch.arange(8))
            >>> layers = {"a": nn.Identity(), "b": nn.Identity()}
            >>> prober = CAMProbe(probe, CAMConfig(layers, CAMOptions(deletion_steps=4), batch_size=4))
            >>> prober.estimates()
            {}
            >>> prober.image_seconds = lambda: 0.01
            >>> {part: round(seconds, 6) for part, seconds in prober.estimates().items()}  # 3 maps: 2 layers, aggregate
            {'maps': 0.24, 'faithfulness': 1.68}
            >>> prober.shares = 3  # three processes: the largest share has 3 of the 8 images
            >>> {part: round(seconds, 6) for part, seconds in prober.estimates().items()}
            {'maps': 0.09, 'faithfulness': 0.63}
            >>> prober.costs = {"maps": 0.1}
            >>> list(prober.estimates())
            ['faithfulness']
        """
        image = self.image_seconds() if self.image_seconds is not None else None
        if image is None:
            return {}
        start, stop = Share.bounds(len(self.probe), max(1, self.shares), 0)  # rank 0's share is the largest
        n, layers = stop - start, len(self.config.layers)
        forwards = {"maps": 3, "faithfulness": (layers + (layers > 1)) * (3 + self.config.options.deletion_steps)}
        return {part: count * n * image for part, count in forwards.items() if part not in self.costs}

    def whole_cost(self) -> float | None:
        """Seconds of a run at its cadence: the maps and the faithfulness scores every ``faithfulness_every``-th
        run, each measured or estimated (:meth:`estimates`); ``None`` before the maps have a price.

        Example:
            >>> probe = ProbeSet(torch.rand(8, 3, 4, 4), torch.arange(8) % 2, torch.arange(8))
            >>> config = CAMConfig({"a": nn.Identity()}, CAMOptions(faithfulness_every=2), batch_size=4)
            >>> prober = CAMProbe(probe, config)
            >>> prober.whole_cost() is None
            True
            >>> prober.costs = {"maps": 0.1, "faithfulness": 0.6}
            >>> round(prober.whole_cost(), 6)
            0.4
        """
        costs = {**self.estimates(), **self.costs}
        if "maps" not in costs:
            return None
        return costs["maps"] + costs.get("faithfulness", 0.0) / self.config.options.faithfulness_every

    def plan(self, credit: Credit) -> CAMPlan | None:
        """The maps, with the faithfulness scores when due (:meth:`CAMHistory.faithfulness_due`). Under a budget
        (``credit.seconds``): everything due if the last costs of its parts fit the credit, else the maps without
        the faithfulness scores if the maps fit (or the run is essential), else nothing (``None``). A part not
        measured yet is estimated (:meth:`estimates`), so the first run fits the budget too; without a price it
        counts as fitting. :attr:`skipped` says what was left out."""
        self.epoch = credit.epoch
        self.skipped = []
        due = self.history.faithfulness_due(self.config.options.faithfulness_every)
        seconds, guessed = credit.seconds, self.estimates() if credit.seconds is not None else {}
        costs = {**guessed, **self.costs}
        maps, faithfulness = costs.get("maps"), costs.get("faithfulness")
        whole = CAMPlan(faithfulness=due)
        if seconds is None or maps is None:
            return whole
        cost = maps + ((faithfulness or 0.0) if due else 0.0)
        if cost <= seconds:
            return whole
        if due and (maps <= seconds or credit.essential):
            about = {part: "would take about " if part in guessed else "" for part in ("maps", "faithfulness")}
            self.skipped = [
                (
                    "faithfulness",
                    f"the maps {about['maps'] or 'last took '}{maps:.2f} s and the faithfulness scores "
                    f"{about['faithfulness']}{faithfulness or 0.0:.2f} s, credit {seconds:.2f} s",
                )
            ]
            return CAMPlan(faithfulness=False, whole=False)
        if credit.essential:
            return whole  # the maps alone, nothing due left out
        took = "would take about" if guessed else "last took"  # some parts not measured yet
        self.skipped = [("run", f"its parts {took} {cost:.2f} s, credit {seconds:.2f} s")]
        return None

    def compute(self, model: nn.Module, share: Share[ProbeSet], plan: CAMPlan, state: Any) -> CAMPartial:
        """The share's maps of every layer and their aggregate, each scored per image (localisation with masks;
        faithfulness with ``plan.faithfulness``), on the CPU, with the seconds of the two parts."""
        start = time.perf_counter()
        data, config = share.data, self.config
        if len(share) == 0:  # nothing to explain here; merge leaves it out
            empty = torch.empty(0)
            return CAMPartial(
                maps={},
                small={},
                probs=empty,
                targets=empty.long(),
                per_image={},
                chance=None,
                guided=None,
                n_layers=len(config.layers),
                seconds={"maps": time.perf_counter() - start},
            )
        result = class_maps(model, data.images, data.labels, config)
        maps = {**result.maps, "aggregate": result.aggregate}
        n_layers = len(result.maps)
        local = _per_key(maps, n_layers, lambda m: _localisation(data, m, config))
        chance = None
        if data.masks is not None:
            chance = pointing_game_chance(data.masks, config.options.pointing_tolerance)
        grid = [i - share.start for i in self.grid() if share.start <= i < share.stop]
        guided = None if result.guided is None else _shown(result.guided_grad_cam[grid], config.display)
        host = to_host(
            {
                "maps": maps,
                "small": {key: shrink_maps(m, STATE_SIDE) for key, m in maps.items()},
                "probs": result.logits.float().softmax(1),
                "targets": result.targets,
                "per_image": local,
                "chance": chance,
                "guided": guided,
            }
        )  # waits for the device: the maps' part ends here
        seconds = {"maps": time.perf_counter() - start}
        per_image = host["per_image"]
        if plan.faithfulness:
            start = time.perf_counter()
            targets = result.targets
            faithful = to_host(_per_key(maps, n_layers, lambda m: _faithfulness(model, data, targets, m, config)))
            seconds["faithfulness"] = time.perf_counter() - start
            order = [f"{name}/{key}" for key in maps for name in (*_LOCALISATION, *_FAITHFULNESS)]
            arrays = {**per_image, **faithful}
            per_image = {name: arrays[name] for name in order if name in arrays}  # per map key, as always
        return CAMPartial(
            maps=host["maps"],
            small=host["small"],
            probs=host["probs"],
            targets=host["targets"],
            per_image=per_image,
            chance=host["chance"],
            guided=None if guided is None else {share.start + i: g for i, g in zip(grid, host["guided"])},
            n_layers=n_layers,
            seconds=seconds,
        )

    def grid(self) -> list[int]:
        """The probe indices shown in the overlay grids (one per class first)."""
        return example_indices(self.probe.labels, self.config.options.n_grid)

    def merge(self, partials: Sequence[CAMPartial], plan: CAMPlan) -> CAMProbeResult:
        """The run's result from the shares' partials (in share order); the history and :attr:`costs` updated (the
        slowest share's seconds of each part, the merge counted with the maps)."""
        start = time.perf_counter()
        parts = [p for p in partials if p.targets.shape[0] > 0] or list(partials[:1])
        first, options, probe = parts[0], self.config.options, self.probe

        def cat(get: Any) -> torch.Tensor:
            return torch.cat([get(p) for p in parts])

        maps = {key: cat(lambda p, k=key: p.maps[k]) for key in first.maps}
        small = {key: cat(lambda p, k=key: p.small[k]) for key in first.small}
        probs, targets = cat(lambda p: p.probs), cat(lambda p: p.targets)
        per_image = {name: cat(lambda p, n=name: p.per_image[n]) for name in first.per_image}
        scalars = {"target_probability": probs.gather(1, targets[:, None]).mean()}
        if first.chance is not None:
            scalars["pointing_game_chance"] = cat(lambda p: p.chance).mean()
        for name, values in list(per_image.items()):
            array, key = name.split("/", 1)
            if array in _MEANS:
                value = values.float().mean() if array in ("pointing_hit", "increase") else values.mean()
                scalars[f"{key}/{_MEANS[array]}"] = value
        drift = None
        for key, m in small.items():
            previous = self.history.previous.get(key)
            if not (key == "aggregate" and first.n_layers == 1):  # else the one layer's drift again
                ok = previous is not None and previous.shape == m.shape
                drift = map_correlation(m.float(), previous.float()) if ok else None  # type: ignore[union-attr]
            if drift is not None:
                per_image[f"drift/{key}"] = drift
                scalars[f"{key}/drift_correlation"] = drift.nanmean()
        idx = self.grid()
        names = class_names(probe.class_names, probs.shape[1])
        labels = probe.labels.cpu()
        conf, pred = probs[idx].max(1)
        counts = torch.bincount(labels, minlength=len(names))[: len(names)]  # as class_mean_maps counts
        grid_labels = [int(v) for v in labels[idx].tolist()]
        pred_host, conf_host = [int(v) for v in pred.tolist()], conf.tolist()
        floats = {k: float(v) for k, v in scalars.items()}
        per_map: dict[str, dict[str, float]] = {}
        for name in _scalar_order(floats, list(maps), first.n_layers):
            key, metric = name.rsplit("/", 1)
            per_map.setdefault(key, {})[metric] = floats[name]
        guided = None
        if first.guided is not None:
            shown = {i: g for p in parts for i, g in (p.guided or {}).items()}
            guided = torch.stack([shown[i] for i in idx])
        result = CAMProbeResult(
            epoch=self.epoch,
            target_probability=floats["target_probability"],
            pointing_game_chance=floats.get("pointing_game_chance"),
            per_map=per_map,
            faithfulness=plan.faithfulness,
            maps=maps,
            probs=probs,
            labels=labels,
            ids=probe.ids.cpu(),
            targets=targets,
            per_image=per_image,
            small={k: v.half() for k, v in small.items()},
            pixels=pictures(probe.images[idx].float(), self.config.norm, self.config.display),
            grid=idx,
            captions=[
                f"true {names[t]}\npred {names[p]} {c:.2f}" for t, p, c in zip(grid_labels, pred_host, conf_host)
            ],
            grid_labels=grid_labels,
            correct=[t == p for t, p in zip(grid_labels, pred_host)],
            names=names,
            counts=[int(n) for n in counts.tolist()],
            guided=guided,
            n_rows=min(options.n_tracked, len(idx)),
            n_layers=first.n_layers,
        )
        self.history.previous = result.small
        tracked = example_indices(probe.labels, options.n_tracked)
        self.history.runs.append((self.epoch, result.small["aggregate"][tracked]))
        if plan.faithfulness:
            self.history.faithfulness_epochs.append(self.epoch)
            self.costs["faithfulness"] = max(p.seconds.get("faithfulness", 0.0) for p in partials)
        self.costs["maps"] = max(p.seconds.get("maps", 0.0) for p in partials) + time.perf_counter() - start
        return result

    def evolution(self) -> FitEnd | None:
        """Fit end: the strip of the ``n_tracked`` images' aggregated maps across at most ``max_strip`` evenly spaced
        runs (``evolution``), and ``evolution.npz`` (``maps`` ``(epochs, n_tracked, h, w)``, ``epochs``, ``ids``);
        ``None`` before the first run."""
        if not self.history.runs:
            return None
        strip, arrays = evolution(self.history.runs, self.probe, self.config)
        return FitEnd(self.history.runs[-1][0], images={"evolution": strip}, arrays={"evolution": arrays})


def _scalar_order(floats: dict[str, float], keys: list[str], n_layers: int) -> list[str]:
    """The per-map scalar names in the order one process has always recorded them: per map key, localisation,
    faithfulness, then drift."""
    metrics = ["pointing_game", "energy_pointing_game", "average_drop", "increase_in_confidence", "deletion_auc"]
    metrics.append("drift_correlation")
    return [f"{k}/{m}" for k in keys for m in metrics if f"{k}/{m}" in floats]


def compute(
    model: nn.Module, probe: ProbeSet, config: CAMConfig, *, epoch: int, previous: dict[str, torch.Tensor] | None = None
) -> CAMProbeResult:
    """One run in one process (:class:`CAMProbe` with the whole set as one share): the maps of every layer and
    their aggregate, localisation (with masks) and faithfulness scores, drift against ``previous`` (the last run's
    ``small`` maps), and what to show.

    Raises:
        ValueError: see :func:`class_maps`.
    """
    result = CAMProbe(probe, config, CAMHistory(previous=dict(previous or {}))).run(model, Credit(epoch=epoch))
    assert result is not None  # CAM always plans a run
    return result


def _shown(tensor: torch.Tensor, display: Display | None) -> torch.Tensor:
    """The shown channels of an input-shaped tensor (a gradient image)."""
    return tensor if display is None else display.channels_of(tensor)


def evolution(
    history: list[tuple[int, torch.Tensor]], probe: ProbeSet, config: CAMConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit end: the strip of the ``n_tracked`` images' aggregated maps across at most ``max_strip`` evenly spaced
    runs of ``history`` (``(epoch, maps)`` pairs), and the arrays of ``evolution.npz`` (``maps``
    ``(epochs, n_tracked, h, w)``, ``epochs``, ``ids``)."""
    idx = example_indices(probe.labels, config.options.n_tracked)
    epochs = [e for e, _ in history]
    stack = torch.stack([m for _, m in history])
    keep = strip_epochs(list(range(len(epochs))), config.options.max_strip)
    names = class_names(probe.class_names, probe.num_classes)
    pixels = probe.images[idx].float()
    strip = evolution_strip(
        pictures(pixels, config.norm, config.display),
        stack[keep].float(),
        [epochs[i] for i in keep],
        [names[c] for c in probe.labels[idx].tolist()],
    )
    return strip, {"maps": stack, "epochs": np.asarray(epochs), "ids": probe.ids[idx].cpu()}
