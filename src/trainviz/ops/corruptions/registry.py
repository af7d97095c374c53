"""The corruption registry: :func:`corrupt` by name and severity with a seeded private generator, its module
face :class:`Corruption`, :func:`register_corruption` for your own, and the two built-in suites, Zhang's probes
(``SEED_PROBES``) and the 15 ImageNet-C corruptions of Hendrycks & Dietterich 2019 (``IMAGENET_C``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trainviz.core.checks import check_images, check_int, check_positive_int
from trainviz.ops.corruptions import blur, digital, noise, weather
from trainviz.ops.corruptions._base import _generator
from trainviz.ops.corruptions.params import (
    CORRUPTION_PARAM_SETS,
    CORRUPTION_PARAMS,
    IMAGENET_C_ORDER,
    resolve_param_set,
)
from trainviz.ops.corruptions.seed import channel_order, gaussian_blur, grayscale, salt_and_pepper

__all__ = [
    "IMAGENET_C",
    "SEED_PROBES",
    "Corruption",
    "CorruptionSpec",
    "corrupt",
    "corruption_spec",
    "list_corruptions",
    "register_corruption",
]

SEED_PROBES: tuple[str, ...] = (
    "grayscale",
    "gaussian_blur_3x3",
    "gaussian_blur_5x5",
    "channels_bgr",
    "channels_brg",
    "salt_pepper_0.005",
    "salt_pepper_0.0005",
)
"""Xiaohan Zhang's probes ("Visualization of encoder-decoder structure of Deep Convolutional Neural Network",
section 5.3), each registered with a single severity."""


IMAGENET_C: tuple[str, ...] = IMAGENET_C_ORDER
"""The 15 ImageNet-C corruptions of Hendrycks & Dietterich 2019, each registered with 5 severities in three
parameter sets (CIFAR-10-C's, Tiny-ImageNet-C's, ImageNet-C's; see :mod:`~trainviz.ops.corruptions.params`)."""


@dataclass(frozen=True)
class CorruptionSpec:
    """A registered corruption.

    Attributes:
        name: registry key.
        fn: ``fn(x, severity, generator) -> Tensor`` with ``x`` of shape (N, C, H, W) in ``[0, 1]``.
        severities: number of severities; valid severities are ``1..severities``.
        params: one entry per severity describing it, or ``None`` (the built-ins: their CIFAR-10-C set).
        param_sets: the built-ins' parameters in each set of :data:`~trainviz.ops.corruptions.PARAM_SETS`
            (``fn`` then also takes ``param_set=``, a set's name); ``None`` for a corruption registered with
            :func:`register_corruption`, which has one set.
    """

    name: str
    fn: Callable[..., Tensor]
    severities: int
    _: KW_ONLY
    params: tuple[Any, ...] | None
    param_sets: dict[str, tuple[Any, ...]] | None = None

    def params_of(self, severity: int, param_set: str) -> Any:
        """The entry of ``params`` describing ``severity`` in ``param_set`` (a set's name; ignored without
        ``param_sets``), ``None`` when there is none."""
        table = self.params if self.param_sets is None else self.param_sets[param_set]
        return None if table is None else table[severity - 1]


_REGISTRY: dict[str, CorruptionSpec] = {}


def register_corruption(
    name: str,
    fn: Callable[[Tensor, int, torch.Generator], Tensor],
    severities: int = 5,
    params: Sequence[Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Register a corruption so that :func:`corrupt` and :class:`Corruption` can use it by name.

    Args:
        name: registry key.
        fn: called as ``fn(x, severity, generator)``; must return images of ``x``'s shape. ``generator`` is a
            CPU ``torch.Generator`` seeded by :func:`corrupt`: draw all randomness from it.
        severities: number of severities (positive int).
        params: optional description of each severity, one entry per severity.
        overwrite: replace an existing corruption of that name instead of raising.

    Example:
        >>> register_corruption("invert", lambda x, severity, generator: 1 - x, severities=1, overwrite=True)
        >>> corrupt(torch.zeros(1, 1, 2, 2), "invert").flatten().tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Expected `name` to be a non-empty str, got {name!r}")
    if not callable(fn):
        raise TypeError(f"Expected `fn` to be callable, got {type(fn).__name__}")
    check_positive_int("severities", severities)
    if params is not None and len(params) != severities:
        raise ValueError(f"Expected `params` to have one entry per severity ({severities}), got {len(params)}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"Corruption {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = CorruptionSpec(name, fn, severities, params=None if params is None else tuple(params))


def list_corruptions() -> list[str]:
    """Names of all registered corruptions, in registration order (the seed probes, then ImageNet-C).

    Example:
        >>> list_corruptions()[:2]
        ['grayscale', 'gaussian_blur_3x3']
    """
    return list(_REGISTRY)


def corruption_spec(name: str) -> CorruptionSpec:
    """The registered :class:`CorruptionSpec` of ``name`` (its function, number of severities, parameters).

    Example:
        >>> corruption_spec("fog").severities
        5
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown corruption {name!r}; valid names: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def corrupt(x: Tensor, name: str, severity: int = 1, *, seed: int = 0, param_set: str = "auto") -> Tensor:
    """Apply the registered corruption ``name`` at ``severity``, with noise from a CPU generator seeded by ``seed``.

    The same ``(x, name, severity, seed, param_set)`` always gives bitwise the same output; the global RNGs are
    untouched.

    Args:
        x: images in ``[0, 1]``.
        name: a name from :func:`list_corruptions`.
        severity: ``1..severities`` of that corruption (1 for the seed probes, 1..5 for ImageNet-C).
        seed: seed of the private generator.
        param_set: the built-ins' parameters, ``"cifar10-c"``, ``"tinyimagenet-c"``, ``"imagenet-c"`` or
            ``"auto"``, the set of the images' shorter side (:func:`~trainviz.ops.corruptions.param_set_for`);
            ignored by corruptions registered with :func:`register_corruption`.

    Returns:
        Corrupted images.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> corrupt(torch.rand(2, 3, 32, 32), "snow", 5, seed=1).shape
        torch.Size([2, 3, 32, 32])
    """
    spec = corruption_spec(name)
    check_images(x, "x")
    check_int("severity", severity, 1, spec.severities)
    resolved = resolve_param_set(param_set, x.shape[-2], x.shape[-1])
    g = _generator(None, seed)
    out = spec.fn(x, severity, g) if spec.param_sets is None else spec.fn(x, severity, g, param_set=resolved)
    if not isinstance(out, Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"Corruption {name!r} returned {shape}, expected a tensor of shape {tuple(x.shape)}")
    return out


class Corruption(nn.Module):
    """Module face of :func:`corrupt`: a fixed corruption, severity and seed, checked at construction.

    Args:
        name: a name from :func:`list_corruptions`.
        severity: ``1..severities`` of that corruption.
        seed: seed of the private generator (the same noise on every call).

    Shape:
        - input: :math:`(N, C, H, W)` in ``[0, 1]``
        - output: :math:`(N, C, H, W)`

    Example:
        >>> Corruption("contrast", 2)(torch.rand(1, 3, 4, 4)).shape
        torch.Size([1, 3, 4, 4])
    """

    def __init__(self, name: str, severity: int = 1, seed: int = 0) -> None:
        super().__init__()
        check_int("severity", severity, 1, corruption_spec(name).severities)
        _generator(None, seed)
        self.name, self.severity, self.seed = name, severity, seed

    def forward(self, x: Tensor) -> Tensor:
        return corrupt(x, self.name, self.severity, seed=self.seed)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, severity={self.severity}, seed={self.seed}"


def _register_builtins() -> None:
    probes: dict[str, Callable[[Tensor, int, torch.Generator], Tensor]] = {
        "grayscale": lambda x, s, g: grayscale(x),
        "gaussian_blur_3x3": lambda x, s, g: gaussian_blur(x, 3),
        "gaussian_blur_5x5": lambda x, s, g: gaussian_blur(x, 5),
        "channels_bgr": lambda x, s, g: channel_order(x, (2, 1, 0)),
        "channels_brg": lambda x, s, g: channel_order(x, (1, 0, 2)),
        "salt_pepper_0.005": lambda x, s, g: salt_and_pepper(x, 0.005, g, method="zhang"),
        "salt_pepper_0.0005": lambda x, s, g: salt_and_pepper(x, 0.0005, g, method="zhang"),
    }
    for name, fn in probes.items():
        register_corruption(name, fn, 1, CORRUPTION_PARAMS[name])
    deterministic = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
    ops = {name: getattr(module, name) for module in (noise, blur, weather, digital) for name in module.__all__}
    for name in IMAGENET_C:
        op = _adapt(ops[name], random=name not in deterministic)
        sets = {key: table[name] for key, table in CORRUPTION_PARAM_SETS.items()}
        _REGISTRY[name] = CorruptionSpec(name, op, 5, params=CORRUPTION_PARAMS[name], param_sets=sets)


def _adapt(op: Callable[..., Tensor], random: bool) -> Callable[..., Tensor]:
    if random:
        return lambda x, severity, generator, param_set="auto": op(
            x, severity, generator=generator, param_set=param_set
        )
    return lambda x, severity, generator, param_set="auto": op(x, severity, param_set=param_set)


_register_builtins()
