"""Guided backpropagation and guided Grad-CAM (pure torch).

Backpropagation, deconvolution and guided backpropagation differ only in what goes back through a ReLU
``x = max(0, s)`` (Fleuret, EE-559 'Under the hood'): back-propagation passes ``1{s>0} dl/dx``, deconvolution
``1{dl/dx>0} dl/dx``,
guided backpropagation (Springenberg et al. 2014) ``1{s>0} 1{dl/dx>0} dl/dx``.

:func:`guided_relu` swaps in the guided rule for the duration of a ``with`` block: a forward hook on every
``nn.ReLU`` module registers a tensor hook on the ReLU's output that clamps the incoming gradient to
``>= 0`` while the returned switch is ``active``; ReLU's own backward then applies ``1{s>0}``. The module
hooks are removed in ``finally`` and the tensor hooks die with the graph, so the model is never changed.
Tensor hooks, unlike module backward hooks, work with ``nn.ReLU(inplace=True)`` (pytorch #61519) and with
a ReLU module called several times per forward. Only ``nn.ReLU`` modules are guided: a functional
``torch.relu`` / ``F.relu`` (or ``nn.ReLU6``, ``nn.LeakyReLU``, ...) keeps its normal backward, and a
model without any ``nn.ReLU`` module gets a warning (its "guided" gradient is the plain gradient).

Cost: guided backprop is one forward and one backward down to the input per target class; guided
Grad-CAM shares the forward with Grad-CAM and adds that one input backward (so 1 forward + 2 backward
passes per target), more than Grad-CAM alone, whose backward stops at the captured layers.

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.ops.guided import guided_backprop, guided_grad_cam
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 2)).eval()
    >>> x = torch.randn(2, 3, 8, 8)
    >>> guided_backprop(net, x, targets=1).shape
    torch.Size([2, 3, 8, 8])
    >>> guided_grad_cam(net, x, layers="0", targets=1).guided_grad_cam.shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from trainviz.core.layers import LayerSpec, Reshape
from trainviz.core.outputs import unwrap
from trainviz.ops.cam import (
    Aggregate,
    CAMResult,
    Layers,
    Method,
    TargetSpec,
    activations_and_gradients,
    class_activation_maps,
)

__all__ = ["GuidedSwitch", "guided_backprop", "guided_grad_cam", "guided_relu"]


class GuidedSwitch:
    """Yielded by :func:`guided_relu`: the guided rule applies to backward passes run while ``active``."""

    def __init__(self) -> None:
        self.active = False


@contextmanager
def guided_relu(model: nn.Module) -> Iterator[GuidedSwitch]:
    """Within the block, forward passes through ``model`` record a guided ReLU backward rule, applied to
    backward passes run while the yielded switch is ``active`` (other backward passes are unchanged).

    Warns when ``model`` has no ``nn.ReLU`` module (a functional relu cannot be guided).
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        warnings.warn(
            f"trainviz: guided backpropagation found no nn.ReLU module in {type(unwrap(model)).__name__}; a functional "
            "relu (torch.relu, F.relu) cannot be guided, so the result is the plain input gradient.",
            stacklevel=3,
        )
    switch = GuidedSwitch()

    def clamp(grad: torch.Tensor) -> torch.Tensor | None:
        return grad.clamp_min(0) if switch.active else None

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(clamp)

    handles = []
    try:
        for module in relus:
            handles.append(module.register_forward_hook(hook))
        yield switch
    finally:
        for handle in handles:
            handle.remove()


def guided_backprop(
    model: nn.Module, images: torch.Tensor, targets: TargetSpec = "predicted", *, k: int = 1
) -> torch.Tensor:
    """Guided backpropagation: the gradient of each image's target score w.r.t. the image, with the guided
    ReLU rule. One forward and one backward per target class.

    Args:
        model: a classifier in eval mode with ``nn.ReLU`` modules.
        images: model inputs.
        targets: see :func:`trainviz.ops.cam.resolve_targets`.
        k: classes per image for ``targets="topk"``.

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, H, W)``, or ``(N, k, C, H, W)`` for several targets per image.
    """
    p = activations_and_gradients(
        model, images, {}, targets, k=k, gradients=False, input_rule=partial(guided_relu, model)
    )
    grads = p.input_gradients.transpose(0, 1)
    return grads[:, 0] if p.single else grads


def guided_grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    layers: Layers = "auto",
    targets: TargetSpec = "predicted",
    *,
    method: Method = "gradcam",
    k: int = 1,
    aggregate: Aggregate = "mean",
    fc_layer: LayerSpec | None = None,
    batch_size: int | None = None,
    reshape: Reshape = None,
) -> CAMResult:
    """Class activation maps plus guided backpropagation from the same forward pass.

    Returns the :class:`~trainviz.ops.cam.CAMResult` of :func:`~trainviz.ops.cam.class_activation_maps`
    with ``guided`` (guided backpropagation) filled in; ``result.guided_grad_cam`` is Selvaraju et al.'s
    guided Grad-CAM, ``guided`` times the aggregated map (bilinearly upsampled) per input channel.
    ``reshape`` lays token layers out as feature maps (see :func:`~trainviz.ops.cam.activations_and_gradients`).

    Shape:
        images ``(N, C, H, W)`` -> ``guided`` and ``guided_grad_cam`` ``(N, C, H, W)`` (``(N, k, C, H, W)`` for
        several targets per image), maps as in :class:`~trainviz.ops.cam.CAMResult`.
    """
    return class_activation_maps(
        model,
        images,
        layers,
        targets,
        method=method,
        k=k,
        aggregate=aggregate,
        fc_layer=fc_layer,
        batch_size=batch_size,
        input_rule=partial(guided_relu, model),
        reshape=reshape,
    )
