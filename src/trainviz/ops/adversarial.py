"""Adversarial probes by gradient ascent on the input: FGSM (Goodfellow et al. 2015, "Explaining and Harnessing
Adversarial Examples"), L-inf PGD (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
Attacks"; checked against ``torchattacks.PGD`` in the tests), the number of steps to flip a prediction, the whole
trajectory of predicted classes and its random-direction control (the adversarial samples of François Fleuret's
EE-559 lecture "Under the hood").

Images are in pixel space ``[0, 1]``; ``preprocess`` maps them to the model's input (e.g. normalisation), and
gradients are taken with respect to the pixel images, so adversarial images stay valid images (clamped to
``[0, 1]``). The loss is the cross-entropy of the given class, summed over the batch, so each image's gradient
is that of its own loss.

Gradients come from ``torch.autograd.grad`` only: parameter ``.grad`` is never touched. The functions work when
called under ``torch.inference_mode()`` (Lightning's validation): they compute the gradient inside
``torch.inference_mode(False)`` + ``torch.enable_grad()`` on clones of the inputs. The model's train/eval state
is the caller's business and is left as it is (a model in train mode with dropout draws from the global RNG:
run probes in eval mode, e.g. inside trainviz's probe guard).

Example:
    >>> import torch
    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    >>> fgsm(model, x, y, 0.1).shape
    torch.Size([8, 4])
    >>> fgsm_accuracy(model, x, y, [0.0, 0.1, 0.2]).shape
    torch.Size([3])
    >>> pgd_accuracy(model, x, y, [0.0, 0.1], ids=torch.arange(8)).shape
    torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainviz.core.checks import check_float, check_int
from trainviz.core.distributed import agreed
from trainviz.core.outputs import expect_logits

__all__ = [
    "Trajectory",
    "adversarial_trajectory",
    "fgsm",
    "fgsm_accuracy",
    "pgd",
    "pgd_accuracy",
    "pgd_start",
    "random_direction_flips",
    "sphere_points",
    "steps_to_flip",
]

Preprocess = Callable[[Tensor], Tensor] | None

PGD_STEP_FACTOR = 2.5
"""PGD's step size in units of ``eps / steps`` (Madry et al.'s 2.5: the ascent can cross the ball and back)."""


def _check_inputs(model: Any, x: Any, target: Any, preprocess: Any) -> None:
    if not callable(model):
        raise TypeError(f"Expected `model` to be callable (an nn.Module), got {type(model).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError(f"Expected `x` to be a float tensor of shape (N, ...) in [0, 1], got {x!r:.80}")
    if not isinstance(target, Tensor) or target.shape != x.shape[:1] or target.is_floating_point():
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"Expected `target` to be an integer tensor of shape ({x.shape[0]},), got {shape}")
    if preprocess is not None and not callable(preprocess):
        raise TypeError(f"Expected `preprocess` to be callable or None, got {type(preprocess).__name__}")


def _logits_and_input_grad(
    model: Callable[[Tensor], Tensor], x: Tensor, target: Tensor, preprocess: Preprocess
) -> tuple[Tensor, Tensor]:
    """Logits at ``x`` and the gradient of the summed cross-entropy of ``target`` w.r.t. the pixel images."""
    with torch.inference_mode(False), torch.enable_grad():
        pixels = x.detach().clone().requires_grad_(True)
        logits = expect_logits(model(pixels if preprocess is None else preprocess(pixels)))
        loss = F.cross_entropy(logits, target.detach().clone().long(), reduction="sum")
        (grad,) = torch.autograd.grad(loss, pixels)
    return logits.detach(), grad


def fgsm(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    eps: float | Sequence[float],
    *,
    preprocess: Preprocess = None,
) -> Tensor:
    """Fast gradient sign method: ``clamp(x + eps sign(grad_x CE(model(preprocess(x)), target)), 0, 1)``.

    Args:
        model: maps ``preprocess(x)`` to logits of shape (N, K).
        x: pixel images in ``[0, 1]``.
        target: the class whose loss is increased (usually the true label).
        eps: step size in pixel units (e.g. ``4 / 255``), or a sequence of them (one gradient shared by all).
        preprocess: maps pixel images to the model's input; ``None`` is the identity.

    Returns:
        Adversarial images, detached.

    Shape:
        - x: :math:`(N, *)`, target: :math:`(N,)`
        - output: :math:`(N, *)` for a number ``eps``, :math:`(E, N, *)` for a sequence of ``E`` values

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> fgsm(model, torch.rand(5, 2), torch.zeros(5, dtype=torch.long), [0.0, 0.1]).shape
        torch.Size([2, 5, 2])
    """
    _check_inputs(model, x, target, preprocess)
    many = not isinstance(eps, (int, float))
    values = [check_float("eps", e, minimum=0) for e in (eps if many else [eps])]
    if many and not values:
        raise ValueError("Expected `eps` to be a number or a non-empty sequence of numbers, got an empty sequence")
    _, grad = _logits_and_input_grad(model, x, target, preprocess)
    step = grad.sign()
    if not many:
        return (x.detach() + values[0] * step).clamp(0.0, 1.0)
    e = torch.tensor(values, dtype=x.dtype, device=x.device).view(-1, *([1] * x.ndim))
    return (x.detach().unsqueeze(0) + e * step).clamp(0.0, 1.0)


def fgsm_accuracy(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    preprocess: Preprocess = None,
) -> Tensor:
    """Accuracy on FGSM images for each ``eps``, from one gradient computation (one extra forward per ``eps``).

    ``eps = 0`` gives the clean accuracy.

    Args:
        model: maps ``preprocess(x)`` to logits of shape (N, K).
        x: pixel images in ``[0, 1]``.
        y: true labels.
        epsilons: non-empty sequence of step sizes in pixel units.
        preprocess: maps pixel images to the model's input; ``None`` is the identity.

    Returns:
        Accuracy (fraction in ``[0, 1]``) for each ``eps``, on ``x``'s device.

    Shape:
        - x: :math:`(N, *)`, y: :math:`(N,)`
        - output: :math:`(E,)`

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> fgsm_accuracy(model, torch.rand(5, 2), torch.zeros(5, dtype=torch.long), [0.0, 0.5]).shape
        torch.Size([2])
    """
    _check_inputs(model, x, y, preprocess)
    if isinstance(epsilons, (int, float)) or len(epsilons) == 0:
        raise ValueError(f"Expected `epsilons` to be a non-empty sequence of numbers, got {epsilons!r}")
    values = [check_float("epsilons", e, minimum=0) for e in epsilons]
    _, grad = _logits_and_input_grad(model, x, y, preprocess)
    step = grad.sign()
    accuracies = []
    with torch.no_grad():
        for e in values:
            x_adv = (x.detach() + e * step).clamp(0.0, 1.0)
            logits = model(x_adv if preprocess is None else preprocess(x_adv))
            accuracies.append((logits.argmax(dim=1) == y).to(x.dtype).mean())
    return torch.stack(accuracies)


def _image_seed(seed: int, image_id: int) -> int:
    """A generator seed for one image from ``(seed, image_id)``: numpy's ``SeedSequence`` hash of the pair (each
    taken modulo ``2**64``, so negative ints work too), so neighbouring seeds and ids give unrelated streams."""
    entropy = [seed % 2**64, image_id % 2**64]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def pgd_start(ids: Tensor | Sequence[int], shape: Sequence[int], seed: int = 0) -> Tensor:
    """PGD's random start in units of ``eps``: for each image, ``shape`` values uniform in ``[-1, 1)`` drawn from
    a private CPU ``torch.Generator`` seeded from ``(seed, id)`` (:func:`_image_seed`). An image's start depends on
    its id and the seed only, never on the batch it comes in, its place there or the number of processes; the
    global RNG is not touched.

    Args:
        ids: one int id per image (e.g. :attr:`ProbeSet.ids <trainviz.core.probeset.ProbeSet.ids>`).
        shape: one image's shape ``(C, H, W)``.
        seed: an int.

    Returns:
        Float32 CPU tensor ``(N, *shape)``.

    Example:
        >>> a = pgd_start([3, 7], (2, 2), seed=0)
        >>> bool(torch.equal(a[1], pgd_start([7], (2, 2), seed=0)[0])), bool((a.abs() <= 1).all())
        (True, True)
    """
    seed = check_int("seed", seed)
    values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in values):
        raise ValueError(f"Expected `ids` to be ints (one per image), got {values[:8]!r}")
    out = torch.empty((len(values), *shape), dtype=torch.float32)
    for row, image_id in zip(out, values):
        row.uniform_(-1.0, 1.0, generator=torch.Generator().manual_seed(_image_seed(seed, image_id)))
    return out


def _check_pgd(
    model: Any, x: Any, target: Any, steps: Any, step_factor: Any, start: Any, ids: Any, preprocess: Any
) -> tuple[int, float]:
    _check_inputs(model, x, target, preprocess)
    steps = check_int("steps", steps, minimum=1)
    factor = check_float("step_factor", step_factor, minimum=0, strict_minimum=True)
    if start is not None and (not isinstance(start, Tensor) or start.shape != x.shape):
        shape = tuple(start.shape) if isinstance(start, Tensor) else type(start).__name__
        raise ValueError(f"Expected `start` to be None or a tensor of the shape of `x` {tuple(x.shape)}, got {shape}")
    if ids is not None and (not isinstance(ids, Tensor) or ids.shape != x.shape[:1] or ids.is_floating_point()):
        shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"Expected `ids` to be None or an integer tensor of shape ({x.shape[0]},), got {shape}")
    return steps, factor


def _unit_start(x: Tensor, start: Tensor | None, ids: Tensor | None, seed: int) -> Tensor:
    if start is None:
        ids = torch.arange(x.shape[0]) if ids is None else ids
        start = pgd_start(ids, x.shape[1:], seed)
    return start.to(device=x.device, dtype=x.dtype)


def _pgd(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    unit_start: Tensor,
    preprocess: Preprocess,
) -> Tensor:
    """The PGD loop, in torchattacks' order: start at ``clamp(x + eps start, 0, 1)``, then ``steps`` times step
    ``step_size sign(grad)``, project onto the ``eps`` ball around ``x`` and clamp to ``[0, 1]``."""
    x = x.detach()
    current = (x + eps * unit_start).clamp(0.0, 1.0)
    for _ in range(steps):
        _, grad = _logits_and_input_grad(model, current, target, preprocess)
        moved = current + step_size * grad.sign()
        current = (x + (moved - x).clamp(-eps, eps)).clamp(0.0, 1.0)
    return current


def pgd(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    eps: float,
    *,
    steps: int = 10,
    step_factor: float = PGD_STEP_FACTOR,
    ids: Tensor | None = None,
    seed: int = 0,
    start: Tensor | None = None,
    preprocess: Preprocess = None,
) -> Tensor:
    """L-inf projected gradient descent on the loss (Madry et al. 2018), in pixel space ``[0, 1]``.

    ``x_0 = clamp(x + eps u, 0, 1)`` with ``u`` the random start (uniform in ``[-1, 1)`` per element, per image,
    :func:`pgd_start` of ``ids`` and ``seed``, or ``start``), then ``steps`` times ``x_{k+1} = clamp(x + clamp(x_k
    + alpha sign(grad_x CE(model(preprocess(x_k)), target)) - x, -eps, eps), 0, 1)`` with ``alpha = step_factor eps
    / steps``: the loop of ``torchattacks.PGD`` (3.5.1), which the tests check it against. Gradients are taken
    through ``preprocess`` with respect to the pixel images (:func:`torch.autograd.grad`, the summed loss, so each
    image moves by its own gradient); batched, on ``x``'s device. With the same ``ids`` and ``seed``, an image's
    result does not depend on the batch it is in (up to ties of the sign in the model's float arithmetic).

    Args:
        model: maps ``preprocess(x)`` to logits of shape (N, K).
        x: pixel images in ``[0, 1]``.
        target: the class whose loss is increased (usually the true label).
        eps: the L-inf radius in pixel units (e.g. ``8 / 255``), >= 0.
        steps: gradient steps (int >= 1).
        step_factor: the step size ``alpha`` in units of ``eps / steps`` (default 2.5).
        ids: one int id per image for the random start (default: the positions ``0..N-1``, which tie
            the start to the batch: pass the probe ids).
        seed: the random start's seed.
        start: the start in units of ``eps`` (values in ``[-1, 1]``, the shape of ``x``) instead of the random
            one; zeros start at ``x``.
        preprocess: maps pixel images to the model's input; ``None`` is the identity.

    Returns:
        Adversarial images, detached, within ``eps`` of ``x`` and in ``[0, 1]``.

    Shape:
        - x, start: :math:`(N, *)`, target, ids: :math:`(N,)`
        - output: :math:`(N, *)`

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> x = torch.rand(5, 2)
        >>> x_adv = pgd(model, x, torch.zeros(5, dtype=torch.long), 0.1, ids=torch.arange(5))
        >>> x_adv.shape, bool(((x_adv - x).abs() <= 0.1 + 1e-6).all())
        (torch.Size([5, 2]), True)
    """
    steps, factor = _check_pgd(model, x, target, steps, step_factor, start, ids, preprocess)
    e = check_float("eps", eps, minimum=0)
    return _pgd(model, x, target, e, steps, factor * e / steps, _unit_start(x, start, ids, seed), preprocess)


def pgd_accuracy(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    *,
    steps: int = 10,
    step_factor: float = PGD_STEP_FACTOR,
    ids: Tensor | None = None,
    seed: int = 0,
    start: Tensor | None = None,
    preprocess: Preprocess = None,
) -> Tensor:
    """Accuracy on :func:`pgd` images (the last iterate) for each ``eps``: ``steps`` forward and backward passes
    and one forward per ``eps``. One random start per image serves every ``eps`` (scaled by it). ``eps = 0``
    gives the clean accuracy.

    Args:
        model: maps ``preprocess(x)`` to logits of shape (N, K).
        x: pixel images in ``[0, 1]``.
        y: true labels.
        epsilons: non-empty sequence of L-inf radii in pixel units.
        steps, step_factor, ids, seed, start, preprocess: as in :func:`pgd`.

    Returns:
        Accuracy (fraction in ``[0, 1]``) for each ``eps``, on ``x``'s device.

    Shape:
        - x: :math:`(N, *)`, y: :math:`(N,)`
        - output: :math:`(E,)`

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> pgd_accuracy(model, torch.rand(5, 2), torch.zeros(5, dtype=torch.long), [0.0, 0.5], steps=3).shape
        torch.Size([2])
    """
    steps, factor = _check_pgd(model, x, y, steps, step_factor, start, ids, preprocess)
    if isinstance(epsilons, (int, float)) or len(epsilons) == 0:
        raise ValueError(f"Expected `epsilons` to be a non-empty sequence of numbers, got {epsilons!r}")
    values = [check_float("epsilons", e, minimum=0) for e in epsilons]
    unit = _unit_start(x, start, ids, seed)
    accuracies = []
    for e in values:
        x_adv = _pgd(model, x, y, e, steps, factor * e / steps, unit, preprocess)
        with torch.inference_mode(False), torch.no_grad():
            logits = expect_logits(model(x_adv if preprocess is None else preprocess(x_adv)))
        accuracies.append((logits.argmax(dim=1) == y).to(x.dtype).mean())
    return torch.stack(accuracies)


class Trajectory(NamedTuple):
    """A gradient-ascent trajectory (:func:`adversarial_trajectory`).

    Attributes:
        predictions: the predicted class at every iteration, column 0 at the start, ``(N, max_steps + 1)`` long.
        flip_step: the first iteration whose prediction differs from the target, ``-1`` if none, ``(N,)`` long.
        x_adv: the image at that iteration (the first adversarial image), or at the end if it never flipped.
    """

    predictions: Tensor
    flip_step: Tensor
    x_adv: Tensor


def _ascend(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    step_size: float,
    max_steps: int,
    preprocess: Preprocess,
    clamp: bool,
    stop_at_flip: bool,
) -> Trajectory:
    """The one ascent loop: ``x_{k+1} = x_k + step_size grad_x CE(model(preprocess(x_k)), target)`` (clamped to
    ``[0, 1]`` with ``clamp``), recording the prediction at ``x_0 .. x_max_steps``. ``stop_at_flip`` freezes an
    image once its prediction left ``target`` and ends when all have (the predictions then have fewer columns);
    otherwise every image takes every step (the seed's table: the class keeps changing after the first flip)."""
    n, view = x.shape[0], (-1, *([1] * (x.ndim - 1)))
    flip_step = torch.full((n,), -1, dtype=torch.long, device=x.device)
    done = torch.zeros(n, dtype=torch.bool, device=x.device)
    current = x.detach()
    x_adv, predictions = current, []
    for k in range(max_steps + 1):
        if k == max_steps:  # the last iteration only needs the prediction
            with torch.inference_mode(False), torch.no_grad():
                logits, grad = expect_logits(model(current if preprocess is None else preprocess(current))), None
        else:
            logits, grad = _logits_and_input_grad(model, current, target, preprocess)
        pred = logits.argmax(dim=1)
        predictions.append(pred)
        flipped = (pred != target) & ~done
        flip_step = torch.where(flipped, k, flip_step)
        x_adv = torch.where(flipped.view(view), current, x_adv)
        done = done | flipped
        if grad is None or (stop_at_flip and agreed(bool(done.all()))):  # every rank stops together in lockstep
            break
        moved = current + step_size * grad
        moved = moved.clamp(0.0, 1.0) if clamp else moved
        current = torch.where(done.view(view), current, moved) if stop_at_flip else moved
    x_adv = torch.where(done.view(view), x_adv, current)
    return Trajectory(torch.stack(predictions, dim=1), flip_step, x_adv)


def _check_ascent(model: Any, x: Any, target: Any, step_size: Any, max_steps: Any, preprocess: Any) -> float:
    _check_inputs(model, x, target, preprocess)
    check_int("max_steps", max_steps, minimum=0)
    return check_float("step_size", step_size, minimum=0, strict_minimum=True)


def steps_to_flip(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    step_size: float,
    max_steps: int,
    preprocess: Preprocess = None,
) -> Tensor:
    """Number of gradient-ascent steps ``x <- clamp(x + step_size grad_x CE(model(x), y), 0, 1)`` until the
    prediction is no longer ``y`` (the iterative adversarial samples of Fleuret's lecture).

    All images step together; an image stops moving once its prediction has left ``y``, and the ascent ends when
    every image has flipped (the same loop as :func:`adversarial_trajectory`, which keeps going). An image
    already predicted as another class counts 0 steps; one still predicted ``y`` after ``max_steps`` steps gets
    ``-1``. Fleuret's lecture ascends the loss of the model's own prediction: pass ``y = model(x).argmax(1)``.

    Args:
        model: maps ``preprocess(x)`` to logits of shape (N, K).
        x: pixel images in ``[0, 1]``.
        y: the class to move away from (true labels or the clean predictions).
        step_size: ``eta``, the gradient step (positive; the raw gradient is used, not its sign).
        max_steps: the most steps to take (int >= 0).
        preprocess: maps pixel images to the model's input; ``None`` is the identity.

    Returns:
        Steps per image (long), ``-1`` where the prediction never left ``y``.

    Shape:
        - x: :math:`(N, *)`, y: :math:`(N,)`
        - output: :math:`(N,)`

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> steps_to_flip(model, torch.rand(5, 2), torch.zeros(5, dtype=torch.long), step_size=1.0, max_steps=3).shape
        torch.Size([5])
    """
    step_size = _check_ascent(model, x, y, step_size, max_steps, preprocess)
    return _ascend(model, x, y, step_size, max_steps, preprocess, clamp=True, stop_at_flip=True).flip_step


def adversarial_trajectory(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    *,
    step_size: float,
    max_steps: int,
    preprocess: Preprocess = None,
    clamp: bool = True,
) -> Trajectory:
    """The gradient ascent of Fleuret's lecture "Under the hood" ("Adversarial examples"), with the predicted
    class at every iteration: ``x_{k+1} = clamp(x_k + step_size grad_x CE(model(preprocess(x_k)), target), 0, 1)``.

    The step is the plain gradient (not its sign, not normalised), as the lecture's ``optim.SGD([input], lr)``
    on ``-cross_entropy``, with two differences: the loss is summed over the batch, so each image moves by its
    own gradient whatever the batch (the lecture's ``nn.CrossEntropyLoss()`` averages: its ``lr`` on a batch of
    ``B`` images is ``step_size = lr / B`` here), and images are pixels clamped to ``[0, 1]`` with the gradient
    taken through ``preprocess`` (the lecture steps on the normalised tensor and does not clamp; ``clamp=False``
    and ``preprocess=None`` on that tensor reproduce it). Every image takes every step: its class may change
    again after the first flip, as in the lecture's table. Pass ``target = model(x).argmax(1)`` (the lecture's
    target, the model's own prediction at the start) or the true labels.

    Args:
        model: maps ``preprocess(x)`` to logits of shape (N, K).
        x: pixel images in ``[0, 1]``.
        target: the class whose loss is increased.
        step_size: ``eta`` (positive), times the raw gradient.
        max_steps: iterations (int >= 0); the lecture takes 15.
        preprocess: maps pixel images to the model's input; ``None`` is the identity.
        clamp: keep the images in ``[0, 1]`` after every step.

    Returns:
        :class:`Trajectory`: ``predictions`` (iteration 0 is the start), ``flip_step`` (the first iteration
        whose prediction is not ``target``, ``-1`` if none; 0 if ``x`` itself is not predicted ``target``) and
        ``x_adv`` (the image at ``flip_step``, or after the last step), all detached.

    Shape:
        - x: :math:`(N, *)`, target: :math:`(N,)`
        - predictions: :math:`(N, max\\_steps + 1)`, flip_step: :math:`(N,)`, x_adv: :math:`(N, *)`

    Example:
        >>> model = torch.nn.Linear(2, 3)
        >>> x = torch.rand(4, 2)
        >>> path = adversarial_trajectory(model, x, model(x).argmax(1), step_size=0.5, max_steps=15)
        >>> path.predictions.shape, path.flip_step.shape, path.x_adv.shape
        (torch.Size([4, 16]), torch.Size([4]), torch.Size([4, 2]))
    """
    step_size = _check_ascent(model, x, target, step_size, max_steps, preprocess)
    return _ascend(model, x, target, step_size, max_steps, preprocess, clamp=bool(clamp), stop_at_flip=False)


def sphere_points(center: Tensor, radius: Tensor, samples: int, *, generator: torch.Generator) -> Tensor:
    """``samples`` points drawn uniformly on the sphere of radius ``radius[i]`` around each ``center[i]`` (the
    L2 norm over all of an image's elements): Gaussian directions divided by their norm, drawn from
    ``generator`` (on its device, then moved to ``center``'s). Not clamped to ``[0, 1]``.

    Shape:
        center :math:`(N, *)`, radius :math:`(N,)` -> :math:`(N, samples, *)`

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> p = sphere_points(torch.zeros(2, 3), torch.tensor([1.0, 2.0]), 5, generator=g)
        >>> p.shape, p.norm(dim=-1).round(decimals=4).tolist()[1]
        (torch.Size([2, 5, 3]), [2.0, 2.0, 2.0, 2.0, 2.0])
    """
    n, shape = center.shape[0], center.shape[1:]
    noise = torch.randn((n, samples, shape.numel()), generator=generator, device=generator.device, dtype=center.dtype)
    noise = noise.to(center.device)
    directions = noise / noise.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(center.dtype).tiny)
    points = center.detach().flatten(1).unsqueeze(1) + radius.to(center.dtype).view(n, 1, 1) * directions
    return points.view(n, samples, *shape)


def random_direction_flips(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    x_adv: Tensor,
    labels: Tensor,
    *,
    samples: int = 60,
    radius_factor: float = 2.0,
    generator: torch.Generator | None = None,
    ids: Tensor | Sequence[int] | None = None,
    seed: int = 0,
    preprocess: Preprocess = None,
    batch_size: int = 1024,
) -> Tensor:
    """The control of Fleuret's lecture: the fraction of ``samples`` random points on the sphere of radius
    ``radius_factor * ||x - x_adv||`` around each ``x`` whose predicted class differs from ``labels`` ("if we
    sample 1,000 images on the sphere centered on x of radius 2||x - x_adv||, we do not observe any change of
    label").

    Points are uniform on the sphere (normalised Gaussian directions, never from the global RNG) and are not
    clamped to ``[0, 1]``: clamping would pull them inside the sphere, closer to ``x`` than ``x_adv``'s multiple,
    and make the control look more stable than it is (the lecture does not clamp either). The model sees
    ``preprocess(points)``. Points are evaluated ``batch_size`` at a time (the memory cap: one batch of images),
    without gradients, on ``x``'s device.

    The directions come from one of two sources. With ``ids`` (one probe id per image), each image has its own
    private CPU ``torch.Generator`` seeded from ``(seed, id)`` (as :func:`pgd_start`), and each of its points is
    one draw of ``x[0].numel()`` normals from it, in order: an image's points depend on its id, ``seed`` and
    ``samples`` only, never on the batch it comes in, its place there, ``batch_size``, the device or the number
    of processes (the ``j``-th of ``samples`` points is the same for any ``samples > j``). With ``generator``,
    all images draw from that one generator in batch order (:func:`sphere_points`), so an image's points depend
    on the images before it.

    How many points: with ``k`` flips out of ``n`` points the rate's exact one-sided 95% upper bound is
    :func:`~trainviz.probes.robustness_result.flip_rate_upper_bound` (``1 - 0.05 ** (1 / n)``, about ``3 / n``,
    when ``k = 0``): 60 points (the default) bound an unflipped image's rate by 0.049, the lecture's 1,000 by
    0.003.

    Args:
        model: maps ``preprocess(points)`` to logits of shape (N, K).
        x: pixel images (the sphere's centres).
        x_adv: adversarial images (:attr:`Trajectory.x_adv`), which set the radii.
        labels: the class a point must keep (usually the clean prediction).
        samples: points per image (positive int).
        radius_factor: radius in units of ``||x - x_adv||`` (positive).
        generator: the private source of the directions (give this or ``ids``).
        ids: one int id per image (e.g. :attr:`ProbeSet.ids <trainviz.core.probeset.ProbeSet.ids>`): the
            directions are tied to the image (give this or ``generator``).
        seed: with ``ids``, the seed of every image's generator.
        preprocess: maps pixel images to the model's input; ``None`` is the identity.
        batch_size: points per forward pass.

    Returns:
        Fraction of flipped points per image (``x``'s dtype); 0 where ``x_adv == x`` (radius 0).

    Shape:
        - x, x_adv: :math:`(N, *)`, labels: :math:`(N,)`
        - output: :math:`(N,)`

    Example:
        >>> model = torch.nn.Linear(2, 2)
        >>> x = torch.rand(3, 2)
        >>> g = torch.Generator().manual_seed(0)
        >>> random_direction_flips(model, x, x + 0.1, model(x).argmax(1), samples=50, generator=g).shape
        torch.Size([3])
        >>> a = random_direction_flips(model, x, x + 0.1, model(x).argmax(1), ids=[4, 5, 6], seed=1)
        >>> b = random_direction_flips(model, x[1:2], x[1:2] + 0.1, model(x[1:2]).argmax(1), ids=[5], seed=1)
        >>> bool(a[1] == b[0])
        True
    """
    _check_inputs(model, x, labels, preprocess)
    if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
        shape = tuple(x_adv.shape) if isinstance(x_adv, Tensor) else type(x_adv).__name__
        raise ValueError(f"Expected `x_adv` to be a tensor of the shape of `x` {tuple(x.shape)}, got {shape}")
    samples = check_int("samples", samples, minimum=1)
    factor = check_float("radius_factor", radius_factor, minimum=0, strict_minimum=True)
    size = check_int("batch_size", batch_size, minimum=1)
    if (generator is None) == (ids is None):
        raise ValueError("Expected exactly one of `generator` (one stream for the batch) and `ids` (one per image)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"Expected `generator` to be a torch.Generator, got {type(generator).__name__}")
    n = x.shape[0]
    streams = None if ids is None else _image_generators(ids, n, check_int("seed", seed))
    per_batch = max(1, size // samples)  # whole images per batch when they fit, else chunks of one image's points
    chunk = min(samples, size)
    with torch.inference_mode(False), torch.no_grad():
        radius = factor * (x_adv.detach() - x.detach()).flatten(1).norm(dim=1)
        flips = torch.zeros(n, dtype=torch.long, device=x.device)
        for a in range(0, n, per_batch):
            b = min(a + per_batch, n)
            for c in range(0, samples, chunk):
                m = min(chunk, samples - c)
                if streams is None:
                    points = sphere_points(x[a:b], radius[a:b], m, generator=generator).flatten(0, 1)  # type: ignore[arg-type]
                else:
                    points = _image_sphere_points(x[a:b], radius[a:b], m, streams[a:b]).flatten(0, 1)
                logits = expect_logits(model(points if preprocess is None else preprocess(points)))
                changed = logits.argmax(dim=1).view(b - a, m) != labels[a:b].view(-1, 1)
                flips[a:b] += changed.sum(dim=1)
    return flips.to(x.dtype) / samples


def _image_generators(ids: Tensor | Sequence[int], n: int, seed: int) -> list[torch.Generator]:
    """One private CPU generator per image, seeded from ``(seed, id)`` (:func:`_image_seed`)."""
    values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    if len(values) != n or any(isinstance(i, bool) or not isinstance(i, int) for i in values):
        raise ValueError(f"Expected `ids` to be {n} ints (one per image), got {values[:8]!r}")
    return [torch.Generator().manual_seed(_image_seed(seed, image_id)) for image_id in values]


def _image_sphere_points(center: Tensor, radius: Tensor, samples: int, streams: list[torch.Generator]) -> Tensor:
    """As :func:`sphere_points`, the directions of image ``i`` drawn from ``streams[i]``, one point per draw (so
    the stream does not depend on how the points are chunked), on the CPU in ``center``'s dtype, then moved."""
    numel, dtype = center[0].numel(), center.dtype
    noise = torch.stack(
        [torch.stack([torch.randn(numel, generator=g, dtype=dtype) for _ in range(samples)]) for g in streams]
    ).to(center.device)
    directions = noise / noise.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(center.dtype).tiny)
    points = center.detach().flatten(1).unsqueeze(1) + radius.to(center.dtype).view(-1, 1, 1) * directions
    return points.view(center.shape[0], samples, *center.shape[1:])
