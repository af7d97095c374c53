"""What every corruption shares: the private generator, float32 work copies of half precision, the clamp, noise
drawn on the generator's device, BT.601 luma and a sampled 1-D Gaussian kernel."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from trainviz.core.checks import check_int

F = TypeVar("F", bound=Callable[..., Tensor])

_ONE_OR_THREE = "with :math:`C \\in \\{1, 3\\}`"
_NOT_ONE_OR_THREE = "or does not have 1 or 3 channels"

_LUMA = (0.299, 0.587, 0.114)


def _generator(generator: torch.Generator | None, seed: int) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"Expected `generator` to be a torch.Generator or None, got {type(generator).__name__}")
        return generator
    return torch.Generator().manual_seed(check_int("seed", seed))


def _work(x: Tensor) -> Tensor:
    """The tensor to compute on: float32 for half precision inputs (CPU kernels lack some half ops)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _finish(out: Tensor, x: Tensor) -> Tensor:
    return out.clamp(0.0, 1.0).to(x.dtype)


def _uniform(shape: Sequence[int], g: torch.Generator, like: Tensor, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Uniform noise drawn on the generator's device in float32, then moved to ``like``'s device and dtype."""
    u = torch.rand(tuple(shape), generator=g, device=g.device)
    return (low + (high - low) * u).to(device=like.device, dtype=like.dtype)


def _normal(shape: Sequence[int], g: torch.Generator, like: Tensor) -> Tensor:
    return torch.randn(tuple(shape), generator=g, device=g.device).to(device=like.device, dtype=like.dtype)


def _luma(x: Tensor) -> Tensor:
    """BT.601 luma, shape (N, 1, H, W); a 1-channel image is its own luma."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"Expected 1 or 3 channels for luma, got C={x.shape[1]}")
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _gaussian_kernel1d(sigma: float, radius: int) -> Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _documented(
    *, random: bool, images: str = "", x_shape: str = "", output: str = "", raises: str = "", example: str = ""
) -> Callable[[F], F]:
    """Complete the docstring of an ImageNet-C corruption with the sections they all share: Args, Returns,
    Raises, Shape and (unless ``example`` gives one, as doctest lines) an Example.

    ``images`` adds to the description of ``x`` (e.g. "with 1 or 3 channels"), ``x_shape`` to its shape line and
    ``output`` to the output's, ``raises`` to the ValueError's conditions.
    """

    def complete(fn: F) -> F:
        name = fn.__name__
        args = [f"x: images in ``[0, 1]``{' ' + images if images else ''}.", "severity: 1..5."]
        if random:
            args += [
                "generator: source of randomness; ``None`` seeds a fresh CPU generator from ``seed``.",
                "seed: used only when ``generator`` is ``None``.",
            ]
        args += [
            'param_set: ``"cifar10-c"``, ``"tinyimagenet-c"``, ``"imagenet-c"`` or ``"auto"`` (by the shorter'
            " side, see :func:`~trainviz.ops.corruptions.param_set_for`)."
        ]
        seed = ", seed=0" if random else ""
        example_lines = example or f">>> {name}(torch.rand(2, 3, 8, 8), 5{seed}).shape\ntorch.Size([2, 3, 8, 8])"
        sections = [
            "Args:\n" + "\n".join("    " + a for a in args),
            "Returns:\n    Corrupted images, clamped to ``[0, 1]``, of ``x``'s dtype and device.",
            "Raises:\n    ValueError: ``x`` is not a floating-point (N, C, H, W) batch"
            + (f" {raises}" if raises else "")
            + '; ``severity`` is not in 1..5; ``param_set`` is not a set\'s name or ``"auto"``'
            + ("; ``seed`` is not an int." if random else ".")
            + ("\n    TypeError: ``generator`` is neither None nor a torch.Generator." if random else ""),
            "Shape:\n"
            f"    - x: :math:`(N, C, H, W)`{' ' + x_shape if x_shape else ''}\n"
            f"    - output: :math:`(N, C, H, W)`{', ' + output if output else ''}",
            "Example:\n" + "\n".join("    " + line for line in example_lines.splitlines()),
        ]
        fn.__doc__ = inspect.cleandoc(fn.__doc__ or "") + "\n\n" + "\n\n".join(sections) + "\n"
        return fn

    return complete
