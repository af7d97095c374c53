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

:func:`compute` is one run, :func:`evolution` the fit-end strips; :class:`~trainviz.callbacks.saliency.SaliencyCallback`
runs them.

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.core.probeset import ProbeSet
    >>> from trainviz.probes.saliency import SaliencyConfig, SaliencyResult, compute
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2)).eval()
    >>> probe = ProbeSet(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]), torch.arange(4))
    >>> config = SaliencyConfig(("gradient", "occlusion"), deletion_steps=2, occlusion_window=4, sanity_images=2,
    ...                         sanity_layers=["4", "0"])
    >>> result = compute(net, probe, config, epoch=0, sanity=True)
    >>> sorted(result.per_method), list(result.sanity["gradient"])
    (['gradient', 'occlusion'], ['4', '0'])
    >>> SaliencyResult.from_record(result.record()) == result
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from trainviz.core.common import class_names, example_indices, json_number, strip_epochs
from trainviz.core.display import Display, pictures
from trainviz.core.probeset import ProbeSet
from trainviz.core.result import Result
from trainviz.core.transfer import to_cpu
from trainviz.data.base import Normalization
from trainviz.ops.cam import shrink_maps
from trainviz.ops.localization import deletion_curve, insertion_curve, pointing_game, pointing_game_chance
from trainviz.ops.occlusion import occlusion
from trainviz.ops.predict import predict_logits
from trainviz.ops.saliency import METHODS as GRADIENT_METHODS
from trainviz.ops.saliency import saliency, saliency_map
from trainviz.ops.sanity import cascading_randomization, random_logit, spearman
from trainviz.render.images import caption_tiles, image_grid, overlay_heatmaps, to_uint8, upscale
from trainviz.render.strips import evolution_strip

__all__ = [
    "MAX_COLUMNS",
    "METHODS",
    "STATE_SIDE",
    "SaliencyConfig",
    "SaliencyResult",
    "attribute",
    "compute",
    "display_maps",
    "evolution",
    "run_seed",
    "saliency_maps",
]

METHODS: tuple[str, ...] = (*GRADIENT_METHODS, "occlusion")
STATE_SIDE = 64  # maps kept between runs (evolution strips) are at most this many pixels a side
MAX_COLUMNS = 12  # most randomisation steps shown in the sanity picture (evenly spread, first and last kept)
MAX_SERIES = 6  # most layers drawn in a report's sanity curve
_GREEN, _RED = (20, 120, 40), (190, 30, 30)


def run_seed(probe_seed: int, epoch: int) -> int:
    """The seed of a run's randomness (SmoothGrad noise, sanity re-initialisation, random-logit classes), from the
    callback's ``probe_seed`` and the epoch (probes run on rank zero only, so the rank adds nothing)."""
    return (int(probe_seed) * 1_000_003 + int(epoch)) % (2**63 - 1)


@dataclass
class SaliencyConfig:
    """What a run computes and shows (the :class:`~trainviz.callbacks.saliency.SaliencyCallback` arguments).

    Attributes:
        methods: attribution methods, from ``METHODS`` (:data:`trainviz.ops.saliency.METHODS` and ``"occlusion"``).
        target: explain the ``"true"`` class or the ``"predicted"`` one.
        smoothgrad_samples, smoothgrad_sigma: SmoothGrad's noisy copies and noise level (fraction of the range).
        ig_steps: integrated gradients' quadrature points.
        occlusion_window, occlusion_stride: the occluding patch's side and step (pixels).
        occlusion_baseline: what the patch is filled with, as a PIXEL value in [0, 1] mapped through ``norm``; with
            ``norm=None`` (the identity, or inputs that are not photos) a value in model-input space.
        deletion_steps: steps of the deletion and insertion curves.
        sanity_images: probe images in the sanity checks (the first of :func:`example_indices`).
        sanity_layers: the cascade's steps, top down: layer names (:func:`trainviz.ops.sanity.randomizable_layers`)
            or, with ``sanity_groups``, the steps' names.
        sanity_groups: the modules each step re-initialises (aligned with ``sanity_layers``; ``None``: one layer a
            step), e.g. from :func:`trainviz.ops.sanity.randomization_blocks`.
        sanity_mode: how the steps were made, for the record: ``"layers"``, ``"blocks"`` or ``"groups"``.
        n_grid: probe images in the grid; n_tracked: images in the evolution strips.
        max_strip: most epochs in an evolution strip.
        batch_size: rows (images, noisy copies, path points, occluded copies) per forward.
        norm: model inputs back to pixels (``None``: the identity).
        seed: the run's seed (:func:`run_seed`).
        display: how pictures show the inputs (:class:`~trainviz.core.display.Display`; ``None``: ``norm`` undone).
    """

    methods: Sequence[str] = ("gradient", "smoothgrad", "guided_backprop", "occlusion")
    target: str = "true"
    smoothgrad_samples: int = 16
    smoothgrad_sigma: float = 0.15
    ig_steps: int = 16
    occlusion_window: int = 8
    occlusion_stride: int = 4
    occlusion_baseline: float = 0.0
    deletion_steps: int = 16
    sanity_images: int = 8
    sanity_layers: Sequence[str] | None = None
    n_grid: int = 8
    n_tracked: int = 4
    max_strip: int = 12
    batch_size: int = 64
    norm: Normalization | None = None
    seed: int = 0
    display: Display | None = None
    sanity_groups: Sequence[Sequence[str]] | None = None
    sanity_mode: str = "layers"


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
) -> torch.Tensor:
    """The signed attribution of one method, batched: :func:`trainviz.ops.saliency.saliency` with the config's
    settings (``generator``: SmoothGrad's noise) or :func:`trainviz.ops.occlusion.occlusion` with the pixel
    baseline mapped through ``config.norm`` (at most ``batch_size`` occluded copies per forward).

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
    )


def saliency_maps(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, config: SaliencyConfig
) -> dict[str, torch.Tensor]:
    """``{method: (N, H, W) map}`` of every configured method; SmoothGrad's noise comes from a generator seeded
    with ``config.seed`` on the images' device, fresh at each call (the same images give the same noise)."""
    out = {}
    for method in config.methods:
        generator = torch.Generator(device=images.device).manual_seed(config.seed)
        out[method] = saliency_map(attribute(model, images, targets, method, config, generator)).float()
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


@dataclass
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
            record["epoch"],
            float("nan") if probability is None else probability,
            None if "pointing_game_chance" not in record else (float("nan") if chance is None else chance),
            {m: floats(v) for m, v in record.get("methods", {}).items()},
            None if sanity is None else {m: floats(v) for m, v in sanity.items()},
            None if logit is None else floats(logit),
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
        titles = {
            "deletion_auc": ("Deletion AUC", "area under the target probability as the most salient pixels are "
                             "removed first (lower is more faithful)", [0, 1.02]),
            "insertion_auc": ("Insertion AUC", "area under the target probability as the most salient pixels are "
                              "put back first (higher is more faithful)", [0, 1.02]),
            "pointing_game": ("Pointing game", "hit rate: the map's peak inside the object", [0, 1.02]),
        }  # fmt: skip
        curves: list[dict[str, Any]] = []
        for metric, (title, what, y_range) in titles.items():
            series = [{"name": m, "key": ["methods", m, metric]} for m in methods if metric in self.per_method[m]]
            if metric == "pointing_game" and self.pointing_game_chance is not None:
                series.append({"name": "chance", "key": ["pointing_game_chance"]})
            if series:
                curves.append(
                    {"title": title, "description": f"{title}: {what}.", "y": metric, "y_range": y_range,
                     "series": series}
                )  # fmt: skip
        layers = list(self.sanity_layers or [])
        shown = [layers[i] for i in strip_epochs(list(range(len(layers))), MAX_SERIES)]
        for m in methods:
            if shown:
                curves.append(
                    {
                        "title": f"Sanity: {m}",
                        "description": "Spearman correlation of the maps with those of the model re-initialised "
                        "from the top down to each layer (Adebayo et al. 2018): low means the method explains the "
                        "model; guided backpropagation typically stays high.",
                        "y": "Spearman",
                        "y_range": [-1, 1.02],
                        "series": [{"name": f"down to {layer}", "key": ["sanity", m, layer]} for layer in shown],
                    }
                )
        curves.append(
            {
                "title": "Random logit",
                "description": "Spearman correlation of the maps of the explained class with those of a random "
                "other class (near 1: the method ignores the class).",
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


def _targets(model: nn.Module, probe: ProbeSet, config: SaliencyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    logits = predict_logits(model, probe.images, config.batch_size).float()
    targets = probe.labels if config.target == "true" else logits.argmax(1)
    return logits, targets.to(probe.images.device)


def _sanity(
    model: nn.Module, probe: ProbeSet, targets: torch.Tensor, num_classes: int, config: SaliencyConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], list[int]]:
    """Cascading randomisation and random logit on the first ``sanity_images`` shown images: per method the
    Spearman per image ``(layers, n)`` and ``(n,)``, and the first image's maps ``(1 + layers, H, W)``."""
    idx = example_indices(probe.labels, config.sanity_images)
    images, t = probe.images[idx], targets[idx]
    methods = list(config.methods)

    def explain(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        maps = saliency_maps(m, x, y, config)
        return torch.stack([maps[k] for k in methods])  # (methods, n, H, W): one cascade for all methods

    reference = explain(model, images, t)
    if config.sanity_groups is None:
        steps = cascading_randomization(model, images, t, explain, layers=config.sanity_layers, seed=config.seed)
    else:
        plan = list(zip(config.sanity_layers or [], config.sanity_groups, strict=True))
        steps = cascading_randomization(model, images, t, explain, steps=plan, seed=config.seed)
    generator = torch.Generator(device=images.device).manual_seed(config.seed + 1)
    other = random_logit(model, images, t, explain, num_classes=num_classes, generator=generator)
    cascade, logit, first = {}, {}, {}
    for k, method in enumerate(methods):
        if steps:
            cascade[method] = torch.stack([spearman(reference[k], maps[k]) for _, maps in steps])
        else:
            cascade[method] = reference.new_zeros((0, len(idx)))
        logit[method] = spearman(reference[k], other[k])
        first[method] = torch.stack([reference[k, 0], *[maps[k, 0] for _, maps in steps]])
    return cascade, logit, first, idx


def compute(model: nn.Module, probe: ProbeSet, config: SaliencyConfig, *, epoch: int, sanity: bool) -> SaliencyResult:
    """One run: the maps of every method (one batched pass each), their deletion and insertion curves, the
    pointing game (with masks), with ``sanity`` the cascading-randomisation and random-logit checks, and what to
    show; one device-to-host copy of the scalars.

    Raises:
        ValueError: a method does not apply (the model does not return logits, an occlusion window larger than
            the images, ...).
    """
    logits, targets = _targets(model, probe, config)
    probs = logits.softmax(1)
    maps = saliency_maps(model, probe.images, targets, config)
    scalars: dict[str, torch.Tensor] = {"target_probability": probs.gather(1, targets[:, None]).mean()}
    if probe.masks is not None:
        scalars["pointing_game_chance"] = pointing_game_chance(probe.masks).mean()
    per_image: dict[str, torch.Tensor] = {}
    steps, batch = config.deletion_steps, config.batch_size
    for method, m in maps.items():
        curve, auc = deletion_curve(model, probe.images, m, targets, steps=steps, batch_size=batch)
        per_image[f"deletion_curve/{method}"], per_image[f"deletion_auc/{method}"] = curve, auc
        curve, auc = insertion_curve(model, probe.images, m, targets, steps=steps, batch_size=batch)
        per_image[f"insertion_curve/{method}"], per_image[f"insertion_auc/{method}"] = curve, auc
        scalars[f"{method}/deletion_auc"] = per_image[f"deletion_auc/{method}"].mean()
        scalars[f"{method}/insertion_auc"] = per_image[f"insertion_auc/{method}"].mean()
        if probe.masks is not None:
            per_image[f"pointing_hit/{method}"] = pointing_game(m, probe.masks)
            scalars[f"{method}/pointing_game"] = per_image[f"pointing_hit/{method}"].float().mean()
    layers = list(config.sanity_layers or [])
    sanity_arrays = first = sanity_idx = None
    if sanity:
        cascade, logit, first, sanity_idx = _sanity(model, probe, targets, logits.shape[1], config)
        for method in config.methods:
            scalars.update({f"{method}/sanity/{layer}": v.nanmean() for layer, v in zip(layers, cascade[method])})
            scalars[f"{method}/random_logit"] = logit[method].nanmean()
        sanity_arrays = {
            "layers": np.asarray(layers, dtype=str),
            "ids": probe.ids[sanity_idx],
            **{f"spearman/{m}": v for m, v in cascade.items()},
            **{f"random_logit/{m}": v for m, v in logit.items()},
        }
    idx = example_indices(probe.labels, config.n_grid)
    tracked_idx = example_indices(probe.labels, config.n_tracked)
    names = class_names(probe.class_names, logits.shape[1])
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
    per_method: dict[str, dict[str, float]] = {m: {} for m in config.methods}
    sanity_scores: dict[str, dict[str, float]] | None = {m: {} for m in config.methods} if sanity else None
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
        return pictures(probe.images[rows].float(), config.norm, config.display)

    return SaliencyResult(
        epoch,
        floats["target_probability"],
        floats.get("pointing_game_chance"),
        per_method,
        sanity_scores,
        random_scores,
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
        sanity_mode=config.sanity_mode if sanity else None,
        sanity_groups=None
        if not sanity or config.sanity_groups is None
        else {name: list(group) for name, group in zip(layers, config.sanity_groups)},
    )


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
