"""``RobustnessCallback``: how the network copes with corrupted and adversarial inputs, epoch after epoch.

The probes of Zhang's encoder-decoder paper (Xiaohan Zhang, "Visualization of encoder-decoder structure of Deep
Convolutional Neural Network", section 5.3), the ImageNet-C corruptions (Hendrycks & Dietterich 2019), FGSM and
L-inf PGD and the gradient ascent of Fleuret's EE-559 lecture "Under the hood"; the computation is
:mod:`trainviz.probes.robustness`, its result :mod:`trainviz.probes.robustness_result`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.checks import check_bool, check_float, check_int, check_positive_int
from trainviz.core.guard import probe_guard
from trainviz.core.namespace import info
from trainviz.core.probeset import ProbeSet
from trainviz.ops.cam import grad_cam
from trainviz.ops.corruptions import IMAGENET_C, SEED_PROBES, check_param_set, resolve_param_set
from trainviz.ops.predict import predict_logits
from trainviz.probes import robustness as probes
from trainviz.probes.robustness_result import Schedule

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["RobustnessCallback"]

_PGD_DEFAULTS = (10, 4)  # pgd_steps, pgd_every: left out of the state key (older checkpoints keep theirs)


class RobustnessCallback(ProbeCallback):
    """Accuracy, calibration and prediction flips under corruptions, FGSM and PGD accuracy, steps to flip and
    adversarial trajectories with their random-direction control.

    At every run, for every corruption and severity: accuracy, mean confidence, NLL, ECE (15 bins), flip rate
    against the clean prediction and per-class accuracy; per corruption the corruption error ``CE`` and relative
    ``CE`` (default reference: error 1; with a ``reference`` run also normalised by its errors); FGSM accuracy
    at each ``eps`` (pixel space); every ``pgd_every``-th run (the first, every ``pgd_every``-th after and the
    last epoch's), the accuracy under L-inf PGD at each ``eps`` (Madry et al. 2018; ``pgd_steps`` signed-gradient
    steps of ``2.5 eps / pgd_steps`` from a random start in the ``eps`` ball drawn per image from ``probe_seed`` and
    its probe id, so batching does not change it; no restarts: RobustBench ranks by the stronger AutoAttack, so
    these numbers are upper bounds on those); the gradient-ascent steps until the prediction changes; on
    ``trajectory_images`` probe images (one of each class first), the class predicted at every step of the
    ascent (Fleuret's table, steps continue after the first change) and the lecture's control, the share of
    ``random_directions`` random points on the sphere of radius ``2 ||x - x_adv||`` around each flipped image
    that change its label, stated with its 95% upper bound; with ``cam_shift=True``, the
    correlation of the true class's Grad-CAM on each clean image and its corrupted copy. The probe set is
    corrupted once per row, when the row first runs (same noise at every epoch), and cached as uint8 on the host;
    each run streams it to the model's device a batch at a time. The results are labelled "corrupted on the
    fly" (not the JPEG-saved published ImageNet-C files) with the parameter set used. Corruptions that do not
    apply to the data are skipped at setup with one info line. Under a ``budget``, Zhang's probes always run,
    then FGSM, PGD when it is due (else at the next run), the other corruptions in turn and the gradient ascent
    (steps-to-flip and the trajectories, one part) as far as the credit goes. The record's ``pgd`` says whether
    PGD ran in that run, with its steps and step sizes.

    Logged keys (step = epoch; ``<c>`` a corruption; see :meth:`RobustnessResult.scalars
    <trainviz.probes.robustness_result.RobustnessResult.scalars>`):
        - ``trainviz/robustness/{clean,corrupted}/{accuracy,confidence,nll,ece}``, ``corrupted/flip_rate``,
          ``accuracy/<c>``, ``flip_rate/<c>``, ``mce``, ``relative_mce`` (scalars; reference error 1), with a
          ``reference`` run ``normalized_mce`` and ``normalized_relative_mce``; with ``cam_shift``
          ``corrupted/cam_shift`` and ``cam_shift/<c>``; ``fgsm/accuracy@<eps>``; ``pgd/accuracy@<eps>`` (the
          runs where PGD ran); ``flip/steps_mean`` and
          ``flip/never_fraction``; with trajectories ``adversarial/flip_rate`` (share of the trajectory images
          whose class changed within the steps), ``adversarial/random_direction_flip_rate`` (pooled over the
          flipped images; with ``random_directions``) and ``adversarial/random_direction_flip_rate_upper95`` (its
          exact one-sided 95% Clopper-Pearson upper bound on the pooled count), ``adversarial/flip_step_mean`` and
          ``adversarial/distance_mean``
          (L2, pixels); ``cache_seconds`` when rows are corrupted; ``seconds``.
        - ``trainviz/robustness/heatmap``, ``examples`` and with trajectories ``adversarial_table`` (images, also
          ``epoch_XXXX/*.png``); the report section ``robustness/section.json`` (the trajectories).
        - artifacts: ``robustness/metrics.jsonl`` (the record, with ``corruption_params``,
          ``corruption_protocol`` and ``mce_reference``), ``robustness/summary.json`` (flat metrics, usable as
          another run's ``reference``, and ``"protocol"``: the same three),
          ``robustness/epoch_XXXX/{table,adversarial}.npz``.

    Args:
        corruptions: names from :func:`~trainviz.ops.corruptions.list_corruptions` (default: Zhang's probes and
            the 15 ImageNet-C corruptions).
        severities: severities of the 5-level corruptions (default 1..5); Zhang's probes run at their one level.
        epsilons: FGSM step sizes and PGD radii in pixel units (default 1/255, 2/255, 4/255, 8/255); ``[]``
            skips FGSM and PGD.
        flip_step_size: gradient-ascent step on pixels (times the raw gradient; at 0.5 a demo CNN flips most
            shapes images in 2-18 steps, digits in 1).
        flip_max_steps: cap on the gradient-ascent steps; ``0`` skips steps-to-flip.
        trajectory_images: probe images whose whole trajectory is recorded (Fleuret's table); ``0`` skips them.
        trajectory_steps: iterations of the trajectories (default ``flip_max_steps``; the lecture takes 15), at
            ``flip_step_size``; ``0`` skips them.
        random_directions: random points per flipped image for the control; ``0`` skips it. The default 60 is
            what the statistic needs: with no flip among ``n`` points the exact one-sided 95% upper bound on the
            rate is ``1 - 0.05 ** (1 / n)`` (about ``3 / n``), 0.049 for one image's 60 points, and the recorded
            bound, on the count pooled over the flipped images, is tighter (0.0062 for 8 flipped images and no
            flip). The lecture's 1,000 (the default before; 17 times the cost) bound one image's rate by 0.003.
            Each image's points come from a generator seeded from ``probe_seed`` and its probe id (records from
            before this, with one generator for the batch, have no ``trajectory.directions``). The points are not
            clamped to ``[0, 1]`` (clamping would shorten the radius).
        random_radius_factor: the control sphere's radius in units of ``||x - x_adv||`` (the lecture's 2).
        reference: another run's ``summary.json``: adds the ``normalized_*`` CE and mCE, normalised by its errors
            (``mce`` and ``ce`` keep their default reference, error 1); it must cover every row run here.
        corruption_params: the ImageNet-C corruptions' parameters: ``"auto"`` (default) picks the set made for
            the image side nearest to the probe images' shorter side on a log scale (``"cifar10-c"`` up to 45 px,
            ``"tinyimagenet-c"`` up to 119 px, ``"imagenet-c"`` above; non-square images go by the shorter side);
            a set's name forces it. Recorded as ``corruption_params``.
        cam_shift: also compute the CAM shift (about 1.2-1.4x the cost of the forward passes).
        cam_layer: layer of the Grad-CAM (a name, or ``"auto"``), resolved at setup.
        cam_reshape: the Grad-CAM's ``reshape=``, layer output to ``(N, C, h, w)``, for token layouts.
        n_examples: probe images in the example grid.
        batch_size: probe batch size.
        pgd_steps: PGD's steps (int >= 0, default 10); ``0`` skips PGD. It costs about ``pgd_steps`` forward
            and backward passes per image and ``eps`` (see BENCHMARKS.md).
        pgd_every: run PGD every this many runs (int >= 1, default 4; ``1``: every run); the last epoch's run
            includes it when it fits, and under a budget a due PGD that does not fit moves to the next run (a
            last run without it is logged as skipped, and `summary.json` then has no PGD accuracy to gate).
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``probe_size``, default 256 or
            the whole split when smaller, ``budget``, ...).

    Raises:
        ValueError: at init, for a bad argument; at fit start, when no corruption applies to the data, the
            reference cannot be read or lacks a row, or the model's output or ``cam_layer`` does not fit.

    Example:
        >>> import tempfile, pytorch_lightning as pl
        >>> from trainviz.data import ShapesDataModule
        >>> from trainviz.models import DemoClassifier
        >>> cb = RobustnessCallback(corruptions=["grayscale", "fog"], severities=[1], epsilons=[4 / 255],
        ...                         flip_max_steps=2, probe_size=16)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False,
        ...                      default_root_dir=tempfile.mkdtemp(), callbacks=[cb])
        >>> trainer.fit(DemoClassifier(), ShapesDataModule(n_train=64, n_val=32))
        >>> cb.done_epochs, cb.active
        ([0], [('grayscale', 1), ('fog', 1)])
    """

    name = "robustness"
    budget_share = 0.4  # of default_callbacks(budget=)
    pixel_use = "robustness corrupts pixels and attacks them (FGSM, adversarial trajectories) in [0, 1]"
    needs_pixels = True  # acts on pixels in [0, 1]: refuses inputs declared not to be photos (pixels=False)
    default_probe_size = 256  # a 95% interval on an accuracy of 0.8 is about +-0.05 at 256 images, +-0.1 at 64

    def __init__(
        self,
        corruptions: Sequence[str] | None = None,
        severities: Sequence[int] | None = None,
        epsilons: Sequence[float] | None = None,
        flip_step_size: float = 0.5,
        flip_max_steps: int = 20,
        trajectory_images: int = 8,
        trajectory_steps: int | None = None,
        random_directions: int = 60,
        random_radius_factor: float = 2.0,
        reference: str | None = None,
        corruption_params: str = "auto",
        cam_shift: bool = False,
        cam_layer: str = "auto",
        cam_reshape: Callable[[Tensor], Tensor] | None = None,
        n_examples: int = 6,
        batch_size: int = 256,
        pgd_steps: int = 10,
        pgd_every: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        names = SEED_PROBES + IMAGENET_C if corruptions is None else corruptions
        levels = [1, 2, 3, 4, 5] if severities is None else severities
        self.corruptions, self.severities, self.rows = probes.suite(names, levels)
        self.epsilons = probes.check_epsilons([1 / 255, 2 / 255, 4 / 255, 8 / 255] if epsilons is None else epsilons)
        self.flip_step_size = check_float("flip_step_size", flip_step_size, 0, strict_minimum=True)
        self.flip_max_steps = check_int("flip_max_steps", flip_max_steps, minimum=0)
        self.pgd_steps = check_int("pgd_steps", pgd_steps, minimum=0)
        self.pgd_every = check_int("pgd_every", pgd_every, minimum=1)
        self.trajectory_images = check_int("trajectory_images", trajectory_images, minimum=0)
        steps = self.flip_max_steps if trajectory_steps is None else trajectory_steps
        self.trajectory_steps = check_int("trajectory_steps", steps, minimum=0)
        self.random_directions = check_int("random_directions", random_directions, minimum=0)
        self.random_radius_factor = check_float("random_radius_factor", random_radius_factor, 0, strict_minimum=True)
        if reference is not None and not isinstance(reference, (str, os.PathLike)):
            raise ValueError(f"Expected `reference` to be a path to a summary.json or None, got {reference!r}.")
        self.reference = None if reference is None else os.fspath(reference)
        self.corruption_params = check_param_set(corruption_params, "corruption_params")
        self.param_set = self.corruption_params  # resolved from the probe images' size at setup
        self.cam_shift = check_bool("cam_shift", cam_shift)
        if not isinstance(cam_layer, str) or not cam_layer:
            raise ValueError(f"Expected `cam_layer` to be a layer name or 'auto', got {cam_layer!r}.")
        if cam_reshape is not None and not callable(cam_reshape):
            what = "a callable (N, T, C) -> (N, C, h, w) or None"
            raise ValueError(f"Expected `cam_reshape` to be {what}, got {cam_reshape!r}.")
        self.cam_layer, self.cam_reshape = cam_layer, cam_reshape
        self.n_examples = check_positive_int("n_examples", n_examples)
        self.skipped: dict[str, str] = {}  # corruptions that do not apply to the data, with the reason (setup)
        self.active = list(self.rows)  # the rows that apply to the data (setup)
        self.reference_run: probes.Reference | None = None
        self._cam_layers: dict[str, Any] = {}
        self._cache = probes.CorruptionCache()
        self._costs: dict[str, float] = {}  # seconds of one row's forward, of FGSM and of steps-to-flip (budget)
        self._rotation = 0  # under a budget: the corruption whose turn it is next
        self._since_pgd: int | None = None  # runs since PGD last ran (None: never, PGD is due)
        self._pgd_due = self._pgd_on()  # PGD is due in the coming run (set before each run)
        self._pgd_planned = False  # and runs in it (what fits the budget)

    @override
    def _state_args(self) -> dict[str, Any]:
        config = [
            self.rows,
            self.epsilons,
            self.flip_step_size,
            self.flip_max_steps,
            self.reference,
            self.cam_shift,
            self.cam_layer,
            *([self._trajectory_args()] if self._trajectories_on() else []),
            *([self.corruption_params] if self.corruption_params != "auto" else []),  # "auto": the key as before
            *([["pgd", self.pgd_steps, self.pgd_every]] if self._pgd_keyed() else []),
        ]
        return {**super()._state_args(), "config": hashlib.sha1(json.dumps(config).encode()).hexdigest()[:8]}

    def _trajectory_args(self) -> list[Any]:
        """The trajectory settings, empty when they are off (the state key of such a callback is unchanged). The
        default ``random_directions`` (60 since issue 20) enters the key as the old default 1,000, so a checkpoint
        written before still restores a callback at the default (its probe set above all); the price: two callbacks
        that differ only by 60 and 1,000 points share a key (Lightning refuses two callbacks with one key)."""
        if not self._trajectories_on():
            return []
        points = 1000 if self.random_directions == 60 else self.random_directions
        return [self.trajectory_images, self.trajectory_steps, points, self.random_radius_factor]

    def _trajectories_on(self) -> bool:
        return self.trajectory_images > 0 and self.trajectory_steps > 0

    def _pgd_keyed(self) -> bool:
        """PGD's settings enter the state key only when they are not the defaults (10 steps, every 4th run), so a
        checkpoint written before PGD existed still restores the callback's state."""
        return self._pgd_on() and (self.pgd_steps, self.pgd_every) != _PGD_DEFAULTS

    def _pgd_on(self) -> bool:
        return self.pgd_steps > 0 and bool(self.epsilons)

    def _pgd_is_due(self, trainer: pl.Trainer, epoch: int) -> bool:
        """PGD runs at the first run, then after ``pgd_every - 1`` runs without it, and at the last epoch."""
        if not self._pgd_on():
            return False
        waited = self._since_pgd is None or self._since_pgd >= self.pgd_every - 1
        return waited or self._is_last(trainer, epoch)

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, {len(self.active)} corruption settings"

    @override
    def _on_probe_changed(self) -> None:
        self._cache.clear()

    @override
    def _extra_state(self) -> dict[str, Any]:
        return {"rotation": self._rotation, "since_pgd": self._since_pgd}

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._rotation = int(state.get("rotation", 0))
        since = state.get("since_pgd")
        self._since_pgd = int(since) if isinstance(since, int) else None

    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pixels = self.norm.denormalize(self.probe.images[:8].float())
        self.param_set = resolve_param_set(self.corruption_params, *pixels.shape[-2:])
        self.active, self.skipped = probes.applicable(pixels, self.rows, self.probe_seed, self.param_set)
        if self.skipped:
            reasons = "; ".join(f"{n} ({r})" for n, r in self.skipped.items())
            info(f"trainviz: RobustnessCallback skips corruptions that do not apply to this data: {reasons}", trainer)
        if not self.active:
            raise ValueError(f"None of the corruptions {self.corruptions} applies to this data: {self.skipped}.")
        if self.reference is not None:
            self.reference_run = probes.load_reference(self.reference, self.active, self.param_set)
        if self.cam_shift:  # raises now if the layer or the Grad-CAM does not apply
            labels = self.probe.labels[:2]
            check = lambda model, x, layers: grad_cam(model, x, layers, labels.to(x.device), reshape=self.cam_reshape)
            self._cam_layers = self.setup_layers(pl_module, self.cam_layer, self.cam_reshape, check=check)
        else:
            with probe_guard(pl_module):  # raises now if the output is not logits (names `output=`)
                predict_logits(self.logits_model(pl_module), self.example_batch(pl_module))

    def _corrupted_inputs(self, probe: ProbeSet, rows: list[tuple[str, int]], epoch: int) -> probes.CorruptedRows:
        """The clean probe images and each row's, corrupted when the row first runs (:class:`CorruptionCache`)."""
        inputs, seconds = self._cache.inputs(
            probe,
            rows,
            self.norm,
            self.probe_seed,
            source=self.probe,
            progress=self.progress.update,
            param_set=self.param_set,
        )
        if seconds is not None and self.sink is not None:
            self.sink.scalar("cache_seconds", seconds, epoch)
        return inputs

    @override
    def _plan(self, credit: float | None, essential: bool, epoch: int) -> Any:
        """Skip a non-essential run whose seed probes alone do not fit; else let :meth:`_scaled_parts` choose."""
        if credit is None:
            return True
        core = probes.core_seconds(self.active, self._costs)
        if not essential and core > credit:
            self._skip(epoch, "run", f"the seed probes take {core:.2f} s, credit {credit:.2f} s")
            return None
        return {"credit": credit, "start": time.perf_counter()}

    def _scaled_parts(self, pl_module: pl.LightningModule, probe: ProbeSet, epoch: int) -> tuple[list, bool, bool]:
        """The rows, and whether FGSM and the gradient ascent (steps-to-flip and trajectories) run: everything
        without a budget, else what fits (:func:`~trainviz.probes.robustness.plan_parts`), the rotation moving on.
        Whether a due PGD (``_pgd_due``) runs goes to ``_pgd_planned``."""
        if self.plan is True:
            self._pgd_planned = self._pgd_due
            return list(self.active), bool(self.epsilons), self.flip_max_steps > 0 or self._trajectories_on()
        if "row" not in self._costs:  # first run: time one clean forward to price a row
            start = time.perf_counter()
            predict_logits(self.logits_model(pl_module), probe.images, self.batch_size)
            self._costs["row"] = time.perf_counter() - start
        left = self.plan["credit"] - (time.perf_counter() - self.plan["start"])
        plan = probes.plan_parts(
            self.active,
            self._costs,
            left,
            self._rotation,
            epsilons=len(self.epsilons),
            flip_max_steps=self.flip_max_steps,
            cam_shift=self.cam_shift,
            trajectory_rows=self._trajectory_rows(probe),
            pgd_rows=probes.pgd_rows(len(self.epsilons), self.pgd_steps) if self._pgd_due else 0.0,
        )
        self._rotation, self._pgd_planned = plan.rotation, plan.pgd
        if plan.skipped:
            self._skip(epoch, "parts", f"not in the credit of {self.plan['credit']:.2f} s: " + "; ".join(plan.skipped))
        return plan.rows, plan.fgsm, plan.flip

    def _trajectory_rows(self, probe: ProbeSet | None) -> float:
        """The trajectories' cost in row forwards (:func:`~trainviz.probes.robustness.trajectory_rows`)."""
        if not self._trajectories_on():
            return 0.0
        drawn = probe if probe is not None else self.probe
        size = len(drawn) if drawn is not None else self.trajectory_images  # unknown: price them as a whole row
        images = min(self.trajectory_images, size)
        return probes.trajectory_rows(images, size, self.trajectory_steps, self.random_directions)

    @override
    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        probe = self.device_probe(pl_module)
        self._pgd_due = self._pgd_is_due(trainer, epoch)
        rows, fgsm, flip = self._scaled_parts(pl_module, probe, epoch)
        config = probes.RobustnessConfig(
            self.norm,
            tuple(self.epsilons),
            self.flip_step_size,
            self.flip_max_steps,
            self._cam_layers if self.cam_shift else None,
            self.cam_reshape,
            self.batch_size,
            self.n_examples,
            self.reference_run,
            self.trajectory_images if self._trajectories_on() else 0,
            self.trajectory_steps,
            self.random_directions,
            self.random_radius_factor,
            self.probe_seed,
            display_channels=None if self.display is None else self.display.channels,
            param_set=None if self.param_set == "auto" else self.param_set,
            pgd_steps=self.pgd_steps if self._pgd_on() else 0,
            pgd_every=self.pgd_every,
        )
        inputs = self._corrupted_inputs(probe, rows, epoch)
        result = probes.compute(
            self.logits_model(pl_module),
            probe,
            inputs,
            probes.Plan(rows, fgsm, flip, pgd=self._pgd_planned),
            config,
            epoch,
            self.example_indices(self.n_examples),
            self.skipped,
            Schedule.of_run(rows, self.active, self.budget),
            trajectory=self.example_indices(self.trajectory_images),
        )
        self._costs.update(result.seconds)
        self._count_pgd(result.pgd is not None and result.pgd.ran)
        self.sink.write(result)

    def _count_pgd(self, ran: bool) -> None:
        """After a run: PGD ran (the count restarts) or not (one more run without it; a due PGD stays due)."""
        if self._pgd_on():
            self._since_pgd = 0 if ran else None if self._since_pgd is None else self._since_pgd + 1
