"""The one place trainviz reads Lightning's private or loop-internal attributes.

Lightning has no public way to ask a running Trainer where the ``fit(train_dataloaders=...)`` data came from, whether
the batch being validated is its epoch's last, or which console a ``RichProgressBar`` prints to; an MLflow logger
keeps its tracking URI private. Each read is here, behind one function, version-guarded: when a Lightning release
renames what it reads, the function gives its fallback (``None`` or ``False``, documented with it) and warns,
naming the Lightning version and what stops working, instead of failing the fit. The tests
(``tests/core/test_lightning_private.py``) run each one on a real Trainer and with the attribute gone.

Example:
    >>> from trainviz.core.lightning_private import private_attr
    >>> class Loop:
    ...     _data_source = "the fit's dataloaders"
    >>> private_attr(Loop(), "_data_source", "the probe data")
    "the fit's dataloaders"
"""

from __future__ import annotations

import warnings
from typing import Any

from trainviz.core.namespace import lightning, namespace_of

__all__ = ["data_source_dataset", "is_last_batch", "mlflow_tracking_uri", "private_attr", "rich_console"]

_MISSING = object()


def _version(obj: Any) -> str:
    ns = namespace_of(obj)
    try:
        return f"{ns or 'Lightning'} {lightning(ns).__version__}" if ns else "this Lightning version"
    except Exception:  # pragma: no cover - only for the message
        return str(ns)


def private_attr(obj: Any, path: str, needed_for: str, default: Any = None, owner: Any = None) -> Any:
    """``obj.<path>`` (dotted), or ``default`` with one warning naming the Lightning version of ``owner`` (default
    ``obj``) and what is lost (``needed_for``) when this Lightning release does not have it."""
    value = obj
    for part in path.split("."):
        value = getattr(value, part, _MISSING)
        if value is _MISSING:
            warnings.warn(
                f"trainviz: {_version(obj if owner is None else owner)} has no `{path}` on "
                f"{type(obj).__name__}, which trainviz reads for {needed_for}; going on without it. "
                "Please report it with your Lightning version.",
                RuntimeWarning,
                stacklevel=3,
            )
            return default
    return value


def _dataset_of(loader: Any) -> Any:
    if isinstance(loader, (list, tuple)):
        loader = loader[0] if loader else None
    if isinstance(loader, dict):
        loader = next(iter(loader.values()), None)
    return getattr(loader, "dataset", None)


def data_source_dataset(trainer: Any, split: str) -> Any:
    """The dataset of ``trainer``'s ``split`` (``"val"`` or ``"train"``) dataloader, wherever it was given: the
    datamodule, the model's hook or the ``fit`` argument (Lightning's private ``loop._data_source``). ``None`` when
    the split has no data, or (with a warning) when this Lightning release has no ``_data_source``."""
    loop = trainer.fit_loop.epoch_loop.val_loop if split == "val" else trainer.fit_loop
    source = private_attr(
        loop, "_data_source", "the probe data given to `fit` (pass `probe_data=` instead)", None, trainer
    )
    if source is None or source.instance is None or not source.is_defined():
        return None
    return _dataset_of(source.dataloader())


def is_last_batch(trainer: Any) -> bool:
    """Whether the running training epoch is at its last batch (``fit_loop.epoch_loop.batch_progress``, a loop
    internal); ``False`` (with a warning) when this Lightning release does not have it."""
    return bool(
        private_attr(
            trainer.fit_loop,
            "epoch_loop.batch_progress.is_last_batch",
            "the epoch a checkpoint saved at an epoch's last validation would miss on resume",
            False,
            trainer,
        )
    )


def rich_console(bar: Any) -> Any:
    """The console of a ``RichProgressBar`` (its live progress's, else its private ``_console``), or ``None``."""
    console = getattr(getattr(bar, "progress", None), "console", None)
    return console if console is not None else getattr(bar, "_console", None)


def mlflow_tracking_uri(logger: Any) -> Any:
    """An ``MLFlowLogger``'s tracking URI (private ``_tracking_uri``), or ``None``."""
    return getattr(logger, "_tracking_uri", None)
