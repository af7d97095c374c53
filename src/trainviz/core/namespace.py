"""Both Lightning namespaces: ``lightning.pytorch`` (``import lightning as L``) and ``pytorch_lightning``.

The two packages are copies with distinct classes: a ``pytorch_lightning`` logger is not an instance of
``lightning.pytorch.loggers.TensorBoardLogger``. trainviz serves both:

- **Callbacks** derive from the ``Callback`` class of *every* installed namespace (:func:`callback_bases`), so
  they are real subclasses wherever they are checked: by the ``Trainer`` of either package (releases before 2.6
  refuse a foreign callback) and by either ``LightningCLI`` (jsonargparse checks the class path).
- **Loggers and progress bars** are recognised in the namespace of the object itself (:func:`is_instance`), so
  they follow the Trainer they run in.
- **Models and data modules** (``trainviz.models``, ``trainviz.data``) must derive from one namespace's
  ``LightningModule`` / ``LightningDataModule`` (the Trainer refuses mixed imports). They take the one
  :func:`namespace` chooses: the environment variable ``TRAINVIZ_LIGHTNING`` (``lightning`` or
  ``pytorch_lightning``) if set, else the one namespace the program imported itself, else the installed one
  (``lightning`` first when both are).

trainviz declares no hard dependency on either (pip cannot express "one or the other"): install
``trainviz[lightning]`` or ``trainviz[pytorch-lightning]``, or bring your own. With neither, the first import
that needs Lightning raises an ``ImportError`` naming both.

Example:
    >>> from trainviz.core.namespace import namespace, installed
    >>> namespace() in installed()
    True
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

__all__ = [
    "NAMESPACES",
    "callback_base",
    "callback_bases",
    "info",
    "installed",
    "is_instance",
    "lightning",
    "namespace",
    "namespace_of",
]

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")
"""The two names of Lightning's trainer package, in the order trainviz prefers them when it must choose."""

_ALIASES = {"lightning": "lightning.pytorch", "lightning.pytorch": "lightning.pytorch", "L": "lightning.pytorch"}
_ALIASES |= {
    "pytorch_lightning": "pytorch_lightning",
    "pytorch-lightning": "pytorch_lightning",
    "pl": "pytorch_lightning",
}
_ENV = "TRAINVIZ_LIGHTNING"

# The namespaces trainviz imported itself (to build callback bases), told apart from the user's own imports.
_ours: set[str] = set()


def _top(ns: str) -> str:
    return ns.split(".")[0]


def _missing() -> ImportError:
    return ImportError(
        "trainviz needs PyTorch Lightning, and neither `lightning` nor `pytorch_lightning` is installed: "
        "`pip install trainviz[lightning]` (for `import lightning as L`) or `pip install trainviz[pytorch-lightning]` "
        "(for `import pytorch_lightning as pl`)."
    )


def installed() -> tuple[str, ...]:
    """The namespaces that can be imported here, in :data:`NAMESPACES` order (nothing is imported)."""
    out = []
    for ns in NAMESPACES:
        try:
            spec = importlib.util.find_spec(_top(ns))  # the top package only: find_spec("a.b") imports "a"
        except (ImportError, ValueError):  # a broken or half-installed package counts as absent
            continue
        if spec is None:
            continue
        sub = ns.split(".")[1:]
        places = [os.path.join(place, *sub) for place in spec.submodule_search_locations or []]
        if not sub or any(os.path.isfile(os.path.join(place, "__init__.py")) for place in places):
            out.append(ns)
    return tuple(out)


def _user_imported() -> list[str]:
    return [ns for ns in NAMESPACES if _top(ns) in sys.modules and ns not in _ours]


def namespace() -> str:
    """The namespace for trainviz's models, data modules and command: ``TRAINVIZ_LIGHTNING`` if set, else the one
    namespace the program has imported itself, else the first installed (``lightning.pytorch`` before
    ``pytorch_lightning``).

    Raises:
        ValueError: ``TRAINVIZ_LIGHTNING`` names neither namespace.
        ImportError: neither namespace is installed, or the one asked for is not.
    """
    have = installed()
    asked = os.environ.get(_ENV, "").strip()
    if asked:
        if asked not in _ALIASES:
            raise ValueError(f"Expected {_ENV} to be one of 'lightning', 'pytorch_lightning', got {asked!r}")
        ns = _ALIASES[asked]
        if ns not in have:
            raise ImportError(
                f"{_ENV}={asked!r}, but `{_top(ns)}` is not installed (installed: {list(have) or 'none'})"
            )
        return ns
    if not have:
        raise _missing()
    mine = [ns for ns in _user_imported() if ns in have]
    return mine[0] if len(mine) == 1 else have[0]


def lightning(ns: str | None = None) -> Any:
    """The trainer package of namespace ``ns`` (default :func:`namespace`): ``lightning.pytorch`` or
    ``pytorch_lightning``, imported."""
    name = _ALIASES.get(ns, ns) if ns else namespace()
    return importlib.import_module(name)


def callback_bases() -> tuple[type, ...]:
    """The ``Callback`` class of every installed namespace.

    Raises:
        ImportError: neither namespace is installed.
    """
    bases = []
    for ns in installed():
        if _top(ns) not in sys.modules:
            _ours.add(ns)
        bases.append(importlib.import_module(f"{ns}.callbacks").Callback)
    if not bases:
        raise _missing()
    return tuple(bases)


_CALLBACK: list[type] = []


def callback_base() -> type:
    """One class deriving from the ``Callback`` of every installed namespace (the class itself when only one is
    installed): trainviz's callbacks derive from it, so that either package's Trainer and LightningCLI take
    them as their own. Both ``Callback`` classes define the same hooks as no-ops, so their union adds nothing.

    Raises:
        ImportError: neither namespace is installed.
    """
    if not _CALLBACK:
        bases = callback_bases()
        _CALLBACK.append(bases[0] if len(bases) == 1 else type("Callback", bases, {"__module__": __name__}))
    return _CALLBACK[0]


def namespace_of(obj: Any) -> str | None:
    """The namespace whose class ``obj`` is (or derives from), or that ``obj`` itself, a class, derives from; or
    ``None`` (not a Lightning object)."""
    for klass in (obj if isinstance(obj, type) else type(obj)).__mro__:
        module = klass.__module__ or ""
        for ns in NAMESPACES:
            if module == ns or module.startswith(ns + "."):
                return ns
    return None


def is_instance(obj: Any, module: str, name: str) -> bool:
    """``isinstance(obj, <ns>.<module>.<name>)`` in any namespace the program has imported (a class of a
    namespace never imported cannot have instances, and is not imported to find out)."""
    for ns in NAMESPACES:
        if _top(ns) not in sys.modules:
            continue
        try:
            cls = getattr(importlib.import_module(f"{ns}.{module}"), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(obj, cls):
            return True
    return False


def info(message: str, obj: Any = None) -> None:
    """Log ``message`` once across processes (rank zero) through the Lightning namespace of ``obj`` (a trainer,
    logger or progress bar, or a namespace's name), whose console handler shows it; else :func:`namespace`'s."""
    ns = obj if obj in NAMESPACES else namespace_of(obj) if obj is not None else None
    if ns is None:
        try:
            ns = namespace()
        except (ImportError, ValueError):
            from lightning_utilities.core.rank_zero import rank_zero_info

            rank_zero_info(message)
            return
    importlib.import_module(f"{ns}.utilities.rank_zero").rank_zero_info(message)
