"""No constructor takes more than three positional arguments (issue 18): past three, a call reads as a list of
values whose meaning depends on their order, so the rest are keyword-only."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import trainviz

MAX_POSITIONAL = 3

ALLOWED: set[str] = set()  # none: every constructor names its parameters after the third


def _positional(cls: type) -> int | None:
    """How many parameters of ``cls(...)`` can be given positionally (``None``: no signature to read)."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in signature.parameters.values())


def _classes() -> dict[str, type]:
    """Every class defined in a trainviz module, by its qualified name."""
    out = {}
    for info in pkgutil.walk_packages(trainviz.__path__, "trainviz."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module.__name__:
                out[f"{module.__name__}.{name}"] = obj
    return out


def test_no_constructor_takes_more_than_three_positional_arguments():
    classes = _classes()
    assert len(classes) > 100 and "trainviz.callbacks.base.ProbeCallback" in classes  # the walk sees the package
    counts = {name: _positional(cls) for name, cls in classes.items()}
    over = {name: n for name, n in counts.items() if n is not None and n > MAX_POSITIONAL}
    assert set(over) - ALLOWED == set(), f"make the parameters after the third keyword-only: {over}"
    assert ALLOWED <= set(over), f"take off the allow-list: {sorted(ALLOWED - set(over))}"
