"""Activation maximisation ("MaxOut", Strezoski & Worring): the input that a class logit, a channel or a unit
responds to most, for many targets at once (pure torch).

:func:`maximize` optimises one image per target, all targets in ONE batch, by Adam on the input:

    maximise  a_i(x_i) - tv_weight * TV(x_i) - norm_weight * ||x_i||^2 - edge_weight * h(x_i)

per image ``i``, where ``a_i`` is the target's activation (a logit; a channel's mean over its map; one unit),
``x_i`` the model input, :func:`total_variation` the anisotropic L1 total variation (the seed's "TV weight"),
``||x||^2`` the squared L2 norm (its "Norm") and ``h`` Fleuret's multi-scale edge energy (:func:`edge_energy`,
EE-559 "Maximum response samples"). All penalties are *sums* over the image, so the optimum of a linear unit
``<w, x>`` under the norm penalty alone is ``x* = w / (2 norm_weight)``. The seed's dashboard takes weights in
[0, 100] on keras-vis' per-element *means*; the equivalent weight here is that value divided by ``C*H*W``.

Images are parameterised in one of three ways:

* ``space="pixel"`` (default): pixels ``p = sigmoid(u)`` in [0, 1] (smooth, never clipped; Lucent's
  ``to_valid_rgb``), mapped to the model input by ``normalization`` (the probe set's); ``u`` starts at
  ``0.01 * N(0, 1)`` noise, a mid-grey image.
* ``space="input"``: the model input itself, unconstrained, starting at ``0.01 * N(0, 1)`` (the seed's loop).
* ``robust=True``: Lucent's defaults (``lucent.optvis.param.image(fft=True, decorrelate=True)`` and
  ``transform.standard_transforms``): a 1/f-scaled Fourier spectrum (``decay_power=1``, divided by Lucent's
  "magic" 4), colour decorrelated by Lucent's ``color_correlation_svd_sqrt`` matrix (3 channels), sigmoid to
  pixels, and at every step random transforms of the pixels before the model: pad 12 (grey 0.5), jitter 8, scale
  0.9..1.1, rotate -10..10 degrees (zero degrees five times as likely), jitter 4 -- amounts in pixels for a
  128-pixel side, scaled to the image side (at least 1 pixel) -- then the centre crop back to the model's size.
  One affine warp (bilinear, zeros outside, as kornia's) does jitter-scale-rotate-jitter. The transform draws
  come from a private generator and are shared by the whole batch, so each target still sees the same stream
  whatever the other targets are.

The starting noise of each target comes from its own generator, seeded from the base seed and the target's
name: the same target always starts from the same image, whichever other targets share the batch (Adam acts
per element and the images do not interact, so each target's result equals its result alone, up to float
rounding of batched convolutions). Gradients are taken by ``torch.autograd.grad`` with respect to the image
parameter only: model parameters' ``.grad`` are never touched. Layer activations come from one hooked forward
per step (:func:`trainviz.core.hooks.capture`, removed in ``finally``).

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.ops.maxact import maximize
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2)).eval()
    >>> out = maximize(net, [("logit", 0), ("logit", 1), ("channel", "0", 2)], (3, 16, 16), steps=8)
    >>> out.images.shape, out.keys
    (torch.Size([3, 3, 16, 16]), ['classes/0', 'classes/1', '0/channel_2'])
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
import torch.nn.functional as F
from torch import nn

from trainviz.core.hooks import capture
from trainviz.core.layers import resolve_layer
from trainviz.core.normalization import Normalization
from trainviz.core.outputs import expect_logits

__all__ = [
    "COLOR_CORRELATION_SVD_SQRT",
    "MaxResult",
    "Target",
    "edge_energy",
    "fft_image",
    "gaussian_blur",
    "maximize",
    "parse_target",
    "random_transform",
    "target_key",
    "total_variation",
]

Target = Union[tuple[str, int], tuple[str, str, int], tuple[str, str, Sequence[int]]]
"""``("logit", k)``, ``("channel", layer, c)`` or ``("unit", layer, (i, j, ...))`` (index after the batch axis)."""

COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
"""Lucent's (Lucid's) square root of the ImageNet colour correlation, ``lucent.optvis.param.color``."""

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # outer product / 256 = the seed's 5x5 kernel
_SIDE = 128.0  # Lucent's default image side, the scale of its transform amounts
_ANGLES = tuple(range(-10, 11)) + (0,) * 5  # Lucent's random_rotate choices
_SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))  # Lucent's random_scale choices


# penalties ---------------------------------------------------------------------------------------------------
def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation per image: ``sum |x[.., i+1, j] - x[.., i, j]| + |x[.., i, j+1] - x[.., i, j]|``
    over channels and pixels (as ``kornia.losses.total_variation`` with ``reduction="sum"``).

    Shape:
        ``(N, C, H, W)`` -> ``(N,)``
    """
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)
    return dy + dx


def edge_energy(x: torch.Tensor) -> torch.Tensor:
    """Fleuret's multi-scale edge energy ``h(x) = sum_s ||d^s(x) - g * d^s(x)||^2`` per image.

    Each channel is a one-channel image; ``g`` is the 5x5 kernel ``[1, 4, 6, 4, 1]^T [1, 4, 6, 4, 1] / 256``
    (zero padding 2), ``d`` the factor-2 downscale (2x2 mean, stride 2, zero padding 1); scales are added while
    both sides exceed 5 pixels (an image of side <= 5 has energy 0).

    Shape:
        ``(N, C, H, W)`` -> ``(N,)``
    """
    n, c = x.shape[:2]
    y = x.reshape(n * c, 1, *x.shape[2:])
    g = _BINOMIAL.to(x.device, x.dtype)
    total = x.new_zeros(n * c)
    while y.shape[2] > 5 and y.shape[3] > 5:
        blurry = F.conv2d(F.conv2d(y, g.view(1, 1, 5, 1), padding=(2, 0)), g.view(1, 1, 1, 5), padding=(0, 2))
        total = total + (y - blurry).pow(2).flatten(1).sum(1)
        y = F.avg_pool2d(y, 2, stride=2, padding=1, count_include_pad=True)
    return total.view(n, c).sum(1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of standard deviation ``sigma`` pixels (kernel ``2 ceil(3 sigma) + 1`` wide,
    reflected borders); the identity for ``sigma <= 0``.

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, H, W)``
    """
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)


# parameterisations -------------------------------------------------------------------------------------------
def _freq_scale(h: int, w: int, decay_power: float, device: torch.device) -> torch.Tensor:
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    freqs = (fx * fx + fy * fy).sqrt()
    return 1.0 / freqs.clamp_min(1.0 / max(h, w)) ** decay_power  # (h, w // 2 + 1)


def fft_image(spectrum: torch.Tensor, size: tuple[int, int], decay_power: float = 1.0) -> torch.Tensor:
    """Lucent's Fourier parameterisation: ``irfft2(scale * spectrum, ortho) / 4`` with ``scale = 1 / max(f, 1/side)``
    (``decay_power`` 1), before colour decorrelation and the sigmoid.

    Shape:
        spectrum ``(N, C, H, W // 2 + 1, 2)`` (real, imaginary) -> ``(N, C, H, W)``
    """
    h, w = size
    scale = _freq_scale(h, w, decay_power, spectrum.device)[None, None, :, :, None]
    image = torch.fft.irfftn(torch.view_as_complex((scale * spectrum).contiguous()), s=(h, w), norm="ortho")
    return image / 4.0


def _decorrelate(image: torch.Tensor) -> torch.Tensor:
    """Lucent's ``_linear_decorrelate_color``: each pixel's colour times the normalised correlation matrix."""
    m = COLOR_CORRELATION_SVD_SQRT.to(image.device, image.dtype)
    m = m / m.norm(dim=0).max()
    return torch.einsum("nchw,dc->ndhw", image, m)


def random_transform(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Lucent's ``standard_transforms`` (see the module docstring), one draw shared by the batch, cropped back to
    the input size.

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, H, W)``
    """
    n, c, h, w = pixels.shape
    s = min(h, w) / _SIDE
    pad, jit1, jit2 = (max(1, round(v * s)) for v in (12, 8, 4))
    draw = torch.randint(0, 2**31 - 1, (6,), generator=generator).tolist()  # one host draw per step, not per image
    d1 = (draw[0] % max(2, jit1), draw[1] % max(2, jit1))
    d2 = (draw[2] % max(2, jit2), draw[3] % max(2, jit2))
    scale = _SCALES[draw[4] % len(_SCALES)]
    angle = math.radians(_ANGLES[draw[5] % len(_ANGLES)])
    padded = F.pad(pixels, (pad, pad, pad, pad), value=0.5)
    ph, pw = padded.shape[-2:]
    # output coordinate -> input coordinate, in pixels about the centre: undo jitter 2, rotation, scale, jitter 1
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    tx = -(d2[0]) * 1.0
    ty = -(d2[1]) * 1.0
    ax = cos * tx + sin * ty - d1[0]
    ay = -sin * tx + cos * ty - d1[1]
    theta = torch.tensor(
        [[cos, sin * ph / pw, 2 * ax / pw], [-sin * pw / ph, cos, 2 * ay / ph]],
        dtype=pixels.dtype,
        device=pixels.device,
    )
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, ph, pw], align_corners=False)
    warped = F.grid_sample(padded, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped[..., pad : pad + h, pad : pad + w]


# targets -----------------------------------------------------------------------------------------------------
def parse_target(target: Target) -> tuple[str, str | None, tuple[int, ...]]:
    """``(kind, layer, index)`` of a target, checked.

    Raises:
        ValueError: not ``("logit", k)``, ``("channel", layer, c)`` or ``("unit", layer, (i, ...))``.
    """
    t: Any = target
    ok = isinstance(t, (tuple, list)) and len(t) >= 2 and t[0] in ("logit", "channel", "unit")
    if ok and t[0] == "logit":
        if len(t) == 2 and _is_index(t[1]):
            return "logit", None, (int(t[1]),)
    elif ok:
        layer, index = t[1], t[2] if len(t) == 3 else None
        ok = isinstance(layer, str) and bool(layer)
        if ok and t[0] == "channel" and _is_index(index):
            return "channel", layer, (int(index),)
        if ok and t[0] == "unit" and isinstance(index, (tuple, list)) and index and all(map(_is_index, index)):
            return "unit", layer, tuple(int(i) for i in index)
    raise ValueError(
        "Expected a target ('logit', k), ('channel', layer, c) or ('unit', layer, (i, j, ...)) with non-negative "
        f"int indices, got {target!r}."
    )


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def target_key(target: Target) -> str:
    """The target's name in tags: ``classes/<k>``, ``<layer>/channel_<c>``, ``<layer>/unit_<i>_<j>...``."""
    kind, layer, index = parse_target(target)
    if kind == "logit":
        return f"classes/{index[0]}"
    return f"{layer}/{kind}_{'_'.join(str(i) for i in index)}"


def _target_seed(base: int, key: str) -> int:
    return (base * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**62)


def _noise(keys: Sequence[str], shape: tuple[int, ...], base: int) -> torch.Tensor:
    """``0.01 * N(0, 1)`` of ``shape`` per target, each from its own CPU generator (same on every device)."""
    out = torch.empty(len(keys), *shape)
    for i, key in enumerate(keys):
        out[i].normal_(0.0, 0.01, generator=torch.Generator().manual_seed(_target_seed(base, key)))
    return out


@dataclass(kw_only=True)
class MaxResult:
    """What :func:`maximize` returns.

    Attributes:
        images: the optimised images in their space: pixels in [0, 1] (``space="pixel"``, ``robust=True``) or
            model inputs (``space="input"``), smoothed when ``smoothing`` is set.
        inputs: the same images as the model sees them (normalised).
        activation: each target's activation on its final image (one forward after the last step).
        objective: the activation minus the penalties at the final image.
        history: the activation at every step (before that step's update).
        keys: :func:`target_key` of each target, in order.

    Shape:
        images, inputs ``(B, C, H, W)``; activation, objective ``(B,)``; history ``(steps, B)``.
    """

    images: torch.Tensor
    inputs: torch.Tensor
    activation: torch.Tensor
    objective: torch.Tensor
    history: torch.Tensor
    keys: list[str]


class _Objective:
    """The activations of all targets from one forward: logits gathered, layer activations captured."""

    def __init__(self, model: nn.Module, targets: Sequence[Target], layers: Mapping[str, nn.Module] | None) -> None:
        self.model = model
        parsed = [parse_target(t) for t in targets]
        names = list(dict.fromkeys(layer for _, layer, _ in parsed if layer is not None))
        given = dict(layers or {})
        self.layers = {name: given[name] if name in given else resolve_layer(model, name)[1] for name in names}
        self.groups: list[tuple[str | None, str, list[int], list[tuple[int, ...]]]] = []
        for kind in ("logit", "channel", "unit"):
            for layer in [None] if kind == "logit" else names:
                rows = [i for i, (k, lay, _) in enumerate(parsed) if k == kind and lay == layer]
                if rows:
                    self.groups.append((layer, kind, rows, [parsed[i][2] for i in rows]))
        self.n = len(parsed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device
        with capture(self.model, self.layers, keep_graph=True) as acts:
            out = self.model(x)
        values = x.new_zeros(self.n)
        for layer, kind, rows, index in self.groups:
            r = torch.tensor(rows, device=device)
            if kind == "logit":
                logits = expect_logits(out)
                values = values.index_put((r,), logits[r, torch.tensor([i[0] for i in index], device=device)])
                continue
            act = acts[layer]
            if kind == "channel":
                chosen = act[r, torch.tensor([i[0] for i in index], device=device)]
                values = values.index_put((r,), chosen.flatten(1).mean(1) if chosen.dim() > 1 else chosen)
            else:
                columns = [torch.tensor(col, device=device) for col in zip(*index)]
                values = values.index_put((r,), act[(r, *columns)])
        return values


def maximize(
    model: nn.Module,
    targets: Sequence[Target],
    shape: Sequence[int],
    *,
    steps: int = 64,
    lr: float = 0.05,
    tv_weight: float = 1e-3,
    norm_weight: float = 1e-4,
    edge_weight: float = 0.0,
    smoothing: float | None = None,
    robust: bool = False,
    space: Literal["pixel", "input"] = "pixel",
    normalization: Normalization | None = None,
    init: torch.Tensor | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    layers: Mapping[str, nn.Module] | None = None,
) -> MaxResult:
    """Optimise one input per target, all targets in one batch (see the module docstring).

    Args:
        model: the network, in eval mode (run it inside :func:`trainviz.core.guard.probe_guard` to leave no trace).
            Logit targets need it to return logits ``(N, K)`` (wrap it in
            :class:`~trainviz.core.outputs.LogitsModel` otherwise).
        targets: ``("logit", k)``, ``("channel", layer, c)`` (the channel's mean over its map) or
            ``("unit", layer, (i, j, ...))`` (one element of the layer's output, indices after the batch axis).
        shape: the input shape ``(C, H, W)``.
        steps: Adam steps (``lr``; betas 0.9, 0.999; eps 1e-8, as ``torch.optim.Adam``).
        lr: learning rate (Lucent's 0.05).
        tv_weight: weight of :func:`total_variation` of the model input (a sum over the image).
        norm_weight: weight of the squared L2 norm of the model input (where 0 is the data's mean colour).
        edge_weight: weight of :func:`edge_energy` of the model input (0: off; the seed's loop uses 1).
        smoothing: ``sigma`` in pixels of a Gaussian blur of the final images (:func:`gaussian_blur`; the seed's
            "Smoothing"); ``None`` or 0: none.
        robust: Lucent's parameterisation and transforms (FFT, decorrelated colour, jitter/scale/rotate).
        space: ``"pixel"`` (sigmoid pixels mapped by ``normalization``) or ``"input"`` (the raw model input,
            unconstrained; ``robust`` needs ``"pixel"``).
        normalization: pixels -> model input; ``None``: the identity.
        init: starting images in ``space`` (pixels in (0, 1) or model inputs) instead of the per-target noise;
            not with ``robust``.
        seed: base seed of the per-target starting noise and of the transforms.
        generator: when given, its ``initial_seed()`` replaces ``seed`` (the generator itself is not advanced).
        layers: ``{name: module}`` of the layers named by the targets (resolved from ``model`` when missing).

    Returns:
        :class:`MaxResult`.

    Raises:
        ValueError: a malformed target, an unknown layer, an unknown ``space``, ``robust`` with
            ``space="input"`` or ``init``, or ``init`` of the wrong shape.

    Shape:
        images ``(len(targets), C, H, W)``.
    """
    if space not in ("pixel", "input"):
        raise ValueError(f"Expected `space` to be one of 'pixel', 'input'; got {space!r}.")
    if robust and (space != "pixel" or init is not None):
        raise ValueError("Expected `robust=True` with space='pixel' and no `init`.")
    c, h, w = (int(v) for v in shape)
    keys = [target_key(t) for t in targets]
    objective = _Objective(model, targets, layers)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    base = int(generator.initial_seed()) if generator is not None else int(seed)
    norm = normalization or Normalization.identity(c)

    if robust:
        param = _noise(keys, (c, h, w // 2 + 1, 2), base).to(device, dtype)
    elif init is not None:
        if tuple(init.shape) != (len(keys), c, h, w):
            raise ValueError(f"Expected `init` of shape {(len(keys), c, h, w)}, got {tuple(init.shape)}.")
        start = init.detach().to(device, dtype)
        param = torch.logit(start.clamp(1e-4, 1 - 1e-4)) if space == "pixel" else start.clone()
    else:
        param = _noise(keys, (c, h, w), base).to(device, dtype)
    param.requires_grad_(True)
    transforms = torch.Generator().manual_seed(_target_seed(base, "transforms"))

    def images_of(p: torch.Tensor) -> torch.Tensor:
        if robust:
            image = fft_image(p, (h, w))
            return torch.sigmoid(_decorrelate(image) if c == 3 else image)
        return torch.sigmoid(p) if space == "pixel" else p

    def to_input(images: torch.Tensor) -> torch.Tensor:
        return norm.normalize(images) if space == "pixel" else images

    def penalised(x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        out = act
        if tv_weight:
            out = out - tv_weight * total_variation(x)
        if norm_weight:
            out = out - norm_weight * x.pow(2).flatten(1).sum(1)
        if edge_weight:
            out = out - edge_weight * edge_energy(x)
        return out

    m = torch.zeros_like(param)
    v = torch.zeros_like(param)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    history = param.new_zeros(steps, len(keys))
    for step in range(1, steps + 1):
        images = images_of(param)
        x = to_input(images)
        seen = to_input(random_transform(images, transforms)) if robust else x
        act = objective(seen)
        history[step - 1] = act.detach()
        (grad,) = torch.autograd.grad(-penalised(x, act).sum(), [param])
        with torch.no_grad():  # Adam, as torch.optim.Adam (no weight decay)
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v / (1 - beta2**step)).sqrt_().add_(eps)
            param.addcdiv_(m, denom, value=-lr / (1 - beta1**step))

    with torch.no_grad():
        images = images_of(param).detach().clone()
        if smoothing:
            images = gaussian_blur(images, float(smoothing))
        x = to_input(images)
        act = objective(x)
        return MaxResult(
            images=images, inputs=x, activation=act, objective=penalised(x, act), history=history, keys=keys
        )
