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

What counts as a feature map is the model's :class:`Layout` (:func:`model_layout`): a 4-D output whose sides are the
input's over a whole-number stride, read as ``(N, C, H, W)`` or, when only that fits, channels-last ``(N, H, W, C)``
(timm's Swin) and permuted; attention tensors ``(N, heads, T, d)`` never count; token layers drop the prefix tokens
the model declares (timm's ``num_prefix_tokens``: class, distillation, register tokens). When no ``reshape=`` is
given, the ops and callbacks lay outputs out with this layout.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from trainviz.core.hooks import capture
from trainviz.core.outputs import to_logits, unwrap

LayerSpec = Union[str, nn.Module]
Reshape = Optional[Callable[[torch.Tensor], torch.Tensor]]

__all__ = [
    "LayerSpec",
    "Layout",
    "Reshape",
    "find_last_spatial_layer",
    "list_layers",
    "model_layout",
    "resolve_layer",
    "resolve_layers",
    "stride_fits",
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
    if isinstance(reshape, Layout):
        return reshape.to_maps(x, name)
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


# --------------------------------------------------------------------------------------------------
# the layout of a model's outputs: feature maps, channels-last maps, tokens with prefix tokens
# --------------------------------------------------------------------------------------------------
def stride_fits(side: int, size: int) -> bool:
    """Whether a feature-map side ``side`` is the input side ``size`` divided by a whole-number stride, rounded
    down or up (``64 -> 32, 21, 22, 16, 13, ...``; a single axis may keep the input's side, as audio networks
    that pool along one axis only).

    Example:
        >>> stride_fits(7, 224), stride_fits(21, 64), stride_fits(768, 64), stride_fits(17, 64)
        (True, True, False, False)
    """
    if side < 1 or side > size:
        return False
    ratio = size / side
    return any(s >= 1 and side in (size // s, -(-size // s)) for s in (math.floor(ratio), math.ceil(ratio)))


def _declared(model: nn.Module, attribute: str) -> int | None:
    """The first int (bools included) ``attribute`` declared by ``model`` or one of its sub-modules."""
    for _, module in unwrap(model).named_modules():
        value = getattr(module, attribute, None)
        if isinstance(value, (int, bool)):
            return int(value)
    return None


@dataclass(frozen=True)
class Layout:
    """How a model's layer outputs become feature maps ``(N, C, h, w)`` for an input of ``size`` ``(H, W)``: the
    ``reshape`` trainviz makes for a model when the user passes none (:func:`model_layout`).

    * 4-D outputs are ``(N, C, h, w)`` when ``h`` and ``w`` are the input's sides divided by a whole-number
      stride (:func:`stride_fits`); otherwise channels-last ``(N, h, w, C)`` (timm's Swin, ConvNeXt block
      internals) when ``h`` and ``w`` fit, and are permuted; when both readings fit, ``(N, C, h, w)``.
    * tokens ``(N, T, C)``: the first ``prefix`` tokens (class, distillation and register tokens, as the model
      declares them: timm's ``num_prefix_tokens``) are dropped and the rest laid out on a square grid; with no
      declaration, a square grid after 0 or 1 class token (:func:`tokens_to_grid`).

    Attributes:
        size: the input's spatial sides ``(H, W)``; ``None`` for inputs that are not images ``(N, C, H, W)``
            (then every 4-D output is ``(N, C, h, w)`` and every square token grid fits).
        prefix: tokens before the patch tokens, or ``None`` when the model does not say.
        class_token: whether the first prefix token is a class token (timm's ``has_class_token``), or ``None``.
    """

    size: tuple[int, int] | None
    prefix: int | None = None
    class_token: bool | None = None

    def spatial(self, shape: Sequence[int]) -> str | None:
        """``"nchw"``, ``"nhwc"`` or ``None`` (neither reading has the input's sides over a whole stride)."""
        if len(shape) != 4:
            return None
        if self.size is None:
            return "nchw"
        (h_in, w_in), (_, a, b, c) = self.size, shape
        if stride_fits(b, h_in) and stride_fits(c, w_in):
            return "nchw"
        if stride_fits(a, h_in) and stride_fits(b, w_in):
            return "nhwc"
        return None

    def patch_count(self, tokens: int, grid: tuple[int, int] | None = None) -> int | None:
        """How many of ``tokens`` are patches (the last ones): ``tokens - prefix`` when that is the patch grid
        ``grid`` (the last feature map before the tokens) or a square grid whose side fits the input; with no
        declared prefix, ``h*w`` or ``h*w + 1`` as :func:`token_grid`; ``None`` if no layout fits."""
        skips = (self.prefix,) if self.prefix is not None else (0, 1)
        for skip in skips:
            cells = tokens - skip
            if grid is not None and cells == grid[0] * grid[1]:
                return cells
            side = math.isqrt(max(cells, 0))
            if side > 1 and side * side == cells and (self.size is None or stride_fits(side, min(self.size))):
                return cells
        return None

    def to_maps(self, x: torch.Tensor, name: str = "") -> torch.Tensor:
        """``x`` as feature maps ``(N, C, h, w)`` (see the class docstring).

        Raises:
            ValueError: tokens that do not lie on a square grid after the prefix, or an output that is neither
                4-D nor tokens, naming the layer.
        """
        layer = f"layer {name!r}" if name else "the layer"
        if x.dim() == 4:
            return x.permute(0, 3, 1, 2) if self.spatial(x.shape) == "nhwc" else x
        if x.dim() == 3 and self.prefix is not None:
            n, t, c = x.shape
            side = math.isqrt(max(t - self.prefix, 0))
            if side < 1 or side * side != t - self.prefix:
                raise ValueError(
                    f"{layer[0].upper()}{layer[1:]} outputs tokens {tuple(x.shape)}: {t} tokens are not "
                    f"{self.prefix} prefix tokens (as the model declares) and a square grid: pass `reshape=` a "
                    "callable (N, T, C) -> (N, C, h, w) for this layout."
                )
            return x[:, self.prefix :].transpose(1, 2).reshape(n, c, side, side)
        return to_feature_maps(x, None, name)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_maps(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """An embedding of a layer's output: tokens ``(N, T, C)`` give their class token (the first prefix token,
        when the model has one), else the mean of their patch tokens; channels-last maps are laid out as
        ``(N, C, h, w)`` (then averaged by :func:`trainviz.ops.embedding.pool_features`); others as they are.

        Shape:
            ``(N, T, C)`` -> ``(N, C)``; ``(N, h, w, C)`` -> ``(N, C, h, w)``; others unchanged.
        """
        if x.dim() == 4:
            return self.to_maps(x)
        if x.dim() != 3:
            return x
        count = self.patch_count(x.shape[1])
        if count is None:
            return x
        skip = x.shape[1] - count
        has_class = self.class_token if self.class_token is not None else skip == 1
        return x[:, 0] if skip > 0 and has_class else x[:, skip:].mean(1)


def model_layout(model: nn.Module, example: torch.Tensor) -> Layout:
    """The :class:`Layout` of ``model`` on inputs shaped like ``example`` ``(N, C, H, W)``: its declared prefix
    tokens (``num_prefix_tokens``) and class token (``has_class_token``), as timm's vision transformers have."""
    size = (int(example.shape[-2]), int(example.shape[-1])) if example.dim() == 4 else None
    prefix = _declared(model, "num_prefix_tokens")
    has_class = _declared(model, "has_class_token")
    return Layout(size, prefix, None if has_class is None else bool(has_class))


def find_last_spatial_layer(
    model: nn.Module, example: torch.Tensor, reshape: Reshape = None, *, gradient: bool = True
) -> str:
    """Name of the layer ``"auto"`` stands for (see the module docstring): the last module (in execution
    order) whose output is a feature map by its layout (:class:`Layout`: sides that are the input's over a
    whole-number stride, ``(N, C, H, W)`` or channels-last, H*W > 1; attention internals ``(N, heads, T, d)``
    and ``(N, heads, T, T)`` never count), unless token layers ``(N, T, C)`` follow it; then the last token
    layer whose patch tokens get a nonzero gradient from the predicted class's score.

    Runs one forward pass of the first example twice over (a batch of 2, so that window batches and
    per-model tensors, whose first side is not the batch, are told apart) under ``torch.no_grad()`` with
    temporary hooks (removed in ``finally``), and for token layers one more forward and one
    ``torch.autograd.grad`` (so ``model`` must return logits, e.g. a :class:`trainviz.core.outputs.LogitsModel`).
    The caller is responsible for eval mode and RNG (see :func:`trainviz.core.guard.probe_guard`).

    Args:
        model: the network.
        example: an input batch (one image is enough).
        reshape: a callable ``(N, T, C) -> (N, C, h, w)`` for token layouts other than the default (the
            model's :func:`model_layout`); with it, any 3-D output it turns into a grid counts as a token layer.
        gradient: ``False`` takes the last token layer of the residual stream whatever its gradient (the
            embedding of a transformer: its final norm), instead of the last one whose patch tokens get one.
    """
    layout = reshape if isinstance(reshape, Layout) else model_layout(model, example)
    user = None if isinstance(reshape, Layout) else reshape
    batch = example[:1].repeat(2, *([1] * (example.dim() - 1))) if example.dim() > 0 else example
    # every tensor output in execution order: (name, shape, the tensor itself only when a user reshape must try it)
    calls: list[tuple[str, torch.Size, torch.Tensor | None]] = []
    handles = []

    def make_hook(name: str):
        def hook(_m, _inp, out):
            if isinstance(out, torch.Tensor) and out.dim() > 0 and out.shape[0] == batch.shape[0]:
                calls.append((name, out.shape, out if user is not None and out.dim() == 3 else None))  # noqa: F821

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        with torch.no_grad():
            model(batch)
    finally:
        for h in handles:
            h.remove()
    streams: set[tuple[int, int]] = set()  # (T, C) of the token outputs seen so far
    spatial: list[int] = []
    odd: list[int] = []  # 4-D outputs with H*W > 1 that no layout reads as a feature map
    for i, (_, shape, _) in enumerate(calls):
        if len(shape) == 3:
            streams.add((int(shape[1]), int(shape[2])))
        elif len(shape) == 4 and not _attention_internal(shape, streams):
            kind = layout.spatial(shape)
            h, w = (shape[1], shape[2]) if kind == "nhwc" else (shape[2], shape[3])
            if h * w > 1:
                (spatial if kind is not None else odd).append(i)
    if odd and (not spatial or odd[-1] > spatial[-1]):
        # e.g. unpadded convolutions (28 -> 24 -> 12 -> 8): no whole stride; taken as (N, C, H, W), with a warning
        spatial.append(odd[-1])
        _log.warning(
            "layer='auto': the output %s of %r does not have the input's sides %s over a whole-number stride; "
            "it is read as (N, C, H, W). Pass `layers=` (and `reshape=`) if it is not a feature map.",
            tuple(calls[odd[-1]][1]),
            calls[odd[-1]][0],
            layout.size,
        )
    last = spatial[-1] if spatial else -1
    grid = None
    if spatial:
        shape = calls[last][1]
        grid = (int(shape[1]), int(shape[2])) if layout.spatial(shape) == "nhwc" else (int(shape[2]), int(shape[3]))
    after: dict[str, int] = {}  # 3-D outputs after the last spatial one: width, by each module's last call
    for name, shape, out in calls[last + 1 :]:
        if len(shape) != 3:
            continue
        fits = (
            layout.patch_count(shape[1], grid) is not None if user is None else _patch_part(out, grid, user) is not None
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
    tokens = _stream_layers(model, tokens)
    skipped = f" (after the patch embedding {embed!r})" if embed else ""
    if not gradient:
        _log.info("layer='auto' chose %r, the last token layer of the residual stream%s.", tokens[-1], skipped)
        return tokens[-1]
    live = _token_layers_with_gradient(model, example[:1], tokens, grid, user, layout)
    chosen = live[-1] if live else tokens[-1]
    why = (
        "whose patch tokens receive a gradient" if live else "(no token layer receives a gradient at its patch tokens)"
    )
    _log.info("layer='auto' chose %r, the last token layer %s%s.", chosen, why, skipped)
    return chosen


def _attention_internal(shape: Sequence[int], streams: set[tuple[int, int]]) -> bool:
    """Whether a 4-D output ``(N, a, T, d)`` is an attention tensor: heads x tokens x head width of a token
    stream ``(N, T, a*d)`` seen before it, or attention weights ``(N, heads, T, T)``."""
    _, a, t, d = (int(v) for v in shape)
    return (t, a * d) in streams or (t == d and any(t == seen for seen, _ in streams))


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)) or "Norm" in type(module).__name__


def _stream_layers(model: nn.Module, names: list[str]) -> list[str]:
    """The token layers among ``names`` that are the residual stream: norms, and modules holding a norm (blocks,
    stages); projections inside an attention (Hugging Face's separate ``q_proj``, ``k_proj``, ``v_proj``, as wide
    as the stream) are not. All of ``names`` when none is."""
    modules = dict(model.named_modules())
    kept = [n for n in names if any(_is_norm(m) for m in modules[n].modules())]
    return kept or names


def _patch_part(x: torch.Tensor, grid: tuple[int, int] | None, reshape: Reshape, layout: Layout | None = None):
    """The patch tokens of a 3-D output (a grid with a user ``reshape``), or None if it is not a token layer."""
    if reshape is not None:
        try:
            out = reshape(x)
        except Exception:  # noqa: BLE001 - a layer the user's reshape does not apply to is not a token layer
            return None
        return out if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1 else None
    count = layout.patch_count(x.shape[1], grid) if layout is not None else _patch_count(x.shape[1], grid)
    return None if count is None else x[:, x.shape[1] - count :]


def _patch_count(tokens: int, grid: tuple[int, int] | None) -> int | None:
    """How many of ``tokens`` are patches (the last ones) under the default layout, or None if none fits."""
    if grid is not None:
        cells = grid[0] * grid[1]
        return cells if tokens in (cells, cells + 1) else None
    layout = token_grid(tokens)
    return None if layout is None else tokens - layout[2]


def _token_layers_with_gradient(
    model: nn.Module,
    example: torch.Tensor,
    names: list[str],
    grid: tuple[int, int] | None,
    reshape: Reshape,
    layout: Layout | None = None,
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
    live = []
    for n, g in zip(present, grads):
        part = _patch_part(g, grid, reshape, layout)
        if part is not None and bool(part.abs().amax() > 0):
            live.append(n)
    return live


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
