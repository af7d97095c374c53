"""Capture the activations of several layers in one forward pass.

Hooks exist only inside the ``with`` block and are removed in ``finally``, also when the forward raises.

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.core.hooks import capture
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True))
    >>> with capture(net, {"conv": net[0]}) as acts:
    ...     _ = net(torch.randn(2, 3, 8, 8))
    >>> acts["conv"].shape
    torch.Size([2, 4, 6, 6])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["capture", "count_hooks", "first_tensor"]


def first_tensor(out: object) -> torch.Tensor | None:
    """The tensor a module returned, or the first tensor of a tuple/list output or of a dict-like output
    (e.g. a Hugging Face ``ModelOutput``, whose first field is ``last_hidden_state``)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, torch.Tensor):
                return item
    return None


@contextmanager
def capture(
    model: nn.Module, layers: Mapping[str, nn.Module], *, keep_graph: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of each layer in ``layers`` during the forward passes inside the block.

    Args:
        model: the network (only used for documentation symmetry; hooks go on ``layers``).
        layers: ``{name: module}``, e.g. from :func:`trainviz.core.layers.resolve_layers`.
        keep_graph: ``False`` stores detached copies. ``True`` stores the layer's own output tensor
            (attached to the autograd graph, so ``torch.autograd.grad(score, acts[name])`` works) and
            passes a *clone* downstream, so a later in-place op (``ReLU(inplace=True)``) cannot modify
            the captured value or break the gradient.

    Yields:
        A dict filled during the forward: ``{name: activation}``.

    Shape:
        Each activation has the layer's output shape, e.g. ``(N, C, H, W)``.
    """
    del model
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inp, out):
            tensor = first_tensor(out)
            if tensor is None:
                return None
            if not keep_graph:
                acts[name] = tensor.detach().clone()
                return None
            acts[name] = tensor
            if isinstance(out, torch.Tensor):
                return out.clone()
            return None

        return hook

    try:
        for name, module in layers.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield acts
    finally:
        for h in handles:
            h.remove()


def count_hooks(model: nn.Module) -> int:
    """Number of forward, forward-pre, backward and backward-pre hooks on all modules of ``model``."""
    total = 0
    for module in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            hooks = getattr(module, attr, None)
            if hooks:
                total += len(hooks)
    return total
