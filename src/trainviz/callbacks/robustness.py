"""``RobustnessCallback``: how the network copes with corrupted and adversarial inputs, epoch after epoch.

Seed 003 (section 5.3) feeds grey, blurred, channel-shuffled and salt-and-pepper images to the network and
compares predictions and confidences with the clean ones; seed 001 pushes an image up the loss gradient until
its class changes. This callback runs both on a fixed probe set at every run, with the CIFAR-10-C suite of
ImageNet-C corruptions besides the seed probes (:mod:`trainviz.ops.corruptions`).

Example:
    >>> from trainviz.callbacks.robustness import RobustnessCallback
    >>> cb = RobustnessCallback(corruptions=["grayscale", "fog"], severities=[1, 3], epsilons=[4 / 255])
    >>> cb.rows
    [('grayscale', 1), ('fog', 1), ('fog', 3)]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch import Tensor
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback, check_positive_int
from trainviz.core.guard import model_device, model_dtype, probe_guard
from trainviz.core.layers import resolve_layers
from trainviz.ops.adversarial import fgsm_accuracy, steps_to_flip
from trainviz.ops.cam import grad_cam
from trainviz.ops.corruptions import IMAGENET_C, SEED_PROBES, corrupt, corruption_spec, list_corruptions
from trainviz.ops.localization import map_correlation
from trainviz.ops.predict import predict_logits
from trainviz.ops.robustness import (
    accuracy,
    corruption_error,
    expected_calibration_error,
    flip_rate,
    nll,
    per_class_accuracy,
    relative_corruption_error,
)
from trainviz.core.probeset import ProbeSet
from trainviz.core.transfer import to_cpu
from trainviz.render.images import to_uint8, upscale
from trainviz.render.robustness import example_grid_image, table_heatmap_image
from trainviz.report.summary import eps_label, summary_from_record

__all__ = ["RobustnessCallback"]

DEFAULT_EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)



def _nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Mean without the NaNs (flat CAMs); NaN, silently, where everything is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _plain(value: Any) -> Any:
    """A float for JSON, ``None`` when not finite."""
    value = float(value)
    return value if math.isfinite(value) else None


class RobustnessCallback(ProbeCallback):
    """Accuracy, calibration and prediction flips under corruptions, FGSM accuracy and steps to flip.

    At every run, for every corruption and severity: accuracy, mean confidence (top probability), NLL, ECE
    (15 bins), flip rate against the clean prediction and per-class accuracy; per corruption the corruption
    error ``CE`` and relative ``CE`` (see :mod:`trainviz.report.summary`: without a ``reference`` run they
    are the mean error and the mean error increase over clean, with one they are normalised by it); FGSM
    accuracy at each ``eps`` (pixel space, before normalisation; the label is the true class) and seed 001's
    gradient ascent on the loss of the clean prediction, counted in steps until the prediction changes;
    with ``cam_shift=True``, the CAM shift of seed 003: the Pearson correlation between the Grad-CAM of the
    true class on the clean image and on its corrupted copy (1 = the evidence sits in the same place; images
    whose map is flat are left out of the means).

    The probe set is corrupted once (noise from ``probe_seed``, the same noise at every severity and every
    epoch), normalised and cached on the model's device, keyed by corruption, severity, parameters, seed and
    probe fingerprint, so each run costs forward passes only and the curves measure the model, not fresh
    noise. The cache holds ``(1 + rows) x probe_size`` images (12 MB per 1000 images of 3x32x32 in float32).
    Corruptions that do not apply to the data (channel orders on 1-channel images, salt-and-pepper amounts
    that round to no pixel) are skipped at setup with one info line.

    Logged keys (step = epoch index; ``<c>`` a corruption name):
        - ``trainviz/robustness/clean/{accuracy,confidence,nll,ece}`` (scalars): on the clean probe set.
        - ``trainviz/robustness/corrupted/{accuracy,confidence,nll,ece,flip_rate}`` (scalars): averaged
          over every corruption and severity.
        - ``trainviz/robustness/accuracy/<c>``, ``trainviz/robustness/flip_rate/<c>`` (scalars): per
          corruption, averaged over its severities.
        - ``trainviz/robustness/mce``, ``trainviz/robustness/relative_mce`` (scalars).
        - ``trainviz/robustness/corrupted/cam_shift`` and ``trainviz/robustness/cam_shift/<c>`` (scalars),
          when ``cam_shift``.
        - ``trainviz/robustness/fgsm/accuracy@<eps>`` (scalars, ``eps`` with 4 decimals), when ``epsilons``.
        - ``trainviz/robustness/flip/steps_mean`` and ``trainviz/robustness/flip/never_fraction``
          (scalars), when ``flip_max_steps > 0``.
        - ``trainviz/robustness/heatmap`` (image): accuracy, corruption x severity.
        - ``trainviz/robustness/examples`` (image): ``n_examples`` probe images, clean and under each
          corruption at its highest selected severity, captioned with prediction and confidence.
        - ``trainviz/robustness/cache_seconds`` (scalar, once): cost of corrupting the probe set.
        - ``trainviz/robustness/seconds`` (scalar): cost of the run.
        - artifacts: ``robustness/metrics.jsonl`` (one record per epoch with the whole table, the probe size
          ``n`` and the probe images per class ``class_counts``, from which the report draws its intervals),
          ``robustness/summary.json`` (the latest record's flat metrics, usable as another run's
          ``reference``), ``robustness/epoch_XXXX/table.npz`` (``corruption``, ``severity``, ``accuracy``,
          ``confidence``, ``nll``, ``ece``, ``flip_rate``, ``per_class_accuracy`` per row; row 0 is clean;
          per image ``pred`` and ``confidences``; ``labels``, ``ids``, ``class_names``; with ``cam_shift``,
          ``cam_shift`` of shape (rows, probe_size), NaN for flat maps),
          ``robustness/epoch_XXXX/adversarial.npz`` (``epsilons``, ``fgsm_accuracy``, ``steps`` with -1 for
          never flipped, ``max_steps``), ``robustness/epoch_XXXX/{heatmap,examples}.png``.

    Args:
        corruptions: names from :func:`~trainviz.ops.corruptions.list_corruptions` (default: the seed 003
            probes and the 15 ImageNet-C corruptions).
        severities: severities of the 5-level corruptions (default 1..5); single-level corruptions (the
            seed probes) run at their one level.
        epsilons: FGSM step sizes in pixel units (default 1/255, 2/255, 4/255, 8/255); ``[]`` skips FGSM.
        flip_step_size: gradient-ascent step ``eta`` on pixels (times the raw gradient, not its sign). How many
            steps an image needs depends on the data's gradient scale: at 0.5 a demo CNN flips most shapes
            images in 2-18 steps and digits in 1 (0.05 gives digits 1-6 steps).
        flip_max_steps: cap on the gradient-ascent steps; ``0`` skips steps-to-flip.
        reference: path to another run's ``summary.json`` (``robustness/summary.json`` or the one beside
            its report) to normalise ``CE``; it must cover every corruption and severity run here.
        cam_shift: also compute the CAM shift. The logits then come from the Grad-CAM pass (one forward and a
            backward truncated at ``cam_layer``), which costs about 1.2-1.4x the plain forward passes.
        cam_layer: layer of the Grad-CAM (a name from ``trainviz.list_layers(model)``, or ``"auto"``: the
            last module with a spatial output, or a vision transformer's token layer, see :mod:`trainviz.core.layers`);
            resolved at setup, where an unknown name raises.
        cam_reshape: the ``reshape=`` of the Grad-CAM (:func:`trainviz.ops.cam.class_activation_maps`): layer
            output to ``(N, C, h, w)``, for token layouts other than a square grid with an optional class token.
        n_examples: probe images in the example grid.
        probe_size: probe images (default 256, or the whole split when it is smaller: a 95% interval on an
            accuracy of 0.8 is about +-0.05 at 256 images, +-0.1 at 64).
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``,
            ``probe_size``, ``probe_seed``, ``batch_size`` (default 256), ...).

    Example:
        ``Trainer(callbacks=[RobustnessCallback(corruptions=["grayscale", "gaussian_noise"])])``
        (``trainviz demo`` runs it; ``trainviz report RUN_DIR`` turns its artifacts into a page).
    """

    name = "robustness"
    default_probe_size = 256  # a 95% interval on an accuracy of 0.8 is about +-0.05 at 256 images, +-0.1 at 64

    def __init__(
        self,
        corruptions: Sequence[str] | None = None,
        severities: Sequence[int] | None = None,
        epsilons: Sequence[float] | None = None,
        flip_step_size: float = 0.5,
        flip_max_steps: int = 20,
        reference: str | None = None,
        cam_shift: bool = False,
        cam_layer: str = "auto",
        cam_reshape: Callable[[Tensor], Tensor] | None = None,
        n_examples: int = 6,
        batch_size: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        names = list(SEED_PROBES + IMAGENET_C) if corruptions is None else list(corruptions)
        valid = list_corruptions()
        unknown = [n for n in names if n not in valid]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(
                f"Expected `corruptions` to be distinct names from {', '.join(valid)}; got {names!r}"
                + (f" (unknown: {', '.join(map(repr, unknown))})." if unknown else ".")
            )
        sevs = [1, 2, 3, 4, 5] if severities is None else list(severities)
        if not sevs or len(set(sevs)) != len(sevs) or any(isinstance(s, bool) or s not in range(1, 6) for s in sevs):
            raise ValueError(f"Expected `severities` to be distinct ints in 1..5, got {severities!r}.")
        self.corruptions, self.severities = names, sorted(sevs)
        self.rows: list[tuple[str, int]] = []
        for name in names:
            levels = corruption_spec(name).severities
            picked = [1] if levels == 1 else [s for s in self.severities if s <= levels]
            if not picked:
                raise ValueError(f"Corruption {name!r} has {levels} severities; none of `severities` {self.severities}.")
            self.rows += [(name, s) for s in picked]
        eps = list(DEFAULT_EPSILONS) if epsilons is None else list(epsilons)
        if any(isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e < math.inf for e in eps):
            raise ValueError(f"Expected `epsilons` to be finite numbers >= 0, got {epsilons!r}.")
        if len({eps_label(e) for e in eps}) != len(eps):
            raise ValueError(f"Expected `epsilons` to differ in their first 4 decimals, got {eps!r}.")
        self.epsilons = [float(e) for e in eps]
        if isinstance(flip_step_size, bool) or not isinstance(flip_step_size, (int, float)) or not 0 < flip_step_size < math.inf:
            raise ValueError(f"Expected `flip_step_size` to be a positive number, got {flip_step_size!r}.")
        if isinstance(flip_max_steps, bool) or not isinstance(flip_max_steps, int) or flip_max_steps < 0:
            raise ValueError(f"Expected `flip_max_steps` to be an int >= 0, got {flip_max_steps!r}.")
        self.flip_step_size, self.flip_max_steps = float(flip_step_size), flip_max_steps
        if reference is not None and not isinstance(reference, (str, os.PathLike)):
            raise ValueError(f"Expected `reference` to be a path to a summary.json or None, got {reference!r}.")
        self.reference = None if reference is None else os.fspath(reference)
        if not isinstance(cam_shift, bool):
            raise ValueError(f"Expected `cam_shift` to be a bool, got {cam_shift!r}.")
        if not isinstance(cam_layer, str) or not cam_layer:
            raise ValueError(f"Expected `cam_layer` to be a layer name or 'auto', got {cam_layer!r}.")
        self.cam_shift, self.cam_layer = cam_shift, cam_layer
        if cam_reshape is not None and not callable(cam_reshape):
            raise ValueError(f"Expected `cam_reshape` to be a callable (N, T, C) -> (N, C, h, w) or None, got {cam_reshape!r}.")
        self.cam_reshape = cam_reshape
        self._cam_layers: dict[str, Any] = {}
        self.n_examples = check_positive_int("n_examples", n_examples)
        self.active: list[tuple[str, int]] = list(self.rows)
        self._rows: list[tuple[str, int]] = list(self.rows)  # the rows of the current run
        self.skipped: dict[str, str] = {}
        self._reference_errors: tuple[float, dict[tuple[str, int], float]] | None = None
        self._fingerprint: str | None = None
        self._cache: dict[tuple, Tensor] = {}  # model inputs of each corrupted row, built when first run
        self._costs: dict[str, float] = {}  # seconds of one row's forward, of FGSM and of steps-to-flip (budget)
        self._rotation = 0  # under a budget: the corruption whose turn it is next

    # identity --------------------------------------------------------------------------------------
    @override
    def _state_args(self) -> dict[str, Any]:
        config = json.dumps([self.rows, self.epsilons, self.flip_step_size, self.flip_max_steps, self.reference, self.cam_shift, self.cam_layer])
        return {**super()._state_args(), "config": hashlib.sha1(config.encode()).hexdigest()[:8]}

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, {len(self.active)} corruption settings"


    @override
    def _on_probe_changed(self) -> None:
        self._cache, self._fingerprint = {}, None

    @override
    def _extra_state(self) -> dict[str, Any]:
        return {"rotation": self._rotation}

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._rotation = int(state.get("rotation", 0))

    # setup -----------------------------------------------------------------------------------------
    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_applicable()
        if self.skipped:
            reasons = "; ".join(f"{n} ({r})" for n, r in self.skipped.items())
            rank_zero_info(f"trainviz: RobustnessCallback skips corruptions that do not apply to this data: {reasons}")
        if not self.active:
            raise ValueError(f"None of the corruptions {self.corruptions} applies to this data: {self.skipped}.")
        if self.reference is not None:
            self._reference_errors = self._load_reference(self.reference)
        example = self.probe.images[:2].to(model_device(pl_module), model_dtype(pl_module))
        with probe_guard(pl_module):
            model = self.logits_model(pl_module)
            if not self.cam_shift:
                predict_logits(model, example)  # raises now if the output is not logits (names `output=`)
            else:
                self._cam_layers = resolve_layers(model, self.cam_layer, example[:1], self.cam_reshape)
                grad_cam(model, example, self._cam_layers, self.probe.labels[:2].to(example.device), reshape=self.cam_reshape)  # raises if it does not apply
        if self.cam_shift and self.cam_layer == "auto":
            rank_zero_info(f"trainviz: RobustnessCallback cam_layer='auto' resolved to {list(self._cam_layers)}")

    def _check_applicable(self) -> None:
        """Keep the rows whose corruption runs on these images and changes them (tried on 8 probe images)."""
        pixels = self.norm.denormalize(self.probe.images[:8].float())
        self.active, self.skipped = [], {}
        for name in self.corruptions:
            rows = [(n, s) for n, s in self.rows if n == name]
            try:
                changed = any(not torch.equal(corrupt(pixels, n, s, seed=self.probe_seed), pixels) for n, s in rows)
            except (ValueError, RuntimeError) as err:
                self.skipped[name] = str(err)
                continue
            if changed:
                self.active += rows
            else:
                self.skipped[name] = "leaves these images unchanged"

    def _load_reference(self, path: str) -> tuple[float, dict[tuple[str, int], float]]:
        """Clean error and error of each active row from a reference ``summary.json``."""
        try:
            with open(path, encoding="utf-8") as f:
                summary = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"Cannot read the `reference` summary {path!r}: {err}") from err
        keys = {row: f"corruption_accuracy/{row[0]}/s{row[1]}" for row in self.active}
        missing = [k for k in ["clean_accuracy", *keys.values()] if not isinstance(summary.get(k), (int, float))]
        if missing:
            raise ValueError(
                f"The `reference` summary {path!r} lacks {len(missing)} metric(s) this run needs, e.g. "
                f"{', '.join(missing[:4])}: make the reference with the same corruptions and severities."
            )
        return 1.0 - summary["clean_accuracy"], {row: 1.0 - summary[key] for row, key in keys.items()}

    # the corrupted probe set -----------------------------------------------------------------------
    def _corrupted_inputs(self, probe: ProbeSet, rows: list[tuple[str, int]], epoch: int) -> Tensor:
        """Model inputs of the clean probe set (block 0) and of each row of ``rows`` (block r); every row is
        corrupted once, when it first runs, and cached on the device.

        Shape: ``((1 + R) N, C, H, W)`` on the probe's device and dtype.
        """
        if self._fingerprint is None:
            self._fingerprint = self.probe.fingerprint()
        where = (self._fingerprint, self.probe_seed, str(probe.images.device), str(probe.images.dtype))
        keys = {row: (*where, *row, repr((corruption_spec(row[0]).params or [None] * row[1])[row[1] - 1])) for row in rows}
        self._cache = {key: value for key, value in self._cache.items() if key[:4] == where}  # device or probe changed
        missing = [row for row in rows if keys[row] not in self._cache]
        if missing:
            start = time.perf_counter()
            pixels = self.norm.denormalize(probe.images)
            for name, severity in missing:
                self._cache[keys[(name, severity)]] = self.norm.normalize(corrupt(pixels, name, severity, seed=self.probe_seed))
            if self.sink is not None:
                self.sink.scalar("cache_seconds", time.perf_counter() - start, epoch)
        return torch.cat([probe.images, *(self._cache[keys[row]] for row in rows)])

    # the budget ------------------------------------------------------------------------------------
    @override
    def _plan(self, credit: float, essential: bool, epoch: int) -> Any:
        """Skip a non-essential run whose seed probes alone do not fit; else let :meth:`_scaled_parts` choose."""
        core = self._costs.get("row", 0.0) * (1 + sum(1 for name, _ in self.active if name in SEED_PROBES))
        if not essential and core > credit:
            self._skip(epoch, "run", f"the seed probes take {core:.2f} s, credit {credit:.2f} s")
            return None
        return {"credit": credit, "start": time.perf_counter()}

    def _scaled_parts(self, pl_module: pl.LightningModule, probe: ProbeSet, epoch: int) -> tuple[list[tuple[str, int]], bool, bool]:
        """Which rows, and whether FGSM and steps-to-flip, run now: everything without a budget; under one, the
        seed probes always, then FGSM, the other corruptions in turn (whole corruptions, all their severities,
        resuming where the last run stopped) and steps-to-flip, as far as the credit goes."""
        fgsm, flip = bool(self.epsilons), self.flip_max_steps > 0
        if self.plan is True:
            return list(self.active), fgsm, flip
        if "row" not in self._costs:  # first run: time one clean forward to price a row
            start = time.perf_counter()
            predict_logits(self.logits_model(pl_module), probe.images, self.batch_size)
            self._costs["row"] = time.perf_counter() - start
        row = self._costs["row"] * (1.3 if self.cam_shift else 1.0)
        rows = [r for r in self.active if r[0] in SEED_PROBES]
        left = self.plan["credit"] - (time.perf_counter() - self.plan["start"]) - row * (1 + len(rows))
        skipped = []
        if fgsm:
            cost = self._costs.get("fgsm", row * (3 + len(self.epsilons)))
            fgsm = cost <= left
            left -= cost if fgsm else 0.0
            skipped += [] if fgsm else [f"fgsm ({cost:.2f} s)"]
        others = list(dict.fromkeys(name for name, _ in self.active if name not in SEED_PROBES))
        turn = [others[(self._rotation + i) % len(others)] for i in range(len(others))] if others else []
        taken = 0
        for name in turn:
            cost = row * sum(1 for n, _ in self.active if n == name)
            if cost > left:
                break
            left -= cost
            taken += 1
        chosen = set(turn[:taken])
        self._rotation = (self._rotation + taken) % max(1, len(others))
        rows += [r for r in self.active if r[0] in chosen]
        if taken < len(turn):
            skipped.append(f"{len(turn) - taken} of {len(turn)} corruptions ({', '.join(turn[taken:][:3])}{', ...' if len(turn) - taken > 3 else ''})")
        if flip:
            cost = self._costs.get("flip", row * 3 * self.flip_max_steps)
            flip = cost <= left
            skipped += [] if flip else [f"steps-to-flip ({cost:.2f} s)"]
        if skipped:
            self._skip(epoch, "parts", f"not in the credit of {self.plan['credit']:.2f} s: " + "; ".join(skipped))
        order = {r: i for i, r in enumerate(self.active)}
        return sorted(rows, key=order.__getitem__), fgsm, flip

    # running ---------------------------------------------------------------------------------------
    def _forward(self, pl_module: pl.LightningModule, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | None]:
        """Logits of every block, and with ``cam_shift`` the correlation of each corrupted image's Grad-CAM
        (true class) with the clean one, from the same forward passes, batch after batch.

        Shape: inputs ``((1 + R) N, C, H, W)`` -> logits ``((1 + R) N, K)``, shift ``(R N,)`` or ``None``.
        """
        if not self.cam_shift:
            return predict_logits(self.logits_model(pl_module), inputs, self.batch_size).float(), None
        n = labels.shape[0]
        targets = labels.repeat(inputs.shape[0] // n)
        logits, shifts, clean = [], [], []
        for a in range(0, inputs.shape[0], self.batch_size):
            b = min(a + self.batch_size, inputs.shape[0])
            result = grad_cam(self.logits_model(pl_module), inputs[a:b], self._cam_layers, targets[a:b], reshape=self.cam_reshape)
            logits.append(result.logits)
            split = max(0, min(n, b) - a)  # rows of this batch in the clean block, which comes first
            clean.append(result.aggregate[:split])
            if split < b - a:
                clean = [torch.cat(clean)]
                rows = torch.arange(a + split, b, device=inputs.device) % n
                shifts.append(map_correlation(result.aggregate[split:], clean[0][rows]))
        return torch.cat(logits).float(), torch.cat(shifts)

    def _row_metrics(self, logits: Tensor, labels: Tensor, k: int) -> dict[str, Tensor]:
        """Metrics of each block of logits ``(1 + R, N, K)`` on the device, stacked along the rows."""
        probs = logits.softmax(-1)
        confidences, pred = probs.max(-1)
        per_row = [
            (
                accuracy(pred[r], labels),
                nll(logits[r], labels),
                expected_calibration_error(probs[r], labels),
                flip_rate(pred[r], pred[0]),
                per_class_accuracy(pred[r], labels, k),
            )
            for r in range(logits.shape[0])
        ]
        acc, nl, ece, flips, per_class = (torch.stack(column) for column in zip(*per_row))
        return {
            "accuracy": acc,
            "confidence": confidences.double().mean(1),
            "nll": nl.double(),
            "ece": ece,
            "flip_rate": flips,
            "per_class_accuracy": per_class,
            "pred": pred,
            "confidences": confidences,
        }

    def _adversarial(
        self, pl_module: pl.LightningModule, probe: ProbeSet, clean_pred: Tensor, fgsm: bool = True, flip: bool = True
    ) -> dict[str, Tensor]:
        """FGSM accuracy per ``eps`` and steps to flip per image (each when asked and configured), batch by
        batch, on the device; their costs are kept for the budget."""
        pixels, out = self.norm.denormalize(probe.images), {}
        batches = list(probe.batches(self.batch_size))
        start = time.perf_counter()
        if self.epsilons and fgsm:
            parts = [
                fgsm_accuracy(self.logits_model(pl_module), pixels[a:b], probe.labels[a:b], self.epsilons, preprocess=self.norm.normalize) * (b - a)
                for a, b in batches
            ]
            out["fgsm_accuracy"] = torch.stack(parts).sum(0) / len(probe)
            self._costs["fgsm"] = time.perf_counter() - start
        start = time.perf_counter()
        if self.flip_max_steps > 0 and flip:
            out["steps"] = torch.cat(
                [
                    steps_to_flip(
                        self.logits_model(pl_module), pixels[a:b], clean_pred[a:b], step_size=self.flip_step_size,
                        max_steps=self.flip_max_steps, preprocess=self.norm.normalize,
                    )
                    for a, b in batches
                ]
            )
            self._costs["flip"] = time.perf_counter() - start
        return out

    @override
    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        probe = self.device_probe(pl_module)
        rows, fgsm, flip = self._scaled_parts(pl_module, probe, epoch)
        self._rows = rows
        inputs = self._corrupted_inputs(probe, rows, epoch)
        n = len(probe)
        self._examples = self._example_tiles(inputs, n)
        start = time.perf_counter()
        logits, shift = self._forward(pl_module, inputs, probe.labels)
        self._costs["row"] = (time.perf_counter() - start) / (1 + len(rows)) / (1.3 if self.cam_shift else 1.0)
        k = logits.shape[-1]
        device_values = self._row_metrics(logits.view(1 + len(rows), n, k), probe.labels, k)
        if shift is not None:
            device_values["cam_shift"] = shift.view(len(rows), n)
        device_values.update(self._adversarial(pl_module, probe, device_values["pred"][0], fgsm, flip))
        values = to_cpu(device_values)
        names = probe.class_names or [str(c) for c in range(k)]
        record = self._record(epoch, values, names)
        self._write(epoch, record, values, names, probe)

    def _record(self, epoch: int, v: dict[str, np.ndarray], names: list[str]) -> dict[str, Any]:
        """The JSON record of one run: clean and per-row metrics, per-corruption aggregates, mCE, adversarial,
        and the counts behind them (``n`` probe images, ``class_counts`` per class)."""
        stats = ("accuracy", "confidence", "nll", "ece")
        table = [
            {
                "corruption": name,
                "severity": severity,
                **{s: _plain(v[s][r]) for s in (*stats, "flip_rate")},
                "per_class_accuracy": [_plain(a) for a in v["per_class_accuracy"][r]],
            }
            for r, (name, severity) in enumerate(self._rows, start=1)
        ]
        shift = _nanmean(v["cam_shift"], axis=1) if "cam_shift" in v else None
        if shift is not None:
            for row, value in zip(table, shift):
                row["cam_shift"] = _plain(value)
        clean_err = 1.0 - v["accuracy"][0]
        ref_clean, ref_rows = self._reference_errors or (0.0, {})
        corruptions, ces, rces = {}, [], []
        for name in dict.fromkeys(n for n, _ in self._rows):
            idx = [r for r, (n, _) in enumerate(self._rows, start=1) if n == name]
            err = torch.from_numpy(1.0 - v["accuracy"][idx])
            ref = torch.tensor([ref_rows[self._rows[r - 1]] for r in idx]) if ref_rows else torch.ones_like(err)
            ce, rce = corruption_error(err, ref), relative_corruption_error(err, clean_err, ref, ref_clean)
            ces.append(ce)
            rces.append(rce)
            corruptions[name] = {
                **{s: _plain(v[s][idx].mean()) for s in (*stats, "flip_rate")},
                "ce": _plain(ce),
                "relative_ce": _plain(rce),
            }
            if shift is not None:
                corruptions[name]["cam_shift"] = _plain(_nanmean(shift[[r - 1 for r in idx]]))
        record: dict[str, Any] = {
            "epoch": epoch,
            "class_names": names,
            "n": len(self.probe),  # probe images: with the accuracies, the counts behind the report's intervals
            "class_counts": torch.bincount(self.probe.labels, minlength=len(names)).tolist(),
            "clean": {**{s: _plain(v[s][0]) for s in stats}, "per_class_accuracy": [_plain(a) for a in v["per_class_accuracy"][0]]},
            "corrupted": {s: _plain(v[s][1:].mean()) for s in (*stats, "flip_rate")},
            "table": table,
            "corruptions": corruptions,
            "mce": _plain(torch.stack(ces).mean()) if ces else None,
            "relative_mce": _plain(torch.stack(rces).mean()) if rces else None,
            "reference": self.reference,
            "skipped": dict(self.skipped),
            # what ran (under a budget, a part of the suite): rows of the table out of the active ones
            "schedule": {
                "rows": len(self._rows),
                "of": len(self.active),
                "corruptions": len(corruptions),
                "of_corruptions": len(dict.fromkeys(n for n, _ in self.active)),
                "budget": self.budget,
            },
        }
        if shift is not None:
            record["cam_shift"] = _plain(_nanmean(shift))
        if "fgsm_accuracy" in v:
            record["fgsm"] = {"epsilons": self.epsilons, "accuracy": [_plain(a) for a in v["fgsm_accuracy"]]}
        if "steps" in v:
            steps = v["steps"]
            flipped = steps[steps >= 0]
            record["flip"] = {
                "step_size": self.flip_step_size,
                "max_steps": self.flip_max_steps,
                "steps_mean": _plain(flipped.mean()) if flipped.size else None,
                "steps_median": _plain(np.median(flipped)) if flipped.size else None,
                "never_flipped": int((steps < 0).sum()),
                "never_fraction": _plain((steps < 0).mean()),
            }
        return record

    def _write(self, epoch: int, record: dict[str, Any], v: dict[str, np.ndarray], names: list[str], probe: ProbeSet) -> None:
        sink = self.sink
        scalars = {f"clean/{s}": record["clean"][s] for s in ("accuracy", "confidence", "nll", "ece")}
        scalars.update({f"corrupted/{s}": value for s, value in record["corrupted"].items()})
        for name, stats in record["corruptions"].items():
            scalars[f"accuracy/{name}"], scalars[f"flip_rate/{name}"] = stats["accuracy"], stats["flip_rate"]
            if "cam_shift" in stats:
                scalars[f"cam_shift/{name}"] = stats["cam_shift"]
        scalars.update(mce=record["mce"], relative_mce=record["relative_mce"])
        if "cam_shift" in record:
            scalars["corrupted/cam_shift"] = record["cam_shift"]
        if "fgsm" in record:
            scalars.update({f"fgsm/accuracy@{eps_label(e)}": a for e, a in zip(self.epsilons, record["fgsm"]["accuracy"])})
        if "flip" in record:
            scalars.update({"flip/steps_mean": record["flip"]["steps_mean"], "flip/never_fraction": record["flip"]["never_fraction"]})
        sink.scalars({key: value for key, value in scalars.items() if value is not None}, epoch)

        corruptions, levels = list(record["corruptions"]), sorted({s for _, s in self._rows})
        heat = np.full((len(corruptions), len(levels)), np.nan)
        for r, (name, severity) in enumerate(self._rows, start=1):
            heat[corruptions.index(name), levels.index(severity)] = v["accuracy"][r]
        sink.image("heatmap", table_heatmap_image(heat, corruptions, [f"s{s}" for s in levels]), epoch, artifact=True)
        sink.image("examples", self._examples_image(v, names), epoch, artifact=True)

        sink.npz(
            epoch, "table",
            corruption=np.array(["clean"] + [n for n, _ in self._rows]),
            severity=np.array([0] + [s for _, s in self._rows]),
            **{s: v[s] for s in ("accuracy", "confidence", "nll", "ece", "flip_rate", "per_class_accuracy")},
            pred=v["pred"].astype(np.int64), confidences=v["confidences"].astype(np.float32),
            labels=probe.labels, ids=probe.ids, class_names=np.array(names),
            **({"cam_shift": v["cam_shift"].astype(np.float32)} if "cam_shift" in v else {}),
        )
        if "fgsm" in record or "flip" in record:
            adversarial = {"epsilons": np.array(self.epsilons), "fgsm_accuracy": v.get("fgsm_accuracy", np.zeros(0))}
            if "steps" in v:
                adversarial.update(steps=v["steps"].astype(np.int64), max_steps=np.array(self.flip_max_steps))
            sink.npz(epoch, "adversarial", **adversarial)
        sink.record("metrics", record)
        sink.json("summary.json", summary_from_record(record))

    def _example_tiles(self, inputs: Tensor, n: int) -> tuple[list[int], list[int], np.ndarray, list[str]]:
        """What the example grid shows, fixed for the run: the blocks of ``inputs`` (clean, then each
        corruption at its highest selected severity), the example images, their uint8 tiles and the titles."""
        columns = [0]
        for r, (name, _) in enumerate(self._rows, start=1):
            if r == len(self._rows) or self._rows[r][0] != name:
                columns.append(r)
        idx = self.example_indices(self.n_examples)
        chosen = torch.tensor([c * n + i for c in columns for i in idx], device=inputs.device)
        flat = to_uint8(upscale(self.norm.denormalize(inputs.index_select(0, chosen).float()), 64))
        titles = ["clean"] + [
            name if corruption_spec(name).severities == 1 else f"{name}\ns{severity}"
            for name, severity in (self._rows[c - 1] for c in columns[1:])
        ]
        return columns, idx, flat.reshape(len(columns), len(idx), *flat.shape[1:]), titles

    def _examples_image(self, v: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
        """The example grid of this run: cached tiles captioned with this run's predictions and confidences."""
        columns, idx, tiles, titles = self._examples
        pred, conf = v["pred"][columns][:, idx].astype(int), v["confidences"][columns][:, idx]
        captions = [[f"{names[p][:10]}\n{c:.2f}" for p, c in zip(prow, crow)] for prow, crow in zip(pred, conf)]
        labels = self.probe.labels[idx].numpy()
        return example_grid_image(tiles, titles, captions, pred == labels[None])
