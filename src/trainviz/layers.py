"""Find the layers a probe looks at: dotted names, module objects or ``"auto"``.

Example:
    >>> import torch.nn as nn
    >>> from trainviz.layers import resolve_layer, list_layers
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    >>> resolve_layer(net, "0")[0]
    '0'
"""

from __future__ import annotations

import difflib
from typing import Union

import torch
from torch import nn

LayerSpec = Union[str, nn.Module]

__all__ = ["LayerSpec", "list_layers", "resolve_layer", "resolve_layers", "find_last_spatial_layer"]


def list_layers(model: nn.Module) -> list[str]:
    """Dotted names of every sub-module of ``model`` (the root excluded), in registration order."""
    return [name for name, _ in model.named_modules() if name]


def _unknown_layer_error(model: nn.Module, name: str) -> ValueError:
    names = list_layers(model)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = f" Closest matches: {', '.join(repr(c) for c in close)}." if close else ""
    return ValueError(
        f"Layer {name!r} not found in {type(model).__name__}.{hint} "
        "Call `trainviz.list_layers(model)` to see all layer names."
    )


def find_last_spatial_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Name of the last module (in execution order) whose output is a 4-D tensor with H*W > 1.

    Runs one forward pass of ``example`` under ``torch.no_grad()`` with temporary hooks (removed
    in ``finally``). The caller is responsible for eval mode and RNG (see :func:`trainviz.guard.probe_guard`).
    """
    order: list[str] = []
    handles = []

    def make_hook(name: str):
        def hook(_m, _inp, out):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                order.append(name)

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ValueError(
            f"`layer='auto'` found no module with a 4-D (N, C, H, W) output in {type(model).__name__}; "
            "pass a layer name (see `trainviz.list_layers(model)`)."
        )
    return order[-1]


def resolve_layer(
    model: nn.Module, spec: LayerSpec, example: torch.Tensor | None = None
) -> tuple[str, nn.Module]:
    """Turn a layer spec into ``(dotted_name, module)``.

    Args:
        model: the network.
        spec: a dotted name from ``model.named_modules()`` (or a unique suffix of one, so ``"features"``
            finds ``"net.features"``), a sub-module object, or ``"auto"`` (the last module with a spatial 4-D
            output; needs ``example``).
        example: an input batch, used only for ``"auto"``.

    Raises:
        ValueError: the name is unknown (the message names the closest matches) or the module
            is not part of ``model``.
    """
    if isinstance(spec, nn.Module):
        for name, module in model.named_modules():
            if module is spec:
                return name, module
        raise ValueError(f"The module {type(spec).__name__} passed as a layer is not a sub-module of the model.")
    if not isinstance(spec, str):
        raise TypeError(f"Expected a layer name (str) or an nn.Module, got {type(spec).__name__}.")
    if spec == "auto":
        if example is None:
            raise ValueError("`layer='auto'` needs an example input to find the last 4-D layer.")
        spec = find_last_spatial_layer(model, example)
    modules = dict(model.named_modules())
    if spec in modules and spec != "":
        return spec, modules[spec]
    suffixed = [name for name in modules if name.endswith("." + spec)]
    if len(suffixed) == 1:  # "features" finds "net.features" when a LightningModule wraps the net
        return suffixed[0], modules[suffixed[0]]
    raise _unknown_layer_error(model, spec)


def resolve_layers(
    model: nn.Module, specs: LayerSpec | list[LayerSpec] | tuple[LayerSpec, ...], example: torch.Tensor | None = None
) -> dict[str, nn.Module]:
    """Resolve one or several layer specs into an ordered ``{name: module}`` dict (duplicates dropped)."""
    if isinstance(specs, (str, nn.Module)):
        specs = [specs]
    out: dict[str, nn.Module] = {}
    for spec in specs:
        name, module = resolve_layer(model, spec, example)
        out[name] = module
    return out
