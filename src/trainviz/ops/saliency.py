"""Input-gradient attributions: saliency, input x gradient, SmoothGrad, deconvnet, guided backprop and
integrated gradients (pure torch).

Each image's attribution is the gradient of *its own* target logit with respect to the input (Erhan et al.
2009; Simonyan et al. 2013; Fleuret, EE-559 'Under the hood'): one ``torch.autograd.grad`` of
``sum_i logits[i, targets[i]]`` w.r.t. the input only (parameter ``.grad`` is never touched), under
``torch.inference_mode(False)`` and ``torch.enable_grad()`` so it also runs from a Lightning validation hook.
Attributions are raw and signed, in the space of the model's inputs (normalised inputs give gradients w.r.t.
the normalised values); :func:`saliency_map` turns them into one map per image, ``|a|`` summed over channels.

Methods (``METHODS``):

* ``"gradient"``: ``d y_t / d x`` (Captum ``Saliency(abs=False)``),
* ``"input_x_gradient"``: ``x * d y_t / d x`` (Captum ``InputXGradient``),
* ``"smoothgrad"`` (Smilkov et al. 2017): ``1/n sum_k d y_t / d x (x + e_k)``, ``e_k ~ N(0, sigma_i^2 I)`` with
  ``sigma_i = sigma * (x_i.max() - x_i.min())`` per image ("a fraction of the gap between the max and the min
  of the pixel values"); the noise comes from ``generator`` (default: a fresh one seeded 0, never the global
  RNG), drawn per image as ``(samples, C, H, W)`` in image order, so the result does not depend on
  ``batch_size``; with ``positions`` an image gets the draw of its place in a larger set (a process's share
  gets the noise the whole set would give it),
* ``"deconvnet"`` / ``"guided_backprop"``: the gradient with the deconvnet / guided ReLU rule of
  :func:`trainviz.ops.guided.relu_rule` (Captum ``Deconvolution`` / ``GuidedBackprop``, which only see
  ``nn.ReLU`` modules; here functional relus follow the rule too),
* ``"integrated_gradients"`` (Sundararajan et al. 2017): ``(x - b) * sum_k w_k d y_t / d x (b + a_k (x - b))``
  with the ``steps``-point Gauss-Legendre rule on [0, 1] (nodes ``a_k``, weights ``w_k``), Captum's default
  ``method="gausslegendre"``.

Cost: ``N`` forward + backward rows for gradient, input x gradient, deconvnet and guided backprop;
``N * samples`` for SmoothGrad and ``N * steps`` for integrated gradients, batched: at most ``batch_size`` rows
per forward, by default (``None``) as many as hold :func:`default_rows` input elements (``2**19`` on the CPU,
where larger batches run slower per image -- measured in BENCHMARKS.md -- and ``2**24`` on an accelerator).

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.ops.saliency import saliency, saliency_map
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    >>> x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 4])
    >>> a = saliency(net, x, t, "smoothgrad", samples=4)
    >>> a.shape, saliency_map(a).shape
    (torch.Size([2, 3, 8, 8]), torch.Size([2, 8, 8]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from typing import Literal, get_args

import torch

from trainviz.core.checks import check_choice, check_float, check_images, check_positive_int
from trainviz.core.outputs import expect_logits
from trainviz.ops.guided import relu_rule

__all__ = [
    "METHODS",
    "default_rows",
    "Saliency",
    "SaliencyMethod",
    "check_targets",
    "gauss_legendre",
    "saliency",
    "saliency_map",
]

SaliencyMethod = Literal[
    "gradient", "input_x_gradient", "smoothgrad", "deconvnet", "guided_backprop", "integrated_gradients"
]
METHODS: tuple[str, ...] = get_args(SaliencyMethod)
_RULES = {"deconvnet": "deconvnet", "guided_backprop": "guided"}

Model = Callable[[torch.Tensor], torch.Tensor]


def gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of the ``n``-point Gauss-Legendre rule on ``[0, 1]`` (float64), by Golub-Welsch.

    The same rule as Captum's ``"gausslegendre"`` (``numpy.polynomial.legendre.leggauss`` rescaled to [0, 1]):
    ``sum_k w_k f(a_k)`` is exact for polynomials of degree ``< 2n``; the weights sum to 1.

    Shape:
        nodes ``(n,)`` increasing, weights ``(n,)``.

    Example:
        >>> a, w = gauss_legendre(2)
        >>> [round(v, 6) for v in a.tolist()], [round(v, 6) for v in w.tolist()]
        ([0.211325, 0.788675], [0.5, 0.5])
    """
    check_positive_int("n", n)
    k = torch.arange(1, n, dtype=torch.float64)
    off = k / torch.sqrt(4 * k * k - 1)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    weights = vectors[0] ** 2  # 2 v0^2 on [-1, 1], halved on [0, 1]
    return (nodes + 1) / 2, weights


CPU_ELEMENTS, DEVICE_ELEMENTS = 2**19, 2**24


def default_rows(images: torch.Tensor) -> int:
    """Rows per forward when the caller gives no batch size: as many images as hold ``2**19`` input elements
    on the CPU (a 4-block CNN on 64 px images runs 1.1 ms per image at 64 rows, 1.9 ms at 512: large batches
    leave the caches) and ``2**24`` on an accelerator, at least one.

    Shape:
        images ``(N, C, H, W)`` -> an int
    """
    budget = CPU_ELEMENTS if images.device.type == "cpu" else DEVICE_ELEMENTS
    return max(1, budget // max(1, images[0].numel()))


def saliency_map(attributions: torch.Tensor) -> torch.Tensor:
    """One map per image: ``|a|`` summed over channels (as in the seed's SmoothGrad code).

    Shape:
        ``(N, C, H, W)`` -> ``(N, H, W)``

    Example:
        >>> saliency_map(torch.tensor([[[[1.0]], [[-2.0]]]]))
        tensor([[[3.]]])
    """
    check_images(attributions, "attributions")
    return attributions.abs().sum(1)


def saliency(
    model: Model,
    images: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | int,
    method: SaliencyMethod = "gradient",
    *,
    samples: int = 16,
    sigma: float = 0.15,
    steps: int = 16,
    baseline: float | torch.Tensor = 0.0,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    positions: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Raw signed attribution of each image's target logit, in model-input space.

    Args:
        model: a logits model, ``(N, C, H, W) -> (N, K)``, in the mode the caller wants (eval for probes).
        images: model inputs (normalised or not); not modified.
        targets: the class of each image, an int tensor ``(N,)`` (a list, or one int for all, is accepted).
        method: one of ``METHODS`` (see the module docstring).
        samples: noisy copies per image (``"smoothgrad"``).
        sigma: noise level as a fraction of each image's value range, ``>= 0`` (``"smoothgrad"``; 0 gives the
            plain gradient).
        steps: quadrature points (``"integrated_gradients"``).
        baseline: the path's start, a float or a tensor broadcastable to ``images`` (model-input space;
            ``"integrated_gradients"``).
        generator: the noise source (``"smoothgrad"``); ``None``: a fresh ``torch.Generator`` seeded 0 on the
            images' device. The global RNG is never used.
        batch_size: at most this many rows (images, noisy copies or path points) per forward; ``None``:
            :func:`default_rows` (about ``2**19`` input elements per forward on the CPU, ``2**24`` elsewhere).
        positions: each image's place in the noise stream, increasing (``"smoothgrad"``; ``None``: ``0..N-1``):
            image ``i`` gets the ``positions[i]``-th per-image draw of ``generator``, the draws between are made
            and dropped. A part of a set given its places gets the noise the whole set gives those images.

    Returns:
        The attributions, same shape, dtype and device as ``images``.

    Raises:
        ValueError: for an unknown ``method`` (naming the valid ones), ``targets`` of the wrong shape, dtype
            or range, non-positive ``samples`` / ``steps`` / ``batch_size``, negative ``sigma``, a baseline
            that does not broadcast, or a model that does not return ``(N, K)`` logits.

    Shape:
        images ``(N, C, H, W)``, targets ``(N,)`` -> ``(N, C, H, W)``

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
        >>> x = torch.randn(2, 3, 2, 2)
        >>> a = saliency(net, x, torch.tensor([0, 2]))
        >>> torch.allclose(a[1].flatten(), net[1].weight[2])
        True
        >>> ig = saliency(net, x, [0, 2], "integrated_gradients", steps=4)  # linear: (x - 0) * w exactly
        >>> torch.allclose(ig, x * a)
        True
    """
    images = check_images(images)
    method = check_choice("method", method, METHODS)
    samples = check_positive_int("samples", samples)
    steps = check_positive_int("steps", steps)
    sigma = check_float("sigma", sigma, minimum=0)
    batch_size = default_rows(images) if batch_size is None else check_positive_int("batch_size", batch_size)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"Expected `generator` to be a torch.Generator or None, got {type(generator).__name__}.")
    t = check_targets(targets, images)
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        x = images.detach().clone() if images.is_inference() else images.detach()
        t = t.clone() if t.is_inference() else t
        if method in ("gradient", "input_x_gradient", "deconvnet", "guided_backprop"):
            rule = _RULES.get(method)
            if batch_size is None or batch_size >= x.shape[0]:
                grads = _input_gradient(model, x, t, rule)
            else:
                grads = torch.empty_like(x)
                for lo, hi in _chunks(x.shape[0], batch_size):
                    grads[lo:hi] = _input_gradient(model, x[lo:hi], t[lo:hi], rule)
            return x * grads if method == "input_x_gradient" else grads
        if method == "smoothgrad":
            return _smoothgrad(model, x, t, samples, sigma, generator, batch_size, _positions(positions, x))
        return _integrated_gradients(model, x, t, steps, baseline, batch_size)


class Saliency:
    """The class face of :func:`saliency`: the method and its settings fixed once.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
        >>> explain = Saliency(net, "input_x_gradient")
        >>> explain(torch.randn(2, 3, 2, 2), torch.tensor([0, 1])).shape
        torch.Size([2, 3, 2, 2])
    """

    def __init__(
        self,
        model: Model,
        method: SaliencyMethod = "gradient",
        *,
        samples: int = 16,
        sigma: float = 0.15,
        steps: int = 16,
        baseline: float | torch.Tensor = 0.0,
        batch_size: int | None = None,
    ) -> None:
        self.model = model
        self.method = check_choice("method", method, METHODS)
        self.samples = check_positive_int("samples", samples)
        self.sigma = check_float("sigma", sigma, minimum=0)
        self.steps = check_positive_int("steps", steps)
        self.baseline = baseline
        self.batch_size = None if batch_size is None else check_positive_int("batch_size", batch_size)

    def __call__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | Sequence[int] | int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return saliency(
            self.model,
            images,
            targets,
            self.method,  # type: ignore[arg-type]
            samples=self.samples,
            sigma=self.sigma,
            steps=self.steps,
            baseline=self.baseline,
            generator=generator,
            batch_size=self.batch_size,
        )


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def check_targets(targets: torch.Tensor | Sequence[int] | int, images: torch.Tensor) -> torch.Tensor:
    """``targets`` as a long tensor ``(N,)`` on the images' device (one int is repeated); the range is checked
    against the logits later."""
    n = images.shape[0]
    if isinstance(targets, bool):
        raise ValueError(f"Expected `targets` to be an int tensor of shape ({n},), got {targets!r}.")
    if isinstance(targets, int):
        return torch.full((n,), targets, dtype=torch.long, device=images.device)
    try:
        t = torch.as_tensor(targets, device=images.device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"Expected `targets` to be an int tensor of shape ({n},), got {targets!r}.") from error
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex() or t.shape != (n,):
        raise ValueError(f"Expected `targets` to be an int tensor of shape ({n},), got {tuple(t.shape)} {t.dtype}.")
    return t.long()


def _check_range(t: torch.Tensor, num_classes: int) -> None:
    bad = (t < 0) | (t >= num_classes)
    if bool(bad.any()):  # one sync per forward, not per sample
        raise ValueError(
            f"Expected `targets` in 0..{num_classes - 1} (the model has {num_classes} outputs), got "
            f"{t[bad][:5].tolist()}."
        )


def _positions(positions: torch.Tensor | Sequence[int] | None, x: torch.Tensor) -> list[int]:
    n = x.shape[0]
    if positions is None:
        return list(range(n))
    out = [int(p) for p in (positions.tolist() if isinstance(positions, torch.Tensor) else positions)]
    if len(out) != n or any(b <= a for a, b in zip(out, out[1:])) or (out and out[0] < 0):
        raise ValueError(f"Expected `positions` to be {n} increasing non-negative ints (one per image), got {out}.")
    return out


def _chunks(rows: int, batch_size: int | None) -> Iterator[tuple[int, int]]:
    step = rows if batch_size is None else batch_size
    for lo in range(0, rows, step):
        yield lo, min(rows, lo + step)


def _input_gradient(model: Model, x: torch.Tensor, t: torch.Tensor, rule: str | None = None) -> torch.Tensor:
    """``d/dx sum_i logits[i, t[i]]`` for one batch, under a ReLU rule when given (one forward, one grad)."""
    x = x.detach().requires_grad_(True)
    with ExitStack() as stack:
        switch = stack.enter_context(relu_rule(model, rule)) if rule else None  # type: ignore[arg-type]
        logits = expect_logits(model(x))
        _check_range(t, logits.shape[1])
        score = logits.gather(1, t[:, None]).sum()
        if switch is not None:
            switch.active = True
        (grad,) = torch.autograd.grad(score, x)
    return grad


def _smoothgrad(
    model: Model,
    x: torch.Tensor,
    t: torch.Tensor,
    samples: int,
    sigma: float,
    generator: torch.Generator | None,
    batch_size: int | None,
    positions: list[int],
) -> torch.Tensor:
    n = x.shape[0]
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    drawn = 0  # per-image draws made so far (the stream's place)

    def draw(place: int) -> torch.Tensor:
        nonlocal drawn
        while True:  # the draws of the places before `place` are made and dropped
            e = torch.randn((samples, *x.shape[1:]), generator=generator, device=generator.device, dtype=x.dtype)
            drawn += 1
            if drawn > place:
                return e

    scale = sigma * (x.amax((1, 2, 3)) - x.amin((1, 2, 3)))  # (N,) on the device
    total = torch.zeros_like(x)
    noise: dict[int, torch.Tensor] = {}  # per image (samples, C, H, W), drawn in image order
    for lo, hi in _chunks(n * samples, batch_size):
        parts, owners = [], []
        for i in range(lo // samples, (hi - 1) // samples + 1):
            if i not in noise:
                noise[i] = draw(positions[i]).to(x.device) * scale[i]
            a, b = max(lo, i * samples) - i * samples, min(hi, (i + 1) * samples) - i * samples
            parts.append(x[i] + noise[i][a:b])
            owners.append(b - a)
            if b == samples:
                del noise[i]
        index = torch.repeat_interleave(
            torch.arange(lo // samples, lo // samples + len(owners), device=x.device),
            torch.tensor(owners, device=x.device),
        )
        grads = _input_gradient(model, torch.cat(parts), t[index])
        total.index_add_(0, index, grads)
    return total / samples


def _integrated_gradients(
    model: Model,
    x: torch.Tensor,
    t: torch.Tensor,
    steps: int,
    baseline: float | torch.Tensor,
    batch_size: int | None,
) -> torch.Tensor:
    n = x.shape[0]
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float, torch.Tensor)):
        raise ValueError(f"Expected `baseline` to be a float or a tensor, got {type(baseline).__name__}.")
    if isinstance(baseline, (int, float)) and not math.isfinite(baseline):
        raise ValueError(f"Expected `baseline` to be finite, got {baseline!r}.")
    b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        b = b.detach().expand_as(x)
    except RuntimeError as error:
        raise ValueError(
            f"Expected `baseline` to broadcast to the images {tuple(x.shape)}, got shape {tuple(b.shape)}."
        ) from error
    alphas, weights = (v.to(device=x.device, dtype=x.dtype) for v in gauss_legendre(steps))
    delta = x - b
    total = torch.zeros_like(x)
    for lo, hi in _chunks(n * steps, batch_size):
        rows = torch.arange(lo, hi, device=x.device)
        image, k = rows // steps, rows % steps
        path = b[image] + alphas[k].view(-1, 1, 1, 1) * delta[image]
        grads = _input_gradient(model, path, t[image])
        total.index_add_(0, image, grads * weights[k].view(-1, 1, 1, 1))
    return delta * total
