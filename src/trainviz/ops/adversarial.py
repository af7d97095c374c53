"""Adversarial probes by gradient ascent on the input: FGSM (Goodfellow et al. 2015, "Explaining and Harnessing
Adversarial Examples") and the number of steps to flip a prediction (the adversarial samples of François Fleuret's
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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from trainviz.core.checks import check_float, check_int
from trainviz.core.outputs import expect_logits

__all__ = ["fgsm", "fgsm_accuracy", "steps_to_flip"]

Preprocess = Callable[[Tensor], Tensor] | None


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

    All images step together; an image stops moving once its prediction has left ``y``. An image already
    predicted as another class counts 0 steps; one still predicted ``y`` after ``max_steps`` steps gets ``-1``.
    Fleuret's lecture ascends the loss of the model's own prediction: pass ``y = model(x).argmax(1)`` for that.

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
    _check_inputs(model, x, y, preprocess)
    step_size = check_float("step_size", step_size, minimum=0, strict_minimum=True)
    check_int("max_steps", max_steps, minimum=0)
    n = x.shape[0]
    steps = torch.full((n,), -1, dtype=torch.long, device=x.device)
    done = torch.zeros(n, dtype=torch.bool, device=x.device)
    current = x.detach()
    for k in range(max_steps + 1):
        logits, grad = _logits_and_input_grad(model, current, y, preprocess)
        flipped = (logits.argmax(dim=1) != y) & ~done
        steps = torch.where(flipped, k, steps)
        done = done | flipped
        if k == max_steps or bool(done.all()):
            break
        moved = (current + step_size * grad).clamp(0.0, 1.0)
        current = torch.where(done.view(-1, *([1] * (x.ndim - 1))), current, moved)
    return steps
