"""Per-class decoder maps of a probe set, after Xiaohan Zhang, "Visualization of encoder-decoder structure of Deep
Convolutional Neural Network": the encoder-decoder with group convolution gives one spatial map per class before
global pooling; maps are max-normalised (Zhang's eq. 10), each class's mean map is its pattern, patterns are
followed over training (section 5.1) and sharper maps are checked against confident predictions (section 5.2).

:class:`DecoderMapProbe` is one run under the compute contract (:mod:`trainviz.core.contract`): each share's
probabilities and normalised maps (:class:`DecoderMapPartial`), merged into the whole set's patterns, stability
(against the probe's history, a :class:`~trainviz.ops.class_maps.PatternTracker`), sharpness and pictures; the run has
no parts (its plan is ``True``). :func:`compute` is that in one process (pure torch; the maths is
:mod:`trainviz.ops.class_maps`), :func:`evolution` and :func:`formation` the fit-end outputs.
:class:`~trainviz.callbacks.decoder_maps.DecoderMapCallback` runs them; :class:`DecoderMapOptions` are its options.

Example:
    >>> import torch
    >>> from trainviz.core.probeset import ProbeSet
    >>> from trainviz.models import ClassMapNet
    >>> from trainviz.ops.class_maps import PatternTracker
    >>> from trainviz.probes.decoder_maps import DecoderMapConfig, DecoderMapResult, compute
    >>> probe = ProbeSet(torch.rand(8, 3, 32, 32), torch.tensor([0, 1, 2, 3] * 2), torch.arange(8))
    >>> net = ClassMapNet(num_classes=4, encoder="small").eval()
    >>> result = compute(net, probe, DecoderMapConfig("decoder.class_maps"), epoch=0, tracker=PatternTracker())
    >>> result.stability is None, DecoderMapResult.from_record(result.record()).record() == result.record()
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from trainviz.core.checks import check_choice, check_positive_int
from trainviz.core.common import class_names, example_indices, json_number, json_numbers, strip_epochs
from trainviz.core.contract import Credit, FitEnd, Probe, Share
from trainviz.core.display import Display, pictures
from trainviz.core.normalization import Normalization
from trainviz.core.options import Options
from trainviz.core.probeset import ProbeSet
from trainviz.core.result import Result
from trainviz.core.transfer import to_cpu
from trainviz.ops.class_maps import (
    SHARPNESS_MEASURES,
    PatternTracker,
    class_pattern_means,
    logits_and_maps,
    normalize_maps,
    select_class_maps,
    sharpness_confidence,
)
from trainviz.probes.decoder_maps_names import NAMES
from trainviz.render.maps import class_map_grid, class_pattern_image, prediction_grid
from trainviz.render.strips import evolution_strip

__all__ = [
    "SHARPNESS_KEYS",
    "DecoderMapConfig",
    "DecoderMapOptions",
    "DecoderMapPartial",
    "DecoderMapProbe",
    "DecoderMapResult",
    "check_map_layer",
    "compute",
    "evolution",
    "formation",
]

SHARPNESS_KEYS = ("corr_correct", "corr_wrong", "mean_correct", "mean_wrong")
MAX_STRIP_EPOCHS = 16  # evolution strips show at most this many runs (first and last included, evenly spread)


@dataclass(frozen=True, kw_only=True)
class DecoderMapOptions(Options):
    """The user options of :class:`~trainviz.callbacks.decoder_maps.DecoderMapCallback` (declared once).

    Attributes:
        layer: dotted name of the layer with the per-class maps (resolved at setup).
        n_tracked: probe images followed across epochs in the evolution strip.
        n_grid: probe images shown with all their class maps.
        n_examples: images in each of the correct / wrong grids.
        stability_threshold: stability from which a pattern counts as formed, in (0, 1].
        sharpness: one of :data:`~trainviz.ops.class_maps.SHARPNESS_MEASURES`.
    """

    layer: str = "decoder.class_maps"
    n_tracked: int = 4
    n_grid: int = 4
    n_examples: int = 8
    stability_threshold: float = 0.9
    sharpness: str = "peak_to_mean"

    def check(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise ValueError(f"Expected `layer` to be a non-empty layer name (str), got {self.layer!r}.")
        threshold = self.stability_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"Expected `stability_threshold` to be a float in (0, 1], got {threshold!r}.")
        self.set(
            n_tracked=check_positive_int("n_tracked", self.n_tracked),
            n_grid=check_positive_int("n_grid", self.n_grid),
            n_examples=check_positive_int("n_examples", self.n_examples),
            stability_threshold=float(threshold),
            sharpness=check_choice("sharpness", self.sharpness, SHARPNESS_MEASURES),
        )


_DEFAULTS = DecoderMapOptions()


@dataclass
class DecoderMapConfig:
    """What a run computes and shows: the options (defaults from :class:`DecoderMapOptions`) and what setup resolves.

    Attributes:
        layer: the resolved name of the layer with the per-class maps.
        n_tracked: probe images followed across epochs (one per class first).
        n_grid: probe images shown with all their class maps.
        n_examples: images in each of the correct / wrong grids.
        sharpness: ``"peak_to_mean"`` or ``"entropy"`` (:func:`trainviz.ops.class_maps.map_sharpness`).
        batch_size: images per forward.
        norm: maps model inputs back to pixels (``None``: the identity).
        display: how pictures show the inputs (:class:`~trainviz.core.display.Display`; ``None``: ``norm`` undone).
    """

    layer: str
    _: KW_ONLY
    n_tracked: int = _DEFAULTS.n_tracked
    n_grid: int = _DEFAULTS.n_grid
    n_examples: int = _DEFAULTS.n_examples
    sharpness: str = _DEFAULTS.sharpness
    batch_size: int = 64
    norm: Normalization | None = None
    display: Display | None = None


def _pick(labels: list[int], candidates: Sequence[int], n: int) -> list[int]:
    """Up to ``n`` of ``candidates`` (probe indices), one per class first (:func:`example_indices`)."""
    return [candidates[i] for i in example_indices([labels[i] for i in candidates], n)] if candidates else []


@dataclass(kw_only=True)
class DecoderMapResult(Result):
    """One run. The record: ``{"epoch", "layer", "accuracy", "stability": {class: value} or None (first run),
    "sharpness_measure", "sharpness": {corr_correct, corr_wrong, mean_correct, mean_wrong}, "n_correct",
    "n_wrong"}``, ``None`` for undefined values (NaN here). The tensors and pictures' inputs are not recorded and
    are ``None`` in a result read back.

    Shape:
        maps ``(N, K, h, w)`` normalised, probs ``(N, K)``, labels and ids ``(N,)``, class_means ``(K, h, w)``,
        counts ``(K,)``, pixels ``(N, C, H, W)`` in [0, 1], tracked ``(n_tracked, h, w)`` float16 on the CPU.
    """

    epoch: int
    layer: str
    accuracy: float
    stability: dict[str, float] | None
    sharpness_measure: str
    sharpness: dict[str, float]
    n_correct: int
    n_wrong: int
    maps: torch.Tensor | None = field(default=None, repr=False, compare=False)
    probs: torch.Tensor | None = field(default=None, repr=False, compare=False)
    labels: torch.Tensor | None = field(default=None, repr=False, compare=False)
    ids: torch.Tensor | None = field(default=None, repr=False, compare=False)
    class_means: torch.Tensor | None = field(default=None, repr=False, compare=False)
    counts: torch.Tensor | None = field(default=None, repr=False, compare=False)
    pixels: torch.Tensor | None = field(default=None, repr=False, compare=False)
    names: list[str] | None = field(default=None, repr=False, compare=False)
    shown: dict[str, list[int]] | None = field(default=None, repr=False, compare=False)  # grid, correct, wrong
    tracked: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def scalars(self) -> dict[str, float | None]:
        """The logged metrics of :data:`~trainviz.probes.decoder_maps_names.NAMES`, by their names."""
        out: dict[str, float | None] = {f"sharpness/{k}": json_number(v) for k, v in self.sharpness.items()}
        if self.stability is not None:
            out.update({f"stability/{n}": json_number(v) for n, v in self.stability.items()})
            out["mean_stability"] = json_number(torch.tensor(list(self.stability.values())).nanmean())
        return out

    def record(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "layer": self.layer,
            "accuracy": self.accuracy,
            "stability": None if self.stability is None else {n: json_number(v) for n, v in self.stability.items()},
            "sharpness_measure": self.sharpness_measure,
            "sharpness": {k: json_number(v) for k, v in self.sharpness.items()},
            "n_correct": self.n_correct,
            "n_wrong": self.n_wrong,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> DecoderMapResult:
        def floats(values: dict[str, Any]) -> dict[str, float]:
            return {k: float("nan") if v is None else float(v) for k, v in values.items()}

        stability = None if record["stability"] is None else floats(record["stability"])
        return cls(
            epoch=record["epoch"],
            layer=record["layer"],
            accuracy=record["accuracy"],
            stability=stability,
            sharpness_measure=record["sharpness_measure"],
            sharpness=floats(record["sharpness"]),
            n_correct=record["n_correct"],
            n_wrong=record["n_wrong"],
        )

    def render(self) -> dict[str, np.ndarray]:
        if self.maps is None:
            return {}
        names, probs, labels, grid = self.names, self.probs, self.labels, self.shown["grid"]
        stability = None if self.stability is None else torch.tensor(list(self.stability.values()))
        out = {
            "class_maps": class_map_grid(self.pixels[grid], self.maps[grid], probs[grid], labels[grid], names),
            "class_means": class_pattern_image(self.class_means, self.counts, names, stability),
        }
        pred_maps = select_class_maps(self.maps, probs.argmax(1))
        for group in ("correct", "wrong"):
            idx = self.shown[group]
            if idx:
                out[group] = prediction_grid(self.pixels[idx], pred_maps[idx], probs[idx], labels[idx], names)
        return out

    def arrays(self) -> dict[str, dict[str, Any]]:
        if self.maps is None:
            return {}
        return {
            "maps": {
                "maps": self.maps.half(),
                "probs": self.probs,
                "labels": self.labels,
                "ids": self.ids,
                "class_means": self.class_means,
                "counts": self.counts,
            }
        }

    def section(self) -> dict[str, Any]:
        """The report section: class patterns and maps per epoch, correct against wrong predictions, stability
        and formation epoch per class, sharpness against confidence (see :meth:`Result.section
        <trainviz.core.result.Result.section>`)."""
        names = list(self.stability or {}) or list(self.names or [])
        sharp = {
            "corr_correct": "correlation with confidence, correct",
            "corr_wrong": "correlation with confidence, wrong",
            "mean_correct": "mean, correct",
            "mean_wrong": "mean, wrong",
        }
        stability, accuracy = NAMES["stability/{class*}"], NAMES["accuracy"]  # the name table's words
        return {
            "version": 1,
            "order": 40,
            "title": "Decoder maps",
            "description": f"Per-class maps of {self.layer} (Zhang's encoder-decoder with group convolution): "
            "each class's pattern, when it formed and whether sharper maps go with confident predictions.",
            "curves": [
                {
                    "title": stability.heading,
                    "description": stability.text,
                    "y": "stability",
                    "y_range": [-1, 1.02],
                    "series": [{"name": n, "key": ["stability", n]} for n in names],
                },
                {
                    "title": f"Sharpness ({self.sharpness_measure}) against confidence",
                    "description": "Correlation of map sharpness with confidence, and mean sharpness, for right "
                    "and wrong predictions (Zhang, section 5.2).",
                    "y": "sharpness",
                    "series": [{"name": label, "key": ["sharpness", k]} for k, label in sharp.items()],
                },
                {
                    "title": accuracy.heading,
                    "description": accuracy.text,
                    "y": "accuracy",
                    "y_range": [0, 1.02],
                    "series": [{"name": "accuracy", "key": ["accuracy"]}],
                },
            ],
            "bars": [
                {
                    "title": "Formation epoch per class",
                    "description": "Fit end: the epoch from which each class's pattern stays stable (no bar: "
                    "not formed yet).",
                    "y": "epoch",
                    "document": "formation.json",
                    "key": ["formed_at"],
                }
            ],
            "galleries": [
                {
                    "title": "Class patterns",
                    "description": "Each class's mean map over its probe images.",
                    "images": ["class_means"],
                    "maps": True,
                },
                {
                    "title": "Class maps",
                    "description": "Probe images and the map of every class.",
                    "images": ["class_maps"],
                    "maps": True,
                },
                {
                    "title": "Correct and wrong predictions",
                    "description": "The predicted class's map of right and wrong predictions; zoom one and the "
                    "other follows.",
                    "images": ["correct", "wrong"],
                    "labels": ["correct", "wrong"],
                    "maps": True,
                },
            ],
            "files": [
                {
                    "title": "Evolution",
                    "description": "Fit end: the tracked images' true-class maps across epochs.",
                    "glob": "epoch_*/evolution.png",
                    "kind": "image",
                }
            ],
        }


def _pixels(images: torch.Tensor, norm: Normalization | None, display: Display | None = None) -> torch.Tensor:
    return pictures(images.float(), norm, display)


@dataclass
class DecoderMapPartial:
    """One share's part, in share order (CPU).

    Shape:
        probs ``(n, K)`` float32, maps ``(n, K, h, w)`` float32 normalised (eq. 10); empty tensors for an empty share.
    """

    probs: torch.Tensor
    maps: torch.Tensor


class DecoderMapProbe(Probe[bool, DecoderMapPartial, DecoderMapResult]):
    """The decoder-map probe: each share's probabilities and normalised maps; merged, the class patterns (added
    to the history ``tracker``, which gives their stability against the previous run), sharpness against
    confidence, the tracked images' maps (added to ``tracked_maps``) and what to show.

    Args:
        probe: the whole probe set (labels, examples and pictures come from it at merge).
        config: what a run computes and shows.
        tracker: the history of class patterns (kept across runs, checkpointed by the callback).
        tracked_maps: the history of the tracked images' true-class maps, ``{epoch: (n_tracked, h, w)}``
            float16 on the CPU (``None``: a new one).
    """

    def __init__(
        self,
        probe: ProbeSet,
        config: DecoderMapConfig,
        tracker: PatternTracker,
        *,
        tracked_maps: dict[int, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(probe)
        self.config = config
        self.tracker = tracker
        self.tracked_maps = {} if tracked_maps is None else tracked_maps
        self.epoch = 0

    def plan(self, credit: Credit) -> bool:
        """No parts: the whole run (``True``); the epoch is kept for the result."""
        self.epoch = credit.epoch
        return True

    def compute(self, model: nn.Module, share: Share[ProbeSet], plan: bool, state: Any) -> DecoderMapPartial:
        """Logits and maps of the share's images (one forward per batch), normalised; one device-to-host copy.

        Raises:
            ValueError: the layer does not give one map per logit, or the model does not return logits.
        """
        if len(share) == 0:
            return DecoderMapPartial(torch.zeros(0, 0), torch.zeros(0, 0, 0, 0))
        logits, raw = logits_and_maps(model, self.config.layer, share.data.images, self.config.batch_size)
        host = to_cpu({"probs": logits.float().softmax(1), "maps": normalize_maps(raw.float())})
        return DecoderMapPartial(torch.from_numpy(host["probs"]).float(), torch.from_numpy(host["maps"]).float())

    def merge(self, partials: Sequence[DecoderMapPartial], plan: bool) -> DecoderMapResult:
        """Every image's maps in share order, then what needs the whole set (patterns, stability, sharpness)."""
        kept = [p for p in partials if p.probs.numel()]
        probs, maps = torch.cat([p.probs for p in kept]), torch.cat([p.maps for p in kept])
        config, labels, epoch = self.config, self.probe.labels.cpu(), self.epoch
        names = class_names(self.probe.class_names, probs.shape[1])
        means, counts = class_pattern_means(maps, labels)
        stability = self.tracker.update(epoch, means)
        sharp = sharpness_confidence(maps, probs, labels, config.sharpness)  # type: ignore[arg-type]
        label_list = labels.tolist()
        tracked = example_indices(label_list, config.n_tracked)
        self.tracked_maps[epoch] = select_class_maps(maps[tracked], labels[tracked]).half()
        correct = probs.argmax(1) == labels
        shown = {"grid": example_indices(label_list, config.n_grid)}
        for group, wanted in (("correct", True), ("wrong", False)):
            chosen = [i for i, ok in enumerate(correct.tolist()) if ok == wanted]
            shown[group] = _pick(label_list, chosen, config.n_examples)
        pixels = to_cpu({"pixels": _pixels(self.probe.images, config.norm, config.display)})["pixels"]
        return DecoderMapResult(
            epoch=epoch,
            layer=config.layer,
            accuracy=float(correct.double().mean()),
            stability=None if stability is None else dict(zip(names, stability.tolist(), strict=True)),
            sharpness_measure=config.sharpness,
            sharpness={key: float(sharp[key].double()) for key in SHARPNESS_KEYS},
            n_correct=int(sharp["n_correct"]),
            n_wrong=int(sharp["n_wrong"]),
            maps=maps,
            probs=probs,
            labels=labels,
            ids=self.probe.ids.cpu(),
            class_means=means,
            counts=counts,
            pixels=torch.from_numpy(pixels).float(),
            names=names,
            shown=shown,
            tracked=self.tracked_maps[epoch],
        )

    def evolution(self) -> FitEnd | None:
        """Fit end: the tracked images' true-class maps across epochs (``evolution``, :func:`evolution`) and when
        each class's pattern formed (the ``formation_epochs`` text and ``formation.json``, :func:`formation`);
        ``None`` before the first run."""
        if not self.tracked_maps:
            return None
        c = self.config
        k = self.tracker.means[-1].shape[0]
        strip = evolution(self.tracked_maps, self.probe, c.n_tracked, c.norm, k, display=c.display)
        text, document = formation(self.tracker, class_names(self.probe.class_names, k), c.layer)
        end = FitEnd(max(self.tracked_maps), images={"evolution": strip}, texts={"formation_epochs": text})
        end.documents["formation.json"] = document
        return end


def check_map_layer(model: nn.Module, layer: str, example: torch.Tensor) -> None:
    """Setup's check: one forward of ``example`` gives logits and one map per logit at ``layer``.

    Raises:
        ValueError: the layer does not give one map per logit, or the model does not return logits.
    """
    logits_and_maps(model, layer, example)


def compute(
    model: nn.Module, probe: ProbeSet, config: DecoderMapConfig, *, epoch: int, tracker: PatternTracker
) -> DecoderMapResult:
    """One run (:class:`DecoderMapProbe` in one process): the maps of ``config.layer`` (one forward per batch), the
    class patterns (added to ``tracker``, which gives their stability against its previous run), sharpness against
    confidence, and what to show.

    Raises:
        ValueError: the layer does not give one map per logit, or the model does not return logits.
    """
    result = DecoderMapProbe(probe, config, tracker).run(model, Credit(epoch=epoch))
    assert result is not None
    return result


def evolution(
    tracked_maps: dict[int, torch.Tensor],
    probe: ProbeSet,
    n_tracked: int,
    norm: Normalization | None,
    num_classes: int,
    limit: int = MAX_STRIP_EPOCHS,
    display: Display | None = None,
) -> np.ndarray:
    """Fit end: rows = the ``n_tracked`` tracked probe images, columns = at most ``limit`` runs (evenly spread,
    first and last included), the true class's map over the image (``display``: how the image is shown, else
    ``norm`` undone)."""
    shown = strip_epochs(sorted(tracked_maps), limit)
    tracked = example_indices(probe.labels, n_tracked)
    names = class_names(probe.class_names, num_classes)
    rows = [names[c] for c in probe.labels[tracked].tolist()]
    maps = torch.stack([tracked_maps[e].float() for e in shown])
    return evolution_strip(_pixels(probe.images[tracked], norm, display), maps, shown, row_labels=rows)


def formation(tracker: PatternTracker, names: Sequence[str], layer: str | None) -> tuple[str, dict[str, Any]]:
    """Fit end: when each class's pattern formed (stability at or above the tracker's threshold from that run on),
    as a markdown table and as the ``formation.json`` document ``{"layer", "threshold", "epochs", "formed_at":
    {class: epoch or None}, "stability": {class: [value or None per run after the first]}}``."""
    formed = tracker.formation_epochs().tolist()
    series = tracker.stability()
    final = series[-1].tolist() if series.shape[0] else [float("nan")] * len(formed)
    lines = [
        f"Pattern formation (stability >= {tracker.threshold:g} from that run on; epoch index = step)",
        "",
        "| class | formed at epoch | last stability |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {names[c]} | {'not yet' if formed[c] < 0 else formed[c]} | {final[c]:.3f} |" for c in range(len(formed))
    ]
    document = {
        "layer": layer,
        "threshold": tracker.threshold,
        "epochs": tracker.epochs,
        "formed_at": {names[c]: (None if formed[c] < 0 else formed[c]) for c in range(len(formed))},
        "stability": {names[c]: json_numbers(series[:, c]) for c in range(len(formed))},
    }
    return "\n".join(lines), document
