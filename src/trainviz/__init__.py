"""trainviz: drop-in PyTorch Lightning callbacks that show what a network learns while it trains.

Example:
    >>> import trainviz
    >>> callbacks = trainviz.default_callbacks(every_n_epochs=2)
    >>> sorted(type(cb).__name__ for cb in callbacks)[:2]
    ['DynamicsCallback', 'RunManifestCallback']
"""

from __future__ import annotations

from typing import Any

from trainviz.callbacks import CAMCallback, DecoderMapCallback, DynamicsCallback, ProbeCallback, RunManifestCallback
from trainviz.layers import list_layers, resolve_layer
from trainviz.probeset import ProbeSet

__version__ = "0.1.0"

__all__ = [
    "CAMCallback",
    "DecoderMapCallback",
    "DynamicsCallback",
    "ProbeCallback",
    "ProbeSet",
    "RunManifestCallback",
    "default_callbacks",
    "list_layers",
    "resolve_layer",
]


def default_callbacks(every_n_epochs: int = 1, probe_seed: int = 0, **kwargs: Any) -> list[Any]:
    """The full trainviz suite with shared settings, ready for ``Trainer(callbacks=...)``.

    Args:
        every_n_epochs: cadence of every probe.
        probe_seed: seed of every probe set.
        **kwargs: per-callback overrides, e.g. ``dynamics={"probe_size": 128}``; ``<name>=False`` drops one, ``<name>=True`` keeps its defaults.
            ``decoder_maps`` is opt-in (``decoder_maps={}``): it needs a model with per-class maps such as
            :class:`trainviz.models.ClassMapClassifier`.
    """
    def probe(cls: type) -> Any:
        return lambda options: cls(**{"every_n_epochs": every_n_epochs, "probe_seed": probe_seed, **options})

    factories = {
        "manifest": lambda options: RunManifestCallback(**options),
        "dynamics": probe(DynamicsCallback),
        "cam": probe(CAMCallback),
        "decoder_maps": probe(DecoderMapCallback),
    }
    opt_in = {"decoder_maps"}  # needs a model with per-class maps (ClassMapClassifier): only when asked for
    unknown = set(kwargs) - set(factories)
    if unknown:
        raise ValueError(f"Unknown callback name(s) {sorted(unknown)}; valid names: {sorted(factories)}.")
    out = []
    for name, make in factories.items():
        options = kwargs.get(name, None if name in opt_in else {})
        if options is None or options is False:
            continue
        if options is True:
            options = {}
        if not isinstance(options, dict):
            raise ValueError(f"Expected `{name}` to be a dict of options, True or False; got {options!r}.")
        out.append(make(dict(options)))
    return out
