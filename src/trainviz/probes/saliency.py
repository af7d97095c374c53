"""Input-space saliency of a probe set with its faithfulness, localisation and sanity scores (pure torch).

The attributions are those of Fleuret's EE-559 'Under the hood' (saliency maps, SmoothGrad, deconvolution and
guided backpropagation, occlusion sensitivity) and integrated gradients (:mod:`trainviz.ops.saliency`,
:mod:`trainviz.ops.occlusion`); each becomes one map per image, ``|a|`` summed over channels
(:func:`~trainviz.ops.saliency.saliency_map`). Each map is scored by the deletion and insertion curves of
:mod:`trainviz.ops.localization` (and the pointing game when the probe set has masks) and, at sanity runs, by
Adebayo et al.'s checks (:mod:`trainviz.ops.sanity`): the Spearman correlation of the maps with those of the
model with its layers re-initialised from the top down, and with the maps of a random other class. A method
that explains the model decorrelates; Adebayo et al. found that guided backpropagation does not (its maps stay
close to an edge image of the input) while plain gradients do.

The compute contract (:mod:`trainviz.core.contract`): :class:`SaliencyOptions` are the user's options (the
callback's flat arguments), :class:`SaliencyConfig` adds what the callback knows at setup, and
:class:`SaliencyProbe` plans a run (:class:`SaliencyPlan`: the methods, the run's seed, whether the sanity checks
run), computes a share of the probe set (:class:`SaliencyPartial`: per-image maps, curves and Spearman values, on
the CPU) and merges the shares into a :class:`SaliencyResult`, the one-process result. Every number is per image
and every draw is tied to the image's place in the set (SmoothGrad's noise, the random logit's class), so the
merged result does not depend on how the set was cut. :func:`compute` is one run in one process,
:func:`evolution` the fit-end strips; :class:`~trainviz.callbacks.saliency.SaliencyCallback` runs them.

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.core.contract import Share
    >>> from trainviz.core.probeset import ProbeSet
    >>> from trainviz.probes.saliency import SaliencyConfig, SaliencyPlan, SaliencyProbe, SaliencyResult, compute
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2)).eval()
    >>> probe = ProbeSet(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]), torch.arange(4))
    >>> config = SaliencyConfig(methods=("gradient", "occlusion"), deletion_steps=2, occlusion_window=4,
    ...                         sanity_images=2, sanity_layers=["4", "0"])
    >>> result = compute(net, probe, config, epoch=0, sanity=True)
    >>> sorted(result.per_method), list(result.sanity["gradient"])
    (['gradient', 'occlusion'], ['4', '0'])
    >>> SaliencyResult.from_record(result.record()) == result
    True
    >>> p = SaliencyProbe(probe, config)
    >>> plan = SaliencyPlan(epoch=0, seed=0, methods=config.methods, sanity=True)
    >>> two = p.merge([p.compute(net, share, plan, None) for share in Share.split(probe, 2)], plan)
    >>> max(abs(v - result.scalars()[k]) for k, v in two.scalars().items()) < 1e-6
    True
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from trainviz.core.checks import check_bool, check_choice, check_float, check_int, check_positive_int
from trainviz.core.common import class_names, example_indices, json_number, strip_epochs
from trainviz.core.contract import Credit, FitEnd, Probe, Share
from trainviz.core.display import Display, pictures
from trainviz.core.normalization import Normalization
from trainviz.core.options import Options
from trainviz.core.probeset import ProbeSet
from trainviz.core.result import Result
from trainviz.core.transfer import to_cpu, to_host
from trainviz.ops.cam import shrink_maps
from trainviz.ops.localization import deletion_curve, insertion_curve, pointing_game, pointing_game_chance
from trainviz.ops.occlusion import occlusion
from trainviz.ops.predict import predict_logits
from trainviz.ops.saliency import SaliencyMethod, saliency, saliency_map
from trainviz.ops.sanity import (
    cascade_steps,
    cascading_randomization,
    random_logit,
    randomizable_layers,
    randomization_blocks,
    spearman,
)
from trainviz.probes.saliency_names import NAMES
from trainviz.render.images import caption_tiles, image_grid, overlay_heatmaps, to_uint8, upscale
from trainviz.render.strips import evolution_strip

__all__ = [
    "MAX_COLUMNS",
    "METHODS",
    "STATE_SIDE",
    "Method",
    "SaliencyConfig",
    "SaliencyHistory",
    "SaliencyOptions",
    "SaliencyPartial",
    "SaliencyPlan",
    "SaliencyProbe",
    "SaliencyResult",
    "attribute",
    "compute",
    "display_maps",
    "evolution",
    "run_seed",
    "saliency_maps",
]

Method = Literal[SaliencyMethod, "occlusion"]
METHODS: tuple[str, ...] = get_args(Method)  # the ops' gradient methods, then "occlusion"
STATE_SIDE = 64  # maps kept between runs (evolution strips) are at most this many pixels a side
MAX_COLUMNS = 12  # most randomisation steps shown in the sanity picture (evenly spread, first and last kept)
MAX_SERIES = 6  # most layers drawn in a report's sanity curve
_GREEN, _RED = (20, 120, 40), (190, 30, 30)


def run_seed(probe_seed: int, epoch: int) -> int:
    """The seed of a run's randomness (SmoothGrad noise, sanity re-initialisation, random-logit classes), from the
    callback's ``probe_seed`` and the epoch. Draws are tied to the images' places in the probe set, never to the
    process, so the numbers do not depend on how many processes share the set."""
    return (int(probe_seed) * 1_000_003 + int(epoch)) % (2**63 - 1)


@dataclass(frozen=True, kw_only=True)
class SaliencyOptions(Options):
    """The user's options (:class:`~trainviz.callbacks.saliency.SaliencyCallback`'s arguments, where they are
    described), checked on construction: ``methods`` becomes a tuple with ``"occlusion"`` appended when
    ``occlusion`` is on, ``sanity_groups`` a list of lists of names.

    Raises:
        ValueError: an option out of range, naming it (and the valid choices).
    """

    methods: Sequence[Method] = ("gradient", "smoothgrad", "guided_backprop")
    target: Literal["true", "predicted"] = "true"
    smoothgrad_samples: int = 16
    smoothgrad_sigma: float = 0.15
    ig_steps: int = 16
    occlusion: bool = True
    occlusion_window: int = 8
    occlusion_stride: int = 4
    occlusion_baseline: float = 0.0
    deletion_steps: int = 16
    sanity_every: int = 5
    sanity_images: int = 8
    sanity_steps: Literal["blocks", "layers"] = "blocks"
    sanity_groups: Sequence[Sequence[str]] | None = None
    n_grid: int = 8
    n_tracked: int = 4
    max_strip: int = 12

    def check(self) -> None:
        methods = self.methods
        if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
            raise ValueError(f"Expected `methods` to be a non-empty list of {', '.join(map(repr, METHODS))}; "
                             f"got {methods!r}.")  # fmt: skip
        chosen = [check_choice("methods", m, METHODS) for m in methods]
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"Expected `methods` to be distinct, got {list(methods)!r}.")
        occlusion_on = check_bool("occlusion", self.occlusion)
        if "occlusion" in chosen and not occlusion_on:
            raise ValueError("Expected `occlusion=True` when `methods` lists 'occlusion', got occlusion=False.")
        groups = _check_groups(self.sanity_groups)
        steps = check_choice("sanity_steps", self.sanity_steps, ("blocks", "layers"))
        if groups is not None and steps == "layers":
            raise ValueError(
                "Expected `sanity_groups` with sanity_steps='blocks' (the groups are the blocks), got 'layers'."
            )
        self.set(
            methods=tuple(chosen + (["occlusion"] if occlusion_on and "occlusion" not in chosen else [])),
            target=check_choice("target", self.target, ("true", "predicted")),
            smoothgrad_samples=check_positive_int("smoothgrad_samples", self.smoothgrad_samples),
            smoothgrad_sigma=check_float("smoothgrad_sigma", self.smoothgrad_sigma, minimum=0),
            ig_steps=check_positive_int("ig_steps", self.ig_steps),
            occlusion_window=check_positive_int("occlusion_window", self.occlusion_window),
            occlusion_stride=check_positive_int("occlusion_stride", self.occlusion_stride),
            occlusion_baseline=check_float("occlusion_baseline", self.occlusion_baseline),
            deletion_steps=check_positive_int("deletion_steps", self.deletion_steps),
            sanity_every=check_int("sanity_every", self.sanity_every, minimum=0),
            sanity_images=check_positive_int("sanity_images", self.sanity_images),
            sanity_steps=steps,
            sanity_groups=groups,
            n_grid=check_positive_int("n_grid", self.n_grid),
            n_tracked=check_positive_int("n_tracked", self.n_tracked),
            max_strip=check_positive_int("max_strip", self.max_strip),
        )


def _check_groups(groups: Any) -> list[list[str]] | None:
    """``sanity_groups`` as a list of non-empty lists of distinct module names (the names are checked at setup)."""
    if groups is None:
        return None
    what = 'a non-empty list of non-empty lists of module names, e.g. [["net.fc"], ["net.layer4"]]'
    if isinstance(groups, str) or not isinstance(groups, Sequence) or not groups:
        raise ValueError(f"Expected `sanity_groups` to be {what}, got {groups!r}.")
    out = []
    for group in groups:
        if isinstance(group, str) or not isinstance(group, Sequence) or not group:
            raise ValueError(f"Expected `sanity_groups` to be {what}, got the group {group!r}.")
        if any(not isinstance(name, str) for name in group):
            raise ValueError(f"Expected `sanity_groups` to be {what}, got the group {group!r}.")
        out.append(list(group))
    names = [name for group in out for name in group]
    if len(set(names)) != len(names):
        raise ValueError(f"Expected each name once in `sanity_groups`, got {out!r}.")
    return out


@dataclass(frozen=True, kw_only=True)
class SaliencyConfig(SaliencyOptions):
    """The options and what the callback knows at setup: everything a run computes and shows.

    Attributes:
        batch_size: rows (images, noisy copies, path points, occluded copies) per forward.
        norm: model inputs back to pixels (``None``: the identity); ``occlusion_baseline`` is a PIXEL value mapped
            through it (with ``norm=None``, a value in model-input space).
        display: how pictures show the inputs (:class:`~trainviz.core.display.Display`; ``None``: ``norm``
            undone).
        probe_seed: the callback's seed; a run's seed is :func:`run_seed` of it and the epoch.
        sanity_layers: the cascade's steps, top down: layer names (``None``: every layer with parameters,
            :func:`trainviz.ops.sanity.randomizable_layers`) or, with ``sanity_members``, the steps' names.
        sanity_members: the modules each step re-initialises (aligned with ``sanity_layers``; ``None``: one layer
            a step), e.g. from :func:`trainviz.ops.sanity.randomization_blocks`.
        sanity_mode: how the steps were made, for the record: ``"layers"``, ``"blocks"`` or ``"groups"``.
    """

    batch_size: int = 64
    norm: Normalization | None = None
    display: Display | None = None
    probe_seed: int = 0
    sanity_layers: Sequence[str] | None = None
    sanity_members: Sequence[Sequence[str]] | None = None
    sanity_mode: str = "layers"


@dataclass(frozen=True, kw_only=True)
class SaliencyPlan:
    """What one run computes (plain data).

    Attributes:
        epoch: the run's epoch.
        seed: the run's seed (:func:`run_seed`): SmoothGrad's noise, the re-initialisation, the random classes.
        methods: the attribution methods that run.
        sanity: whether the sanity checks run.
        whole: everything due runs (``False``: the budget left the due sanity checks out).
    """

    epoch: int
    seed: int
    methods: tuple[str, ...]
    sanity: bool
    whole: bool = True


@dataclass(kw_only=True)
class SaliencyPartial:
    """One share's numbers, on the CPU, per image in share order (``logits`` ``None``: an empty share).

    Shape:
        logits ``(n, K)`` float, targets ``(n,)``, maps ``{method: (n, H, W)}``, per_image ``{"<metric>/<method>":
        (n,) or (n, steps + 1)}``; for the ``s`` sanity images of the share: positions ``(s,)`` (their places in
        the sanity list), spearman ``{method: (layers, s)}``, random_logit ``{method: (s,)}``, and when the share
        holds the first sanity image, first ``{method: (1 + layers, H, W)}``.
    """

    start: int
    seconds: float
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    per_image: dict[str, torch.Tensor] = field(default_factory=dict)
    positions: torch.Tensor | None = None
    spearman: dict[str, torch.Tensor] = field(default_factory=dict)
    random_logit: dict[str, torch.Tensor] = field(default_factory=dict)
    first: dict[str, torch.Tensor] | None = None


@dataclass
class SaliencyHistory:
    """What runs leave for later runs: the epochs run, those with the sanity checks, and the tracked images'
    maps (``(epoch, {method: (n_tracked, h, w)})``, CPU float16) for the evolution strips."""

    runs: list[int] = field(default_factory=list)
    sanity_epochs: list[int] = field(default_factory=list)
    tracked: list[tuple[int, dict[str, torch.Tensor]]] = field(default_factory=list)

    def sanity_due(self, every: int) -> bool:
        """The first run, then once ``every`` runs have passed since the last sanity run (every K-th run; checks
        skipped under a budget come at the next run); never with ``every == 0``."""
        if every == 0:
            return False
        if not self.sanity_epochs:
            return True
        return sum(e > self.sanity_epochs[-1] for e in self.runs) + 1 >= every

    def methods(self) -> list[str]:
        """The methods every tracked run has."""
        first = self.tracked[-1][1] if self.tracked else {}
        return [m for m in first if all(m in h for _, h in self.tracked)]

    def state(self) -> dict[str, Any]:
        return {
            "runs": list(self.runs),
            "history_epochs": [e for e, _ in self.tracked],
            "history_maps": {m: torch.stack([h[m] for _, h in self.tracked]) for m in self.methods()},
            "sanity_epochs": list(self.sanity_epochs),
        }

    def load(self, state: dict[str, Any]) -> None:
        maps = state.get("history_maps") or {}
        epochs = list(state.get("history_epochs", []))
        self.tracked = [(e, {m: v[i] for m, v in maps.items()}) for i, e in enumerate(epochs)]
        self.runs = list(state.get("runs", epochs))  # older checkpoints: every run left its maps
        self.sanity_epochs = list(state.get("sanity_epochs", []))


def _pixel_baseline(config: SaliencyConfig, images: torch.Tensor) -> torch.Tensor:
    """``occlusion_baseline`` (a pixel value) in model-input space, one value per channel ``(C,)``."""
    c = images.shape[1]
    pixels = torch.full((1, c, 1, 1), float(config.occlusion_baseline), dtype=images.dtype, device=images.device)
    return (pixels if config.norm is None else config.norm.normalize(pixels)).view(c)


def attribute(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    config: SaliencyConfig,
    generator: torch.Generator | None = None,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """The signed attribution of one method, batched: :func:`trainviz.ops.saliency.saliency` with the config's
    settings (``generator``: SmoothGrad's noise, ``positions``: the images' places in its stream) or
    :func:`trainviz.ops.occlusion.occlusion` with the pixel baseline mapped through ``config.norm`` (at most
    ``batch_size`` occluded copies per forward).

    Shape:
        images ``(N, C, H, W)``, targets ``(N,)`` -> ``(N, C, H, W)``
    """
    if method == "occlusion":
        return occlusion(
            model,
            images,
            targets,
            window=config.occlusion_window,
            stride=config.occlusion_stride,
            baseline=_pixel_baseline(config, images),
            max_elements=config.batch_size * images[0].numel(),
        )
    return saliency(
        model,
        images,
        targets,
        method,  # type: ignore[arg-type]
        samples=config.smoothgrad_samples,
        sigma=config.smoothgrad_sigma,
        steps=config.ig_steps,
        generator=generator,
        batch_size=config.batch_size,
        positions=positions,
    )


def saliency_maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    config: SaliencyConfig,
    seed: int = 0,
    positions: torch.Tensor | None = None,
    methods: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """``{method: (N, H, W) map}`` of ``methods`` (default: the config's); SmoothGrad's noise comes from a
    generator seeded with ``seed`` on the images' device, fresh for each method, image ``i`` getting the draw of
    its place ``positions[i]`` (default: ``0..N-1``), so the same image at the same place gets the same noise
    whatever else is computed with it."""
    out = {}
    for method in config.methods if methods is None else methods:
        generator = torch.Generator(device=images.device).manual_seed(seed)
        out[method] = saliency_map(attribute(model, images, targets, method, config, generator, positions)).float()
    return out


def display_maps(maps: torch.Tensor, quantile: float = 0.99) -> torch.Tensor:
    """Maps scaled to [0, 1] for display: divided by each map's ``quantile`` (gradient maps are peaky; the top
    1 % saturate, as in Smilkov et al.'s figures) and clipped; an all-zero map stays 0.

    Shape:
        ``(N, H, W)`` -> ``(N, H, W)``
    """
    flat = maps.float().flatten(1)
    top = torch.quantile(flat, quantile, dim=1, keepdim=True)
    top = torch.where(top > 0, top, flat.amax(1, keepdim=True))
    return (flat / top.clamp_min(torch.finfo(torch.float32).tiny)).clamp(0, 1).view_as(maps)


def _tail(text: str, n: int) -> str:
    return text if len(text) <= n else ".." + text[-(n - 2) :]


@dataclass(kw_only=True)
class SaliencyResult(Result):
    """One run. The record: ``{"epoch", "target_probability", "pointing_game_chance" (with masks), "methods":
    {method: {"deletion_auc", "insertion_auc", "pointing_game" (with masks)}}}``, and at sanity runs
    ``"sanity": {method: {layer: Spearman}}``, ``"sanity_layers"`` (the cascade's steps, top down),
    ``"sanity_steps"`` (``"blocks"``, ``"layers"`` or ``"groups"``: how the steps were made), with blocks or groups
    ``"sanity_groups"`` (``{step: [the modules it re-initialises]}``) and ``"random_logit": {method: Spearman}``;
    ``None`` for non-finite values. The tensors and the pictures' inputs are not recorded and are ``None`` in a
    result read back.

    Shape:
        maps ``{method: (N, H, W)}`` float, probs ``(N, K)``, labels, ids and targets ``(N,)``, per_image
        ``{"<metric>/<method>": (N,) or (N, steps + 1)}``, tracked ``{method: (n_tracked, h, w)}`` float16 on the
        CPU (display-scaled, at most 64 px a side), pixels ``(n_grid, C, H, W)`` in [0, 1], sanity_maps
        ``{method: (1 + layers, H, W)}`` (one image: original, then after each step).
    """

    epoch: int
    target_probability: float
    pointing_game_chance: float | None
    per_method: dict[str, dict[str, float]]
    sanity: dict[str, dict[str, float]] | None = None
    random_logit: dict[str, float] | None = None
    maps: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    probs: torch.Tensor | None = field(default=None, repr=False, compare=False)
    labels: torch.Tensor | None = field(default=None, repr=False, compare=False)
    ids: torch.Tensor | None = field(default=None, repr=False, compare=False)
    targets: torch.Tensor | None = field(default=None, repr=False, compare=False)
    per_image: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    sanity_arrays: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    tracked: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    pixels: torch.Tensor | None = field(default=None, repr=False, compare=False)
    grid: list[int] | None = field(default=None, repr=False, compare=False)
    captions: list[str] | None = field(default=None, repr=False, compare=False)
    correct: list[bool] | None = field(default=None, repr=False, compare=False)
    sanity_pixels: torch.Tensor | None = field(default=None, repr=False, compare=False)
    sanity_maps: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    sanity_layers: list[str] | None = field(default=None, repr=False, compare=False)
    sanity_mode: str | None = field(default=None, repr=False, compare=False)
    sanity_groups: dict[str, list[str]] | None = field(default=None, repr=False, compare=False)

    def scalars(self) -> dict[str, float | None]:
        """The metrics of :data:`~trainviz.probes.saliency_names.NAMES`, by their names."""
        out: dict[str, float | None] = {"target_probability": self.target_probability}
        if self.pointing_game_chance is not None:
            out["pointing_game_chance"] = self.pointing_game_chance
        for method, values in self.per_method.items():
            out.update({f"{method}/{name}": v for name, v in values.items()})
        for method, layers in (self.sanity or {}).items():
            out.update({f"{method}/sanity/{layer}": v for layer, v in layers.items()})
        for method, v in (self.random_logit or {}).items():
            out[f"{method}/random_logit"] = v
        return out

    def record(self) -> dict[str, Any]:
        def clean(values: dict[str, float]) -> dict[str, float | None]:
            return {k: json_number(v) for k, v in values.items()}

        out: dict[str, Any] = {"epoch": self.epoch, "target_probability": json_number(self.target_probability)}
        if self.pointing_game_chance is not None:
            out["pointing_game_chance"] = json_number(self.pointing_game_chance)
        out["methods"] = {m: clean(v) for m, v in self.per_method.items()}
        if self.sanity is not None:
            out["sanity"] = {m: clean(v) for m, v in self.sanity.items()}
            first: dict[str, float] = next(iter(self.sanity.values()), {})
            out["sanity_layers"] = list(self.sanity_layers or first)
            if self.sanity_mode is not None:
                out["sanity_steps"] = self.sanity_mode
            if self.sanity_groups is not None:
                out["sanity_groups"] = {k: list(v) for k, v in self.sanity_groups.items()}
        if self.random_logit is not None:
            out["random_logit"] = clean(self.random_logit)
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SaliencyResult:
        def floats(values: dict[str, Any]) -> dict[str, float]:
            return {k: float("nan") if v is None else float(v) for k, v in values.items()}

        sanity = record.get("sanity")
        logit = record.get("random_logit")
        chance = record.get("pointing_game_chance")
        probability = record.get("target_probability")
        return cls(
            epoch=record["epoch"],
            target_probability=float("nan") if probability is None else probability,
            pointing_game_chance=(
                None if "pointing_game_chance" not in record else (float("nan") if chance is None else chance)
            ),
            per_method={m: floats(v) for m, v in record.get("methods", {}).items()},
            sanity=None if sanity is None else {m: floats(v) for m, v in sanity.items()},
            random_logit=None if logit is None else floats(logit),
            sanity_layers=record.get("sanity_layers"),
            sanity_mode=record.get("sanity_steps"),
            sanity_groups=record.get("sanity_groups"),
        )

    def __eq__(self, other: object) -> bool:  # NaN-tolerant: a record read back equals its result
        if not isinstance(other, SaliencyResult):
            return NotImplemented
        return self.record() == other.record()

    def render(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self.maps is None or self.grid is None:
            return out
        methods = list(self.maps)
        idx = self.grid
        pixels = self.pixels
        columns = [to_uint8(upscale(pixels))]
        columns += [overlay_heatmaps(pixels, display_maps(self.maps[m][idx])) for m in methods]
        tiles = np.stack([col[r] for r in range(len(idx)) for col in columns])
        captions, colours = [], []
        for r in range(len(idx)):
            captions += [self.captions[r]] + methods
            colours += [_GREEN if self.correct[r] else _RED] + [(0, 0, 0)] * len(methods)
        out["maps"] = image_grid(caption_tiles(tiles, captions, colours), len(columns))
        if self.sanity_maps is not None and self.sanity_layers is not None:
            out["sanity"] = self._render_sanity()
        return out

    def _render_sanity(self) -> np.ndarray:
        """Rows = methods, columns = the input, the original map, then the maps as the cascade goes down."""
        layers = list(self.sanity_layers or [])
        keep = strip_epochs(list(range(len(layers))), MAX_COLUMNS)
        heads = ["input", "original", *[f"to {_tail(layers[i], 13)}" for i in keep]]
        pixels = self.sanity_pixels
        rows = []
        for method, stack in (self.sanity_maps or {}).items():
            chosen = torch.cat([stack[:1], stack[1:][keep]])
            shown = overlay_heatmaps(pixels.expand(chosen.shape[0], -1, -1, -1), display_maps(chosen))
            rho = [float("nan")] + [(self.sanity or {}).get(method, {}).get(layers[i], float("nan")) for i in keep]
            row = np.concatenate([to_uint8(upscale(pixels)), shown])
            texts = [method] + [f"{heads[c + 1]}\nrho {r:.2f}" if c else "original" for c, r in enumerate(rho)]
            rows.append(caption_tiles(row, texts))
        return image_grid(np.concatenate(rows), len(heads))

    def arrays(self) -> dict[str, dict[str, Any]]:
        if self.maps is None:
            return {}
        maps = {f"maps/{m}": v.half() for m, v in self.maps.items()}
        head = {"ids": self.ids, "labels": self.labels, "targets": self.targets, "probs": self.probs}
        out = {"maps": {**head, **maps, **(self.per_image or {})}}
        if self.sanity_arrays is not None:
            out["sanity"] = self.sanity_arrays
        return out

    def section(self) -> dict[str, Any]:
        """The report section: deletion and insertion AUCs (and the pointing game with masks) per method over
        epochs, the sanity correlations per method (a few layers of the cascade) and the random-logit test, the
        maps grid and sanity picture per epoch and the fit-end evolution strips (see :meth:`Result.section
        <trainviz.core.result.Result.section>`)."""
        methods = list(self.per_method)
        curves: list[dict[str, Any]] = []
        for metric in ("deletion_auc", "insertion_auc", "pointing_game"):
            named = NAMES[f"{{method}}/{metric}"]  # titles and descriptions: the name table
            series = [{"name": m, "key": ["methods", m, metric]} for m in methods if metric in self.per_method[m]]
            if metric == "pointing_game" and self.pointing_game_chance is not None:
                series.append({"name": "chance", "key": ["pointing_game_chance"]})
            if series:
                curves.append(
                    {"title": named.heading, "description": named.text, "y": metric, "y_range": [0, 1.02],
                     "series": series}
                )  # fmt: skip
        layers = list(self.sanity_layers or [])
        shown = [layers[i] for i in strip_epochs(list(range(len(layers))), MAX_SERIES)]
        sanity, random_logit = NAMES["{method}/sanity/{layer}"], NAMES["{method}/random_logit"]
        for m in methods:
            if shown:
                curves.append(
                    {
                        "title": f"{sanity.heading}: {m}",
                        "description": f"{sanity.text} Guided backpropagation typically stays high.",
                        "y": "Spearman",
                        "y_range": [-1, 1.02],
                        "series": [{"name": f"down to {layer}", "key": ["sanity", m, layer]} for layer in shown],
                    }
                )
        curves.append(
            {
                "title": random_logit.heading,
                "description": random_logit.text,
                "y": "Spearman",
                "y_range": [-1, 1.02],
                "series": [{"name": m, "key": ["random_logit", m]} for m in methods],
            }
        )
        return {
            "version": 1,
            "order": 36,
            "title": "Saliency",
            "description": "Input-space attributions (saliency, SmoothGrad, deconvnet, guided backpropagation, "
            "integrated gradients, occlusion) of the probe set: faithfulness (deletion, insertion), localisation "
            "(pointing game) and the sanity checks of Adebayo et al. (cascading randomisation, random logit).",
            "curves": curves,
            "galleries": [
                {
                    "title": "Maps",
                    "description": "Probe images (captions green when the prediction is right, red when wrong) "
                    "and each method's map.",
                    "images": ["maps"],
                    "maps": True,
                },
                {
                    "title": "Sanity: cascading randomisation",
                    "description": "One image; rows: methods; columns: the map as the layers are re-initialised "
                    "from the top down (rho: Spearman with the original map). Sanity runs only.",
                    "images": ["sanity"],
                    "maps": True,
                },
            ],
            "files": [
                {
                    "title": f"Evolution: {m}",
                    "description": f"Fit end: the tracked images' {m} maps across epochs.",
                    "glob": f"epoch_*/{m}/evolution.png",
                    "kind": "image",
                }
                for m in methods
            ],
        }


class SaliencyProbe(Probe[SaliencyPlan, SaliencyPartial, SaliencyResult]):
    """The saliency capability's probe (:mod:`trainviz.core.contract`): plans a run, computes a share, merges.

    It keeps the costs of its last runs, the sanity runs and the plain ones timed apart (:meth:`plan` decides
    from them under a budget), and the :class:`SaliencyHistory` its merges add to.

    Args:
        probe: the whole probe set, on the model's device.
        config: the options and the setup's settings (:meth:`prepare` completes the cascade's steps).
        history: the runs so far (the callback's state; default: none).
    """

    def __init__(self, probe: ProbeSet, config: SaliencyConfig, history: SaliencyHistory | None = None) -> None:
        super().__init__(probe)
        self.config = config
        self.history = SaliencyHistory() if history is None else history
        self.costs: dict[str, float] = {}  # seconds of the last run with ("sanity") and without ("maps") checks
        self.skipped: list[tuple[str, str]] = []  # the parts the last plan left out, with why

    def prepare(self, model: nn.Module) -> None:
        """Setup checks, before the first epoch: the occlusion window fits the images, each method runs on two
        images (the model returns logits), and the cascade's steps: the given groups (an unknown name raises with
        the valid ones), the blocks, or every layer with parameters."""
        c = self.config
        h, w = self.probe.images.shape[-2:]
        if "occlusion" in c.methods and c.occlusion_window > min(h, w):
            raise ValueError(
                f"Expected `occlusion_window` <= the probe images' side {min(h, w)} (images {h}x{w}), "
                f"got {c.occlusion_window}."
            )
        example = self.probe.images[:2]
        quick = dataclasses.replace(c, smoothgrad_samples=1, ig_steps=1)
        for method in c.methods:  # raises if a method or `output=` does not apply
            attribute(model, example, self.probe.labels[:2].to(example.device), method, quick)
        if c.sanity_groups is not None:
            steps, mode = cascade_steps(model, c.sanity_groups), "groups"
        elif c.sanity_steps == "blocks":
            steps, mode = randomization_blocks(model), "blocks"
        else:
            steps, mode = None, "layers"
        self.config = dataclasses.replace(
            c,
            sanity_layers=randomizable_layers(model) if steps is None else [name for name, _ in steps],
            sanity_members=None if steps is None else [members for _, members in steps],
            sanity_mode=mode,
        )

    def plan(self, credit: Credit) -> SaliencyPlan | None:
        """Everything due (the sanity checks at the first run and every ``sanity_every``-th); under a budget
        (``credit.seconds``) the whole run if its last cost fits the credit, else the maps without the checks,
        else nothing (``None``). Essential runs are never skipped. :attr:`skipped` says what was left out."""
        self.skipped = []
        due = self.history.sanity_due(self.config.sanity_every)
        seed = run_seed(self.config.probe_seed, credit.epoch)
        whole = SaliencyPlan(epoch=credit.epoch, seed=seed, methods=tuple(self.config.methods), sanity=due)
        seconds = credit.seconds
        cost = self.costs.get("sanity" if due else "maps")
        if seconds is None or credit.essential or cost is None or cost <= seconds:
            return whole
        maps = self.costs.get("maps")
        if due and (maps is None or maps <= seconds):
            self.skipped = [("sanity", f"the last sanity run took {cost:.2f} s, credit {seconds:.2f} s")]
            return dataclasses.replace(whole, sanity=False, whole=False)
        self.skipped = [("run", f"the last run took {cost:.2f} s, credit {seconds:.2f} s")]
        return None

    def compute(
        self, model: nn.Module, share: Share[ProbeSet], plan: SaliencyPlan, state: Any = None
    ) -> SaliencyPartial:
        """The share's maps of every planned method (one batched pass each), their deletion and insertion curves,
        the pointing game (with masks) and, with ``plan.sanity``, the sanity checks on the share's sanity images
        (the first ``sanity_images`` of the whole set's :func:`example_indices`), all per image, on the CPU.

        Raises:
            ValueError: a method does not apply (the model does not return logits, an occlusion window larger
                than the images, ...).
        """
        start = time.perf_counter()
        data, c = share.data, self.config
        if len(share) == 0:
            return SaliencyPartial(start=share.start, seconds=time.perf_counter() - start)
        logits = predict_logits(model, data.images, c.batch_size).float()
        targets = (data.labels if c.target == "true" else logits.argmax(1)).to(data.images.device)
        maps = saliency_maps(model, data.images, targets, c, plan.seed, share.indices, plan.methods)
        per_image: dict[str, torch.Tensor] = {}
        for method, m in maps.items():
            for kind, curve_of in (("deletion", deletion_curve), ("insertion", insertion_curve)):
                curve, auc = curve_of(model, data.images, m, targets, steps=c.deletion_steps, batch_size=c.batch_size)
                per_image[f"{kind}_curve/{method}"], per_image[f"{kind}_auc/{method}"] = curve, auc
            if data.masks is not None:
                per_image[f"pointing_hit/{method}"] = pointing_game(m, data.masks)
        partial = SaliencyPartial(
            start=share.start, seconds=0.0, logits=logits, targets=targets, maps=maps, per_image=per_image
        )
        if plan.sanity:
            self._sanity(model, share, targets, logits.shape[1], plan, partial)
        fields = {f.name: getattr(partial, f.name) for f in dataclasses.fields(partial)}
        out = dataclasses.replace(partial, **to_host(fields))  # plain CPU data, to gather between processes
        out.seconds = time.perf_counter() - start
        return out

    def _sanity(
        self,
        model: nn.Module,
        share: Share[ProbeSet],
        targets: torch.Tensor,
        num_classes: int,
        plan: SaliencyPlan,
        partial: SaliencyPartial,
    ) -> None:
        """Cascading randomisation and random logit on the share's sanity images: per method the Spearman per
        image ``(layers, s)`` and ``(s,)``, and the first sanity image's maps ``(1 + layers, H, W)`` when the share
        holds it. Each image's noise and random class are those of its place in the sanity list."""
        c, methods = self.config, list(plan.methods)
        idx = example_indices(self.probe.labels, c.sanity_images)
        owned = [p for p, i in enumerate(idx) if share.start <= i < share.stop]
        partial.positions = torch.tensor(owned, dtype=torch.long)
        if not owned:
            return
        rows = [idx[p] - share.start for p in owned]
        images, t = share.data.images[rows], targets[rows]

        def explain(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            maps = saliency_maps(m, x, y, c, plan.seed, partial.positions, methods)
            return torch.stack([maps[k] for k in methods])  # (methods, s, H, W): one cascade for all methods

        reference = explain(model, images, t)
        if c.sanity_members is None:
            steps = cascading_randomization(model, images, t, explain, layers=c.sanity_layers, seed=plan.seed)
        else:
            pairs = list(zip(c.sanity_layers or [], c.sanity_members, strict=True))
            steps = cascading_randomization(model, images, t, explain, steps=pairs, seed=plan.seed)
        generator = torch.Generator(device=images.device).manual_seed(plan.seed + 1)
        other = random_logit(
            model, images, t, explain, num_classes=num_classes, generator=generator, positions=partial.positions
        )
        for k, method in enumerate(methods):
            if steps:
                partial.spearman[method] = torch.stack([spearman(reference[k], maps[k]) for _, maps in steps])
            else:
                partial.spearman[method] = reference.new_zeros((0, len(owned)))
            partial.random_logit[method] = spearman(reference[k], other[k])
        if owned[0] == 0:
            partial.first = {
                m: torch.stack([reference[k, 0], *[s[k, 0] for _, s in steps]]) for k, m in enumerate(methods)
            }

    def merge(self, partials: Sequence[SaliencyPartial], plan: SaliencyPlan) -> SaliencyResult:
        """The run's result from the shares' partials (in share order): the per-image numbers joined on the probe
        set's device, the means, what to show, one device-to-host copy of the scalars; the history updated."""
        start = time.perf_counter()
        c, probe = self.config, self.probe
        device = probe.images.device
        parts = [p for p in partials if p.logits is not None]
        logits = torch.cat([p.logits for p in parts]).to(device)
        targets = torch.cat([p.targets for p in parts]).to(device)
        maps = {m: torch.cat([p.maps[m] for p in parts]).to(device) for m in plan.methods}
        per_image = {k: torch.cat([p.per_image[k] for p in parts]).to(device) for k in parts[0].per_image}
        probs = logits.softmax(1)
        scalars: dict[str, torch.Tensor] = {"target_probability": probs.gather(1, targets[:, None]).mean()}
        if probe.masks is not None:
            scalars["pointing_game_chance"] = pointing_game_chance(probe.masks).mean()
        for method in maps:
            scalars[f"{method}/deletion_auc"] = per_image[f"deletion_auc/{method}"].mean()
            scalars[f"{method}/insertion_auc"] = per_image[f"insertion_auc/{method}"].mean()
            if probe.masks is not None:
                scalars[f"{method}/pointing_game"] = per_image[f"pointing_hit/{method}"].float().mean()
        layers = list(c.sanity_layers or [])
        sanity_arrays = first = sanity_idx = None
        if plan.sanity:
            sanity_idx = example_indices(probe.labels, c.sanity_images)
            order = torch.cat([p.positions for p in partials if p.positions is not None]).argsort()
            held = [p for p in parts if p.spearman]  # the shares with sanity images
            cascade = {m: torch.cat([p.spearman[m] for p in held], 1)[:, order].to(device) for m in plan.methods}
            logit = {m: torch.cat([p.random_logit[m] for p in held])[order].to(device) for m in plan.methods}
            first = {m: v.to(device) for m, v in next(p.first for p in held if p.first is not None).items()}
            for method in plan.methods:
                scalars.update({f"{method}/sanity/{layer}": v.nanmean() for layer, v in zip(layers, cascade[method])})
                scalars[f"{method}/random_logit"] = logit[method].nanmean()
            sanity_arrays = {
                "layers": np.asarray(layers, dtype=str),
                "ids": probe.ids[sanity_idx],
                **{f"spearman/{m}": v for m, v in cascade.items()},
                **{f"random_logit/{m}": v for m, v in logit.items()},
            }
        result = self._result(plan, scalars, maps, probs, targets, per_image, sanity_arrays, first, sanity_idx)
        self.history.runs.append(plan.epoch)
        self.history.tracked.append((plan.epoch, dict(result.tracked or {})))
        if plan.sanity:
            self.history.sanity_epochs.append(plan.epoch)
        seconds = max(p.seconds for p in partials) + time.perf_counter() - start
        self.costs["sanity" if plan.sanity else "maps"] = seconds
        return result

    def _result(
        self,
        plan: SaliencyPlan,
        scalars: dict[str, torch.Tensor],
        maps: dict[str, torch.Tensor],
        probs: torch.Tensor,
        targets: torch.Tensor,
        per_image: dict[str, torch.Tensor],
        sanity_arrays: dict[str, Any] | None,
        first: dict[str, torch.Tensor] | None,
        sanity_idx: list[int] | None,
    ) -> SaliencyResult:
        c, probe, sanity = self.config, self.probe, plan.sanity
        layers = list(c.sanity_layers or [])
        idx = example_indices(probe.labels, c.n_grid)
        tracked_idx = example_indices(probe.labels, c.n_tracked)
        names = class_names(probe.class_names, probs.shape[1])
        conf, pred = probs[idx].max(1)
        tracked = {m: shrink_maps(display_maps(v[tracked_idx]), STATE_SIDE) for m, v in maps.items()}
        host = to_cpu(
            {
                **{f"scalar/{k}": v.float() for k, v in scalars.items()},
                **{f"tracked/{m}": v for m, v in tracked.items()},
                "labels": probe.labels[idx],
                "pred": pred,
                "conf": conf,
            }
        )
        floats = {k: float(host[f"scalar/{k}"]) for k in scalars}
        labels = [int(v) for v in host["labels"].tolist()]
        pred_host, conf_host = [int(v) for v in host["pred"].tolist()], host["conf"].tolist()
        per_method: dict[str, dict[str, float]] = {m: {} for m in plan.methods}
        sanity_scores: dict[str, dict[str, float]] | None = {m: {} for m in plan.methods} if sanity else None
        random_scores: dict[str, float] | None = {} if sanity else None
        for name, value in floats.items():
            parts = name.split("/")
            if len(parts) == 3 and sanity_scores is not None:
                sanity_scores[parts[0]][parts[2]] = value
            elif len(parts) == 2 and parts[1] == "random_logit" and random_scores is not None:
                random_scores[parts[0]] = value
            elif len(parts) == 2:
                per_method[parts[0]][parts[1]] = value

        def pixels_of(rows: list[int]) -> torch.Tensor:
            return pictures(probe.images[rows].float(), c.norm, c.display)

        return SaliencyResult(
            epoch=plan.epoch,
            target_probability=floats["target_probability"],
            pointing_game_chance=floats.get("pointing_game_chance"),
            per_method=per_method,
            sanity=sanity_scores,
            random_logit=random_scores,
            maps=maps,
            probs=probs,
            labels=probe.labels,
            ids=probe.ids,
            targets=targets,
            per_image=per_image,
            sanity_arrays=sanity_arrays,
            tracked={m: torch.from_numpy(host[f"tracked/{m}"]).half() for m in maps},
            pixels=pixels_of(idx),
            grid=idx,
            captions=[f"true {names[t]}\npred {names[p]} {c:.2f}" for t, p, c in zip(labels, pred_host, conf_host)],
            correct=[t == p for t, p in zip(labels, pred_host)],
            sanity_pixels=None if sanity_idx is None else pixels_of(sanity_idx[:1]),
            sanity_maps=first,
            sanity_layers=layers,
            sanity_mode=c.sanity_mode if sanity else None,
            sanity_groups=None
            if not sanity or c.sanity_members is None
            else {name: list(group) for name, group in zip(layers, c.sanity_members)},
        )

    def evolution(self) -> FitEnd | None:
        """Fit end: per method, the strip of the ``n_tracked`` images' maps across epochs
        (``<method>/evolution``) and ``evolution.npz`` (:func:`evolution`); ``None`` before the first run."""
        if not self.history.tracked:
            return None
        strips, arrays = evolution(self.history.tracked, self.probe, self.config)
        images = {f"{method}/evolution": strip for method, strip in strips.items()}
        return FitEnd(self.history.tracked[-1][0], images=images, arrays={"evolution": arrays})


def compute(model: nn.Module, probe: ProbeSet, config: SaliencyConfig, *, epoch: int, sanity: bool) -> SaliencyResult:
    """One run in one process (the whole set as one share): the maps of every method, their deletion and
    insertion curves, the pointing game (with masks), with ``sanity`` the cascading-randomisation and random-logit
    checks, and what to show. The seed is :func:`run_seed` of ``config.probe_seed`` and ``epoch``.

    Raises:
        ValueError: a method does not apply (the model does not return logits, an occlusion window larger than
            the images, ...).
    """
    prober = SaliencyProbe(probe, config)
    plan = SaliencyPlan(
        epoch=epoch, seed=run_seed(config.probe_seed, epoch), methods=tuple(config.methods), sanity=sanity
    )
    return prober.merge([prober.compute(model, Share.of(probe), plan)], plan)


def evolution(
    history: list[tuple[int, dict[str, torch.Tensor]]], probe: ProbeSet, config: SaliencyConfig
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fit end: per method, the strip of the ``n_tracked`` images' maps across at most ``max_strip`` evenly
    spaced runs of ``history`` (``(epoch, {method: maps})`` pairs), and the arrays of ``evolution.npz``
    (``maps/<method>`` ``(epochs, n_tracked, h, w)``, ``epochs``, ``ids``)."""
    idx = example_indices(probe.labels, config.n_tracked)
    epochs = [e for e, _ in history]
    keep = strip_epochs(list(range(len(epochs))), config.max_strip)
    names = class_names(probe.class_names, probe.num_classes)
    pixels = probe.images[idx].float()
    pixels = pictures(pixels, config.norm, config.display)
    methods = [m for m in history[-1][1] if all(m in maps for _, maps in history)]
    strips, arrays = {}, {}
    for method in methods:
        stack = torch.stack([maps[method] for _, maps in history])
        strips[method] = evolution_strip(
            pixels, stack[keep].float(), [epochs[i] for i in keep], [names[c] for c in probe.labels[idx].tolist()]
        )
        arrays[f"maps/{method}"] = stack
    return strips, {**arrays, "epochs": np.asarray(epochs), "ids": probe.ids[idx]}
