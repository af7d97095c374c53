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

Here: which rows apply to the data (:func:`applicable`), the probe set corrupted once per row
(:class:`CorruptionCache`), a reference run (:func:`load_reference`) and the compute contract
(:mod:`trainviz.core.contract`) in :class:`RobustnessProbe`: :meth:`~RobustnessProbe.plan` (what fits a time
budget, :mod:`trainviz.probes.robustness_plan`), :meth:`~RobustnessProbe.compute` on a share of the probe set
(a :class:`RobustnessPartial`) and :meth:`~RobustnessProbe.merge` into the result one process computes.
:func:`compute` is one run in one process on given inputs.

Example:
    >>> import torch
    >>> from trainviz.core.contract import Credit, Share
    >>> from trainviz.core.probeset import ProbeSet
    >>> from trainviz.data import Normalization
    >>> from trainviz.models import DemoClassifier
    >>> probe = ProbeSet(images=torch.rand(8, 3, 32, 32), labels=torch.arange(8) % 2, ids=torch.arange(8))
    >>> options = RobustnessOptions(corruptions=["grayscale", "contrast"], severities=[1, 3], epsilons=[4 / 255],
    ...                             flip_max_steps=2, pgd_steps=0)
    >>> prober = RobustnessProbe.setup(probe, options, Normalization.identity(3))
    >>> model, plan = DemoClassifier(num_classes=2).eval(), prober.plan(Credit())
    >>> parts = [prober.compute(model, share, plan, prober.state()) for share in Share.split(probe, 2)]
    >>> result = prober.merge(parts, plan)
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
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainviz.core.common import class_names, example_indices
from trainviz.core.contract import Credit, Probe, Share
from trainviz.core.distributed import from_rank_zero
from trainviz.core.normalization import Normalization
from trainviz.core.probeset import ProbeSet
from trainviz.core.transfer import to_cpu, to_host
from trainviz.ops.adversarial import (
    PGD_STEP_FACTOR,
    adversarial_trajectory,
    fgsm_accuracy,
    pgd_accuracy,
    random_direction_flips,
    steps_to_flip,
)
from trainviz.ops.cam import grad_cam
from trainviz.ops.corruptions import corrupt, corruption_spec, resolve_param_set
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
    relative_corruption_error,
)
from trainviz.probes.robustness_plan import (
    CAM_COST,
    Plan,
    RobustnessHistory,
    RobustnessOptions,
    RobustnessPlan,
    Rows,
    check_epsilons,
    core_seconds,
    parts_seconds,
    pgd_rows,
    plan_parts,
    suite,
    trajectory_rows,
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
)
from trainviz.render.images import to_uint8, upscale

__all__ = [
    "CorruptedRows",
    "CorruptionCache",
    "Plan",
    "Reference",
    "RobustnessConfig",
    "RobustnessHistory",
    "RobustnessOptions",
    "RobustnessPartial",
    "RobustnessPlan",
    "RobustnessProbe",
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

    def part(self, start: int, stop: int, clean: Tensor | None = None) -> CorruptedRows:
        """Images ``start:stop`` of every block (a share, by global index); ``clean``: the share's own clean
        images (the same values)."""
        blocks = [block[start:stop] for block in self.blocks]
        return CorruptedRows(self.clean[start:stop] if clean is None else clean, blocks, self.norm)

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


# one run ------------------------------------------------------------------------------------------


@dataclass
class RobustnessConfig:
    """How a run is made (built by keyword after ``norm``): the options as the probe uses them plus what setup
    resolves. ``cam_layers`` (resolved layers, ``None`` for no CAM shift) and ``cam_reshape`` are
    those of the Grad-CAM; ``reference`` normalises the corruption errors. The trajectories (``trajectory_images``
    images, ``trajectory_steps`` steps of ``flip_step_size``; 0 for none) sample ``random_directions`` points at
    ``radius_factor ||x - x_adv||``, each image's from a generator seeded with ``seed`` and its probe id (so neither
    the batch nor the number of processes changes them). ``display_channels``: the channels the
    example grid shows (``None``: all, for 1 or 3 channels). ``param_set`` names the corruptions' parameters, for the
    record. PGD (when planned) takes ``pgd_steps`` steps (0: off) of ``pgd_step_factor * eps / pgd_steps`` at each
    of ``epsilons``, its random start drawn per image from ``seed`` and the probe id; ``pgd_every`` (its cadence in
    runs) is recorded."""

    norm: Normalization
    _: KW_ONLY
    epsilons: tuple[float, ...] = ()
    flip_step_size: float = 0.5
    flip_max_steps: int = 0
    cam_layers: dict[str, torch.nn.Module] | None = None
    cam_reshape: Callable[[Tensor], Tensor] | None = None
    batch_size: int = 64
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
    budget: float | None = None  # recorded in the schedule

    @classmethod
    def of(cls, options: RobustnessOptions, norm: Normalization, **resolved: Any) -> RobustnessConfig:
        """The config of ``options`` with what setup resolved (``seed``, ``cam_layers``, ``reference``,
        ``param_set``, ``display_channels``, ``budget``)."""
        return cls(
            norm,
            epsilons=tuple(options.epsilons or ()),
            flip_step_size=options.flip_step_size,
            flip_max_steps=options.flip_max_steps,
            cam_reshape=options.cam_reshape,
            batch_size=options.batch_size,
            n_examples=options.n_examples,
            trajectory_images=options.trajectory_images if options.trajectories else 0,
            trajectory_steps=options.trajectory_steps or 0,
            random_directions=options.random_directions,
            radius_factor=options.random_radius_factor,
            pgd_steps=options.pgd_steps if options.pgd else 0,
            pgd_every=options.pgd_every,
            **resolved,
        )


@dataclass(kw_only=True)
class RobustnessPartial:
    """What one share of the probe set contributes (CPU tensors and numbers, gathered between processes): per
    image and row (block 0 clean, then each row of the plan) the prediction, its confidence and the NLL of the
    true label; the CAM shift per row and image; the FGSM and PGD counts of correct predictions per ``eps``; the
    steps to flip per image; the trajectories of the chosen images in the share (``index``: global probe
    indices); the example tiles of the chosen images in the share; the seconds of each part."""

    start: int
    stop: int
    classes: int
    pred: Tensor  # (1 + R, n) long
    confidence: Tensor  # (1 + R, n)
    nll: Tensor  # (1 + R, n)
    cam_shift: Tensor | None = None  # (R, n)
    fgsm_correct: Tensor | None = None  # (E,) long
    pgd_correct: Tensor | None = None  # (E,) long
    steps: Tensor | None = None  # (n,) long
    trajectory: dict[str, Tensor] | None = None
    examples: Examples | None = None
    seconds: dict[str, float] = field(default_factory=dict)


Reporter = Callable[..., Any]


class RobustnessProbe(Probe[RobustnessPlan, RobustnessPartial, RobustnessResult]):
    """The robustness probe: :meth:`plan` (what fits the credit; the rotation and PGD cadence move on), :meth:`compute`
    on a share of the probe set and :meth:`merge` of the shares into the result one process computes.

    Every process corrupts the whole probe set once per row (:class:`CorruptionCache`, indexed by global index)
    and serves its share's slice, so the noise does not depend on the share. The other randomness (PGD starts,
    random directions) is drawn per image from the seed and the probe id.

    Args:
        probe: the whole probe set on the model's device.
        config: how a run is made.
        rows: the rows that apply to the data (:func:`applicable`).
        skipped: corruptions left out at setup and why (recorded).
        history: what the probe keeps across runs (a checkpoint's, or fresh).
        trajectories: whether the trajectories are configured (images and steps).
        skip: ``skip(epoch, what, reason)``, told what the plan leaves out.
        scalar: ``scalar(key, value, epoch)``, told ``cache_seconds`` when rows are corrupted.
        progress: ``progress(done, total, note)`` while rows are corrupted.
    """

    def __init__(
        self,
        probe: ProbeSet,
        config: RobustnessConfig,
        rows: Rows,
        *,
        skipped: dict[str, str] | None = None,
        history: RobustnessHistory | None = None,
        examples: list[int] | None = None,
        trajectory: list[int] | None = None,
        skip: Reporter | None = None,
        scalar: Reporter | None = None,
        progress: Reporter | None = None,
    ) -> None:
        super().__init__(probe)
        self.config, self.active, self.skipped = config, list(rows), dict(skipped or {})
        self.history = history if history is not None else RobustnessHistory()
        self.examples = example_indices(probe.labels, config.n_examples) if examples is None else examples
        traj = config.trajectory_images if config.trajectory_steps > 0 else 0
        self.trajectory = example_indices(probe.labels, traj) if trajectory is None else trajectory
        self.cache = CorruptionCache()
        self.skip, self.scalar, self.progress = skip, scalar, progress
        self.clean_read = False  # whether the last run read its clean row from another callback's forward
        self.corrupting = 0.0  # seconds the last run spent corrupting rows that ran for the first time

    @classmethod
    def setup(cls, probe: ProbeSet, options: RobustnessOptions, norm: Normalization, **kwargs: Any) -> RobustnessProbe:
        """The probe of ``options`` on ``probe``: the parameter set resolved from the images' size, the rows that
        apply to the data and the reference run read. ``kwargs``: ``seed``, ``cam_layers``, ``display_channels``,
        ``budget`` (for the config) and the keywords of the constructor.

        Raises:
            ValueError: no corruption applies to the data, or the reference cannot be read or lacks a row.
        """
        resolved = {k: kwargs.pop(k) for k in ("seed", "cam_layers", "display_channels", "budget") if k in kwargs}
        pixels = norm.denormalize(probe.images[:8].float())
        param_set = resolve_param_set(options.corruption_params, *pixels.shape[-2:])
        active, skipped = applicable(pixels, options.rows, resolved.get("seed", 0), param_set)
        if not active:
            raise ValueError(f"None of the corruptions {options.corruptions} applies to this data: {skipped}.")
        reference = None if options.reference is None else load_reference(options.reference, active, param_set)
        param = None if param_set == "auto" else param_set
        config = RobustnessConfig.of(options, norm, reference=reference, param_set=param, **resolved)
        kwargs.setdefault("history", RobustnessHistory.of(options))
        return cls(probe, config, active, skipped=skipped, **kwargs)

    @staticmethod
    def cam_check(labels: Tensor, reshape: Callable[[Tensor], Tensor] | None) -> Callable[..., Any]:
        """``check(model, x, layers)`` for the callback's layer setup: raises if the Grad-CAM does not apply."""
        return lambda model, x, layers: grad_cam(model, x, layers, labels[: len(x)].to(x.device), reshape=reshape)

    def check(self, model: torch.nn.Module) -> None:
        """At setup, inside the probe guard: raises if the model's output is not logits (names ``output=``; with
        a CAM shift the Grad-CAM check did that); under a budget, times one forward of the probe set to price a
        row."""
        if not self.config.cam_layers:
            predict_logits(model, self.probe.images[:2])
        if self.config.budget is not None and "row" not in self.history.costs:
            start = time.perf_counter()
            predict_logits(model, self.probe.images, self.config.batch_size)
            self.history.costs["row"] = time.perf_counter() - start

    # plan ----------------------------------------------------------------------------------------------

    def trajectory_rows(self) -> float:
        """The trajectories' cost in row forwards (:func:`trajectory_rows`); 0 when they are off."""
        images = min(len(self.trajectory), len(self.probe))
        return trajectory_rows(images, len(self.probe), self.config.trajectory_steps, self.config.random_directions)

    def costs(self) -> dict[str, float]:
        """The measured seconds of each part (``history.costs``), with a row priced by the forward of the probe set
        shared with the other callbacks when there is one (a row is one forward of the probe set; that one's price,
        the median of its last five, follows the model as it is at every epoch, where the probe's own last run may
        be epochs old, or the first, slower one)."""
        costs = dict(self.history.costs)
        shared = None if self.clean is None or self.config.cam_layers else self.clean.seconds
        if shared is not None:
            costs["row"] = shared
        return costs

    def core_seconds(self) -> float:
        """The seconds of the least run (:func:`core_seconds`, a row priced by :meth:`costs`): Zhang's probes, and
        the clean row unless the last run read it from the forward the other callbacks share (they run before it
        at the same epoch)."""
        return core_seconds(self.active, self.costs(), clean=not self.clean_read)

    def ran(self, plan: RobustnessPlan, seconds: float) -> None:
        """After a run of ``plan`` that took ``seconds`` on the training thread: keep what it cost beyond its
        measured parts (:func:`parts_seconds`) and the rows corrupted for the first time (a one-off) as
        ``history.costs["overhead"]``, which every run has: merging, the example tiles, the hand-over to the sink.
        The floor and the plan count it (:func:`core_seconds`, :func:`plan_parts`)."""
        costs = self.history.costs
        parts = parts_seconds(plan, costs, clean=not self.clean_read, cam_shift=bool(self.config.cam_layers))
        costs["overhead"] = max(0.0, seconds - parts - self.corrupting)

    def plan(self, credit: Credit) -> RobustnessPlan | None:
        """Everything due without a budget (``credit.seconds`` None); else skip a non-essential run whose seed
        probes alone do not fit, or take what fits (:func:`plan_parts`), the rotation moving on. PGD runs when
        due (:meth:`RobustnessHistory.pgd_due`) and it fits."""
        config, history, epoch = self.config, self.history, credit.epoch
        pgd = history.pgd_due(credit.essential)
        flip = config.flip_max_steps > 0 or self.trajectory_rows() > 0
        if credit.seconds is None:
            return RobustnessPlan(list(self.active), bool(config.epsilons), flip, pgd=pgd, epoch=epoch)
        core = self.core_seconds()
        if not credit.essential and core > credit.seconds:
            self._skip(epoch, "run", f"the seed probes take {core:.2f} s, credit {credit.seconds:.2f} s")
            return None
        parts = plan_parts(
            self.active,
            {"row": 0.0, **self.costs()},
            credit.seconds,
            history.rotation,
            epsilons=len(config.epsilons),
            flip_max_steps=config.flip_max_steps,
            cam_shift=bool(config.cam_layers),
            trajectory_rows=self.trajectory_rows(),
            pgd_rows=pgd_rows(len(config.epsilons), config.pgd_steps) if pgd else 0.0,
            clean=not self.clean_read,
        )
        history.rotation = parts.rotation
        if parts.skipped:
            self._skip(epoch, "parts", f"not in the credit of {credit.seconds:.2f} s: " + "; ".join(parts.skipped))
        return replace(parts, epoch=epoch)

    def _skip(self, epoch: int, what: str, reason: str) -> None:
        if self.skip is not None:
            self.skip(epoch, what, reason)

    # compute -------------------------------------------------------------------------------------------

    def inputs(self, rows: Rows, epoch: int = 0) -> CorruptedRows:
        """The whole probe set clean (block 0) and each row's, corrupted when the row first runs (the cache);
        ``cache_seconds`` goes to ``scalar`` when rows were corrupted."""
        inputs, seconds = self.cache.inputs(
            self.probe,
            rows,
            self.config.norm,
            self.config.seed,
            source=self.probe,
            progress=self.progress,
            param_set=self.config.param_set or "auto",
        )
        self.corrupting = seconds or 0.0
        if seconds is not None and self.scalar is not None:
            self.scalar("cache_seconds", seconds, epoch)
        return inputs

    def compute(
        self, model: torch.nn.Module, share: Share[ProbeSet], plan: RobustnessPlan, state: Any = None
    ) -> RobustnessPartial:
        """The share's part of the run: its slice of every row's images (:meth:`inputs`), its forwards, FGSM,
        PGD and steps-to-flip when planned, the trajectories and example tiles of the chosen images it holds."""
        inputs = self.inputs(plan.rows, plan.epoch).part(share.start, share.stop, share.data.images)
        return self.compute_inputs(model, share, plan, inputs)

    def compute_inputs(
        self, model: torch.nn.Module, share: Share[ProbeSet], plan: RobustnessPlan, inputs: CorruptedRows
    ) -> RobustnessPartial:
        """:meth:`compute` on the share's inputs as given (``((1 + R) n, C, H, W)``, blocks of the share)."""
        config, data, n, rows = self.config, share.data, len(share), plan.rows
        if n == 0:
            empty = torch.zeros(1 + len(rows), 0)
            return RobustnessPartial(
                start=share.start, stop=share.stop, classes=0, pred=empty.long(), confidence=empty, nll=empty.double()
            )
        mine = lambda chosen: [i - share.start for i in chosen if share.start <= i < share.stop]  # noqa: E731
        local = mine(self.examples)
        tiles = _example_tiles(inputs, n, rows, local, config.norm, config.display_channels) if local else None
        if tiles is not None:
            tiles.indices = [i + share.start for i in local]
        start = time.perf_counter()
        clean, read = None, False
        if self.clean is not None and not config.cam_layers and n % config.batch_size == 0:
            # the clean block's batches are the probe set's own: its forward, shared with the callbacks that probe
            # the same images (trainviz.core.clean_forward), is bitwise this one's
            hits = self.clean.shared.hits
            clean = self.clean.run(model, share, config.batch_size)[0]
            read = self.clean.shared.hits > hits  # another callback's forward: not one of this run's rows
        self.clean_read = read
        logits, shift = _forward(model, inputs, data.labels, config, clean)
        forwards = 1 + len(rows) - read
        elapsed = time.perf_counter() - start
        seconds = {"row": elapsed / forwards / (CAM_COST if config.cam_layers else 1.0)} if forwards else {}
        k = logits.shape[-1]
        logits = logits.view(1 + len(rows), n, k)
        confidence, pred = logits.softmax(-1).max(-1)
        labels = data.labels.long().repeat(1 + len(rows))
        nll = F.cross_entropy(logits.flatten(0, 1), labels, reduction="none").view(1 + len(rows), n)
        values: dict[str, Any] = {"pred": pred, "confidence": confidence, "nll": nll}
        if shift is not None:
            values["cam_shift"] = shift.view(len(rows), n)
        values.update(_adversarial(model, data, pred[0], config, plan, seconds))
        chosen = mine(self.trajectory)
        if config.trajectory_images > 0 and config.trajectory_steps > 0 and plan.flip and chosen:
            path = _trajectories(model, data, pred[0], config, chosen, seconds)
            values.update({f"trajectory_{key}": value for key, value in path.items()})
            values["trajectory_index"] = values["trajectory_index"] + share.start
        host = to_host(values)  # one wait for every device copy, dtypes kept
        path = {key[11:]: host.pop(key) for key in list(host) if key.startswith("trajectory_")}
        return RobustnessPartial(
            start=share.start,
            stop=share.stop,
            classes=k,
            **host,
            trajectory=path or None,
            examples=tiles,
            seconds=seconds,
        )

    # merge ---------------------------------------------------------------------------------------------

    def merge(self, partials: Sequence[RobustnessPartial], plan: RobustnessPlan) -> RobustnessResult:
        """The run's result from the shares' partials (any order): counts over all images divided by ``N``,
        calibration, corruption errors, the trajectories and tiles in the chosen order; the history moves on
        (measured costs, PGD's count)."""
        parts = sorted(partials, key=lambda p: p.start)
        config, rows, n = self.config, plan.rows, len(self.probe)
        cat = lambda name: torch.cat([getattr(p, name) for p in parts], -1)  # noqa: E731
        k = max(p.classes for p in parts)
        labels, ids = self.probe.labels.cpu(), self.probe.ids.cpu()
        values = _row_metrics(cat("pred"), cat("confidence"), cat("nll"), labels, k)
        if parts[0].cam_shift is not None or any(p.cam_shift is not None for p in parts):
            values["cam_shift"] = torch.cat([p.cam_shift for p in parts if p.cam_shift is not None], -1)
        dtype = self.probe.images.dtype
        for part in ("fgsm", "pgd"):
            counts = [c for p in parts if (c := getattr(p, f"{part}_correct")) is not None]
            if counts:
                values[f"{part}_accuracy"] = torch.stack(counts).sum(0).to(dtype) / n
        if any(p.steps is not None for p in parts):
            values["steps"] = torch.cat([p.steps for p in parts if p.steps is not None])
        paths = [p.trajectory for p in parts if p.trajectory is not None]
        if paths:
            merged = {key: torch.cat([path[key] for path in paths]) for key in paths[0]}
            order = [merged["index"].tolist().index(i) for i in self.trajectory if i in merged["index"].tolist()]
            values.update({f"trajectory_{key}": value[order] for key, value in merged.items()})
        values.update(labels=labels, ids=ids, class_counts=torch.bincount(labels, minlength=k))
        host = to_cpu(values)
        result = _result(plan.epoch, host, rows, config, class_names(self.probe.class_names, k))
        result.examples = _merge_tiles([p.examples for p in parts if p.examples is not None], self.examples)
        result.seconds = {key: max(p.seconds.get(key, 0.0) for p in parts) for key in parts[0].seconds}
        result.skipped = dict(self.skipped)
        result.schedule = Schedule.of_run(rows, self.active, config.budget)
        self.history.costs.update(result.seconds)
        self.history.count_pgd(result.pgd is not None and result.pgd.ran)
        return result


def _merge_tiles(parts: list[Examples], order: list[int]) -> Examples | None:
    """The example grid from the shares' tiles, its images in ``order`` (global probe indices)."""
    if not parts:
        return None
    indices = [i for p in parts for i in p.indices]
    tiles = np.concatenate([p.tiles for p in parts], axis=1)
    pick = [indices.index(i) for i in order if i in indices]
    return Examples(
        columns=parts[0].columns, indices=[indices[j] for j in pick], tiles=tiles[:, pick], titles=parts[0].titles
    )


def compute(
    model: torch.nn.Module,
    probe: ProbeSet,
    inputs: CorruptedRows | Tensor,
    plan: RobustnessPlan,
    config: RobustnessConfig,
    epoch: int,
    examples: list[int] | None = None,
    skipped: dict[str, str] | None = None,
    schedule: Schedule | None = None,
    trajectory: list[int] | None = None,
) -> RobustnessResult:
    """One run in one process on given inputs (:class:`RobustnessProbe` computes the whole set as one share and
    merges it): the metrics of every row of ``plan`` (accuracy, confidence, NLL, ECE, flip rate, per-class
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
    n = len(probe)
    if isinstance(inputs, Tensor):
        inputs = CorruptedRows.of_tensor(inputs, n, config.norm)
    examples = list(range(min(config.n_examples, n))) if examples is None else examples
    trajectory = list(range(min(config.trajectory_images, n))) if trajectory is None else trajectory
    prober = RobustnessProbe(probe, config, plan.rows, skipped=skipped, examples=examples, trajectory=trajectory)
    plan = replace(plan, epoch=epoch)
    result = prober.merge([prober.compute_inputs(model, Share.of(probe), plan, inputs)], plan)
    result.schedule = schedule
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
    return Examples(
        columns=columns, indices=idx, tiles=flat.reshape(len(columns), len(idx), *flat.shape[1:]), titles=titles
    )


def _forward(
    model: torch.nn.Module,
    inputs: CorruptedRows,
    labels: Tensor,
    config: RobustnessConfig,
    clean_logits: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Logits of every block and, with ``cam_layers``, the correlation of each corrupted image's Grad-CAM (true
    class) with its clean copy's, from the same forward passes, batch after batch. ``clean_logits``: the clean
    block's logits, already computed in the same batches (without ``cam_layers``, the block a whole number of batches).

    Shape: inputs ``((1 + R) N, C, H, W)`` -> logits ``((1 + R) N, K)``, shift ``(R N,)`` or ``None``.
    """
    if not config.cam_layers:
        size, first = config.batch_size, 0 if clean_logits is None else inputs.n
        batches = [predict_logits(model, inputs[a : a + size], size) for a in range(first, len(inputs), size)]
        return torch.cat(([] if clean_logits is None else [clean_logits]) + batches).float(), None
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


def _row_metrics(pred: Tensor, confidences: Tensor, nll: Tensor, labels: Tensor, k: int) -> dict[str, Tensor]:
    """Metrics of each block ``(1 + R, N)`` of predictions, their confidences and the NLL of the true labels,
    stacked along the rows, and the reliability bins of the clean block and of all corrupted ones."""
    correct = pred == labels
    per_row = [
        (
            accuracy(pred[r], labels),
            _mean_nll(nll[r]),
            _ece(confidences[r], correct[r]),
            flip_rate(pred[r], pred[0]),
            per_class_accuracy(pred[r], labels, k),
        )
        for r in range(pred.shape[0])
    ]
    acc, nl, ece, flips, per_class = (torch.stack(column) for column in zip(*per_row))
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


def _mean_nll(nll: Tensor) -> Tensor:
    """The mean of per-image NLLs as :func:`~trainviz.ops.robustness.nll` reduces them (``nll_loss``'s mean, the
    same kernel, so the one-process value does not change)."""
    return F.nll_loss(-nll.unsqueeze(1), torch.zeros(nll.shape[0], dtype=torch.long))


def _ece(confidence: Tensor, correct: Tensor) -> Tensor:
    """:func:`~trainviz.ops.robustness.expected_calibration_error` (15 bins) from each prediction's confidence
    and correctness: it reads only the top probability and whether its class is the label, so a first column
    holding the confidence (the top score) and a label of 0 where right, 1 where wrong give exactly its value."""
    scores = torch.stack([confidence, torch.zeros_like(confidence)], 1)
    return expected_calibration_error(scores, (~correct).long())


def _adversarial(
    model: torch.nn.Module,
    probe: ProbeSet,
    clean_pred: Tensor,
    config: RobustnessConfig,
    plan: Plan,
    seconds: dict[str, float],
) -> dict[str, Tensor]:
    """FGSM and PGD counts of correct predictions per ``eps`` and steps to flip per image (each when planned and
    configured), batch by batch, on the device; their costs go to ``seconds``. PGD's random start comes from
    ``config.seed`` and each image's probe id, so neither the batch nor the share changes it."""
    pixels, out, norm = config.norm.denormalize(probe.images), {}, config.norm
    batches = list(probe.batches(config.batch_size))
    start = time.perf_counter()
    if config.epsilons and plan.fgsm:
        parts = [
            fgsm_accuracy(model, pixels[a:b], probe.labels[a:b], config.epsilons, preprocess=norm.normalize) * (b - a)
            for a, b in batches
        ]
        out["fgsm_correct"] = torch.stack(parts).round().long().sum(0)
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
        out["pgd_correct"] = torch.stack(parts).round().long().sum(0)
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
    which = from_rank_zero(flipped.nonzero().squeeze(1).cpu()).to(x.device)  # one synchronisation per run
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
        "index": idx,
        "predictions": path.predictions,
        "flip": path.flip_step,
        "distance": distance,
        "random": random,
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
            step_size=config.flip_step_size,
            max_steps=config.flip_max_steps,
            steps_mean=mean,
            steps_median=median,
            never_flipped=int((steps < 0).sum()),
            never_fraction=float((steps < 0).mean()),
        )
    pgd = None
    if config.epsilons and config.pgd_steps > 0:
        pgd = Pgd(
            epsilons=list(config.epsilons),
            accuracy=v["pgd_accuracy"].tolist() if "pgd_accuracy" in v else [],
            steps=config.pgd_steps,
            step_factor=config.pgd_step_factor,
            ran="pgd_accuracy" in v,
            every=config.pgd_every,
            seed=config.seed,
        )
    trajectory = None
    if "trajectory_predictions" in v:
        picked = v["trajectory_index"].astype(np.int64)
        trajectory = Trajectories(
            step_size=config.flip_step_size,
            steps=config.trajectory_steps,
            samples=config.random_directions,
            radius_factor=config.radius_factor,
            ids=v["ids"].astype(np.int64)[picked].tolist(),
            labels=v["labels"].astype(np.int64)[picked].tolist(),
            predictions=v["trajectory_predictions"].astype(np.int64).tolist(),
            flip_step=v["trajectory_flip"].astype(np.int64).tolist(),
            distance=v["trajectory_distance"].tolist(),
            random_flip=v["trajectory_random"].tolist(),
            directions=DIRECTIONS_PER_IMAGE if config.random_directions > 0 else None,
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
        pred=v["pred"].astype(np.int64),
        confidences=v["confidences"],
        labels=v["labels"].astype(np.int64),
        ids=v["ids"].astype(np.int64),
        cam_shift=None if shift is None else v["cam_shift"],
        steps=v["steps"].astype(np.int64) if "steps" in v else None,
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
