"""``CAMCallback``: class activation maps of a fixed probe set during training (issue 3; seeds 003, 004).

Example:
    >>> import pytorch_lightning as pl
    >>> from trainviz.callbacks.cam import CAMCallback
    >>> from trainviz.data import ShapesDataModule
    >>> from trainviz.models import DemoClassifier
    >>> cb = CAMCallback(layers=["net.features.1", "net.features"], method="gradcam", every_n_epochs=1)
    >>> trainer = pl.Trainer(max_epochs=3, callbacks=[cb], enable_progress_bar=False,
    ...                      default_root_dir="/tmp/trainviz-doctest")  # doctest: +SKIP
    >>> trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.checks import check_choice, check_positive_int
from trainviz.core.guard import model_device, model_dtype, probe_guard
from trainviz.core.layers import resolve_layers
from trainviz.ops.cam import AGGREGATES, METHODS, CAMResult, class_activation_maps, class_mean_maps, resize_maps
from trainviz.ops.guided import guided_grad_cam
from trainviz.ops.localization import (
    confidence_change,
    deletion_curve,
    energy_pointing_game,
    map_correlation,
    pointing_game,
    pointing_game_chance,
)
from trainviz.render.images import caption_tiles, colorize, image_grid, overlay_heatmaps, to_uint8, upscale
from trainviz.render.strips import evolution_strip, gradient_images

__all__ = ["CAMCallback"]

_STATE_SIDE = 32  # maps kept between runs (drift reference, evolution strips) are at most this many pixels a side
_GREEN, _RED = (20, 120, 40), (190, 30, 30)


def _check_layers(layers: Any) -> tuple[str, ...]:
    if isinstance(layers, str):
        layers = (layers,)
    ok = isinstance(layers, Sequence) and len(layers) > 0 and all(isinstance(n, str) and n for n in layers)
    if not ok:
        raise ValueError(f"Expected `layers` to be a layer name, 'auto', or a non-empty list of them, got {layers!r}.")
    if len(set(layers)) != len(layers):
        raise ValueError(f"Expected distinct names in `layers`, got {list(layers)!r}.")
    return tuple(layers)


class CAMCallback(ProbeCallback):
    """Class activation maps (CAM, Grad-CAM, Grad-CAM++, optionally guided) of a fixed probe set every N
    epochs: overlays per layer and aggregated, per-class mean maps, localisation and faithfulness scores,
    drift between runs, and at fit end one strip per tracked image of its map across epochs (seed 003,
    figures 3-5).

    All layers come from one forward and one ``torch.autograd.grad`` per probe batch
    (:func:`trainviz.ops.cam.class_activation_maps`); guided Grad-CAM adds one backward to the input.
    The faithfulness scores run ``2 + deletion_steps + 1`` forward passes of the probe set per map (each
    layer, and the aggregate when there are several layers).

    Logged keys (step = epoch index; ``<layer>`` is each resolved layer name, and ``aggregate`` the layers
    combined, which with one layer is that layer's map):
        - ``trainviz/cam/<layer>/overlay``, ``trainviz/cam/aggregate/overlay`` (images): the first ``n_grid``
          probe images (one per class first) under their map, captioned with the true class, the
          predicted class and its probability (green when right, red when wrong).
        - ``trainviz/cam/layers`` (image, several layers only): rows of ``[input, each layer, aggregate]``.
        - ``trainviz/cam/aggregate/class_mean`` (image): mean aggregated map of each true class.
        - ``trainviz/cam/aggregate/guided_grad_cam`` (image, ``guided=True``): guided Grad-CAM of the grid images.
        - ``trainviz/cam/<layer or aggregate>/pointing_game`` and ``.../energy_pointing_game`` (scalars, only
          when the probe set has masks, e.g. the ``shapes`` data) and ``trainviz/cam/pointing_game_chance``
          (the mean mask area fraction: what a random point scores).
        - ``trainviz/cam/<layer or aggregate>/average_drop`` and ``.../increase_in_confidence`` (scalars,
          fractions in [0, 1]): the target probability when the input is multiplied by the map, with 0
          (the normalisation mean colour for normalised inputs) where the map is 0.
        - ``trainviz/cam/<layer or aggregate>/deletion_auc`` (scalar): area under the target probability as the
          most salient pixels are replaced by 0 in ``deletion_steps`` steps (lower: more faithful).
        - ``trainviz/cam/<layer or aggregate>/drift_correlation`` (scalar, from the second run on): mean
          Pearson correlation of each probe image's map with its map at the previous run (1: stable),
          computed on maps shrunk to at most 32 pixels a side.
        - ``trainviz/cam/target_probability`` (scalar): mean probability of the explained class.
        - ``trainviz/cam/evolution`` (image, at fit end, step = last epoch): the ``n_tracked`` images' aggregated
          maps across (at most ``max_strip`` evenly spaced) epochs.
        - ``trainviz/cam/seconds``, ``trainviz/cam/failures`` (scalars, from the base class).
        - artifacts: ``cam/epoch_XXXX/maps.npz`` (``maps/<key>`` float16 ``(N, H, W)``, ``ids``, ``labels``,
          ``targets``, ``probs``, and per image ``pointing_hit/<key>``, ``energy/<key>``, ``drop/<key>``,
          ``increase/<key>``, ``deletion_curve/<key>``, ``deletion_auc/<key>``, ``drift/<key>``),
          ``cam/metrics.jsonl`` (the scalars of each run), PNGs of every image above, and at fit end
          ``cam/epoch_XXXX/evolution.npz`` (``maps`` ``(epochs, n_tracked, h, w)``, ``epochs``, ``ids``).

    Args:
        layers: layer names (see ``trainviz.list_layers(model)``) or ``"auto"`` (the last module with a 4-D
            output); resolved at setup, where an unknown name raises ``ValueError``.
        method: ``"gradcam"``, ``"gradcam++"`` or ``"cam"`` (final linear weights x feature maps; needs
            ``layer -> global average pooling -> linear``, checked at setup).
        aggregate: how several layers combine: ``"mean"`` or ``"max"`` of the per-layer maps (each min-max
            scaled at its own resolution, resized to the input), min-max scaled again.
        target: explain the ``"true"`` class or the ``"predicted"`` one.
        guided: also compute guided Grad-CAM (one more backward pass per batch).
        n_tracked: probe images followed across epochs in the evolution strip.
        n_grid: probe images in the overlay grids.
        fc_layer: for ``method="cam"``, the final linear layer (default: the model's last ``nn.Linear``).
        deletion_steps: steps of the deletion curve.
        pointing_tolerance: pixels by which masks grow for the pointing game.
        max_strip: most epochs shown in the evolution strip.
        reshape: a callable turning a layer's output into feature maps ``(N, C, h, w)``, for token layouts
            other than the default (tokens ``(N, T, C)`` on a square grid, a class token first dropped; see
            :func:`trainviz.core.layers.tokens_to_grid`). ``layers="auto"`` on a vision transformer picks the last
            token layer whose patch tokens get a gradient (:mod:`trainviz.core.layers`) and logs its choice.
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``,
            ``probe_size`` (default 64), ``batch_size``, ...).

    Example:
        ``Trainer(callbacks=[CAMCallback(layers=["net.features.1", "net.features"])]).fit(model, datamodule)``
        or the preset ``callbacks/cam.yaml`` with LightningCLI.
    """

    name = "cam"
    default_probe_size = 64

    def __init__(
        self,
        layers: Sequence[str] | str = ("auto",),
        method: Literal["gradcam", "gradcam++", "cam"] = "gradcam",
        aggregate: Literal["mean", "max"] = "mean",
        target: Literal["true", "predicted"] = "true",
        guided: bool = False,
        n_tracked: int = 4,
        n_grid: int = 16,
        fc_layer: str | None = None,
        deletion_steps: int = 16,
        pointing_tolerance: int = 0,
        max_strip: int = 12,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        probe_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(probe_size=probe_size, **kwargs)
        self.layers = _check_layers(layers)
        self.method = check_choice("method", method, METHODS)
        self.aggregate = check_choice("aggregate", aggregate, AGGREGATES)
        self.target = check_choice("target", target, ("true", "predicted"))
        if not isinstance(guided, bool):
            raise ValueError(f"Expected `guided` to be a bool, got {guided!r}.")
        self.guided = guided
        self.n_tracked = check_positive_int("n_tracked", n_tracked)
        self.n_grid = check_positive_int("n_grid", n_grid)
        if fc_layer is not None and (not isinstance(fc_layer, str) or method != "cam"):
            raise ValueError(f"Expected `fc_layer` to be a layer name used with method='cam', got {fc_layer!r} with method={method!r}.")
        self.fc_layer = fc_layer
        self.deletion_steps = check_positive_int("deletion_steps", deletion_steps)
        if isinstance(pointing_tolerance, bool) or not isinstance(pointing_tolerance, int) or pointing_tolerance < 0:
            raise ValueError(f"Expected `pointing_tolerance` to be a non-negative int, got {pointing_tolerance!r}.")
        self.pointing_tolerance = pointing_tolerance
        self.max_strip = check_positive_int("max_strip", max_strip)
        if reshape is not None and not callable(reshape):
            raise ValueError(f"Expected `reshape` to be a callable (N, T, C) -> (N, C, h, w) or None, got {reshape!r}.")
        self.reshape = reshape
        self._layers: dict[str, torch.nn.Module] = {}
        self._history: list[tuple[int, torch.Tensor]] = []  # (epoch, tracked aggregate maps) on the CPU, float16
        self._previous: dict[str, torch.Tensor] = {}  # last run's maps (shrunk) per key, for drift

    # identity & state ------------------------------------------------------------------------------
    @override
    def _state_args(self) -> dict[str, Any]:
        return {
            **super()._state_args(),
            "layers": self.layers,
            "method": self.method,
            "aggregate": self.aggregate,
            "target": self.target,
            "guided": self.guided,
        }

    @override
    def _extra_state(self) -> dict[str, Any]:
        return {
            "history_epochs": [e for e, _ in self._history],
            "history_maps": torch.stack([m for _, m in self._history]) if self._history else None,
            "previous": dict(self._previous),
        }

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        maps = state.get("history_maps")
        self._history = [] if maps is None else list(zip(state.get("history_epochs", []), maps.unbind(0)))
        self._previous = dict(state.get("previous") or {})

    @override
    def _on_probe_changed(self) -> None:
        self._history, self._previous = [], {}

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, method {self.method}, layers {list(self._layers) or list(self.layers)}"

    # setup -----------------------------------------------------------------------------------------
    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        example = self.probe.images[:2].to(model_device(pl_module), model_dtype(pl_module))
        with probe_guard(pl_module):
            self._layers = resolve_layers(self.logits_model(pl_module), list(self.layers), example[:1], self.reshape)
            self._maps(pl_module, example, self.probe.labels[:2].to(example.device))  # raises if the method or `output=` does not apply
        if "auto" in self.layers:
            rank_zero_info(f"trainviz: {type(self).__name__} layers='auto' resolved to {list(self._layers)}")

    # running ---------------------------------------------------------------------------------------
    def _maps(self, pl_module: pl.LightningModule, images: torch.Tensor, labels: torch.Tensor) -> CAMResult:
        compute = guided_grad_cam if self.guided else class_activation_maps
        return compute(
            self.logits_model(pl_module),
            images,
            self._layers,
            labels if self.target == "true" else "predicted",
            method=self.method,
            aggregate=self.aggregate,
            fc_layer=self.fc_layer,
            batch_size=self.batch_size,
            reshape=self.reshape,
        )

    def _indices(self, count: int) -> list[int]:
        """``count`` probe indices taking classes in turn (the first of each class, then the second, ...)."""
        labels = self.probe.labels.tolist()
        seen: dict[int, int] = {}
        turn = []
        for c in labels:
            turn.append(seen.get(c, 0))
            seen[c] = turn[-1] + 1
        return sorted(range(len(labels)), key=lambda i: (turn[i], labels[i], i))[:count]

    @staticmethod
    def _shrink(maps: torch.Tensor) -> torch.Tensor:
        h, w = maps.shape[-2:]
        scale = min(1.0, _STATE_SIDE / max(h, w))
        return resize_maps(maps.float(), (max(1, round(h * scale)), max(1, round(w * scale)))).half().cpu()

    @override
    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        probe = self.device_probe(pl_module)
        result = self._maps(pl_module, probe.images, probe.labels)
        maps = {**result.maps, "aggregate": result.aggregate}
        small = {key: self._shrink(m) for key, m in maps.items()}
        scalars, per_image = self._metrics(pl_module, probe, result, maps, small)
        names = list(scalars)
        floats = torch.stack([v.detach().float().reshape(()) for v in scalars.values()]).cpu().tolist()
        self.sink.scalars(dict(zip(names, floats)), epoch)
        self.sink.record("metrics", {"epoch": epoch, **dict(zip(names, floats))})
        self._write_images(probe, result, maps, epoch)
        probs = result.logits.float().softmax(1)
        self.sink.npz(
            epoch, "maps", ids=probe.ids, labels=probe.labels, targets=result.targets, probs=probs,
            **{f"maps/{key}": m.half() for key, m in maps.items()}, **per_image,
        )
        self._previous = small
        self._history.append((epoch, small["aggregate"][self._indices(self.n_tracked)]))

    def _metrics(
        self, pl_module: pl.LightningModule, probe: Any, result: CAMResult,
        maps: dict[str, torch.Tensor], small: dict[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Scalars ``{"<key>/<metric>": value}`` and per-image arrays ``{"<metric>/<key>": values}``."""
        probs = result.logits.float().softmax(1)
        scalars = {"target_probability": probs.gather(1, result.targets[:, None]).mean()}
        if probe.masks is not None:
            scalars["pointing_game_chance"] = pointing_game_chance(probe.masks, self.pointing_tolerance).mean()
        per_image: dict[str, torch.Tensor] = {}
        for key, m in maps.items():
            if not (key == "aggregate" and len(result.maps) == 1):  # else the aggregate is the one layer's map
                values, arrays = self._map_metrics(pl_module, probe, result.targets, m, small[key], self._previous.get(key))
            scalars.update({f"{key}/{name}": v for name, v in values.items()})
            per_image.update({f"{name}/{key}": v for name, v in arrays.items()})
        return scalars, per_image

    def _map_metrics(
        self, pl_module: pl.LightningModule, probe: Any, targets: torch.Tensor, m: torch.Tensor,
        small: torch.Tensor, previous: torch.Tensor | None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Metrics of one stack of maps: means (scalars) and per-image values (arrays)."""
        values, arrays = {}, {}
        if probe.masks is not None:
            arrays["pointing_hit"] = pointing_game(m, probe.masks, self.pointing_tolerance)
            arrays["energy"] = energy_pointing_game(m, probe.masks)
            values["pointing_game"] = arrays["pointing_hit"].float().mean()
            values["energy_pointing_game"] = arrays["energy"].mean()
        model = self.logits_model(pl_module)
        arrays["drop"], arrays["increase"] = confidence_change(model, probe.images, m, targets, batch_size=self.batch_size)
        arrays["deletion_curve"], arrays["deletion_auc"] = deletion_curve(
            model, probe.images, m, targets, steps=self.deletion_steps, batch_size=self.batch_size
        )
        values["average_drop"] = arrays["drop"].mean()
        values["increase_in_confidence"] = arrays["increase"].float().mean()
        values["deletion_auc"] = arrays["deletion_auc"].mean()
        if previous is not None and previous.shape == small.shape:
            arrays["drift"] = map_correlation(small.float(), previous.float())
            values["drift_correlation"] = arrays["drift"].nanmean()
        return values, arrays

    def _write_images(self, probe: Any, result: CAMResult, maps: dict[str, torch.Tensor], epoch: int) -> None:
        sink = self.sink
        idx = self._indices(self.n_grid)
        class_names = probe.class_names or [str(c) for c in range(result.logits.shape[1])]
        pixels = self.norm.denormalize(probe.images[idx].float())
        probs = result.logits[idx].float().softmax(1)
        conf, pred = probs.max(1)
        labels, pred, conf = probe.labels[idx].tolist(), pred.tolist(), conf.tolist()
        captions = [f"true {class_names[t]}\npred {class_names[p]} {c:.2f}" for t, p, c in zip(labels, pred, conf)]
        colours = [_GREEN if t == p else _RED for t, p in zip(labels, pred)]
        ncols = min(8, len(idx))
        overlays = {key: overlay_heatmaps(pixels, m[idx]) for key, m in maps.items()}
        for key, tiles in overlays.items():
            sink.image(f"{key}/overlay", image_grid(caption_tiles(tiles, captions, colours), ncols), epoch, artifact=True)
        if len(result.maps) > 1:
            rows = self._indices(self.n_tracked)
            inputs = to_uint8(upscale(pixels[: len(rows)]))
            columns = [inputs] + [overlays[key][: len(rows)] for key in maps]
            tiles = np.stack([col[r] for r in range(len(rows)) for col in columns])
            heads = ["input"] + list(maps)
            tile_captions = [f"{heads[c]}\n{class_names[labels[r]]}" if c == 0 else heads[c] for r in range(len(rows)) for c in range(len(columns))]
            sink.image("layers", image_grid(caption_tiles(tiles, tile_captions), len(columns)), epoch, artifact=True)
        means, counts = class_mean_maps(result.aggregate, probe.labels, len(class_names))
        mean_tiles = to_uint8(upscale(colorize(means)))
        mean_captions = [f"{class_names[c]}\nn={n}" for c, n in enumerate(counts.tolist())]
        sink.image("aggregate/class_mean", image_grid(caption_tiles(mean_tiles, mean_captions), min(8, len(class_names))), epoch, artifact=True)
        if result.guided is not None:
            tiles = to_uint8(upscale(gradient_images(result.guided_grad_cam[idx])))
            sink.image("aggregate/guided_grad_cam", image_grid(caption_tiles(tiles, captions, colours), ncols), epoch, artifact=True)

    # fit end ---------------------------------------------------------------------------------------
    @override
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._history:
            return
        idx = self._indices(self.n_tracked)
        epochs = [e for e, _ in self._history]
        stack = torch.stack([m for _, m in self._history])
        keep = sorted(set(np.linspace(0, len(epochs) - 1, min(self.max_strip, len(epochs))).round().astype(int).tolist()))
        class_names = self.probe.class_names or [str(c) for c in range(self.probe.num_classes)]
        strip = evolution_strip(
            self.norm.denormalize(self.probe.images[idx].float()),
            stack[keep].float(),
            [epochs[i] for i in keep],
            [class_names[c] for c in self.probe.labels[idx].tolist()],
        )
        self.sink.image("evolution", strip, epochs[-1], artifact=True)
        self.sink.npz(epochs[-1], "evolution", maps=stack, epochs=np.asarray(epochs), ids=self.probe.ids[idx])
