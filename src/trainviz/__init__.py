"""trainviz: drop-in PyTorch Lightning callbacks that show what a network learns while it trains.

Public names are imported lazily (``trainviz report`` starts without importing torch or Lightning).

Example:
    >>> import trainviz
    >>> callbacks = trainviz.default_callbacks(every_n_epochs=2)
    >>> [type(cb).__name__ for cb in callbacks]  # doctest: +NORMALIZE_WHITESPACE
    ['RunManifestCallback', 'DynamicsCallback', 'CAMCallback', 'FeatureMapCallback', 'RobustnessCallback',
     'EmbeddingCallback']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainviz._lazy import lazy_exports
from trainviz.callbacks.registry import CALLBACKS

__version__ = "0.1.0"

_EXPORTS = {
    **CALLBACKS,
    "ProbeCallback": "trainviz.callbacks.base",
    "ProbeSet": "trainviz.core.probeset",
    "list_layers": "trainviz.core.layers",
    "resolve_layer": "trainviz.core.layers",
}

__all__ = sorted([*_EXPORTS, "BUDGET_SHARES", "default_callbacks"])

if TYPE_CHECKING:  # pragma: no cover
    from trainviz.callbacks.base import ProbeCallback
    from trainviz.callbacks.registry import *  # noqa: F403  (every callback class)
    from trainviz.core.layers import list_layers, resolve_layer
    from trainviz.core.probeset import ProbeSet

    BUDGET_SHARES: dict[str, float]
    """How :func:`default_callbacks` divides its ``budget`` among the probe callbacks (rescaled over those present):
    each callback class's ``budget_share``, by name."""


_getattr, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


def __getattr__(name: str) -> Any:
    if name == "BUDGET_SHARES":  # read from the classes (imported on first use, like them)
        return _budget_shares()
    return _getattr(name)


def _probe_classes() -> list[Any]:
    from trainviz.callbacks.base import ProbeCallback
    from trainviz.callbacks.registry import callback_classes

    return [cls for cls in callback_classes() if issubclass(cls, ProbeCallback)]


def _budget_shares() -> dict[str, float]:
    return {cls.name: cls.budget_share for cls in _probe_classes()}


def default_callbacks(
    every_n_epochs: int = 1,
    probe_seed: int = 0,
    normalization: Any = None,
    output: Any = None,
    budget: float | None = 0.1,
    pixels: bool = True,
    display_channels: Any = None,
    **kwargs: Any,
) -> list[Any]:
    """The full trainviz suite with shared settings, ready for ``Trainer(callbacks=...)``.

    The suite is :data:`trainviz.callbacks.registry.CALLBACKS`, less the ``opt_in`` ones not asked for; each class
    declares its ``name`` (its keyword here), ``budget_share``, ``opt_in`` and ``needs_pixels``.

    Args:
        every_n_epochs: cadence of every probe.
        probe_seed: seed of every probe set.
        normalization: the mapping from model inputs to pixels shared by every callback, a
            :class:`trainviz.data.Normalization` or a ``(mean, std)`` pair (a callback's own ``normalization``
            wins); ``None`` lets each callback find it (datamodule attribute, torchvision ``Normalize``).
        output: how to get logits from the model's output, shared by every callback (a key, an index or a
            callable; see :mod:`trainviz.core.outputs`); ``None`` handles tensors, ``(logits, ...)`` tuples and
            objects with ``.logits``.
        budget: the largest fraction of training wall time the whole suite may take, background work
            included (default 0.1), divided among the probe callbacks by :data:`BUDGET_SHARES` until each has run
            once, then by what each costs per run at its cadence (robustness aims at every other run and takes
            what is left; :meth:`trainviz.core.budget.Scheduler.fit`); ``None`` runs everything at its cadence. A
            callback's own ``budget`` option wins (and stays out of the pool).
        pixels: whether the inputs are photos with a mapping to pixels in [0, 1] (default ``True``: trainviz never
            guesses, and refuses at setup probe images that do not map into [0, 1]). ``False`` declares they are
            not (CT values, spectrograms, standardised bands): the callbacks that act on pixels (``robustness``:
            corruptions, FGSM, trajectories; ``maxact``: MaxOut) are left out with one warning, and the others run
            on the model's own inputs, their pictures scaled per image and channel to the 1st-99th percentiles.
        display_channels: the input channels pictures show, shared by every callback: ``None`` (all of 1 or 3
            channels, else the first), one index, or three shown as red, green, blue.
        **kwargs: per-callback options by name (``manifest``, ``dynamics``, ``cam``, ``features``, ``robustness``,
            ``embedding``, ``decoder_maps``, ``saliency``, ``maxact``), e.g. ``dynamics={"probe_size": 128}``;
            ``<name>=False`` drops one, ``<name>=True`` keeps its defaults. Three are opt-in (``<name>={}`` or
            ``True``): ``decoder_maps`` needs a model with per-class maps such as
            :class:`trainviz.models.ClassMapClassifier`; ``saliency`` (occlusion, sanity checks) and ``maxact``
            (an optimisation of one image per target each run) cost several passes per probe image.
    """
    from trainviz.callbacks.base import ProbeCallback
    from trainviz.callbacks.registry import callback_classes
    from trainviz.core.budget import check_budget
    from trainviz.core.pixels import as_normalization
    from trainviz.core.source import check_pixels

    # ProbeCallback's options of the same names (a test checks the names and defaults agree)
    shared = dict(
        every_n_epochs=every_n_epochs,
        probe_seed=probe_seed,
        output=output,
        pixels=pixels,
        display_channels=display_channels,
    )
    shared_norm = as_normalization(normalization)
    total = check_budget(budget)
    check_pixels(pixels, shared_norm)
    classes = {cls.name: cls for cls in callback_classes()}
    unknown = set(kwargs) - set(classes)
    if unknown:
        raise ValueError(f"Unknown callback name(s) {sorted(unknown)}; valid names: {sorted(classes)}.")
    out, left_out = [], []
    for name, cls in classes.items():
        options = kwargs.get(name, None if getattr(cls, "opt_in", False) else {})
        if options is None or options is False:
            continue
        if options is True:
            options = {}
        if not isinstance(options, dict):
            raise ValueError(f"Expected `{name}` to be a dict of options, True or False; got {options!r}.")
        if not issubclass(cls, ProbeCallback):
            out.append((cls(**options), True))
            continue
        if not pixels and cls.needs_pixels:
            left_out.append(cls)
            continue
        callback = cls(**{**shared, **options})
        callback.shared_normalization = shared_norm
        out.append((callback, "budget" in options))
    if left_out:
        import warnings

        warnings.warn(
            f"trainviz: default_callbacks(pixels=False) leaves out {', '.join(cls.name for cls in left_out)}: "
            + "; ".join(cls.pixel_use or f"{cls.name} acts on pixels in [0, 1]" for cls in left_out)
            + ", and the inputs are declared not to be photos. The other callbacks run on the model's own inputs.",
            stacklevel=2,
        )
    shared_out = [type(callback).budget_share for callback, own in out if not own]
    for callback, own in out:
        if total is not None and not own:
            callback.budget = total * type(callback).budget_share / sum(shared_out)
            callback.pooled_budget = True
    return [callback for callback, _ in out]
