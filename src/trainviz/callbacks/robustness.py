"""``RobustnessCallback``: how the network copes with corrupted and adversarial inputs, epoch after epoch.

The probes of Zhang's encoder-decoder paper (Xiaohan Zhang, "Visualization of encoder-decoder structure of Deep
Convolutional Neural Network", section 5.3), the ImageNet-C corruptions (Hendrycks & Dietterich 2019), FGSM and
L-inf PGD and the gradient ascent of Fleuret's EE-559 lecture "Under the hood"; the computation is
:mod:`trainviz.probes.robustness`, its result :mod:`trainviz.probes.robustness_result`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.contract import Credit
from trainviz.core.guard import probe_guard
from trainviz.core.namespace import info
from trainviz.probes.robustness import (
    RobustnessHistory,
    RobustnessOptions,
    RobustnessPlan,
    RobustnessProbe,
)

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["RobustnessCallback"]


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
        batch_size: probe batch size (rows per forward; 64 by default: on a CPU larger batches run slower per
            image, 1,280 rows of a 4-block CNN at 32 px took 1.5x as long in batches of 256 as of 64).
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
    budget_interval = 2  # in the pool: every other run, Zhang's probes each time and the rest as the credit allows
    pixel_use = "robustness corrupts pixels and attacks them (FGSM, adversarial trajectories) in [0, 1]"
    needs_pixels = True  # acts on pixels in [0, 1]: refuses inputs declared not to be photos (pixels=False)
    default_probe_size = 256  # a 95% interval on an accuracy of 0.8 is about +-0.05 at 256 images, +-0.1 at 64

    def __init__(
        self,
        corruptions: Sequence[str] | None = None,
        severities: Sequence[int] | None = None,
        epsilons: Sequence[float] | None = None,
        *,
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
        batch_size: int = 64,
        pgd_steps: int = 10,
        pgd_every: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.options = RobustnessOptions.pick(locals())
        self.history = RobustnessHistory.of(self.options)  # the rotation, PGD's cadence, part costs (checkpointed)
        self.prober: RobustnessProbe | None = None  # built at setup on the probe set
        self.plan: RobustnessPlan | Any = True

    @property
    def active(self) -> list[tuple[str, int]]:
        """The rows that apply to the data (the suite's before setup)."""
        return self.options.rows if self.prober is None else self.prober.active

    @property
    def skipped(self) -> dict[str, str]:
        """The corruptions that do not apply to the data, with the reason (setup)."""
        return {} if self.prober is None else self.prober.skipped

    @override
    def _state_args(self) -> dict[str, Any]:
        return {**super()._state_args(), "config": self.options.key()}

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, {len(self.active)} corruption settings"

    @override
    def _on_probe_changed(self) -> None:
        if self.prober is not None:
            self.prober.cache.clear()

    @override
    def _extra_state(self) -> dict[str, Any]:
        return self.history.state()

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.history.load(state)

    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        options, layers = self.options, None
        if options.cam_shift:  # raises now if the layer or the Grad-CAM does not apply
            check = RobustnessProbe.cam_check(self.probe.labels[:2], options.cam_reshape)
            layers = self.setup_layers(pl_module, options.cam_layer, options.cam_reshape, check=check)
        self.prober = RobustnessProbe.setup(
            self.device_probe(pl_module),
            options,
            self.norm,
            seed=self.probe_seed,
            cam_layers=layers,
            display_channels=None if self.display is None else self.display.channels,
            budget=self.budget,
            history=self.history,
            skip=self._skip,
            scalar=None if self.sink is None else self.sink.scalar,
            progress=lambda *args: self.progress.update(*args),
        )
        if self.prober.skipped:
            reasons = "; ".join(f"{n} ({r})" for n, r in self.prober.skipped.items())
            info(f"trainviz: RobustnessCallback skips corruptions that do not apply to this data: {reasons}", trainer)
        with probe_guard(pl_module):  # raises now if the output is not logits (names `output=`); prices a row
            self.prober.check(self.logits_model(pl_module))
        self.prober.clean = self._clean_view(trainer)  # its clean row: the forward shared on the same images

    @override
    def _budget_floor(self) -> float | None:
        """Elastic: its least run is Zhang's probes and the clean probe set, unless the forward shared with the
        callbacks before it served that (their measured seconds, :meth:`RobustnessProbe.core_seconds`); the plan
        takes the rest of its credit in rotating corruption rows and the adversarial parts."""
        return None if self.prober is None else self.prober.core_seconds()

    @override
    def _ran(self, seconds: float) -> None:
        """What the run cost beyond its parts, which its floor and plans count (:meth:`RobustnessProbe.ran`)."""
        if self.prober is not None and isinstance(self.plan, RobustnessPlan):
            self.prober.ran(self.plan, seconds)

    @override
    def _plan(self, credit: float | None, essential: bool, epoch: int) -> Any:
        """The probe's plan: everything due without a budget, else what fits the credit (or ``None``: skip)."""
        return self.prober.plan(Credit(credit, essential, epoch))
