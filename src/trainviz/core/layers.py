"""Find the layers a probe looks at: dotted names, module objects or ``"auto"``; token layouts of transformers.

``"auto"`` on a CNN is the last module (in execution order) with a spatial 4-D output ``(N, C, H, W)``. On a
vision transformer, whose last 4-D output is the patch embedding, it is a *token layer* after it: a module
whose output is ``(N, T, C)`` with ``T = h*w`` or ``h*w + 1`` (a class token first), ``(h, w)`` the grid of the
last 4-D output (square ``T`` or ``T - 1`` when there is none), and ``C`` the most common width among such
layers (the residual stream; raw patches, MLP hidden and qkv outputs are skipped). Of those, it takes the
**last one whose patch tokens receive a gradient** from the predicted class's score (one extra forward and
backward on one example; a container returning its last child's tensor counts, as for CNNs). The
output of the final block of a class-token ViT reaches the head through the class token only, so after a
per-token LayerNorm its patch-token gradient is exactly zero and its Grad-CAM is blank; the rule then lands on
the input side of the last block: ``blocks[-1].norm1`` of a pre-norm (timm-style) ViT, which is what
pytorch-grad-cam recommends, or the output of the second-to-last ``nn.TransformerEncoderLayer`` (post-norm,
whose ``norm1`` comes after the attention). For a mean-pooled ViT every token layer gets a gradient, and the
rule takes the last one (e.g. the final norm before the pooling), as the last conv layer of a CNN. The choice
is logged (``logging.getLogger("trainviz.core.layers")``, level INFO); callbacks also report it.

Example:
    >>> import torch.nn as nn
    >>> from trainviz.core.layers import resolve_layer, list_layers
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    >>> resolve_layer(net, "0")[0]
    '0'
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable
from typing import Optional, Union

import torch
from torch import nn

from trainviz.core.hooks import capture
from trainviz.core.outputs import to_logits, unwrap

LayerSpec = Union[str, nn.Module]
Reshape = Optional[Callable[[torch.Tensor], torch.Tensor]]

__all__ = [
    "LayerSpec",
    "Reshape",
    "find_last_spatial_layer",
    "list_layers",
    "resolve_layer",
    "resolve_layers",
    "to_feature_maps",
    "token_grid",
    "tokens_to_grid",
]

_log = logging.getLogger(__name__)


def list_layers(model: nn.Module) -> list[str]:
    """Dotted names of every sub-module of ``model`` (the root excluded), in registration order."""
    return [name for name, _ in model.named_modules() if name]


def _unknown_layer_error(model: nn.Module, name: str) -> ValueError:
    names = list_layers(model)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = f" Closest matches: {', '.join(repr(c) for c in close)}." if close else ""
    return ValueError(
        f"Layer {name!r} not found in {type(unwrap(model)).__name__}.{hint} "
        "Call `trainviz.list_layers(model)` to see all layer names."
    )


# --------------------------------------------------------------------------------------------------
# token layouts
# --------------------------------------------------------------------------------------------------
def token_grid(tokens: int) -> tuple[int, int, int] | None:
    """The default layout of ``tokens`` tokens: ``(h, w, skip)`` with ``h = w`` and ``tokens = skip + h*w``,
    for a square grid (``skip = 0``) or a square grid after one class token (``skip = 1``); ``None`` otherwise.

    Example:
        >>> token_grid(16), token_grid(17), token_grid(12)
        ((4, 4, 0), (4, 4, 1), None)
    """
    for skip in (0, 1):
        side = math.isqrt(max(tokens - skip, 0))
        if side > 1 and side * side == tokens - skip:
            return side, side, skip
    return None


def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """The default ``reshape``: tokens ``(N, T, C)`` to feature maps ``(N, C, h, w)`` on a square grid, the
    class token dropped when ``T = h*w + 1`` (it comes first, as in ViT and timm).

    Raises:
        ValueError: ``T`` is not ``h*h`` or ``h*h + 1``; the message says to pass ``reshape=``.

    Shape:
        ``(N, T, C)`` -> ``(N, C, h, w)``

    Example:
        >>> tokens_to_grid(torch.zeros(2, 17, 8)).shape
        torch.Size([2, 8, 4, 4])
    """
    n, t, c = tokens.shape
    layout = token_grid(t)
    if layout is None:
        raise ValueError(
            f"Cannot lay {t} tokens on a square grid (expected h*h tokens, or h*h + 1 with a class token first): "
            "pass `reshape=` a callable (N, T, C) -> (N, C, h, w) for this layout."
        )
    h, w, skip = layout
    return tokens[:, skip:].transpose(1, 2).reshape(n, c, h, w)


def to_feature_maps(x: torch.Tensor, reshape: Reshape = None, name: str = "") -> torch.Tensor:
    """A layer's output as feature maps ``(N, C, h, w)``: ``reshape(x)`` when given (applied to every layer,
    as pytorch-grad-cam's ``reshape_transform``); else 4-D outputs as they are and tokens ``(N, T, C)`` by
    :func:`tokens_to_grid`.

    Raises:
        ValueError: the output (or what ``reshape`` made of it) is not 4-D, naming the layer.
    """
    layer = f"layer {name!r}" if name else "the layer"
    if reshape is not None:
        out = reshape(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"Expected `reshape` to turn the output {tuple(x.shape)} of {layer} into (N, C, h, w), got {shape}."
            )
        return out
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        try:
            return tokens_to_grid(x)
        except ValueError as err:
            raise ValueError(f"{layer[0].upper()}{layer[1:]} outputs tokens {tuple(x.shape)}. {err}") from None
    raise ValueError(
        f"Expected {layer} to output feature maps (N, C, H, W) or tokens (N, T, C), got shape {tuple(x.shape)}: "
        "class activation maps need spatial layers (see `trainviz.list_layers(model)`)."
    )


def find_last_spatial_layer(model: nn.Module, example: torch.Tensor, reshape: Reshape = None) -> str:
    """Name of the layer ``"auto"`` stands for (see the module docstring): the last module (in execution
    order) with a 4-D output with H*W > 1, unless token layers ``(N, T, C)`` follow it; then the last token
    layer whose patch tokens get a nonzero gradient from the predicted class's score.

    Runs one forward pass of ``example`` under ``torch.no_grad()`` with temporary hooks (removed in
    ``finally``), and for token layers one more forward and one ``torch.autograd.grad`` (so ``model`` must
    return logits, e.g. a :class:`trainviz.core.outputs.LogitsModel`). The caller is responsible for eval mode and
    RNG (see :func:`trainviz.core.guard.probe_guard`).

    Args:
        model: the network.
        example: an input batch (one image is enough).
        reshape: a callable ``(N, T, C) -> (N, C, h, w)`` for token layouts other than the default
            (:func:`tokens_to_grid`); with it, any 3-D output it turns into a grid counts as a token layer.
    """
    # every tensor output in execution order: (name, shape, the tensor itself only when a user reshape must try it)
    calls: list[tuple[str, torch.Size, torch.Tensor | None]] = []
    handles = []

    def make_hook(name: str):
        def hook(_m, _inp, out):
            if isinstance(out, torch.Tensor):
                calls.append((name, out.shape, out if reshape is not None and out.dim() == 3 else None))  # noqa: F821

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
    spatial = [i for i, (_, shape, _) in enumerate(calls) if len(shape) == 4 and shape[-1] * shape[-2] > 1]
    last = spatial[-1] if spatial else -1
    grid = (int(calls[last][1][-2]), int(calls[last][1][-1])) if spatial else None
    after: dict[str, int] = {}  # 3-D outputs after the last spatial one: width, by each module's last call
    for name, shape, out in calls[last + 1 :]:
        if len(shape) != 3:
            continue
        fits = (
            _patch_count(shape[1], grid) is not None if reshape is None else _patch_part(out, grid, reshape) is not None
        )
        if fits:
            after.pop(name, None)
            after[name] = shape[-1]
    widths = list(after.values())
    # the residual stream: the most common width (ties: the later one), so patch-dim inputs, MLP hidden and
    # qkv outputs are skipped
    width = max(widths, key=lambda c: (widths.count(c), len(widths) - widths[::-1].index(c))) if widths else None
    tokens = [n for n, c in after.items() if c == width]
    if not tokens:
        if not spatial:
            raise ValueError(
                f"`layer='auto'` found no module with a 4-D (N, C, H, W) or token (N, T, C) output in "
                f"{type(unwrap(model)).__name__}; pass a layer name (see `trainviz.list_layers(model)`)."
            )
        chosen = calls[last][0]
        _log.info("layer='auto' chose %r, the last module with a spatial output %s.", chosen, tuple(calls[last][1]))
        return chosen
    embed = calls[last][0] if spatial else None
    del calls, after
    live = _token_layers_with_gradient(model, example, tokens, grid, reshape)
    chosen = live[-1] if live else tokens[-1]
    skipped = f" (after the patch embedding {embed!r})" if embed else ""
    why = (
        "whose patch tokens receive a gradient" if live else "(no token layer receives a gradient at its patch tokens)"
    )
    _log.info("layer='auto' chose %r, the last token layer %s%s.", chosen, why, skipped)
    return chosen


def _patch_count(tokens: int, grid: tuple[int, int] | None) -> int | None:
    """How many of ``tokens`` are patches (the last ones) under the default layout, or None if none fits."""
    if grid is not None:
        cells = grid[0] * grid[1]
        return cells if tokens in (cells, cells + 1) else None
    layout = token_grid(tokens)
    return None if layout is None else tokens - layout[2]


def _patch_part(x: torch.Tensor, grid: tuple[int, int] | None, reshape: Reshape) -> torch.Tensor | None:
    """The patch tokens of a 3-D output (a grid with a user ``reshape``), or None if it is not a token layer."""
    if reshape is not None:
        try:
            out = reshape(x)
        except Exception:  # noqa: BLE001 - a layer the user's reshape does not apply to is not a token layer
            return None
        return out if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1 else None
    count = _patch_count(x.shape[1], grid)
    return None if count is None else x[:, x.shape[1] - count :]


def _token_layers_with_gradient(
    model: nn.Module, example: torch.Tensor, names: list[str], grid: tuple[int, int] | None, reshape: Reshape
) -> list[str]:
    """The token layers among ``names`` whose patch tokens get a nonzero gradient of the predicted class's score."""
    modules = dict(model.named_modules())
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        capture(model, {n: modules[n] for n in names}, keep_graph=True) as acts,
    ):
        x = example.detach().clone().requires_grad_(True)
        logits = to_logits(model(x))
        score = logits.gather(1, logits.detach().argmax(1, keepdim=True)).sum()
        present = [n for n in names if n in acts and acts[n].requires_grad]
        grads = (
            torch.autograd.grad(score, [acts[n] for n in present], allow_unused=True, materialize_grads=True)
            if present
            else ()
        )
    return [n for n, g in zip(present, grads) if bool(_patch_part(g, grid, reshape).abs().amax() > 0)]


def resolve_layer(
    model: nn.Module, spec: LayerSpec, example: torch.Tensor | None = None, reshape: Reshape = None
) -> tuple[str, nn.Module]:
    """Turn a layer spec into ``(dotted_name, module)``.

    Args:
        model: the network.
        spec: a dotted name from ``model.named_modules()`` (or a unique suffix of one, so ``"features"``
            finds ``"net.features"``), a sub-module object, or ``"auto"`` (the last module with a spatial 4-D
            output, or on a transformer a token layer after it: see :func:`find_last_spatial_layer`; needs
            ``example``).
        example: an input batch, used only for ``"auto"``.
        reshape: token layout for ``"auto"`` (see :func:`find_last_spatial_layer`).

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
        spec = find_last_spatial_layer(model, example, reshape)
    modules = dict(model.named_modules())
    if spec in modules and spec != "":
        return spec, modules[spec]
    suffixed = [name for name in modules if name.endswith("." + spec)]
    if len(suffixed) == 1:  # "features" finds "net.features" when a LightningModule wraps the net
        return suffixed[0], modules[suffixed[0]]
    raise _unknown_layer_error(model, spec)


def resolve_layers(
    model: nn.Module,
    specs: LayerSpec | list[LayerSpec] | tuple[LayerSpec, ...],
    example: torch.Tensor | None = None,
    reshape: Reshape = None,
) -> dict[str, nn.Module]:
    """Resolve one or several layer specs into an ordered ``{name: module}`` dict (duplicates dropped)."""
    if isinstance(specs, (str, nn.Module)):
        specs = [specs]
    out: dict[str, nn.Module] = {}
    for spec in specs:
        name, module = resolve_layer(model, spec, example, reshape)
        out[name] = module
    return out
