"""Back-propagation, deconvolution and guided backpropagation through ReLUs; guided Grad-CAM (pure torch).

The three methods differ only in what goes back through a ReLU ``x = max(0, s)`` (Fleuret, EE-559 'Under the
hood'), given the gradient ``g = dl/dx`` arriving at its output:

* ``"gradient"`` (back-propagation, Erhan et al. 2009; Simonyan et al. 2013): ``1{s>0} g``,
* ``"deconvnet"`` (Zeiler and Fergus 2014): ``1{g>0} g``, *not* modulated by ``s``,
* ``"guided"`` (guided backpropagation, Springenberg et al. 2014): ``1{s>0} 1{g>0} g``.

:func:`relu_rule` swaps in one rule for the duration of a ``with`` block, without touching the model: a
:class:`torch.overrides.TorchFunctionMode`, active only during the model's forwards inside the block, reroutes
every relu call they make -- ``nn.ReLU`` modules (in-place or not, called once or several times per forward, since
``nn.ReLU.forward`` calls ``F.relu``), ``torch.relu``, ``torch.relu_``, ``F.relu(x, inplace=True)``,
``F.relu_``, ``Tensor.relu()`` and ``Tensor.relu_()`` -- to a custom autograd function. Its forward is the
relu (in place for the in-place variants) and saves only the mask ``s > 0``; its backward applies the rule
while the yielded :class:`GuidedSwitch` is ``active`` and the plain ``1{s>0} g`` otherwise, so guided Grad-CAM
can run its plain and guided backward passes on one forward. The mode is entered and left by a forward
pre-hook and an ``always_call`` forward hook on the model itself (removed in ``finally``), so it is active
during the model's forwards only; nothing stays active after the block (also when it raises), and a block
whose forwards run no relu at all (GELU only, or a scripted model) gets a warning: its result is the plain
gradient. Other activations (``nn.ReLU6``, ``nn.LeakyReLU``, ``F.gelu``, ...) keep their normal backward.

Cost: guided backprop is one forward and one backward down to the input per target class; guided
Grad-CAM shares the forward with Grad-CAM and adds that one input backward (so 1 forward + 2 backward
passes per target), more than Grad-CAM alone, whose backward stops at the captured layers. The mode adds a
Python call per torch function run in the forward (small next to a convolution).

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.ops.guided import guided_backprop, guided_grad_cam, relu_rule
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 2)).eval()
    >>> x = torch.randn(2, 3, 8, 8)
    >>> guided_backprop(net, x, targets=1).shape
    torch.Size([2, 3, 8, 8])
    >>> guided_grad_cam(net, x, layers="0", targets=1).guided_grad_cam.shape
    torch.Size([2, 3, 8, 8])
    >>> x = x.requires_grad_(True)
    >>> with relu_rule(net, "deconvnet") as switch:
    ...     score = net(x)[:, 1].sum()
    ...     switch.active = True
    ...     (deconv,) = torch.autograd.grad(score, x)
    >>> deconv.shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode

from trainviz.core.checks import check_choice
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

__all__ = ["RULES", "GuidedSwitch", "Rule", "guided_backprop", "guided_grad_cam", "guided_relu", "relu_rule"]

Rule = Literal["gradient", "deconvnet", "guided"]
RULES: tuple[str, ...] = ("gradient", "deconvnet", "guided")


class GuidedSwitch:
    """Yielded by :func:`relu_rule`: the rule applies to backward passes run while ``active``."""

    def __init__(self) -> None:
        self.active = False


class _RuleReLU(torch.autograd.Function):
    """``relu`` forward (in place when asked); backward ``1{s>0} g`` or, while the switch is on, the rule."""

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, rule: str, switch: GuidedSwitch, inplace: bool) -> torch.Tensor:
        mask = s > 0  # the mask, not s: an in-place relu may overwrite s without breaking the backward
        ctx.save_for_backward(mask)
        ctx.rule, ctx.switch = rule, switch
        if inplace:
            ctx.mark_dirty(s)
            return torch.relu_(s)
        return torch.relu(s)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (mask,) = ctx.saved_tensors
        rule = ctx.rule if ctx.switch.active else "gradient"
        if rule == "deconvnet":
            return grad.clamp_min(0), None, None, None
        return torch.where(mask, grad.clamp_min(0) if rule == "guided" else grad, 0.0), None, None, None


# relu entry points -> whether they are in place (F.relu: read from its `inplace` argument). F.relu_ is torch.relu_.
_RELUS: dict[Callable[..., Any], bool | None] = {
    F.relu: None,
    torch.relu: False,
    torch.relu_: True,
    torch.Tensor.relu: False,
    torch.Tensor.relu_: True,
}


class _ReLURuleMode(TorchFunctionMode):
    """Reroutes relu calls to :class:`_RuleReLU`; counts them (``calls``) for the "no relu ran" warning."""

    def __init__(self, rule: str, switch: GuidedSwitch) -> None:
        super().__init__()
        self.rule, self.switch, self.calls = rule, switch, 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        try:
            inplace = _RELUS[func]
        except (KeyError, TypeError):  # not a relu (or an unhashable callable)
            return func(*args, **kwargs)
        self.calls += 1
        s = args[0] if args else kwargs.get("input", kwargs.get("self"))
        if inplace is None:  # F.relu(input, inplace=False)
            inplace = bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
        if not (isinstance(s, torch.Tensor) and s.requires_grad and torch.is_grad_enabled()):
            return func(*args, **kwargs)
        return _RuleReLU.apply(s, self.rule, self.switch, inplace)


@contextmanager
def relu_rule(model: nn.Module | Callable[..., Any], rule: Rule = "guided") -> Iterator[GuidedSwitch]:
    """Within the block, forward passes of ``model`` record ``rule`` at every relu; it applies to backward
    passes run while the yielded switch is ``active`` (other backward passes get the plain ``1{s>0} g``).

    Every relu run by the model's forward is rerouted (``nn.ReLU`` modules, in-place or reused, and the
    functional forms ``torch.relu``, ``torch.relu_``, ``F.relu``, ``Tensor.relu``, ``Tensor.relu_``); the
    model is not modified. For an ``nn.Module`` the function mode is entered by a forward pre-hook on the
    model itself and left by an ``always_call`` forward hook, so it is active during its forward passes only
    (code around them, ``torch.autograd.grad`` included, runs without it; both hooks are removed in
    ``finally``); for another callable it is active for the whole block. Gradients of a graph built inside
    the block follow the switch even when taken after it.

    Args:
        model: the network (or any callable: then every relu run inside the block follows the rule).
        rule: ``"gradient"`` ``1{s>0} g``, ``"deconvnet"`` ``1{g>0} g`` or ``"guided"`` ``1{s>0} 1{g>0} g``.

    Raises:
        ValueError: for an unknown ``rule``.

    Warns:
        UserWarning: when the block ran no relu (``rule`` other than ``"gradient"``): the result is the
            plain gradient.
    """
    check_choice("rule", rule, RULES)
    switch = GuidedSwitch()
    mode = _ReLURuleMode(rule, switch)
    if isinstance(model, nn.Module):
        depth = [0]  # the model may be called inside its own forward (a wrapper): enter the mode once

        def enter(*_: Any) -> None:
            if depth[0] == 0:
                mode.__enter__()
            depth[0] += 1

        def leave(*_: Any) -> None:
            if depth[0] == 0:  # an earlier pre-hook raised before `enter` ran
                return
            depth[0] -= 1
            if depth[0] == 0:
                mode.__exit__(None, None, None)

        handles = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave, always_call=True)]
        try:
            yield switch
        finally:
            for handle in handles:
                handle.remove()
            if depth[0] > 0:  # a forward that never reached its hooks' end (defensive: always_call runs on raise)
                depth[0] = 0
                mode.__exit__(None, None, None)
    else:
        with mode:
            yield switch
    if rule != "gradient" and mode.calls == 0:
        name = type(unwrap(model)).__name__
        what = "guided backpropagation" if rule == "guided" else "deconvolution"
        warnings.warn(
            f"trainviz: {what} saw no relu in the forward of {name} (no nn.ReLU module in {name} ran, nor "
            "torch.relu / F.relu / Tensor.relu); only relus follow the rule, so the result is the plain input "
            "gradient.",
            stacklevel=3,
        )


def guided_relu(model: nn.Module) -> AbstractContextManager[GuidedSwitch]:
    """:func:`relu_rule` with the guided rule ``1{s>0} 1{g>0} g`` (guided backpropagation)."""
    return relu_rule(model, "guided")


def guided_backprop(
    model: nn.Module, images: torch.Tensor, targets: TargetSpec = "predicted", *, k: int = 1
) -> torch.Tensor:
    """Guided backpropagation: the gradient of each image's target score w.r.t. the image, with the guided
    ReLU rule. One forward and one backward per target class.

    Args:
        model: a classifier in eval mode with ReLUs (modules or functional).
        images: model inputs.
        targets: see :func:`trainviz.ops.cam.resolve_targets`.
        k: classes per image for ``targets="topk"``.

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, H, W)``, or ``(N, k, C, H, W)`` for several targets per image.
    """
    p = activations_and_gradients(
        model, images, {}, targets, k=k, gradients=False, input_rule=partial(relu_rule, model, "guided")
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
        input_rule=partial(relu_rule, model, "guided"),
        reshape=reshape,
    )
