"""``SaliencyCallback``: input-space saliency maps of a fixed probe set during training (saliency maps, SmoothGrad,
deconvolution, guided backpropagation and occlusion sensitivity, as Fleuret's EE-559 'Under the hood' shows them,
and integrated gradients), scored for faithfulness (deletion, insertion), localisation (pointing game) and by the
sanity checks of Adebayo et al. 2018 (cascading randomisation, random logit).

The computation is :mod:`trainviz.probes.saliency` (options, plan, compute of a share, merge); this module is the
Lightning lifecycle around it: it plans, computes, merges and writes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.checks import check_float
from trainviz.core.contract import Credit
from trainviz.core.distributed import Collective
from trainviz.core.guard import probe_guard
from trainviz.probes.saliency import (
    Method,
    SaliencyConfig,
    SaliencyHistory,
    SaliencyOptions,
    SaliencyPlan,
    SaliencyProbe,
)

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["SaliencyCallback"]

SHARDED_SANITY = (
    "trainviz: SaliencyCallback runs without its sanity checks in this run: the model is sharded across processes "
    "(FSDP2), and the checks' cascading randomisation needs copies of the model that FSDP cannot make (it does not "
    "deep-copy) and that may not fit in memory. The maps and their metrics run. To have the checks, run the "
    "callback on a checkpoint of this model in a single-process or DDP run."
)


class SaliencyCallback(ProbeCallback):
    """Saliency maps of a fixed probe set every N epochs, one batched pass per method: a grid of the maps,
    deletion and insertion AUCs, the pointing game (with masks), Adebayo et al.'s sanity checks every
    ``sanity_every`` runs, and at fit end one strip per method of the tracked images' maps across epochs.

    Costs, in forward(+backward) rows per run, ``N = probe_size``: ``N`` (+ backward) for ``gradient``,
    ``input_x_gradient``, ``deconvnet``, ``guided_backprop``; ``N x smoothgrad_samples`` for ``smoothgrad``;
    ``N x ig_steps`` for ``integrated_gradients``; ``N x windows`` forward rows for occlusion, with ``windows =
    (ceil((H - occlusion_window) / occlusion_stride) + 1) * (same for W)`` (49 for 32 px images and the default
    8 / 4). Each method's deletion and insertion curves add ``2 (deletion_steps + 1)`` forwards of the probe set.
    A sanity run adds, on ``sanity_images`` images, all methods once per step of the cascade (by default one per
    block, a handful; with ``sanity_steps="layers"`` one per layer with parameters) and once more for the random
    logit, on a deep copy of the model.

    Maps are ``|attribution|`` summed over channels (:func:`trainviz.ops.saliency.saliency_map`; for occlusion,
    ``|score drop|``), computed w.r.t. the model's inputs; the pictures show them over the probe images as
    PIXELS (the normalisation undone), scaled per map by its 99th percentile. Deletion and insertion replace
    pixels by 0 in model-input space (the mean colour for normalised inputs), as the CAM callback does;
    integrated gradients start from that same 0. SmoothGrad noise and the sanity re-initialisation come from
    private generators seeded from ``probe_seed`` and the epoch (:func:`trainviz.probes.saliency.run_seed`), each
    image's noise and random class those of its place in the probe set; the training model and the global random
    streams are never changed.

    The sanity checks (Adebayo et al. 2018): the Spearman rank correlation of each map with the map of the
    model whose layers are re-initialised (``reset_parameters()``) from the output down, cumulatively, and with
    the map of a random other class. The cascade goes block by block, as Adebayo et al. randomise Inception v3
    (:func:`trainviz.ops.sanity.randomization_blocks`: under the wrappers, the model's top-level children with
    parameters, split further while there are fewer than 3 and never past 8; a timm or torchvision ResNet-18 in a
    LightningModule as ``net``: ``net.fc``, ``net.layer4`` ... ``net.layer1``, ``net.bn1``, ``net.conv1``, 7 steps
    instead of 41), or by the given ``sanity_groups``, or layer by layer (``sanity_steps="layers"``, the steps of
    Quantus' ``MPRT``). Each block's modules are re-initialised exactly as the per-layer cascade does them, so a
    block step's maps are the per-layer cascade's maps after the block's last layer. A method that explains the
    model decorrelates; Adebayo et al. found guided backpropagation does not (its maps stay close to an edge image
    of the input), plain gradients do. On the demo CNN trained 6 epochs, after re-initialising its classifier:
    guided backprop 0.84, gradient 0.56, and deconvnet 0.44 (on these small nets deconvnet decorrelates like the
    gradient; see :mod:`trainviz.ops.sanity`).

    The options below are :class:`~trainviz.probes.saliency.SaliencyOptions` (``cb.options``, also read as
    attributes: ``cb.methods``), checked there; past the first three, the arguments are keyword-only.

    Logged keys (step = epoch index; ``<method>`` each of ``methods``, ``<layer>`` each step of the cascade, top
    down: a block's name (``net.layer4``), a group's names joined by ``+``, or with ``sanity_steps="layers"`` each
    module with parameters of its own):
        - ``trainviz/saliency/maps`` (image): the first ``n_grid`` probe images (one per class first), a row
          each: the image, captioned with the true class, the predicted class and its probability (green when
          right, red when wrong), then each method's map over it.
        - ``trainviz/saliency/<method>/deletion_auc`` (lower is more faithful) and
          ``trainviz/saliency/<method>/insertion_auc`` (higher is more faithful) (scalars): areas under the target
          probability as the most salient pixels are removed / put back in ``deletion_steps`` steps.
        - ``trainviz/saliency/<method>/pointing_game`` and ``trainviz/saliency/pointing_game_chance`` (scalars,
          only when the probe set has masks, e.g. the ``shapes`` data).
        - ``trainviz/saliency/target_probability`` (scalar): mean probability of the explained class.
        - at sanity runs (the first run and every ``sanity_every``-th): ``trainviz/saliency/<method>/sanity/<layer>``
          (scalar): mean Spearman correlation of the maps after re-initialising the layers from the top down to
          ``<layer>`` with the original maps; ``trainviz/saliency/<method>/random_logit`` (scalar): mean Spearman
          correlation with the maps of a random other class; ``trainviz/saliency/sanity`` (image): the first
          sanity image, rows = methods, columns = the original map and the maps as the cascade goes down (at most
          12 steps shown, evenly spread).
        - ``trainviz/saliency/<method>/evolution`` (image, at fit end, step = last epoch): the ``n_tracked``
          images' maps across (at most ``max_strip`` evenly spaced) epochs.
        - ``trainviz/saliency/seconds``, ``trainviz/saliency/failures`` (scalars, from the base class).
        - artifacts: ``saliency/epoch_XXXX/maps.npz`` (``maps/<method>`` float16 ``(N, H, W)``, ``ids``,
          ``labels``, ``targets``, ``probs``, and per image ``deletion_curve/<method>``, ``deletion_auc/<method>``,
          ``insertion_curve/<method>``, ``insertion_auc/<method>``, ``pointing_hit/<method>``),
          ``saliency/epoch_XXXX/sanity.npz`` at sanity runs (``layers``, ``ids``, ``spearman/<method>``
          ``(layers, sanity_images)``, ``random_logit/<method>``), ``saliency/metrics.jsonl``
          (:class:`~trainviz.probes.saliency.SaliencyResult` records; at sanity runs ``sanity_layers`` (the steps),
          ``sanity_steps`` (``"blocks"``, ``"layers"`` or ``"groups"``) and with blocks or groups ``sanity_groups``
          (``{step: [the modules it re-initialises]}``)), PNGs of every image above, and at fit end
          ``saliency/epoch_XXXX/evolution.npz`` (``maps/<method>`` ``(epochs, n_tracked, h, w)``, ``epochs``,
          ``ids``).

    Args:
        methods: attribution methods, any of ``"gradient"``, ``"input_x_gradient"``, ``"smoothgrad"``,
            ``"deconvnet"``, ``"guided_backprop"``, ``"integrated_gradients"`` (:mod:`trainviz.ops.saliency`)
            and ``"occlusion"`` (:mod:`trainviz.ops.occlusion`).
        target: explain the ``"true"`` class or the ``"predicted"`` one.
        smoothgrad_samples: SmoothGrad's noisy copies per image.
        smoothgrad_sigma: SmoothGrad's noise level, a fraction of each image's value range (>= 0).
        ig_steps: integrated gradients' quadrature points.
        occlusion: add ``"occlusion"`` to ``methods`` (``probe_size x windows`` forward rows, see above).
        occlusion_window: side of the occluding patch (pixels; at most the image side, checked at setup).
        occlusion_stride: step between patch positions (pixels).
        occlusion_baseline: what the patch is filled with, as a PIXEL value in [0, 1] (0: black), mapped through
            the normalisation into model-input space. With ``pixels=False`` (inputs that are not photos) it is a
            value in model-input space (default 0), used as it is.
        deletion_steps: steps of the deletion and insertion curves.
        sanity_every: run the sanity checks at the first run and every ``sanity_every``-th run of this callback
            after it; 0 disables them. Under a ``budget`` a sanity run that does not fit the credit runs without
            its checks (``trainviz/budget/saliency/skipped`` logs it) and the checks come at the next run.
        sanity_images: probe images in the sanity checks (the first shown ones).
        sanity_steps: ``"blocks"`` (default: a handful of steps, the network's blocks, see above) or ``"layers"``
            (one step per module with parameters, as Quantus' ``MPRT``; costs grow with depth).
        sanity_groups: the cascade's steps given by hand, top down, each a list of module names (e.g.
            ``[["net.fc"], ["net.layer4"], ["net.layer3", "net.layer2"]]``); a step re-initialises the modules with
            parameters at or under its names that earlier steps have not. Checked at setup, before the first
            epoch (an unknown name raises with the valid names).
        n_grid: probe images in the maps grid.
        n_tracked: probe images followed across epochs in the evolution strips.
        max_strip: most epochs shown in an evolution strip.
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``,
            ``probe_size`` (default 32), ``batch_size``, ``output``, ...).

    Raises:
        ValueError: in ``__init__``, for an argument out of range (``methods`` empty, repeated or unknown, or
            ``"occlusion"`` listed with ``occlusion=False``; an unknown ``target``; a count not a positive int;
            ``smoothgrad_sigma`` negative; ``occlusion_baseline`` outside [0, 1]; ``sanity_every`` negative;
            ``sanity_steps`` unknown; ``sanity_groups`` not a list of lists of names, or given with
            ``sanity_steps="layers"``); at fit start, before the first epoch, when ``occlusion_window`` exceeds
            the images, the model's output is not logits (see ``output=``), or a name of ``sanity_groups`` is no
            module of the model (the message lists the valid names).

    Example:
        >>> import tempfile, pytorch_lightning as pl
        >>> from trainviz.callbacks.saliency import SaliencyCallback
        >>> from trainviz.data import ShapesDataModule
        >>> from trainviz.models import DemoClassifier
        >>> cb = SaliencyCallback(methods=["gradient"], occlusion=False, probe_size=6, deletion_steps=2,
        ...                       sanity_images=2)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[cb], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      default_root_dir=tempfile.mkdtemp())
        >>> trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule(n_train=64, n_val=32))
        >>> cb.done_epochs, cb.sanity_epochs
        ([0], [0])
    """

    name = "saliency"
    budget_share = 0.25  # of default_callbacks(budget=)
    opt_in = True  # default_callbacks leaves it out unless asked for: several passes per probe image
    needs_pixels = False  # computes on the model's own inputs; only its pictures need a display mapping
    default_probe_size = 32

    def __init__(
        self,
        methods: Sequence[Method] = ("gradient", "smoothgrad", "guided_backprop"),
        target: Literal["true", "predicted"] = "true",
        smoothgrad_samples: int = 16,
        *,
        smoothgrad_sigma: float = 0.15,
        ig_steps: int = 16,
        occlusion: bool = True,
        occlusion_window: int = 8,
        occlusion_stride: int = 4,
        occlusion_baseline: float = 0.0,
        deletion_steps: int = 16,
        sanity_every: int = 5,
        sanity_images: int = 8,
        sanity_steps: Literal["blocks", "layers"] = "blocks",
        sanity_groups: Sequence[Sequence[str]] | None = None,
        n_grid: int = 8,
        n_tracked: int = 4,
        max_strip: int = 12,
        probe_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(probe_size=probe_size, **kwargs)
        self.options = SaliencyOptions.pick(locals())
        if self.pixels:  # a pixel value; without photos a value in model-input space
            check_float("occlusion_baseline", occlusion_baseline, minimum=0, maximum=1)
        self.history = SaliencyHistory()  # the runs so far (state): the probe adds to it
        self.prober: SaliencyProbe | None = None  # at setup

    @property
    def sanity_epochs(self) -> list[int]:
        """The epochs whose runs had the sanity checks."""
        return self.history.sanity_epochs

    @sanity_epochs.setter
    def sanity_epochs(self, epochs: list[int]) -> None:
        self.history.sanity_epochs = list(epochs)

    @property
    def _history(self) -> list[tuple[int, dict[str, Any]]]:
        return self.history.tracked

    @property
    def _sanity_layers(self) -> list[str]:
        """The cascade's steps, top down (known at setup)."""
        return [] if self.prober is None else list(self.prober.config.sanity_layers or [])

    # identity & state ------------------------------------------------------------------------------
    @override
    def _state_args(self) -> dict[str, Any]:
        return {**super()._state_args(), "methods": list(self.methods), "target": self.target}

    @override
    def _extra_state(self) -> dict[str, Any]:
        return self.history.state()

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.history.load(state)

    @override
    def _on_probe_changed(self) -> None:
        self.history.tracked.clear()

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, methods {list(self.methods)}"

    # setup and running -----------------------------------------------------------------------------
    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        options = self.options.asdict()
        if options["sanity_every"] and Collective.of(trainer).lockstep:
            options["sanity_every"] = 0
            if trainer.is_global_zero:
                warnings.warn(SHARDED_SANITY, stacklevel=2)
        config = SaliencyConfig(
            **options,
            batch_size=self.batch_size,
            norm=self.norm,
            display=self.display,
            probe_seed=self.probe_seed,
        )
        self.prober = SaliencyProbe(self.device_probe(pl_module), config, self.history)
        with probe_guard(pl_module):  # raises, before the first epoch, if a method or a sanity group does not apply
            self.prober.prepare(self.logits_model(pl_module))

    @override
    def _plan(self, credit: float | None, essential: bool, epoch: int) -> SaliencyPlan | None:
        """The probe's plan (:meth:`~trainviz.probes.saliency.SaliencyProbe.plan`); under a budget a sanity run
        that does not fit runs without its checks, logged as a skipped part."""
        plan = self.prober.plan(Credit(credit, essential, epoch))
        for what, reason in self.prober.skipped:
            self._skip(epoch, what, reason)
        return plan
