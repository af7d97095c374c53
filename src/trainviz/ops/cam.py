"""Class activation maps: CAM, Grad-CAM, Grad-CAM++ and their multi-layer aggregation (pure torch).

All methods share one routine, :func:`activations_and_gradients`: ONE forward pass with every requested
layer captured, then ONE ``torch.autograd.grad`` of the summed target scores down to the captured
activations only (the backward stops there; parameter ``.grad`` is never touched). CAM needs no gradient
and runs the forward alone.

Per layer, for target class ``c`` with score ``y_c`` (the logit) and activations ``A`` of shape
``(C, h, w)``:

* **CAM** (Zhou et al. 2016; eq. 6 of Zhang's encoder-decoder paper): ``M = sum_k w_k^c A_k`` with ``w^c`` the row of
  the final
  linear layer. Applies only when the logits are ``linear(global_average_pool(A))``; this is checked
  numerically and a ``ValueError`` says so otherwise.
* **Grad-CAM** (Selvaraju et al. 2017): ``w_k = mean_ij dy_c/dA_kij``, ``M = ReLU(sum_k w_k A_k)``.
* **Grad-CAM++** (Chattopadhay et al. 2018), the closed form for ``exp(y_c)`` used by pytorch-grad-cam:
  ``g = dy_c/dA``, ``alpha = g^2 / (2 g^2 + sum_ij(A) g^3)`` (0 where ``g == 0``),
  ``w_k = sum_ij alpha_kij ReLU(g_kij)``, ``M = ReLU(sum_k w_k A_k)``.

Transformers: a token layer ``(N, T, C)`` is laid out as feature maps ``(N, C, h, w)`` before the maps are
computed, by ``reshape=`` (a callable, applied to every layer's output as pytorch-grad-cam's
``reshape_transform``) or by default :func:`trainviz.core.layers.tokens_to_grid` (``T = h*w`` on a square grid, or
``h*w + 1`` with a class token first, which is dropped). The gradient is taken w.r.t. the layer's own output
(the tensor in the graph), then activations and gradients are both reshaped, so CAM, Grad-CAM, Grad-CAM++
and the aggregate apply unchanged. For a class-token ViT use a layer on the input side of the last block
(``"auto"`` finds one, see :mod:`trainviz.core.layers`): the last block's output reaches the head only through
the class token, so its patch tokens have zero gradient.

Every map is ReLU'd (also CAM's), min-max scaled to [0, 1] at its own resolution, then bilinearly resized
to the input size (``align_corners=False``). Several layers are combined by the pixel-wise ``"mean"`` or
``"max"`` of the resized maps, then min-max scaled again (pytorch-grad-cam's order); with one layer the
aggregate IS that layer's map. For a GAP + linear head, CAM equals Grad-CAM at the last conv layer
(the Grad-CAM weights are ``w^c / (h w)``).

Targets (``targets=``): ``"predicted"`` (arg-max class), ``"topk"`` (the ``k`` best classes), an ``int``
(one class for every image), a 1-D integer tensor (one class per image, e.g. the true labels), a 2-D
integer tensor ``(N, k)`` (several classes per image) or a list of ints (the same class list for every
image). Single-target specs give maps of shape ``(N, H, W)``, several targets ``(N, k, H, W)``. Several
targets cost one ``autograd.grad`` call per target on the one retained graph (still one forward).

The model's train/eval mode is the caller's business: call these in eval mode (``trainviz.core.guard.probe_guard``
does it), else BatchNorm updates its running statistics during the forward. The routine turns inference
mode off and gradients on for itself, so it also works inside ``torch.inference_mode()``.

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.ops.cam import grad_cam
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 4)).eval()
    >>> result = grad_cam(net, torch.randn(2, 3, 16, 16), layers="1", targets=torch.tensor([0, 3]))
    >>> result.maps["1"].shape, result.aggregate.shape, result.raw["1"].shape
    (torch.Size([2, 16, 16]), torch.Size([2, 16, 16]), torch.Size([2, 16, 16]))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

from trainviz.core.checks import check_choice, check_images, check_positive_int
from trainviz.core.hooks import capture
from trainviz.core.layers import (
    LayerSpec,
    Reshape,
    model_layout,
    resolve_layer,
    resolve_layers,
    to_feature_maps,
    tokens_to_grid,
)
from trainviz.core.outputs import expect_logits
from trainviz.core.transfer import whole

__all__ = [
    "AGGREGATES",
    "METHODS",
    "CAMResult",
    "ClassActivationMaps",
    "LayerPass",
    "activations_and_gradients",
    "aggregate_maps",
    "cam",
    "class_activation_maps",
    "class_mean_maps",
    "grad_cam",
    "grad_cam_pp",
    "maps_from_pass",
    "minmax_scale",
    "resize_maps",
    "resolve_targets",
    "tokens_to_grid",
]

Method = Literal["cam", "gradcam", "gradcam++"]
Aggregate = Literal["mean", "max"]
TargetSpec = Union[Literal["predicted", "topk"], int, Sequence[int], torch.Tensor]
Layers = Union[LayerSpec, Sequence[LayerSpec], Mapping[str, nn.Module]]

METHODS: tuple[str, ...] = ("cam", "gradcam", "gradcam++")
AGGREGATES: tuple[str, ...] = ("mean", "max")
_EPS_PP = 1e-6  # Grad-CAM++ denominator, as pytorch-grad-cam


# --------------------------------------------------------------------------------------------------
# targets and layers
# --------------------------------------------------------------------------------------------------
def resolve_targets(logits: torch.Tensor, targets: TargetSpec, k: int = 1) -> tuple[torch.Tensor, bool]:
    """Turn a target spec into class indices ``(N, k)`` and whether the spec is one-per-image.

    Args:
        logits: model outputs.
        targets: see the module docstring.
        k: number of classes for ``targets="topk"``.

    Shape:
        logits ``(N, K)`` -> indices ``(N, k)`` (long, on the logits' device).
    """
    n, num_classes = logits.shape
    check_positive_int("k", k)
    if isinstance(targets, str):
        check_choice("targets", targets, ("predicted", "topk"))
        if targets == "predicted":
            return logits.argmax(1, keepdim=True), True
        if k > num_classes:
            raise ValueError(f"Expected `k` <= the {num_classes} classes for targets='topk', got {k}.")
        return logits.topk(k, dim=1).indices, False
    if isinstance(targets, bool):
        raise ValueError(f"Expected `targets` to be a class index, not a bool, got {targets!r}.")
    if isinstance(targets, int):
        idx, single = torch.full((n, 1), targets, dtype=torch.long, device=logits.device), True
    elif isinstance(targets, torch.Tensor):
        if (
            targets.is_floating_point()
            or targets.dtype == torch.bool
            or targets.dim() not in (1, 2)
            or targets.shape[0] != n
        ):
            raise ValueError(
                f"Expected `targets` to be an integer tensor of shape ({n},) or ({n}, k), "
                f"got {targets.dtype} {tuple(targets.shape)}."
            )
        single = targets.dim() == 1
        idx = targets.to(logits.device, torch.long).reshape(n, -1)
    elif (
        isinstance(targets, Sequence)
        and targets
        and all(isinstance(t, int) and not isinstance(t, bool) for t in targets)
    ):
        idx, single = torch.tensor(list(targets), dtype=torch.long, device=logits.device).expand(n, -1), False
    else:
        raise ValueError(
            "Expected `targets` to be 'predicted', 'topk', an int, a list of ints or an integer tensor, "
            f"got {targets!r}."
        )
    if idx.numel() and bool((idx.min() < 0) | (idx.max() >= num_classes)):
        raise ValueError(f"Expected target classes in 0..{num_classes - 1}, got {idx.unique().tolist()}.")
    return idx, single


def _layer_dict(
    model: nn.Module, layers: Layers, images: torch.Tensor, reshape: Reshape = None
) -> dict[str, nn.Module]:
    if isinstance(layers, Mapping):
        return dict(layers)
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not layers:
        raise ValueError("Expected at least one layer in `layers`, got none.")
    with torch.no_grad():
        return resolve_layers(model, list(layers), example=images[:1], reshape=reshape)


# --------------------------------------------------------------------------------------------------
# the one forward + one truncated backward
# --------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class LayerPass:
    """What one forward (and one truncated backward per target) gives, all detached.

    Attributes:
        logits: model outputs.
        targets: class indices whose scores were differentiated.
        single: whether the target spec was one class per image.
        activations: ``{layer: A}`` (token layers laid out as feature maps, see the module docstring).
        gradients: ``{layer: dy/dA}`` per target (laid out as ``A``), or ``None`` when not requested.
        input_gradients: gradients w.r.t. the input under ``input_rule`` (e.g. guided backprop), or ``None``.

    Shape:
        logits ``(N, K)``, targets ``(N, k)``, activations ``(N, C, h, w)``, gradients ``(k, N, C, h, w)``,
        input_gradients ``(k, N, C_in, H, W)``.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    single: bool
    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor] | None
    input_gradients: torch.Tensor | None


def activations_and_gradients(
    model: nn.Module,
    images: torch.Tensor,
    layers: Layers,
    targets: TargetSpec = "predicted",
    *,
    k: int = 1,
    gradients: bool = True,
    input_rule: Callable[[], AbstractContextManager[Any]] | None = None,
    reshape: Reshape = None,
) -> LayerPass:
    """One forward capturing ``layers``, then the gradients of the target scores w.r.t. their outputs.

    The gradient of ``sum_n y_n[target_n]`` (one image's score does not depend on another's in eval mode)
    is taken by one ``torch.autograd.grad`` call for all layers, per target class; with ``input_rule``,
    one more call per target gives the gradient w.r.t. the input image while the rule is active.

    Args:
        model: the network, in the mode the caller wants (eval for probes).
        images: a batch of model inputs.
        layers: layer names, modules, ``"auto"`` (the last 4-D layer, or a token layer of a transformer:
            see :mod:`trainviz.core.layers`), or a resolved ``{name: module}``.
        targets: see :func:`resolve_targets`.
        k: classes per image for ``targets="topk"``.
        gradients: ``False`` runs the forward under ``torch.no_grad()`` (CAM).
        input_rule: a factory of a context manager entered around the forward (e.g.
            ``functools.partial(trainviz.ops.guided.guided_relu, model)``); the context yields an object whose
            ``active`` attribute is set ``True`` only while the input gradient is computed.
        reshape: a callable turning each layer's output into feature maps ``(N, C, h, w)``, e.g. for token
            layouts other than a square grid with an optional class token first; ``None``: 4-D outputs as
            they are, tokens ``(N, T, C)`` by :func:`~trainviz.core.layers.tokens_to_grid`.

    Shape:
        images ``(N, C, H, W)``; see :class:`LayerPass` for the outputs.
    """
    check_images(images)
    if reshape is None:
        reshape = model_layout(model, images)
    named = _layer_dict(model, layers, images, reshape)
    names = list(named)
    want_input = input_rule is not None
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad() if gradients or want_input else torch.no_grad())
        x = images.detach().clone() if images.is_inference() or gradients or want_input else images
        if gradients or want_input:
            x.requires_grad_(True)  # so layers after frozen parameters still get gradients
        switch = stack.enter_context(input_rule()) if want_input else None
        acts = stack.enter_context(capture(model, named, keep_graph=gradients))
        logits = expect_logits(model(x))
        missing = [n for n in names if n not in acts]
        if missing:
            raise ValueError(f"Layer(s) {missing} produced no tensor output in the forward pass (never called?).")
        maps = {n: to_feature_maps(acts[n].detach(), reshape, n) for n in names}  # raises for non-spatial layers
        idx, single = resolve_targets(logits.detach(), targets, k)
        scores = logits.gather(1, idx)
        grads: list[tuple[torch.Tensor, ...]] = []
        input_grads: list[torch.Tensor] = []
        for j in range(idx.shape[1]):
            more = j < idx.shape[1] - 1
            score = scores[:, j].sum()
            if gradients and names:
                grads.append(
                    torch.autograd.grad(
                        score,
                        [acts[n] for n in names],
                        retain_graph=more or want_input,
                        allow_unused=True,
                        materialize_grads=True,
                    )
                )
            if want_input:
                switch.active = True
                try:
                    input_grads.append(torch.autograd.grad(score, x, retain_graph=more)[0])
                finally:
                    switch.active = False
        return LayerPass(
            logits=logits.detach(),
            targets=idx,
            single=single,
            activations=maps,
            gradients={n: torch.stack([to_feature_maps(g[i], reshape, n) for g in grads]) for i, n in enumerate(names)}
            if gradients
            else None,
            input_gradients=torch.stack(input_grads) if want_input else None,
        )


# --------------------------------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------------------------------
def minmax_scale(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map to [0, 1]: ``(m - min) / (max - min)`` over the last two dims; a flat map gives zeros.

    Scale-invariant (no epsilon in the denominator), so tiny raw maps of an untrained net scale exactly;
    pytorch-grad-cam adds ``1e-7``, which differs from this by about ``1e-7 / (max - min)``.

    Shape:
        ``(*, h, w)`` -> ``(*, h, w)``
    """
    flat = maps.flatten(-2)
    flat = flat - flat.amin(-1, keepdim=True)
    top = flat.amax(-1, keepdim=True)
    return torch.where(top > 0, flat / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(flat)).view_as(
        maps
    )


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of maps (``align_corners=False``; anti-aliased when shrinking). No-op at equal size.

    Shape:
        ``(*, h, w)`` -> ``(*, H, W)``
    """
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    shrink = size[0] < maps.shape[-2] or size[1] < maps.shape[-1]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out.view(*maps.shape[:-2], *size)


def shrink_maps(maps: torch.Tensor, side: int) -> torch.Tensor:
    """Maps shrunk (anti-aliased bilinear, aspect kept) to at most ``side`` pixels a side, as float16: what
    callbacks keep between runs (drift references, evolution strips).

    Shape:
        ``(*, h, w)`` -> ``(*, h', w')`` with ``max(h', w') <= side``
    """
    h, w = maps.shape[-2:]
    scale = min(1.0, side / max(h, w))
    return resize_maps(maps.float(), (max(1, round(h * scale)), max(1, round(w * scale)))).half()


def aggregate_maps(maps: Sequence[torch.Tensor], size: tuple[int, int], mode: Aggregate = "mean") -> torch.Tensor:
    """Combine per-layer maps: each min-max scaled at its own resolution, resized to ``size``, combined
    pixel-wise by ``mode`` (``"mean"`` or ``"max"``), then min-max scaled again. One map is returned scaled
    and resized only.

    Args:
        maps: non-negative maps, one tensor per layer (resolutions may differ).
        size: output ``(H, W)``.
        mode: ``"mean"`` or ``"max"``.

    Shape:
        each ``(*, h_i, w_i)`` -> ``(*, H, W)``
    """
    check_choice("aggregate", mode, AGGREGATES)
    if not maps:
        raise ValueError("Expected at least one map to aggregate, got none.")
    resized = [resize_maps(minmax_scale(m), size) for m in maps]
    if len(resized) == 1:
        return resized[0]
    stacked = torch.stack(resized)
    return minmax_scale(stacked.mean(0) if mode == "mean" else stacked.amax(0))


def _fc_weight(model: nn.Module, fc_layer: LayerSpec | None, p: LayerPass) -> torch.Tensor:
    """Weights of the final linear layer, after checking that ``logits == fc(GAP(A))`` at every layer."""
    if fc_layer is None:
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                "CAM needs a final nn.Linear layer after global average pooling; the model has none. "
                "Use method='gradcam'."
            )
        name, fc = linears[-1]
    else:
        name, fc = resolve_layer(model, fc_layer)
        if not isinstance(fc, nn.Linear):
            raise ValueError(f"Expected `fc_layer` {name!r} to be an nn.Linear, got {type(fc).__name__}.")
    weight = whole(fc.weight).float()  # gathered when FSDP2 shards it (every rank computes CAM in lockstep)
    bias = whole(fc.bias).float() if fc.bias is not None else 0.0
    logits = p.logits.float()
    if fc.out_features != logits.shape[1]:
        raise ValueError(
            f"CAM does not apply at layer {next(iter(p.activations), '?')!r}: "
            f"{name!r} has {fc.out_features} outputs but the "
            f"model gives {logits.shape[1]} logits. Pass `fc_layer=` the final linear layer, or use method='gradcam'."
        )
    tolerance = 1e-3 if p.logits.dtype in (torch.float32, torch.float64) else 3e-2  # half-precision models
    for layer, a in p.activations.items():
        if a.shape[1] != fc.in_features:
            raise ValueError(
                f"CAM does not apply at layer {layer!r}: it has {a.shape[1]} channels but {name!r} takes "
                f"{fc.in_features} inputs. CAM needs `{layer} -> global average pooling -> {name}`; "
                "use method='gradcam'."
            )
        pooled = a.float().mean((2, 3)) @ weight.T + bias
        if bool((pooled - logits).abs().max() > tolerance * (1 + logits.abs().max())):
            raise ValueError(
                f"CAM does not apply at layer {layer!r}: the logits are not {name}(global average pooling of "
                f"{layer}). Pass the layer just before the pooling, `fc_layer=` the final linear layer, "
                "or use method='gradcam'."
            )
    return weight


def _raw_maps(p: LayerPass, method: Method, fc_weight: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """ReLU'd maps at each layer's resolution, ``(N, k, h, w)`` float32."""
    out = {}
    for name, a in p.activations.items():
        a = a.float()
        if method == "cam":
            weights = fc_weight[p.targets].transpose(0, 1)  # (k, N, C)
        else:
            g = p.gradients[name].float()  # (k, N, C, h, w)
            if method == "gradcam":
                weights = g.mean((-2, -1))
            else:
                g2 = g * g
                alpha = g2 / (2 * g2 + a.sum((-2, -1), keepdim=True) * g2 * g + _EPS_PP)
                alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
                weights = (alpha * g.clamp_min(0)).sum((-2, -1))
        out[name] = torch.einsum("knc,nchw->nkhw", weights, a).clamp_min(0)
    return out


@dataclass(kw_only=True)
class CAMResult:
    """Class activation maps of one batch.

    Attributes:
        maps: ``{layer: map}`` in [0, 1] at the input size (scaled at the layer's resolution, then resized).
        aggregate: the layers combined (see :func:`aggregate_maps`); with one layer, that layer's map.
        raw: ``{layer: map}`` after ReLU, unscaled, at the layer's resolution.
        logits: model outputs (detached).
        targets: class indices the maps explain.
        guided: guided backpropagation w.r.t. the input (only from :func:`trainviz.ops.guided.guided_grad_cam`).

    Shape:
        one target per image: maps/aggregate ``(N, H, W)``, raw ``(N, h, w)``, targets ``(N,)``, guided
        ``(N, C, H, W)``; ``k`` targets per image: an extra ``k`` dim after ``N``. logits ``(N, K)``.
    """

    maps: dict[str, torch.Tensor]
    aggregate: torch.Tensor
    raw: dict[str, torch.Tensor]
    logits: torch.Tensor
    targets: torch.Tensor
    guided: torch.Tensor | None = None

    @property
    def guided_grad_cam(self) -> torch.Tensor:
        """Guided Grad-CAM: ``guided * aggregate`` per input channel. Shape: like ``guided``."""
        if self.guided is None:
            raise ValueError("This result has no guided backpropagation; use trainviz.ops.guided.guided_grad_cam.")
        return self.guided * self.aggregate.unsqueeze(-3)

    @staticmethod
    def cat(results: Sequence[CAMResult]) -> CAMResult:
        """Concatenate batch results along N."""
        first = results[0]
        return CAMResult(
            maps={n: torch.cat([r.maps[n] for r in results]) for n in first.maps},
            aggregate=torch.cat([r.aggregate for r in results]),
            raw={n: torch.cat([r.raw[n] for r in results]) for n in first.raw},
            logits=torch.cat([r.logits for r in results]),
            targets=torch.cat([r.targets for r in results]),
            guided=None if first.guided is None else torch.cat([r.guided for r in results]),
        )


def maps_from_pass(
    model: nn.Module,
    p: LayerPass,
    size: tuple[int, int],
    method: Method = "gradcam",
    aggregate: Aggregate = "mean",
    fc_layer: LayerSpec | None = None,
) -> CAMResult:
    """Build the :class:`CAMResult` of ``method`` from a :class:`LayerPass` (maps of every layer, aggregate)."""
    raw = _raw_maps(p, method, _fc_weight(model, fc_layer, p) if method == "cam" else None)
    maps = {n: resize_maps(minmax_scale(r), size) for n, r in raw.items()}
    agg = aggregate_maps(list(raw.values()), size, aggregate)
    guided = None if p.input_gradients is None else p.input_gradients.transpose(0, 1)  # (N, k, C, H, W)
    if p.single:
        raw, maps = {n: r[:, 0] for n, r in raw.items()}, {n: m[:, 0] for n, m in maps.items()}
        agg, guided = agg[:, 0], None if guided is None else guided[:, 0]
    return CAMResult(
        maps=maps,
        aggregate=agg,
        raw=raw,
        logits=p.logits,
        targets=p.targets[:, 0] if p.single else p.targets,
        guided=guided,
    )


def _batched(
    images: torch.Tensor, targets: TargetSpec, batch_size: int | None
) -> list[tuple[torch.Tensor, TargetSpec]]:
    if batch_size is None:
        return [(images, targets)]
    check_positive_int("batch_size", batch_size)
    out = []
    for start in range(0, images.shape[0], batch_size):
        stop = start + batch_size
        out.append((images[start:stop], targets[start:stop] if isinstance(targets, torch.Tensor) else targets))
    return out


def class_activation_maps(
    model: nn.Module,
    images: torch.Tensor,
    layers: Layers = "auto",
    targets: TargetSpec = "predicted",
    *,
    method: Method = "gradcam",
    k: int = 1,
    aggregate: Aggregate = "mean",
    fc_layer: LayerSpec | None = None,
    batch_size: int | None = None,
    input_rule: Callable[[], AbstractContextManager[Any]] | None = None,
    reshape: Reshape = None,
) -> CAMResult:
    """Class activation maps of ``method`` for every layer in ``layers`` and their aggregate.

    Args:
        model: a classifier returning logits ``(N, K)``, in eval mode.
        images: model inputs.
        layers: one or several layer names / modules, ``"auto"`` (the last module with a 4-D output; on a
            transformer a token layer after the patch embedding, see :mod:`trainviz.core.layers`), or a resolved
            ``{name: module}`` dict.
        targets: which classes to explain (see the module docstring).
        method: ``"cam"``, ``"gradcam"`` or ``"gradcam++"``.
        k: classes per image for ``targets="topk"``.
        aggregate: ``"mean"`` or ``"max"`` over layers.
        fc_layer: for CAM, the final linear layer (default: the model's last ``nn.Linear``).
        batch_size: split ``images`` into batches of this size (one forward + backward each); ``None``: one batch.
        input_rule: see :func:`activations_and_gradients` (used by guided Grad-CAM).
        reshape: layer outputs to feature maps ``(N, C, h, w)`` (see :func:`activations_and_gradients`);
            ``None`` lays token layers ``(N, T, C)`` on a square grid, dropping a class token first.

    Returns:
        A :class:`CAMResult` on the images' device.

    Shape:
        images ``(N, C, H, W)``; maps ``(N, H, W)`` or ``(N, k, H, W)`` (see :class:`CAMResult`).

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
        ...                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
        >>> r = class_activation_maps(net, torch.randn(5, 1, 12, 12), ["1", "3"], "topk", k=2, aggregate="max")
        >>> r.maps["3"].shape, r.raw["3"].shape, r.targets.shape
        (torch.Size([5, 2, 12, 12]), torch.Size([5, 2, 5, 5]), torch.Size([5, 2]))
    """
    check_choice("method", method, METHODS)
    check_choice("aggregate", aggregate, AGGREGATES)
    check_images(images)
    named = _layer_dict(model, layers, images, reshape)
    size = tuple(images.shape[-2:])
    results = []
    for x, t in _batched(images, targets, batch_size):
        p = activations_and_gradients(
            model, x, named, t, k=k, gradients=method != "cam", input_rule=input_rule, reshape=reshape
        )
        results.append(maps_from_pass(model, p, size, method, aggregate, fc_layer))
    return results[0] if len(results) == 1 else CAMResult.cat(results)


def cam(
    model: nn.Module, images: torch.Tensor, layers: Layers = "auto", targets: TargetSpec = "predicted", **kwargs: Any
) -> CAMResult:
    """CAM (Zhou et al.): final linear weights x last feature maps, forward pass only.
    See :func:`class_activation_maps` for the arguments."""
    return class_activation_maps(model, images, layers, targets, method="cam", **kwargs)


def grad_cam(
    model: nn.Module, images: torch.Tensor, layers: Layers = "auto", targets: TargetSpec = "predicted", **kwargs: Any
) -> CAMResult:
    """Grad-CAM (Selvaraju et al.). See :func:`class_activation_maps` for the arguments."""
    return class_activation_maps(model, images, layers, targets, method="gradcam", **kwargs)


def grad_cam_pp(
    model: nn.Module, images: torch.Tensor, layers: Layers = "auto", targets: TargetSpec = "predicted", **kwargs: Any
) -> CAMResult:
    """Grad-CAM++ (Chattopadhay et al.). See :func:`class_activation_maps` for the arguments."""
    return class_activation_maps(model, images, layers, targets, method="gradcam++", **kwargs)


class ClassActivationMaps:
    """The class face of :func:`class_activation_maps`: model, layers and method fixed once.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> explain = ClassActivationMaps(net.eval(), layers="1", method="gradcam++")
        >>> explain(torch.randn(3, 3, 8, 8), targets=1).aggregate.shape
        torch.Size([3, 8, 8])
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Layers = "auto",
        method: Method = "gradcam",
        *,
        aggregate: Aggregate = "mean",
        fc_layer: LayerSpec | None = None,
        reshape: Reshape = None,
    ) -> None:
        self.model = model
        self.layers = layers
        self.method = check_choice("method", method, METHODS)
        self.aggregate = check_choice("aggregate", aggregate, AGGREGATES)
        self.fc_layer = fc_layer
        self.reshape = reshape

    def __call__(
        self, images: torch.Tensor, targets: TargetSpec = "predicted", k: int = 1, batch_size: int | None = None
    ) -> CAMResult:
        return class_activation_maps(
            self.model,
            images,
            self.layers,
            targets,
            method=self.method,
            k=k,
            aggregate=self.aggregate,
            fc_layer=self.fc_layer,
            batch_size=batch_size,
            reshape=self.reshape,
        )


def class_mean_maps(maps: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean map per class and the number of maps in each (a class without maps gets zeros).

    Shape:
        maps ``(N, H, W)``, labels ``(N,)`` -> means ``(num_classes, H, W)``, counts ``(num_classes,)``
    """
    check_positive_int("num_classes", num_classes)
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes]
    sums = torch.zeros(num_classes, *maps.shape[1:], dtype=maps.dtype, device=maps.device).index_add_(0, labels, maps)
    return sums / counts.clamp_min(1).view(-1, *([1] * (maps.dim() - 1))).to(maps.dtype), counts
