"""``DecoderMapCallback``: per-class spatial maps before global pooling, during training (issue 4; seed 003).

Example:
    >>> import pytorch_lightning as pl
    >>> from trainviz.callbacks.decoder_maps import DecoderMapCallback
    >>> from trainviz.data import ShapesDataModule
    >>> from trainviz.models.lightning import ClassMapClassifier
    >>> cb = DecoderMapCallback(layer="decoder.class_maps", every_n_epochs=1)
    >>> trainer = pl.Trainer(max_epochs=3, callbacks=[cb], enable_progress_bar=False,
    ...                      default_root_dir="/tmp/trainviz-doctest")  # doctest: +SKIP
    >>> trainer.fit(ClassMapClassifier(num_classes=6, encoder="small"), ShapesDataModule())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback, check_choice, check_positive_int
from trainviz.core.guard import model_device, model_dtype, probe_guard
from trainviz.core.layers import resolve_layer
from trainviz.ops.class_maps import (
    SHARPNESS_MEASURES,
    PatternTracker,
    Sharpness,
    class_pattern_means,
    logits_and_maps,
    normalize_maps,
    select_class_maps,
    sharpness_confidence,
)
from trainviz.render.maps import class_map_grid, class_pattern_image, prediction_grid
from trainviz.render.strips import evolution_strip

__all__ = ["DecoderMapCallback"]

_MAX_STRIP_EPOCHS = 16  # evolution strips show at most this many runs (first and last included, evenly spread)
_SHARPNESS_KEYS = ("corr_correct", "corr_wrong", "mean_correct", "mean_wrong")


def _spread(candidates: list[int], labels: list[int], n: int) -> list[int]:
    """Up to ``n`` of ``candidates`` (probe indices, in order), taking classes in turn so several appear."""
    by_class: dict[int, list[int]] = {}
    for i in candidates:
        by_class.setdefault(labels[i], []).append(i)
    queues, out = [by_class[c] for c in sorted(by_class)], []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def _number(value: float) -> float | None:
    """JSON-safe: NaN (undefined) becomes None."""
    return None if value != value else value


def _evenly(items: list[int], n: int) -> list[int]:
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


class DecoderMapCallback(ProbeCallback):
    """Per-class maps of a probe set (Zhang's encoder-decoder with group convolution): the maps themselves,
    each class's pattern, how stable the patterns are over training and when they form, and whether confident
    predictions have sharper maps.

    Works on any classifier whose logits are the global pooling of a layer with one channel per class
    (:class:`~trainviz.models.ClassMapNet`'s ``decoder.class_maps``, or a conv head with ``K`` output
    channels before GAP). One forward per probe batch gives both the logits and the maps.

    Maps are normalised by Zhang's eq. 10, ``f / max(f)``, after clamping negatives to 0 (the maps of
    ``ClassMapNet(decoder="seed003")``, Zhang's decoder, end in a ReLU and are non-negative; those of
    ``decoder="grouped"`` are signed; a map with no positive value shows as all zeros). A class's *pattern* is
    its mean normalised map over the probe images of that class; its *stability* is the Pearson correlation
    of the pattern with the previous run's; it *forms* at the first run from which the stability stays
    ``>= stability_threshold`` (:mod:`trainviz.ops.class_maps`). *Sharpness* of the predicted class's map
    (``"peak_to_mean"``: max / mean, or ``"entropy"``: 1 - normalised entropy) is related to the confidence
    ``P_k`` by Spearman's rank correlation, separately for correct and wrong predictions (seed 5.2).

    Logged keys (``trainviz/decoder_maps/...``, step = epoch index):
        - ``stability/<class>`` (scalars, from the second run; skipped when a pattern is flat) and
          ``mean_stability`` (their mean).
        - ``sharpness/corr_correct``, ``sharpness/corr_wrong`` (scalars): Spearman's rho of sharpness vs
          confidence within each group (written when the group has >= 3 predictions and is not constant);
          ``sharpness/mean_correct``, ``sharpness/mean_wrong`` (scalars): mean sharpness (when the group
          is not empty).
        - ``class_maps`` (image): for ``n_grid`` probe images (one per class first), every class's map
          with ``P_k`` (the 16 most probable classes when there are more).
        - ``class_means`` (image): each class's pattern with its image count and stability.
        - ``correct`` and ``wrong`` (images, seed figures 6-7): up to ``n_examples`` correctly / wrongly
          predicted probe images, the predicted class's map over the image and alone, with true label,
          prediction and ``P_k``.
        - ``evolution`` (image, at fit end, step = last run; seed figures 3-5): rows = the ``n_tracked``
          probe images, columns = runs (at most 16, evenly spread), the true class's map over the image.
        - ``formation_epochs`` (text, at fit end): markdown table of the epoch index at which each class's
          pattern formed and its last stability.
        - ``seconds``, ``failures`` (scalars, from the base class).
        - artifacts ``decoder_maps/epoch_XXXX/maps.npz`` (``maps`` float16 (N, K, h, w) normalised,
          ``probs``, ``labels``, ``ids``, ``class_means``, ``counts``), ``decoder_maps/metrics.jsonl``
          (stability, sharpness, accuracy per run), ``decoder_maps/formation.json`` and the images above as
          ``decoder_maps/epoch_XXXX/<name>.png``.

    Args:
        layer: dotted name of the layer with the per-class maps, checked at setup (it must exist and give
            ``(N, K, H, W)`` with ``K`` = number of logits). A name that is not found is also looked up as
            a unique suffix (:func:`trainviz.core.layers.resolve_layer`), so ``"decoder.class_maps"`` finds
            ``"net.decoder.class_maps"``.
        n_tracked: probe images followed across epochs in the evolution strip.
        n_grid: probe images shown with all their class maps.
        n_examples: images in each of the correct / wrong grids.
        stability_threshold: stability from which a pattern counts as formed, in (0, 1].
        sharpness: ``"peak_to_mean"`` or ``"entropy"``.
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``,
            ``probe_size`` (default 96; give each class several images, e.g. 2-4 per class with many classes), ...).

    Example:
        ``Trainer(callbacks=[DecoderMapCallback()]).fit(ClassMapClassifier(6, encoder="small"), ShapesDataModule())``
        (a runnable version: ``examples/group_conv_decoder.py``).
    """

    name = "decoder_maps"
    default_probe_size = 96

    def __init__(
        self,
        layer: str = "decoder.class_maps",
        n_tracked: int = 4,
        n_grid: int = 4,
        n_examples: int = 8,
        stability_threshold: float = 0.9,
        sharpness: Sharpness = "peak_to_mean",
        probe_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(probe_size=probe_size, **kwargs)
        if not isinstance(layer, str) or not layer:
            raise ValueError(f"Expected `layer` to be a non-empty layer name (str), got {layer!r}.")
        self.layer = layer
        self.n_tracked = check_positive_int("n_tracked", n_tracked)
        self.n_grid = check_positive_int("n_grid", n_grid)
        self.n_examples = check_positive_int("n_examples", n_examples)
        if (
            isinstance(stability_threshold, bool)
            or not isinstance(stability_threshold, (int, float))
            or not 0 < stability_threshold <= 1
        ):
            raise ValueError(f"Expected `stability_threshold` to be a float in (0, 1], got {stability_threshold!r}.")
        self.stability_threshold = float(stability_threshold)
        self.sharpness = check_choice("sharpness", sharpness, SHARPNESS_MEASURES)
        self.tracker = PatternTracker(self.stability_threshold)
        self.tracked_maps: dict[int, torch.Tensor] = {}  # epoch -> (n_tracked, h, w) float16, CPU
        self.layer_name: str | None = None

    # identity & state ------------------------------------------------------------------------------
    @override
    def _state_args(self) -> dict[str, Any]:
        return {**super()._state_args(), "layer": self.layer}

    @override
    def _extra_state(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "tracked_maps": dict(self.tracked_maps)}

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state.get("tracker", {}))
        self.tracked_maps = {int(e): torch.as_tensor(m) for e, m in state.get("tracked_maps", {}).items()}

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, layer {self.layer_name or self.layer!r}"

    # setup -----------------------------------------------------------------------------------------
    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        images = self.probe.images[:2].to(model_device(pl_module), model_dtype(pl_module))
        try:
            self.layer_name = resolve_layer(pl_module, self.layer)[0]
            with probe_guard(pl_module):
                logits_and_maps(self.logits_model(pl_module), self.layer_name, images)  # also checks `output=`
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from err

    # running ---------------------------------------------------------------------------------------
    def _class_names(self, k: int) -> list[str]:
        names = self.probe.class_names
        return list(names) if names is not None and len(names) == k else [str(c) for c in range(k)]

    def _first_per_class(self, n: int) -> list[int]:
        labels = self.probe.labels.tolist()
        return _spread(list(range(len(labels))), labels, n)

    @override
    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        probe = self.device_probe(pl_module)
        logits, raw = logits_and_maps(self.logits_model(pl_module), self.layer_name, probe.images, self.batch_size)
        maps = normalize_maps(raw.float())
        probs = logits.float().softmax(1)
        labels = probe.labels
        names = self._class_names(probs.shape[1])
        means, counts = class_pattern_means(maps, labels)
        stability = self.tracker.update(epoch, means)
        sharp = sharpness_confidence(maps, probs, labels, self.sharpness)
        tracked = self._first_per_class(self.n_tracked)
        self.tracked_maps[epoch] = select_class_maps(maps[tracked], labels[tracked]).half().cpu()
        pred = probs.argmax(1)
        correct = pred == labels

        # scalars (one transfer; the tracker's stability is already on the CPU), undefined values skipped
        on_device = torch.stack([correct.double().mean(), *(sharp[key].double() for key in _SHARPNESS_KEYS)])
        accuracy, *sharp_values = on_device.cpu().tolist()
        floats = {f"sharpness/{key}": v for key, v in zip(_SHARPNESS_KEYS, sharp_values, strict=True)}
        if stability is not None:
            floats.update({f"stability/{n}": v for n, v in zip(names, stability.tolist(), strict=True)})
            floats["mean_stability"] = stability.nanmean().item()
        sink = self.sink
        sink.scalars({k: v for k, v in floats.items() if v == v}, epoch)

        # pictures
        pixels = self.norm.denormalize(probe.images.float())
        grid = self._first_per_class(self.n_grid)
        picture = class_map_grid(pixels[grid], maps[grid], probs[grid], labels[grid], names)
        sink.image("class_maps", picture, epoch, artifact=True)
        sink.image("class_means", class_pattern_image(means, counts, names, stability), epoch, artifact=True)
        correct_list, label_list = correct.tolist(), labels.tolist()
        pred_maps = select_class_maps(maps, pred)
        for group, wanted in (("correct", True), ("wrong", False)):
            idx = _spread([i for i, ok in enumerate(correct_list) if ok == wanted], label_list, self.n_examples)
            if idx:
                picture = prediction_grid(pixels[idx], pred_maps[idx], probs[idx], labels[idx], names)
                sink.image(group, picture, epoch, artifact=True)

        # artifacts
        sink.npz(
            epoch, "maps", maps=maps.half(), probs=probs, labels=labels, ids=probe.ids, class_means=means, counts=counts
        )
        sink.record(
            "metrics",
            {
                "epoch": epoch,
                "layer": self.layer_name,
                "accuracy": accuracy,
                "stability": None if stability is None else {n: _number(floats[f"stability/{n}"]) for n in names},
                "sharpness_measure": self.sharpness,
                "sharpness": {key: _number(floats[f"sharpness/{key}"]) for key in _SHARPNESS_KEYS},
                "n_correct": int(sharp["n_correct"]),
                "n_wrong": int(sharp["n_wrong"]),
            },
        )

    @override
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.tracked_maps or self.sink is None:
            return
        epochs = sorted(self.tracked_maps)
        last = epochs[-1]
        shown = _evenly(epochs, _MAX_STRIP_EPOCHS)
        tracked = self._first_per_class(self.n_tracked)
        pixels = self.norm.denormalize(self.probe.images[tracked].float())
        names = self._class_names(self.tracker.means[-1].shape[0])
        rows = [names[c] for c in self.probe.labels[tracked].tolist()]
        maps = torch.stack([self.tracked_maps[e].float() for e in shown])
        self.sink.image("evolution", evolution_strip(pixels, maps, shown, row_labels=rows), last, artifact=True)

        formed = self.tracker.formation_epochs().tolist()
        series = self.tracker.stability()
        final = series[-1].tolist() if series.shape[0] else [float("nan")] * len(formed)
        lines = [
            f"Pattern formation (stability >= {self.stability_threshold:g} from that run on; epoch index = step)",
            "",
            "| class | formed at epoch | last stability |",
            "| --- | --- | --- |",
        ]
        lines += [
            f"| {names[c]} | {'not yet' if formed[c] < 0 else formed[c]} | {final[c]:.3f} |" for c in range(len(formed))
        ]
        self.sink.text("formation_epochs", "\n".join(lines), last)
        self.sink.json(
            "formation.json",
            {
                "layer": self.layer_name,
                "threshold": self.stability_threshold,
                "epochs": self.tracker.epochs,
                "formed_at": {names[c]: (None if formed[c] < 0 else formed[c]) for c in range(len(formed))},
                "stability": {names[c]: [_number(v) for v in series[:, c].tolist()] for c in range(len(formed))},
            },
        )
