"""``MaxActivationCallback``: the input each class, channel and unit responds to most, every N epochs (Strezoski &
Worring's *MaxOut*, with Fleuret's multi-scale edge prior as an option), and how it moves while the network learns.

The computation is :mod:`trainviz.probes.maxact` (on :func:`trainviz.ops.maxact.maximize`); this module is the
Lightning lifecycle around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.checks import check_bool, check_float, check_int, check_positive_int
from trainviz.core.hooks import capture
from trainviz.core.layers import resolve_layer
from trainviz.core.outputs import expect_logits
from trainviz.ops.maxact import Target, target_key
from trainviz.probes.maxact import MaxActConfig, compute, evolution, label_of

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["MaxActivationCallback"]

Channels = int | Sequence[int] | Mapping[str, Sequence[int]]


def _indices(name: str, value: Any, allow_empty: bool = False, distinct: bool = True) -> list[int]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and (allow_empty or len(value) > 0)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    if not ok or (distinct and len(set(value)) != len(value)):
        what = "distinct non-negative ints" if distinct else "non-negative ints"
        raise ValueError(f"Expected `{name}` to be a list of {what}, got {value!r}.")
    return [int(v) for v in value]


class MaxActivationCallback(ProbeCallback):
    """Activation maximisation ("MaxOut") of classes, channels and units every N epochs: one image per target,
    all targets optimised together in one batch from the same per-target start each run, and at fit end a
    longer high-quality pass and each target's strip across epochs.

    The probe set only gives the input shape, the device and the normalisation (images are optimised as pixels in
    [0, 1] through a sigmoid and mapped to the model input); a run costs ``steps`` forward and backward passes of a
    batch of ``len(targets)`` images. See :func:`trainviz.ops.maxact.maximize` for the objective and defaults.

    Logged keys (step = epoch index; ``<target>`` is ``classes/<k>``, ``<layer>/channel_<c>`` or
    ``<layer>/unit_<i>_<j>...``, and ``<group>`` is ``classes`` or a layer name):
        - ``trainviz/maxact/<target>/activation`` (scalar): the activation the target's image reaches.
        - ``trainviz/maxact/<target>/moved`` (scalar, from the second run on): Pearson correlation of the
          target's image with its image at the previous run (1: the preferred input did not move).
        - ``trainviz/maxact/<group>/grid`` (image): the group's images captioned with target and activation.
        - ``trainviz/maxact/<group>/final`` (image, fit end, ``final_steps > 0``): the high-quality pass.
        - ``trainviz/maxact/<group>/evolution`` (image, fit end): each target's image across (at most
          ``max_strip`` evenly spaced) epochs.
        - ``trainviz/maxact/seconds``, ``trainviz/maxact/failures`` (scalars, from the base class).
        - artifacts: ``maxact/epoch_XXXX/images.npz`` (``images`` float16 ``(B, C, H, W)`` pixels, ``keys``,
          ``activation``), ``maxact/metrics.jsonl`` (:class:`~trainviz.probes.maxact.MaxActResult` records),
          PNGs of every image, and at fit end ``maxact/epoch_XXXX/final.npz``.

    Args:
        classes: class indices to maximise (their logits); ``None``: every class; ``[]``: none.
        layers: layers whose channels to maximise (mean over each channel's map).
        channels: per layer, the first N channels (an int), one list for every layer, or ``{layer: [c, ...]}``.
        units: single units, ``[(layer, (i, j, ...)), ...]`` (indices after the batch axis).
        steps: Adam steps per run (at the probe resolution).
        final_steps: steps of the fit-end high-quality pass (0: none).
        final_upscale: the fit-end pass optimises images this many times the probe side (needs a model that
            takes larger inputs, e.g. global pooling; checked at setup).
        lr: Adam learning rate.
        tv_weight: total-variation weight (a sum over the image; the seed's "TV weight").
        norm_weight: squared L2 norm weight of the model input (the seed's "Norm").
        edge_weight: Fleuret's multi-scale edge energy weight.
        smoothing: Gaussian blur sigma (pixels) of the result (the seed's "Smoothing"); ``None``: none.
        robust: Lucent's FFT parameterisation with decorrelated colour and jitter/scale/rotate transforms.
        max_strip: most epochs in an evolution strip.
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``, ``probe_size``
            (default 8: only the shape and normalisation are used), ``probe_seed`` (the start noise), ...).

    Raises:
        ValueError: in ``__init__``, for an argument of the wrong type or out of range (no target at all, an
            index not a non-negative int, a count not positive, a negative weight); at fit start, before the
            first epoch, when a layer is not found (the message names close matches), a class, channel or unit
            index is out of range for the model, or the model refuses the ``final_upscale`` size.

    Example:
        >>> import tempfile, pytorch_lightning as pl
        >>> from trainviz.callbacks.maxact import MaxActivationCallback
        >>> from trainviz.data import ShapesDataModule
        >>> from trainviz.models import DemoClassifier
        >>> cb = MaxActivationCallback(layers=["net.features"], channels=2, steps=2, final_steps=2)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[cb], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      default_root_dir=tempfile.mkdtemp())
        >>> trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule(n_train=32, n_val=16))
        >>> cb.done_epochs, [target_key(t) for t in cb._targets][4:]
        ([0], ['classes/4', 'classes/5', 'net.features/channel_0', 'net.features/channel_1'])
    """

    name = "maxact"
    budget_share = 0.25  # of default_callbacks(budget=)
    opt_in = True  # default_callbacks leaves it out unless asked for: an optimisation per run
    pixel_use = "maxact (MaxOut) optimises images as pixels in [0, 1]"
    needs_pixels = True  # acts on pixels in [0, 1]: refuses inputs declared not to be photos (pixels=False)
    default_probe_size = 8

    def __init__(
        self,
        classes: Sequence[int] | None = None,
        layers: Sequence[str] = (),
        channels: Channels = 8,
        units: Sequence[tuple[str, Sequence[int]]] = (),
        steps: int = 64,
        final_steps: int = 256,
        final_upscale: int = 1,
        lr: float = 0.05,
        tv_weight: float = 1e-3,
        norm_weight: float = 1e-4,
        edge_weight: float = 0.0,
        smoothing: float | None = None,
        robust: bool = False,
        max_strip: int = 12,
        probe_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(probe_size=probe_size, **kwargs)
        self.classes = None if classes is None else _indices("classes", classes, allow_empty=True)
        if (
            isinstance(layers, str)
            or not all(isinstance(n, str) and n for n in layers)
            or len(set(layers)) != len(layers)
        ):
            raise ValueError(f"Expected `layers` to be a list of distinct layer names, got {layers!r}.")
        self.layers = tuple(layers)
        if isinstance(channels, Mapping):
            if set(channels) - set(self.layers):
                raise ValueError(
                    f"Expected the keys of `channels` among `layers` {list(self.layers)}, got {channels!r}."
                )
            self.channels: Channels = {k: _indices(f"channels[{k!r}]", v) for k, v in channels.items()}
        elif isinstance(channels, int) and not isinstance(channels, bool):
            self.channels = check_positive_int("channels", channels)
        else:
            self.channels = _indices("channels", channels)
        self.units = []
        for unit in units:
            ok = isinstance(unit, Sequence) and len(unit) == 2 and isinstance(unit[0], str) and bool(unit[0])
            if not ok:
                raise ValueError(f"Expected each of `units` to be a (layer, (i, j, ...)) pair, got {unit!r}.")
            self.units.append((unit[0], tuple(_indices(f"units index of {unit[0]!r}", unit[1], distinct=False))))
        if self.classes == [] and not self.layers and not self.units:
            raise ValueError("Expected at least one target: `classes` (None for all), `layers` or `units`.")
        self.steps = check_positive_int("steps", steps)
        self.final_steps = check_int("final_steps", final_steps, minimum=0)
        self.final_upscale = check_positive_int("final_upscale", final_upscale)
        self.lr = check_float("lr", lr, 0, strict_minimum=True)
        self.tv_weight = check_float("tv_weight", tv_weight, 0)
        self.norm_weight = check_float("norm_weight", norm_weight, 0)
        self.edge_weight = check_float("edge_weight", edge_weight, 0)
        self.smoothing = None if smoothing is None else check_float("smoothing", smoothing, 0)
        self.robust = check_bool("robust", robust)
        self.max_strip = check_positive_int("max_strip", max_strip)
        self._targets: list[Target] = []
        self._layers: dict[str, torch.nn.Module] = {}
        self._previous: dict[str, torch.Tensor] = {}  # last run's image per target (CPU, float16), for `moved`
        self._history: list[tuple[int, torch.Tensor]] = []  # (epoch, images (B, C, H, W) CPU float16)

    # identity & state ------------------------------------------------------------------------------
    @override
    def _state_args(self) -> dict[str, Any]:
        what = {"classes": self.classes, "layers": self.layers, "units": self.units, "robust": self.robust}
        return {**super()._state_args(), **what}

    @override
    def _extra_state(self) -> dict[str, Any]:
        images = torch.stack([m for _, m in self._history]) if self._history else None
        return {"previous": dict(self._previous), "history_epochs": [e for e, _ in self._history], "history": images}

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        images = state.get("history")
        self._history = [] if images is None else list(zip(state.get("history_epochs", []), images.unbind(0)))
        self._previous = dict(state.get("previous") or {})

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, {len(self._targets)} targets, layers {list(self._layers) or list(self.layers)}"

    # setup and running -----------------------------------------------------------------------------
    def _build_targets(self, model: Any, example: torch.Tensor) -> list[Target]:
        """The targets, checked against the model (class count, channel count, unit shape)."""
        names = {spec: resolve_layer(model, spec)[0] for spec in [*self.layers, *(u[0] for u in self.units)]}
        modules = {name: resolve_layer(model, name)[1] for name in names.values()}
        with torch.no_grad(), capture(model, modules) as acts:
            out = model(example[:1])
        k = expect_logits(out).shape[1] if self.classes != [] else 0
        classes = list(range(k)) if self.classes is None else self.classes
        targets: list[Target] = []
        for c in classes:
            if c >= k:
                raise ValueError(f"Expected `classes` below the model's {k} classes, got {c}.")
            targets.append(("logit", c))
        for spec in self.layers:
            name = names[spec]
            width = acts[name].shape[1] if acts[name].dim() > 1 else 0
            chosen = self.channels.get(spec, []) if isinstance(self.channels, Mapping) else self.channels
            chosen = list(range(min(chosen, width))) if isinstance(chosen, int) else chosen
            for ch in chosen:
                if ch >= width:
                    raise ValueError(f"Expected channels of layer {name!r} below its {width} channels, got {ch}.")
                targets.append(("channel", name, ch))
        for spec, index in self.units:
            name = names[spec]
            shape = tuple(acts[name].shape[1:])
            if len(index) != len(shape) or any(i >= s for i, s in zip(index, shape)):
                raise ValueError(
                    f"Expected a unit index of layer {name!r} within its output shape {shape}, got {index}."
                )
            targets.append(("unit", name, index))
        self._layers = modules
        return targets

    def _config(self) -> MaxActConfig:
        c, h, w = self.probe.images.shape[1:]
        return MaxActConfig(
            self._targets,
            self._layers,
            (int(c), int(h), int(w)),
            self.steps,
            self.lr,
            self.tv_weight,
            self.norm_weight,
            self.edge_weight,
            self.smoothing,
            self.robust,
            self.probe_seed,
            self.norm,
            self.probe.class_names,
            None if self.display is None else self.display.channels,
        )

    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def check(model: Any, example: torch.Tensor, _layers: dict[str, torch.nn.Module]) -> None:
            self._targets = self._build_targets(model, example)
            if self.final_upscale > 1:
                big = torch.nn.functional.interpolate(example[:1], scale_factor=self.final_upscale)
                try:
                    with torch.no_grad():
                        model(big)
                except Exception as err:
                    raise ValueError(
                        f"Expected the model to take inputs {self.final_upscale}x the probe size for "
                        f"`final_upscale={self.final_upscale}`, but it raised {type(err).__name__}: {err}"
                    ) from err

        self.setup_layers(pl_module, [], None, check)

    def _catch_up(self, epoch: int) -> None:
        """After a resume from a checkpoint saved before an epoch's probe ran (at its last validation), read that
        probe's images back through the sink, for ``moved`` and the strips."""
        have = {e for e, _ in self._history}
        for done in sorted(e for e in self.done_epochs if e < epoch and e not in have):
            arrays = self.sink.read_npz(done, "images") if self.sink is not None else None
            if arrays is not None:
                self._history.append((done, torch.from_numpy(arrays["images"]).half()))
                if done == max(self.done_epochs):
                    self._previous = dict(zip(arrays["keys"].tolist(), self._history[-1][1].unbind(0)))
        self._history.sort(key=lambda item: item[0])

    @override
    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        self._catch_up(epoch)
        self.device_probe(pl_module)  # the model's device: the ops follow its parameters
        result = compute(self.logits_model(pl_module), self._config(), epoch=epoch, previous=self._previous)
        self.sink.write(result)
        images = result.images.half()
        self._previous = {key: images[i] for i, key in enumerate(result.activation)}
        self._history.append((epoch, images))

    @override
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._history:
            return
        last = self._history[-1][0]
        keys = [target_key(t) for t in self._targets]
        if len(self._history[-1][1]) == len(keys):
            labels = [label_of(t, self.probe.class_names) for t in self._targets]
            shown = None if self.display is None else self.display.channels
            for name, image in evolution(self._history, keys, labels, self.max_strip, shown).items():
                self.sink.image(name, image, last, artifact=True)
        if self.final_steps > 0:
            model = self.logits_model(pl_module)
            config = self._config()
            final = compute(
                model, config, epoch=last, steps=self.final_steps, upscale_by=self.final_upscale, final=True
            )
            for name, image in final.render().items():
                self.sink.image(name, image, last, artifact=True)
            for name, arrays in final.arrays().items():
                self.sink.npz(last, name, **arrays)
