"""The ImageNet-C noise corruptions (Hendrycks & Dietterich 2019) with CIFAR-10-C parameters: Gaussian, shot
(Poisson) and impulse (salt-and-pepper) noise."""

from __future__ import annotations

import torch
from torch import Tensor

from trainviz.ops.corruptions._base import _documented, _finish, _generator, _normal, _work
from trainviz.ops.corruptions.params import _params
from trainviz.ops.corruptions.seed import salt_and_pepper

__all__ = ["gaussian_noise", "impulse_noise", "shot_noise"]


@_documented(random=True)
def gaussian_noise(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0, param_set: str = "auto"
) -> Tensor:
    """Add Gaussian noise of standard deviation ``sigma`` (see :mod:`~trainviz.ops.corruptions.params`)."""
    p = _params("gaussian_noise", x, severity, param_set)
    g, xw = _generator(generator, seed), _work(x)
    return _finish(xw + p["sigma"] * _normal(xw.shape, g, xw), x)


@_documented(random=True)
def shot_noise(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0, param_set: str = "auto"
) -> Tensor:
    """Poisson (photon) noise: ``Poisson(x rate) / rate``.

    The Poisson draw needs the images on the generator's device: they are copied there and back.
    """
    rate = _params("shot_noise", x, severity, param_set)["rate"]
    g, xw = _generator(generator, seed), _work(x)
    counts = torch.poisson((xw * rate).to(device=g.device, dtype=torch.float32), generator=g)
    return _finish(counts.to(device=x.device, dtype=xw.dtype) / rate, x)


@_documented(random=True)
def impulse_noise(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0, param_set: str = "auto"
) -> Tensor:
    """Salt-and-pepper noise on ``round(amount C H W)`` elements per image (see :func:`salt_and_pepper`)."""
    amount = _params("impulse_noise", x, severity, param_set)["amount"]
    return salt_and_pepper(x, amount, _generator(generator, seed))
