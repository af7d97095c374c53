"""From model inputs back to pixels: which normalisation the user's data went through, and a check that it is right.

Corruptions, FGSM and every picture are defined on pixels in [0, 1], while a user's probe images are almost
always normalised (``transforms.Normalize(mean, std)`` in the dataset's transform pipeline, or by hand).
Treating normalised inputs as pixels and clamping them destroys the images without any error, so trainviz
resolves the mapping in this order (:func:`resolve_normalization`):

1. the callback's ``normalization=``;
2. a shared ``normalization=`` given to :func:`trainviz.default_callbacks`;
3. the datamodule's ``normalization`` attribute;
4. a torchvision ``Normalize`` (transforms v1 or v2) found in the probe dataset's transform pipeline, also
   inside nested ``Compose``, ``Subset``, ``ConcatDataset`` and datasets that wrap another in ``.dataset``;
5. the identity;

and then refuses (:func:`check_pixel_range`) a mapping that does not bring the probe images into [0, 1].

Example:
    >>> import torch
    >>> from torchvision import transforms
    >>> from trainviz.core.pixels import find_normalization, as_normalization
    >>> pipeline = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))])
    >>> find_normalization(pipeline)
    Normalization(mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    >>> as_normalization(([0.5], [0.25]))
    Normalization(mean=(0.5,), std=(0.25,))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch

from trainviz.core.normalization import Normalization

__all__ = [
    "NormalizationSpec",
    "PIXEL_TOLERANCE",
    "as_normalization",
    "check_pixel_range",
    "find_normalization",
    "resolve_normalization",
]

NormalizationSpec = Union[Normalization, tuple[Sequence[float], Sequence[float]], None]
"""A :class:`~trainviz.data.Normalization`, a plain ``(mean, std)`` pair, or ``None`` (find it)."""

PIXEL_TOLERANCE = 1e-3
"""How far outside [0, 1] un-normalised probe pixels may lie (float rounding) before setup refuses them."""

_MAX_DEPTH = 12  # wrapped datasets and nested pipelines are searched this deep


def as_normalization(value: Any, name: str = "normalization") -> Normalization | None:
    """``value`` as a :class:`Normalization`: one already, a ``(mean, std)`` pair, a ``{"mean", "std"}`` mapping,
    or ``None``.

    Raises:
        ValueError: anything else, lengths that differ, a non-finite value or a standard deviation <= 0.
    """
    if value is None:
        return None
    if isinstance(value, Normalization):
        mean, std = value.mean, value.std
    elif isinstance(value, Mapping) and set(value) == {"mean", "std"}:
        mean, std = value["mean"], value["std"]
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        mean, std = value
    else:
        raise ValueError(
            f"Expected `{name}` to be a trainviz.data.Normalization, a (mean, std) pair of per-channel sequences "
            f"or None, got {value!r}."
        )
    try:
        mean_t, std_t = (
            tuple(float(v) for v in torch.as_tensor(s, dtype=torch.float64).reshape(-1).tolist()) for s in (mean, std)
        )
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"Expected `{name}` mean and std to be numbers or sequences of numbers, got {value!r}."
        ) from err
    if not mean_t or len(mean_t) != len(std_t):
        raise ValueError(
            f"Expected `{name}` mean and std of the same non-zero length, got {len(mean_t)} and {len(std_t)}."
        )
    if not all(math.isfinite(v) for v in mean_t + std_t) or min(std_t) <= 0:
        raise ValueError(f"Expected `{name}` to have finite means and positive standard deviations, got {value!r}.")
    return Normalization(mean=mean_t, std=std_t)


def _normalize_step(transform: Any) -> Normalization | None:
    """The mapping of one torchvision ``Normalize`` (v1 or v2, matched by name and attributes)."""
    if type(transform).__name__ != "Normalize" or not hasattr(transform, "mean") or not hasattr(transform, "std"):
        return None
    return as_normalization((transform.mean, transform.std))


def _compose(first: Normalization, then: Normalization) -> Normalization:
    """``then(first(x))`` as one mapping: ``((x - m1) / s1 - m2) / s2 = (x - (m1 + m2 s1)) / (s1 s2)``."""
    if len(first.mean) != len(then.mean):
        if len(first.mean) == 1:
            first = Normalization(tuple(first.mean) * len(then.mean), tuple(first.std) * len(then.mean))
        elif len(then.mean) == 1:
            then = Normalization(tuple(then.mean) * len(first.mean), tuple(then.std) * len(first.mean))
        else:
            raise ValueError(
                f"Two Normalize steps with {len(first.mean)} and {len(then.mean)} channels in one pipeline."
            )
    return Normalization(
        mean=tuple(m1 + m2 * s1 for m1, m2, s1 in zip(first.mean, then.mean, first.std)),
        std=tuple(s1 * s2 for s1, s2 in zip(first.std, then.std)),
    )


def _pipeline_steps(transform: Any, depth: int = 0) -> list[Normalization]:
    """Every ``Normalize`` applied, in order, by a transform or a (nested) ``Compose``-like pipeline.

    Steps that apply at random (``RandomApply``, ``RandomChoice``, ``RandomOrder``) are not followed: what they
    do to one image is not known.
    """
    if transform is None or depth > _MAX_DEPTH:
        return []
    step = _normalize_step(transform)
    if step is not None:
        return [step]
    if type(transform).__name__ in ("RandomApply", "RandomChoice", "RandomOrder"):
        return []
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple, torch.nn.ModuleList, torch.nn.Sequential)):
        return [s for t in inner for s in _pipeline_steps(t, depth + 1)]
    if isinstance(transform, torch.nn.Sequential):
        return [s for t in transform for s in _pipeline_steps(t, depth + 1)]
    inner = getattr(transform, "transform", None)  # torchvision's StandardTransform
    if inner is not None and inner is not transform:
        return _pipeline_steps(inner, depth + 1)
    return []


def _dataset_steps(dataset: Any, depth: int = 0) -> list[Normalization]:
    if dataset is None or depth > _MAX_DEPTH:
        return []
    for attr in ("transform", "transforms"):
        steps = _pipeline_steps(getattr(dataset, attr, None))
        if steps:
            return steps
    datasets = getattr(dataset, "datasets", None)  # ConcatDataset: the first part
    if isinstance(datasets, (list, tuple)) and datasets:
        return _dataset_steps(datasets[0], depth + 1)
    for attr in ("dataset", "base", "base_dataset"):  # Subset and wrappers
        inner = getattr(dataset, attr, None)
        if inner is not None and inner is not dataset:
            return _dataset_steps(inner, depth + 1)
    return []


def find_normalization(source: Any) -> Normalization | None:
    """The normalisation applied by a dataset's (or a pipeline's) torchvision ``Normalize`` steps, or ``None``.

    Searches ``transform``/``transforms`` of the dataset, nested ``Compose`` (v1 and v2) and
    ``nn.Sequential`` pipelines, ``Subset``, ``ConcatDataset`` (its first part) and datasets wrapping another
    in ``.dataset``. Several ``Normalize`` steps in a row are composed into one mapping.
    """
    steps = _dataset_steps(source) or _pipeline_steps(source)
    if not steps:
        return None
    out = steps[0]
    for step in steps[1:]:
        out = _compose(out, step)
    return out


def resolve_normalization(
    own: NormalizationSpec,
    shared: NormalizationSpec,
    datamodule: Any,
    dataset: Any,
    channels: int,
) -> tuple[Normalization, str]:
    """The probe set's mapping and where it came from, in trainviz's order (see the module docstring).

    Returns:
        ``(normalization, source)`` with ``source`` one of ``"callback"``, ``"default_callbacks"``,
        ``"datamodule"``, ``"transform"``, ``"identity"``.
    """
    candidates = (
        ("callback", lambda: as_normalization(own)),
        ("default_callbacks", lambda: as_normalization(shared)),
        (
            "datamodule",
            lambda: as_normalization(getattr(datamodule, "normalization", None), "datamodule.normalization"),
        ),
        ("transform", lambda: find_normalization(dataset)),
    )
    for source, get in candidates:
        norm = get()
        if norm is not None:
            if len(norm.mean) == 1 and channels > 1:
                norm = Normalization(tuple(norm.mean) * channels, tuple(norm.std) * channels)
            if len(norm.mean) != channels:
                raise ValueError(
                    f"The normalisation from the {source} has {len(norm.mean)} channels but the probe images have "
                    f"{channels}: {norm}."
                )
            return norm, source
    return Normalization.identity(channels), "identity"


def check_pixel_range(
    images: torch.Tensor, norm: Normalization, source: str, owner: str = "trainviz", needs_pixels: bool = True
) -> None:
    """Raise unless ``norm`` maps ``images`` into [0, 1] (within :data:`PIXEL_TOLERANCE`), checked before any clamp.

    Raises:
        ValueError: naming the observed per-channel range, the three ways to give the right mapping, and what
            ``pixels=False`` (inputs that are not photos) does for ``owner`` (``needs_pixels``: it does not run).
    """
    if images.numel() == 0:
        return
    mean, std = norm._stats(images.float())
    pixels = images.float() * std + mean
    flat = pixels.transpose(0, 1).reshape(pixels.shape[1], -1)
    low, high = flat.min(1).values, flat.max(1).values
    bad = bool((low < -PIXEL_TOLERANCE).any() or (high > 1 + PIXEL_TOLERANCE).any())
    if not math.isfinite(float(pixels.sum())) or bad:
        ranges = ", ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(low.tolist(), high.tolist()))
        how = (
            "with no normalisation found (the identity)"
            if source == "identity"
            else f"with the normalisation from the {source} {tuple(norm.mean)}, {tuple(norm.std)}"
        )
        raise ValueError(
            f"{owner}: the probe images, mapped back to pixels {how}, lie outside [0, 1]: per-channel range {ranges}. "
            "Corruptions, adversarial probes and pictures need the mapping from model inputs to pixels; trainviz "
            "never computes on clamped pixels. Give it one of three ways: `normalization=(mean, std)` on the "
            "callback, `trainviz.default_callbacks(normalization=(mean, std))` for every callback, or a "
            "`normalization` attribute (a `trainviz.data.Normalization` or a (mean, std) pair) on the datamodule. "
            "A torchvision `Normalize` in the probe dataset's transform is found by itself. "
            + (
                f"If the inputs are not photos (CT values, spectrograms, standardised bands), {owner} does not apply "
                "to them (it acts on pixels): `trainviz.default_callbacks(pixels=False)` leaves it out and runs the "
                "others."
                if needs_pixels
                else f"If the inputs are not photos (CT values, spectrograms, standardised bands), say so with "
                f"`pixels=False` on {owner} (or `trainviz.default_callbacks(pixels=False)`): it then runs on the "
                "model's own inputs and scales its pictures for display only."
            )
        )
