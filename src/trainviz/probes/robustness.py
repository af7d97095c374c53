"""The robustness probe (torch, no Lightning): how a model copes with corrupted and adversarial inputs, as one
:class:`~trainviz.probes.robustness_result.RobustnessResult`.

The probes of Zhang's encoder-decoder paper (Xiaohan Zhang, "Visualization of encoder-decoder structure of Deep
Convolutional Neural Network", section 5.3: grey, blurred, channel-shuffled and salt-and-pepper images, their
predictions and confidences against the clean ones, and the shift of the class activation maps) with the
ImageNet-C corruptions of Hendrycks & Dietterich 2019 with the CIFAR-10-C, Tiny-ImageNet-C or ImageNet-C
parameters by image size (:mod:`trainviz.ops.corruptions`)
and their corruption errors; FGSM, and the gradient ascent of Fleuret's EE-559 lecture "Under the hood" that
pushes an image up the loss until its class changes: the steps to flip of every probe image, and on a few images
the whole trajectory of predicted classes with the lecture's control, random points on the sphere of radius
``2 ||x - x_adv||`` (:mod:`trainviz.ops.adversarial`). Beside FGSM, every few runs, L-inf PGD (Madry et al.
2018) at the same radii.

Here: the suite's rows (:func:`suite`), which apply to the data (:func:`applicable`), the probe set corrupted
once per row (:class:`CorruptionCache`), a reference run (:func:`load_reference`), what fits a time budget
(:func:`plan_parts`) and one run (:func:`compute`).

Example:
    >>> import torch
    >>> from trainviz.core.probeset import ProbeSet
    >>> from trainviz.data import Normalization
    >>> from trainviz.models import DemoClassifier
    >>> probe = ProbeSet(images=torch.rand(8, 3, 32, 32), labels=torch.arange(8) % 2, ids=torch.arange(8))
    >>> _, _, rows = suite(["grayscale", "contrast"], [1, 3])
    >>> config = RobustnessConfig(Normalization.identity(3), epsilons=(4 / 255,), flip_max_steps=2)
    >>> inputs, _ = CorruptionCache().inputs(probe, rows, config.norm, seed=0, source=probe)
    >>> result = compute(DemoClassifier(num_classes=2).eval(), probe, inputs, Plan(rows), config, epoch=0)
    >>> [(row.corruption, row.severity) for row in result.table], sorted(result.corruptions)
    ([('grayscale', 1), ('contrast', 1), ('contrast', 3)], ['contrast', 'grayscale'])
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainviz.core.common import class_names
from trainviz.core.probeset import ProbeSet
from trainviz.core.transfer import to_cpu
from trainviz.data.base import Normalization
from trainviz.ops.adversarial import (
    PGD_STEP_FACTOR,
    adversarial_trajectory,
    fgsm_accuracy,
    pgd_accuracy,
    random_direction_flips,
    steps_to_flip,
)
from trainviz.ops.cam import grad_cam
from trainviz.ops.corruptions import SEED_PROBES, corrupt, corruption_spec, list_corruptions, resolve_param_set
from trainviz.ops.localization import map_correlation
from trainviz.ops.metrics import per_class_accuracy
from trainviz.ops.predict import predict_logits
from trainviz.ops.robustness import (
    accuracy,
    calibration_bins,
    corruption_error,
    expected_calibration_error,
    flip_rate,
    mean_corruption_error,
    nll,
    relative_corruption_error,
)
from trainviz.probes.robustness_result import (
    AGGREGATES,
    DIRECTIONS_PER_IMAGE,
    STATS,
    CorruptionStats,
    Examples,
    Fgsm,
    Flip,
    Means,
    PerImage,
    Pgd,
    Reliability,
    RobustnessResult,
    Row,
    Schedule,
    Trajectories,
    eps_label,
)
from trainviz.render.images import to_uint8, upscale

__all__ = [
    "CorruptedRows",
    "CorruptionCache",
    "Plan",
    "Reference",
    "RobustnessConfig",
    "applicable",
    "check_epsilons",
    "compute",
    "core_seconds",
    "corruption_errors",
    "load_reference",
    "pgd_rows",
    "plan_parts",
    "suite",
    "trajectory_rows",
]

CAM_COST = 1.3  # a Grad-CAM pass costs about 1.2-1.4x a plain forward pass

Rows = list[tuple[str, int]]


# the suite -----------------------------------------------------------------------------------------


def suite(corruptions: Sequence[str], severities: Sequence[int]) -> tuple[list[str], list[int], Rows]:
    """The corruption names, the sorted severities and the table's rows ``(name, severity)``: single-level
    corruptions (Zhang's probes) at their one level, the others at each of ``severities`` they have.

    Raises:
        ValueError: unknown or repeated names, severities that are not distinct ints in 1..5, or a corruption
            with none of the severities.
    """
    names, valid = list(corruptions), list_corruptions()
    unknown = [n for n in names if n not in valid]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"Expected `corruptions` to be distinct names from {', '.join(valid)}; got {names!r}"
            + (f" (unknown: {', '.join(map(repr, unknown))})." if unknown else ".")
        )
    sevs = list(severities)
    if not sevs or len(set(sevs)) != len(sevs) or any(isinstance(s, bool) or s not in range(1, 6) for s in sevs):
        raise ValueError(f"Expected `severities` to be distinct ints in 1..5, got {severities!r}.")
    rows: Rows = []
    for name in names:
        levels = corruption_spec(name).severities
        picked = [1] if levels == 1 else [s for s in sorted(sevs) if s <= levels]
        if not picked:
            raise ValueError(f"Corruption {name!r} has {levels} severities; none of `severities` {sorted(sevs)}.")
        rows += [(name, s) for s in picked]
    return names, sorted(sevs), rows


def check_epsilons(epsilons: Sequence[float]) -> list[float]:
    """FGSM step sizes as floats.

    Raises:
        ValueError: a value is not a finite number >= 0, or two agree in their first 4 decimals (their metric
            names, ``fgsm_accuracy@<eps>``, would collide).
    """
    eps = list(epsilons)
    if any(isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e < math.inf for e in eps):
        raise ValueError(f"Expected `epsilons` to be finite numbers >= 0, got {epsilons!r}.")
    if len({eps_label(e) for e in eps}) != len(eps):
        raise ValueError(f"Expected `epsilons` to differ in their first 4 decimals, got {eps!r}.")
    return [float(e) for e in eps]


def applicable(pixels: Tensor, rows: Rows, seed: int, param_set: str = "auto") -> tuple[Rows, dict[str, str]]:
    """The rows whose corruption runs on these pixel images (with ``param_set``) and changes them, and why the
    others do not.

    Shape: pixels ``(n, C, H, W)`` in [0, 1] (a few probe images are enough).
    """
    active: Rows = []
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(n for n, _ in rows):
        mine = [(n, s) for n, s in rows if n == name]
        try:
            changed = any(
                not torch.equal(corrupt(pixels, n, s, seed=seed, param_set=param_set), pixels) for n, s in mine
            )
        except (ValueError, RuntimeError) as err:
            skipped[name] = str(err)
            continue
        if changed:
            active += mine
        else:
            skipped[name] = "leaves these images unchanged"
    return active, skipped


@dataclass(frozen=True)
class Reference:
    """A reference run's clean error and error of each row, read from its ``summary.json``."""

    path: str
    clean_error: float
    errors: dict[tuple[str, int], float]


def load_reference(path: str | os.PathLike, rows: Rows, param_set: str | None = None) -> Reference:
    """The reference errors of ``rows`` from another run's ``summary.json``.

    Raises:
        ValueError: the file cannot be read, it lacks a metric of ``rows``, or its corruptions were made with
            another parameter set than ``param_set`` (errors under other corruption strengths do not normalise
            these; a reference written before the sets existed, without ``protocol.corruption_params``, is taken
            as it is).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"Cannot read the `reference` summary {path!r}: {err}") from err
    keys = {row: f"corruption_accuracy/{row[0]}/s{row[1]}" for row in rows}
    missing = [k for k in ["clean_accuracy", *keys.values()] if not isinstance(summary.get(k), (int, float))]
    if missing:
        raise ValueError(
            f"The `reference` summary {path!r} lacks {len(missing)} metric(s) this run needs, e.g. "
            f"{', '.join(missing[:4])}: make the reference with the same corruptions and severities."
        )
    theirs = (summary.get("protocol") or {}).get("corruption_params")
    if param_set is not None and theirs is not None and theirs != param_set:
        raise ValueError(
            f"The `reference` summary {path!r} was corrupted with the {theirs!r} parameters and this run uses "
            f"{param_set!r}: make the reference at the same image size, or force one set on both with "
            "`corruption_params=`."
        )
    return Reference(path, 1.0 - summary["clean_accuracy"], {row: 1.0 - summary[key] for row, key in keys.items()})


class CorruptedRows:
    """The model inputs of a run, block by block: the clean probe images (block 0, on the device) and each row's
    corrupted copy (block ``r``), served a batch at a time (:meth:`__getitem__` with a slice), never
    concatenated. A cached block is uint8 pixels ``round(255 x)`` on the host; a batch is moved to the device,
    scaled by 1/255 and normalised there, so the device holds one batch of corrupted images at a time. A float
    block (from a tensor, :meth:`of_tensor`) is served as it is.

    Shape: ``((1 + R) N, C, H, W)`` (``shape``, ``len``), on ``device`` in ``dtype``.
    """

    def __init__(self, clean: Tensor, blocks: Sequence[Tensor], norm: Normalization) -> None:
        self.clean, self.blocks, self.norm = clean, list(blocks), norm
        self.n = clean.shape[0]
        self.device, self.dtype = clean.device, clean.dtype
        self.shape = torch.Size((self.n * (1 + len(self.blocks)), *clean.shape[1:]))

    @classmethod
    def of_tensor(cls, inputs: Tensor, n: int, norm: Normalization) -> CorruptedRows:
        """Blocks of ``n`` images of a concatenated ``((1 + R) N, C, H, W)`` tensor (model inputs)."""
        return cls(inputs[:n], list(inputs[n:].split(n)) if inputs.shape[0] > n else [], norm)

    def __len__(self) -> int:
        return self.shape[0]

    def block(self, r: int, a: int = 0, b: int | None = None) -> Tensor:
        """Images ``a:b`` of block ``r`` as model inputs on the device."""
        if r == 0:
            return self.clean[a:b]
        part = self.blocks[r - 1][a:b]
        if part.dtype != torch.uint8:
            return part.to(self.device)
        pixels = part.to(self.device, non_blocking=True).to(self.dtype) / 255
        return self.norm.normalize(pixels)

    def __getitem__(self, index: slice) -> Tensor:
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("CorruptedRows serves contiguous slices only")
        parts = []
        for r in range(start // self.n, (max(stop, start + 1) - 1) // self.n + 1):
            a, b = max(start - r * self.n, 0), min(stop - r * self.n, self.n)
            if b > a:
                parts.append(self.block(r, a, b))
        return torch.cat(parts) if len(parts) != 1 else parts[0]

    def index_select(self, dim: int, index: Tensor) -> Tensor:
        """The images at flat ``index`` (``dim`` 0), as model inputs on the device."""
        if dim != 0:
            raise ValueError("CorruptedRows selects along dimension 0 only")
        flat = index.tolist()
        return torch.cat([self.block(i // self.n, i % self.n, i % self.n + 1) for i in flat])

    def tensor(self) -> Tensor:
        """Every block concatenated on the device, ``((1 + R) N, C, H, W)``: the whole suite in memory at once
        (for inspection and tests; a run streams)."""
        return self[0 : len(self)]


class CorruptionCache:
    """Each corrupted row of the probe set, built when the row first runs and kept as uint8 pixels on the host
    (CPU), keyed by the probe set's fingerprint, seed, device, dtype, parameter set, corruption, severity and
    parameters: each run then costs forward passes only, and the curves measure the model, not fresh noise (the
    same noise at every epoch). The device holds one batch of corrupted images at a time (:class:`CorruptedRows`).
    It holds ``rows x probe_size`` images of ``C H W`` bytes: 3 KB per 3x32x32 image, 150 KB per 3x224x224
    (82 rows x 256 images at 224 px: 3.2 GB of host memory, where float32 on the device took 12.6 GB).

    The corrupted pixels are rounded to 8 bits, as the published ImageNet-C and CIFAR-10-C images (saved as
    JPEG or PNG) are: at most 1/510 per pixel from the float corruption. The clean block is the probe set as is.
    """

    def __init__(self) -> None:
        self._blocks: dict[tuple, Tensor] = {}
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        """Forget every block (the probe set changed)."""
        self._blocks, self._fingerprint = {}, None

    def inputs(
        self,
        probe: ProbeSet,
        rows: Rows,
        norm: Normalization,
        seed: int,
        source: ProbeSet,
        progress: Callable[[int, int | None, str], None] | None = None,
        param_set: str = "auto",
    ) -> tuple[CorruptedRows, float | None]:
        """The clean probe images (block 0) and those of each row (block r), and the seconds spent corrupting
        (``None`` when every row was cached). ``source`` is the probe set as drawn, whose fingerprint (taken
        once) keys the cache. ``progress(done, total, note)`` (:data:`trainviz.core.progress.Reporter`) is told
        before each missing row is corrupted and once when all are. ``param_set``: the corruptions' parameters
        (a name of :data:`~trainviz.ops.corruptions.PARAM_SETS`, or ``"auto"`` by the images' shorter side).

        Shape: ``((1 + R) N, C, H, W)``, served on the probe's device and dtype.
        """
        if self._fingerprint is None:
            self._fingerprint = source.fingerprint()
        param_set = resolve_param_set(param_set, *probe.images.shape[-2:])
        where = (self._fingerprint, seed, str(probe.images.device), str(probe.images.dtype), param_set)
        params = {row: corruption_spec(row[0]).params_of(row[1], param_set) for row in rows}
        keys = {row: (*where, *row, repr(params[row])) for row in rows}
        self._blocks = {key: value for key, value in self._blocks.items() if key[:5] == where}  # device or seed changed
        missing = [row for row in rows if keys[row] not in self._blocks]
        seconds = None
        if missing:
            start = time.perf_counter()
            pixels = norm.denormalize(probe.images)
            for done, (name, severity) in enumerate(missing):
                if progress is not None:
                    progress(done, len(missing), f"corrupting {name} {severity}")
                out = corrupt(pixels, name, severity, seed=seed, param_set=param_set)
                self._blocks[keys[(name, severity)]] = (out.float() * 255).round_().to("cpu", torch.uint8)
                del out
            if progress is not None:
                progress(len(missing), len(missing), "corrupted rows cached")
            seconds = time.perf_counter() - start
        return CorruptedRows(probe.images, [self._blocks[keys[row]] for row in rows], norm), seconds


# the budget ----------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What one run contains: the rows of the table, whether FGSM and the gradient ascent (steps-to-flip and the
    trajectories, one part) run, whose turn it is next among the rotating corruptions, what was left out (for
    the budget log) and whether PGD runs (off unless planned: it is due every few runs)."""

    rows: Rows
    fgsm: bool = True
    flip: bool = True
    rotation: int = 0
    skipped: list[str] = field(default_factory=list)
    pgd: bool = False


def core_seconds(active: Rows, costs: dict[str, float]) -> float:
    """Seconds of the part that always runs: the clean probe set and Zhang's probes (0 before the first run)."""
    return costs.get("row", 0.0) * (1 + sum(1 for name, _ in active if name in SEED_PROBES))


def trajectory_rows(images: int, probe_size: int, steps: int, samples: int) -> float:
    """The cost of the trajectories in row forwards (one row: a forward pass of the ``probe_size`` probe images):
    ``images`` images, ``steps`` gradient steps (a forward and a backward, about 3 forwards) and a last forward
    each, and ``samples`` random-direction forwards for each (at most all of them flip).

    Example:
        >>> trajectory_rows(8, 256, 20, 1000)
        33.15625
    """
    if images <= 0 or steps <= 0:
        return 0.0
    return images / max(1, probe_size) * (3 * steps + 1 + samples)


def pgd_rows(epsilons: int, steps: int) -> float:
    """The cost of PGD in row forwards: at each of ``epsilons`` radii, ``steps`` forward and backward passes
    (about 3 forwards each) and a last forward, over the whole probe set.

    Example:
        >>> pgd_rows(4, 10)
        124.0
    """
    return float(max(0, epsilons) * (3 * max(0, steps) + 1)) if steps > 0 else 0.0


def plan_parts(
    active: Rows,
    costs: dict[str, float],
    seconds: float,
    rotation: int,
    *,
    epsilons: int,
    flip_max_steps: int,
    cam_shift: bool,
    trajectory_rows: float = 0.0,
    pgd_rows: float = 0.0,
) -> Plan:
    """Which parts fit ``seconds``: Zhang's probes always, then FGSM (``epsilons`` step sizes), PGD when it is due
    (``pgd_rows`` > 0: its cost in rows, :func:`pgd_rows`, until measured as ``"pgd"``), the other
    corruptions in turn (whole corruptions, all their severities, resuming at ``rotation``) and the gradient
    ascent (steps-to-flip and the trajectories with their random directions, one part: the trajectories extend
    steps-to-flip), as far as the time goes. ``costs`` holds the seconds of one row's forward (``"row"``, needed),
    of FGSM, of steps-to-flip and of the trajectories (``"fgsm"``, ``"flip"``, ``"trajectory"``; estimated from a
    row until measured: ``trajectory_rows`` rows, see :func:`trajectory_rows`, for the trajectories).

    Example:
        >>> active = [("grayscale", 1), ("fog", 1), ("fog", 2), ("contrast", 1)]
        >>> plan = plan_parts(active, {"row": 1.0}, 4.5, 0, epsilons=0, flip_max_steps=0, cam_shift=False)
        >>> plan.rows, plan.rotation, plan.skipped
        ([('grayscale', 1), ('fog', 1), ('fog', 2)], 1, ['1 of 2 corruptions (contrast)'])
    """
    fgsm, flip = epsilons > 0, flip_max_steps > 0 or trajectory_rows > 0
    row = costs["row"] * (CAM_COST if cam_shift else 1.0)
    rows = [r for r in active if r[0] in SEED_PROBES]
    left = seconds - row * (1 + len(rows))
    skipped = []
    if fgsm:
        cost = costs.get("fgsm", row * (3 + epsilons))
        fgsm = cost <= left
        left -= cost if fgsm else 0.0
        skipped += [] if fgsm else [f"fgsm ({cost:.2f} s)"]
    pgd = pgd_rows > 0
    if pgd:
        cost = costs.get("pgd", row * pgd_rows)
        pgd = cost <= left
        left -= cost if pgd else 0.0
        skipped += [] if pgd else [f"pgd ({cost:.2f} s)"]
    others = list(dict.fromkeys(name for name, _ in active if name not in SEED_PROBES))
    turn = [others[(rotation + i) % len(others)] for i in range(len(others))]
    taken = 0
    for name in turn:
        cost = row * sum(1 for n, _ in active if n == name)
        if cost > left:
            break
        left -= cost
        taken += 1
    rows += [r for r in active if r[0] in set(turn[:taken])]
    if taken < len(turn):
        more = ", ..." if len(turn) - taken > 3 else ""
        skipped.append(f"{len(turn) - taken} of {len(turn)} corruptions ({', '.join(turn[taken:][:3])}{more})")
    if flip:
        cost = costs.get("flip", row * 3 * flip_max_steps) if flip_max_steps > 0 else 0.0
        cost += costs.get("trajectory", row * trajectory_rows) if trajectory_rows > 0 else 0.0
        flip = cost <= left
        what = "steps-to-flip and trajectories" if trajectory_rows > 0 else "steps-to-flip"
        skipped += [] if flip else [f"{what} ({cost:.2f} s)"]
    order = {r: i for i, r in enumerate(active)}
    turned = (rotation + taken) % max(1, len(others))
    return Plan(sorted(rows, key=order.__getitem__), fgsm, flip, turned, skipped, pgd)


# one run ------------------------------------------------------------------------------------------


@dataclass
class RobustnessConfig:
    """How a run is made. ``cam_layers`` (resolved layers, ``None`` for no CAM shift) and ``cam_reshape`` are
    those of the Grad-CAM; ``reference`` normalises the corruption errors. The trajectories (``trajectory_images``
    images, ``trajectory_steps`` steps of ``flip_step_size``; 0 for none) sample ``random_directions`` points at
    ``radius_factor ||x - x_adv||``, each image's from a generator seeded with ``seed`` and its probe id (so neither
    the batch nor the number of processes changes them). ``display_channels``: the channels the
    example grid shows (``None``: all, for 1 or 3 channels). ``param_set`` names the corruptions' parameters, for the
    record. PGD (when planned) takes ``pgd_steps`` steps (0: off) of ``pgd_step_factor * eps / pgd_steps`` at each
    of ``epsilons``, its random start drawn per image from ``seed`` and the probe id; ``pgd_every`` (its cadence in
    runs) is recorded."""

    norm: Normalization
    epsilons: tuple[float, ...] = ()
    flip_step_size: float = 0.5
    flip_max_steps: int = 0
    cam_layers: dict[str, torch.nn.Module] | None = None
    cam_reshape: Callable[[Tensor], Tensor] | None = None
    batch_size: int = 256
    n_examples: int = 6
    reference: Reference | None = None
    trajectory_images: int = 0
    trajectory_steps: int = 0
    random_directions: int = 0
    radius_factor: float = 2.0
    seed: int = 0
    display_channels: tuple[int, ...] | None = None
    param_set: str | None = None  # the corruptions' parameter set, recorded ("cifar10-c", ...)
    pgd_steps: int = 0
    pgd_every: int = 1
    pgd_step_factor: float = PGD_STEP_FACTOR


def compute(
    model: torch.nn.Module,
    probe: ProbeSet,
    inputs: CorruptedRows | Tensor,
    plan: Plan,
    config: RobustnessConfig,
    epoch: int,
    examples: list[int] | None = None,
    skipped: dict[str, str] | None = None,
    schedule: Schedule | None = None,
    trajectory: list[int] | None = None,
) -> RobustnessResult:
    """One run: the metrics of every row of ``plan`` (accuracy, confidence, NLL, ECE, flip rate, per-class
    accuracy, with ``cam_layers`` the CAM shift), the corruption errors, FGSM, PGD and steps-to-flip when planned,
    the example tiles and what each part cost (``result.seconds``).

    Args:
        model: returns logits ``(N, K)``; run inside trainviz's probe guard (eval mode, gradients on).
        probe: the probe set on the model's device.
        inputs: :meth:`CorruptionCache.inputs` of ``plan.rows`` (served a batch at a time), or the same blocks
            concatenated as one tensor.
        plan: the rows and parts to run.
        config: how.
        epoch: recorded with the result.
        examples: probe indices of the example grid (default: the first ``n_examples``).
        skipped: corruptions left out at setup and why (recorded).
        schedule: what ran under a budget (recorded).
        trajectory: probe indices of the trajectories (default: the first ``config.trajectory_images``).

    Shape: inputs ``((1 + R) N, C, H, W)``.
    """
    n, rows = len(probe), plan.rows
    if isinstance(inputs, Tensor):
        inputs = CorruptedRows.of_tensor(inputs, n, config.norm)
    examples = list(range(min(config.n_examples, n))) if examples is None else examples
    tiles = _example_tiles(inputs, n, rows, examples, config.norm, config.display_channels)
    start = time.perf_counter()
    logits, shift = _forward(model, inputs, probe.labels, config)
    seconds = {"row": (time.perf_counter() - start) / (1 + len(rows)) / (CAM_COST if config.cam_layers else 1.0)}
    k = logits.shape[-1]
    values = _row_metrics(logits.view(1 + len(rows), n, k), probe.labels, k)
    if shift is not None:
        values["cam_shift"] = shift.view(len(rows), n)
    values.update(_adversarial(model, probe, values["pred"][0], config, plan, seconds))
    if config.trajectory_images > 0 and config.trajectory_steps > 0 and plan.flip:
        chosen = list(range(min(config.trajectory_images, n))) if trajectory is None else trajectory
        values.update(_trajectories(model, probe, values["pred"][0], config, chosen, seconds))
    values.update(labels=probe.labels, ids=probe.ids, class_counts=torch.bincount(probe.labels, minlength=k))
    host = to_cpu(values)
    result = _result(epoch, host, rows, config, class_names(probe.class_names, k))
    result.examples, result.seconds = tiles, seconds
    result.skipped, result.schedule = dict(skipped or {}), schedule
    return result


def _example_tiles(
    inputs: CorruptedRows,
    n: int,
    rows: Rows,
    idx: list[int],
    norm: Normalization,
    channels: tuple[int, ...] | None = None,
) -> Examples:
    """The example grid's tiles: the probe images ``idx``, clean, then each corruption at its highest severity."""
    columns = [0] + [r for r, (name, _) in enumerate(rows, start=1) if r == len(rows) or rows[r][0] != name]
    chosen = torch.tensor([c * n + i for c in columns for i in idx], device=inputs.device)
    pixels = norm.denormalize(inputs.index_select(0, chosen).float())
    flat = to_uint8(upscale(pixels if channels is None else pixels[:, list(channels)], 64))
    titles = ["clean"] + [
        name if corruption_spec(name).severities == 1 else f"{name}\ns{severity}"
        for name, severity in (rows[c - 1] for c in columns[1:])
    ]
    return Examples(columns, idx, flat.reshape(len(columns), len(idx), *flat.shape[1:]), titles)


def _forward(
    model: torch.nn.Module, inputs: CorruptedRows, labels: Tensor, config: RobustnessConfig
) -> tuple[Tensor, Tensor | None]:
    """Logits of every block and, with ``cam_layers``, the correlation of each corrupted image's Grad-CAM (true
    class) with its clean copy's, from the same forward passes, batch after batch.

    Shape: inputs ``((1 + R) N, C, H, W)`` -> logits ``((1 + R) N, K)``, shift ``(R N,)`` or ``None``.
    """
    if not config.cam_layers:
        size = config.batch_size
        batches = [predict_logits(model, inputs[a : a + size], size) for a in range(0, len(inputs), size)]
        return torch.cat(batches).float(), None
    n, size = labels.shape[0], config.batch_size
    targets = labels.repeat(inputs.shape[0] // n)
    logits, shifts, clean = [], [], []
    for a in range(0, inputs.shape[0], size):
        b = min(a + size, inputs.shape[0])
        cam = grad_cam(model, inputs[a:b], config.cam_layers, targets[a:b], reshape=config.cam_reshape)
        logits.append(cam.logits)
        split = max(0, min(n, b) - a)  # rows of this batch in the clean block, which comes first
        clean.append(cam.aggregate[:split])
        if split < b - a:
            clean = [torch.cat(clean)]
            rows = torch.arange(a + split, b, device=inputs.device) % n
            shifts.append(map_correlation(cam.aggregate[split:], clean[0][rows]))
    return torch.cat(logits).float(), torch.cat(shifts)


def _row_metrics(logits: Tensor, labels: Tensor, k: int) -> dict[str, Tensor]:
    """Metrics of each block of logits ``(1 + R, N, K)`` on the device, stacked along the rows, and the
    reliability bins of the clean block and of all corrupted ones."""
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
    correct = pred == labels
    parts = {"clean": (confidences[0], correct[0]), "corrupted": (confidences[1:], correct[1:])}
    bins = {
        f"{name}_{part}": value
        for name, (conf, right) in parts.items()
        for part, value in zip(("confidence", "accuracy", "count"), calibration_bins(conf, right))
    }
    return {
        "accuracy": acc,
        "confidence": confidences.double().mean(1),
        "nll": nl.double(),
        "ece": ece,
        "flip_rate": flips,
        "per_class_accuracy": per_class,
        "pred": pred,
        "confidences": confidences,
        **bins,
    }


def _adversarial(
    model: torch.nn.Module,
    probe: ProbeSet,
    clean_pred: Tensor,
    config: RobustnessConfig,
    plan: Plan,
    seconds: dict[str, float],
) -> dict[str, Tensor]:
    """FGSM and PGD accuracy per ``eps`` and steps to flip per image (each when planned and configured), batch by
    batch, on the device; their costs go to ``seconds``. PGD's random start comes from ``config.seed`` and each
    image's probe id, so no batch size changes it."""
    pixels, out, norm = config.norm.denormalize(probe.images), {}, config.norm
    batches = list(probe.batches(config.batch_size))
    start = time.perf_counter()
    if config.epsilons and plan.fgsm:
        parts = [
            fgsm_accuracy(model, pixels[a:b], probe.labels[a:b], config.epsilons, preprocess=norm.normalize) * (b - a)
            for a, b in batches
        ]
        out["fgsm_accuracy"] = torch.stack(parts).sum(0) / len(probe)
        seconds["fgsm"] = time.perf_counter() - start
    start = time.perf_counter()
    if config.epsilons and config.pgd_steps > 0 and plan.pgd:
        parts = [
            pgd_accuracy(
                model,
                pixels[a:b],
                probe.labels[a:b],
                config.epsilons,
                steps=config.pgd_steps,
                step_factor=config.pgd_step_factor,
                ids=probe.ids[a:b],
                seed=config.seed,
                preprocess=norm.normalize,
            )
            * (b - a)
            for a, b in batches
        ]
        out["pgd_accuracy"] = torch.stack(parts).sum(0) / len(probe)
        seconds["pgd"] = time.perf_counter() - start
    start = time.perf_counter()
    if config.flip_max_steps > 0 and plan.flip:
        out["steps"] = torch.cat(
            [
                steps_to_flip(
                    model,
                    pixels[a:b],
                    clean_pred[a:b],
                    step_size=config.flip_step_size,
                    max_steps=config.flip_max_steps,
                    preprocess=norm.normalize,
                )
                for a, b in batches
            ]
        )
        seconds["flip"] = time.perf_counter() - start
    return out


def _trajectories(
    model: torch.nn.Module,
    probe: ProbeSet,
    clean_pred: Tensor,
    config: RobustnessConfig,
    chosen: list[int],
    seconds: dict[str, float],
) -> dict[str, Tensor]:
    """The trajectories of the probe images ``chosen`` (target: the clean prediction), the distance to each first
    adversarial image and, for the images that flipped, the random-direction flip fraction (NaN elsewhere), on
    the device; their cost goes to ``seconds["trajectory"]``."""
    start = time.perf_counter()
    idx = torch.tensor(chosen, dtype=torch.long, device=probe.images.device)
    x, target = config.norm.denormalize(probe.images.index_select(0, idx)), clean_pred.index_select(0, idx)
    path = adversarial_trajectory(
        model,
        x,
        target,
        step_size=config.flip_step_size,
        max_steps=config.trajectory_steps,
        preprocess=config.norm.normalize,
    )
    flipped = path.flip_step >= 0
    nan = torch.full((len(chosen),), math.nan, dtype=torch.float64, device=x.device)
    distance = torch.where(flipped, (path.x_adv - x).flatten(1).norm(dim=1).double(), nan)
    random = nan
    which = flipped.nonzero().squeeze(1)  # one synchronisation per run
    if config.random_directions > 0 and which.numel() > 0:
        fractions = random_direction_flips(
            model,
            x.index_select(0, which),
            path.x_adv.index_select(0, which),
            target.index_select(0, which),
            samples=config.random_directions,
            radius_factor=config.radius_factor,
            ids=probe.ids.index_select(0, idx).index_select(0, which),
            seed=config.seed,
            preprocess=config.norm.normalize,
            batch_size=config.batch_size,
        )
        random = nan.index_copy(0, which, fractions.double())
    seconds["trajectory"] = time.perf_counter() - start
    return {
        "trajectory_index": idx,
        "trajectory_predictions": path.predictions,
        "trajectory_flip": path.flip_step,
        "trajectory_distance": distance,
        "trajectory_random": random,
    }


def _nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Mean without the NaNs (flat CAMs); NaN, silently, where everything is NaN (or nothing is)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def corruption_errors(
    accuracies: Sequence[float], rows: Rows, reference: Reference | None = None
) -> tuple[dict[str, tuple[float, float]], float, float]:
    """Hendrycks & Dietterich's corruption error ``CE`` and relative ``CE`` of each corruption, and their means
    (mCE, relative mCE), from the accuracy of the clean probe set (first) and of each row. Without a
    ``reference`` the reference error is 1 at every severity and 0 on clean images.

    Example:
        >>> ces, mce, _ = corruption_errors([0.8, 0.4, 0.7, 0.5], [("grayscale", 1), ("fog", 1), ("fog", 3)])
        >>> {name: round(ce, 3) for name, (ce, _) in ces.items()}, round(mce, 3)
        ({'grayscale': 0.6, 'fog': 0.4}, 0.5)
    """
    names = list(dict.fromkeys(name for name, _ in rows))
    if not names:
        return {}, math.nan, math.nan
    levels = sorted({s for _, s in rows})
    err = torch.full((len(names), len(levels)), math.nan, dtype=torch.float64)
    ref = err.clone()
    for (name, severity), acc in zip(rows, accuracies[1:]):
        i, j = names.index(name), levels.index(severity)
        err[i, j] = 1.0 - acc
        ref[i, j] = 1.0 if reference is None else reference.errors[(name, severity)]
    clean, ref_clean = 1.0 - accuracies[0], 0.0 if reference is None else reference.clean_error
    ce, rce = corruption_error(err, ref), relative_corruption_error(err, clean, ref, ref_clean)  # type: ignore[arg-type]
    mce = mean_corruption_error(err, ref)
    relative = mean_corruption_error(err, ref, clean_err=clean, ref_clean_err=ref_clean)
    per = {name: (float(a), float(b)) for name, a, b in zip(names, ce.tolist(), rce.tolist())}
    return per, float(mce), float(relative)


def _result(
    epoch: int, v: dict[str, np.ndarray], rows: Rows, config: RobustnessConfig, names: list[str]
) -> RobustnessResult:
    """The typed result of one run from its host values."""
    shift = _nanmean(v["cam_shift"], axis=1) if "cam_shift" in v else None

    def means(r: Any, flip: bool = True) -> dict[str, Any]:
        flips = float(np.mean(v["flip_rate"][r])) if flip else None
        return {s: float(np.mean(v[s][r])) for s in STATS} | {"flip_rate": flips}

    clean = Row(
        **means(0, flip=False), corruption="clean", severity=0, per_class_accuracy=v["per_class_accuracy"][0].tolist()
    )
    table = [
        Row(
            **means(r),
            corruption=name,
            severity=severity,
            per_class_accuracy=v["per_class_accuracy"][r].tolist(),
            cam_shift=None if shift is None else float(shift[r - 1]),
        )
        for r, (name, severity) in enumerate(rows, start=1)
    ]
    errors, mce, relative_mce = corruption_errors(v["accuracy"].tolist(), rows)  # the default reference, always
    normalized: tuple[dict[str, tuple[float, float]], float | None, float | None] = ({}, None, None)
    if config.reference is not None:  # and normalised by the reference run's errors
        normalized = corruption_errors(v["accuracy"].tolist(), rows, config.reference)
    corruptions = {}
    for name, (ce, rce) in errors.items():
        idx = [r for r, (n, _) in enumerate(rows, start=1) if n == name]
        cam = None if shift is None else float(_nanmean(shift[[r - 1 for r in idx]]))
        nce, nrce = normalized[0].get(name, (None, None))
        corruptions[name] = CorruptionStats(
            **means(idx), ce=ce, relative_ce=rce, cam_shift=cam, normalized_ce=nce, normalized_relative_ce=nrce
        )
    corrupted = Means(**{s: float(_nanmean(v[s][1:])) if len(rows) else math.nan for s in AGGREGATES})
    flip = None
    if "steps" in v:
        steps = v["steps"]
        flipped = steps[steps >= 0]
        mean, median = (float(flipped.mean()), float(np.median(flipped))) if flipped.size else (math.nan, math.nan)
        flip = Flip(
            config.flip_step_size,
            config.flip_max_steps,
            mean,
            median,
            int((steps < 0).sum()),
            float((steps < 0).mean()),
        )
    pgd = None
    if config.epsilons and config.pgd_steps > 0:
        pgd = Pgd(
            list(config.epsilons),
            v["pgd_accuracy"].tolist() if "pgd_accuracy" in v else [],
            config.pgd_steps,
            config.pgd_step_factor,
            "pgd_accuracy" in v,
            config.pgd_every,
            config.seed,
        )
    trajectory = None
    if "trajectory_predictions" in v:
        picked = v["trajectory_index"].astype(np.int64)
        trajectory = Trajectories(
            config.flip_step_size,
            config.trajectory_steps,
            config.random_directions,
            config.radius_factor,
            v["ids"].astype(np.int64)[picked].tolist(),
            v["labels"].astype(np.int64)[picked].tolist(),
            v["trajectory_predictions"].astype(np.int64).tolist(),
            v["trajectory_flip"].astype(np.int64).tolist(),
            v["trajectory_distance"].tolist(),
            v["trajectory_random"].tolist(),
            DIRECTIONS_PER_IMAGE if config.random_directions > 0 else None,
        )
    reliability = {
        part: Reliability(
            v[f"{part}_confidence"].tolist(),
            v[f"{part}_accuracy"].tolist(),
            v[f"{part}_count"].astype(np.int64).tolist(),
        )
        for part in ("clean", "corrupted")
    }
    images = PerImage(
        v["pred"].astype(np.int64),
        v["confidences"],
        v["labels"].astype(np.int64),
        v["ids"].astype(np.int64),
        None if shift is None else v["cam_shift"],
        v["steps"].astype(np.int64) if "steps" in v else None,
    )
    return RobustnessResult(
        epoch=epoch,
        class_names=names,
        clean=clean,
        table=table,
        corrupted=corrupted,
        corruptions=corruptions,
        mce=mce,
        relative_mce=relative_mce,
        reference=None if config.reference is None else config.reference.path,
        n=len(v["labels"]),
        class_counts=v["class_counts"].astype(np.int64).tolist(),
        cam_shift=None if shift is None else float(_nanmean(shift)),
        fgsm=Fgsm(list(config.epsilons), v["fgsm_accuracy"].tolist()) if "fgsm_accuracy" in v else None,
        flip=flip,
        pgd=pgd,
        reliability=reliability,
        trajectory=trajectory,
        images=images,
        corruption_params=config.param_set,
        normalized_mce=normalized[1],
        normalized_relative_mce=normalized[2],
    )
