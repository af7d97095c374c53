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

__version__ = "0.1.0"

_EXPORTS = {
    "CAMCallback": "trainviz.callbacks.cam",
    "DecoderMapCallback": "trainviz.callbacks.decoder_maps",
    "DynamicsCallback": "trainviz.callbacks.dynamics",
    "EmbeddingCallback": "trainviz.callbacks.embedding",
    "FeatureMapCallback": "trainviz.callbacks.features",
    "MaxActivationCallback": "trainviz.callbacks.maxact",
    "ProbeCallback": "trainviz.callbacks.base",
    "RobustnessCallback": "trainviz.callbacks.robustness",
    "RunManifestCallback": "trainviz.callbacks.manifest",
    "SaliencyCallback": "trainviz.callbacks.saliency",
    "ProbeSet": "trainviz.core.probeset",
    "list_layers": "trainviz.core.layers",
    "resolve_layer": "trainviz.core.layers",
}

__all__ = sorted([*_EXPORTS, "default_callbacks"])

if TYPE_CHECKING:  # pragma: no cover
    from trainviz.callbacks import (
        CAMCallback,
        DecoderMapCallback,
        DynamicsCallback,
        EmbeddingCallback,
        FeatureMapCallback,
        MaxActivationCallback,
        ProbeCallback,
        RobustnessCallback,
        RunManifestCallback,
        SaliencyCallback,
    )
    from trainviz.core.layers import list_layers, resolve_layer
    from trainviz.core.probeset import ProbeSet


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


BUDGET_SHARES = {
    "dynamics": 0.1,
    "cam": 0.25,
    "features": 0.1,
    "robustness": 0.4,
    "embedding": 0.25,
    "decoder_maps": 0.2,
    "saliency": 0.25,
    "maxact": 0.25,
}
"""How :func:`default_callbacks` divides its ``budget`` among the probe callbacks (rescaled over those present)."""


_PIXEL_PROBES = {
    "robustness": "robustness corrupts pixels and attacks them (FGSM, adversarial trajectories) in [0, 1]",
    "maxact": "maxact (MaxOut) optimises images as pixels in [0, 1]",
}


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
            included (default 0.1), divided among the probe callbacks by :data:`BUDGET_SHARES`; ``None`` runs
            everything at its cadence. A callback's own ``budget`` option wins.
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
    from trainviz import callbacks as cb
    from trainviz.core.budget import check_budget
    from trainviz.core.pixels import as_normalization

    shared_norm = as_normalization(normalization)
    total = check_budget(budget)
    if not isinstance(pixels, bool):
        raise ValueError(
            f"Expected `pixels` to be True (photos) or False (inputs that are not photos), got {pixels!r}."
        )
    if not pixels and shared_norm is not None:
        raise ValueError(
            "Expected either `pixels=False` (the inputs are not photos: there is no mapping to pixels) or "
            f"`normalization=` (the mapping of photos), not both; got normalization={shared_norm}."
        )

    def probe(cls: type) -> Any:
        def make(options: dict[str, Any]) -> Any:
            base = {"every_n_epochs": every_n_epochs, "probe_seed": probe_seed}
            if not pixels:
                base["pixels"] = False
            if display_channels is not None:
                base["display_channels"] = display_channels
            if output is not None:
                base["output"] = output
            callback = cls(**{**base, **options})
            callback.shared_normalization = shared_norm
            return callback

        return make

    classes: dict[str, type] = {
        "dynamics": cb.DynamicsCallback,
        "cam": cb.CAMCallback,
        "features": cb.FeatureMapCallback,
        "robustness": cb.RobustnessCallback,
        "embedding": cb.EmbeddingCallback,
        "decoder_maps": cb.DecoderMapCallback,
        "saliency": cb.SaliencyCallback,
        "maxact": cb.MaxActivationCallback,
    }
    factories = {
        "manifest": lambda options: cb.RunManifestCallback(**options),
        **{name: probe(cls) for name, cls in classes.items()},
    }
    # decoder_maps needs a model with per-class maps (ClassMapClassifier); saliency (occlusion, sanity checks) and
    # maxact (an optimisation per run) cost several passes per image: each only when asked for
    opt_in = {"decoder_maps", "saliency", "maxact"}
    unknown = set(kwargs) - set(factories)
    if unknown:
        raise ValueError(f"Unknown callback name(s) {sorted(unknown)}; valid names: {sorted(factories)}.")
    out, left_out = [], []
    for name, make in factories.items():
        options = kwargs.get(name, None if name in opt_in else {})
        if options is None or options is False:
            continue
        if options is True:
            options = {}
        if not isinstance(options, dict):
            raise ValueError(f"Expected `{name}` to be a dict of options, True or False; got {options!r}.")
        if not pixels and name in classes and getattr(classes[name], "needs_pixels", True):
            left_out.append(name)
            continue
        out.append((name, make(dict(options)), "budget" in options))
    if left_out:
        import warnings

        warnings.warn(
            f"trainviz: default_callbacks(pixels=False) leaves out {', '.join(left_out)}: "
            + "; ".join(_PIXEL_PROBES.get(name, f"{name} acts on pixels in [0, 1]") for name in left_out)
            + ", and the inputs are declared not to be photos. The other callbacks run on the model's own inputs.",
            stacklevel=2,
        )
    present = [name for name, _, own in out if name in BUDGET_SHARES and not own]
    for name, callback, _own in out:
        if total is not None and name in present:
            callback.budget = total * BUDGET_SHARES[name] / sum(BUDGET_SHARES[n] for n in present)
    return [callback for _, callback, _ in out]
