"""CAM, Grad-CAM and Grad-CAM++ on the token layers of small vision transformers, against Captum (on a copy
where a module lays the tokens out as a grid) and pytorch-grad-cam (``reshape_transform``); ``layers="auto"``
on class-token and mean-pooled, pre-norm and post-norm ViTs."""

from __future__ import annotations

import copy
import logging
from functools import partial

import pytest
import torch
from torch import nn

from trainviz.core.hooks import count_hooks
from trainviz.core.layers import find_last_spatial_layer, resolve_layer, token_grid, tokens_to_grid
from trainviz.ops.cam import activations_and_gradients, cam, class_activation_maps, grad_cam, minmax_scale, resize_maps
from trainviz.ops.guided import guided_grad_cam


# ------------------------------------------------------------------------------------------------
# a small ViT: patch-embedding conv, class token, position embedding, two blocks, final norm, head
# ------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(n, t, c))


class Block(nn.Module):
    """Pre-norm (timm-style) block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """``pool="cls"``: the head reads the class token; ``"mean"``: the mean of the patch tokens (no class
    token). ``blocks="prenorm"``: :class:`Block`; ``"postnorm"``: ``nn.TransformerEncoderLayer``."""

    def __init__(
        self,
        pool: str = "cls",
        blocks: str = "prenorm",
        size: tuple[int, int] = (16, 16),
        patch: int = 4,
        dim: int = 16,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        tokens = (size[0] // patch) * (size[1] // patch) + (pool == "cls")
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.5)
        if blocks == "prenorm":
            self.blocks = nn.Sequential(Block(dim), Block(dim))
        else:
            self.blocks = nn.Sequential(
                *[nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True) for _ in range(2)]
            )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.pool == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        x = self.norm(self.blocks(x + self.pos_embed))
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(1))


def make_vit(pool: str = "cls", blocks: str = "prenorm", seed: int = 0, **kwargs) -> ViT:
    """The head is scaled up so raw maps are O(1) (pytorch-grad-cam adds 1e-7 when it min-max scales)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = ViT(pool, blocks, **kwargs)
        net.head.weight.data.mul_(1000.0)
    return net.eval()


def images(n: int = 4, seed: int = 1, size: tuple[int, int] = (16, 16)) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def close_scaled(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(minmax_scale(a.float()), minmax_scale(b.float()), atol=atol, rtol=0)


class ToGrid(nn.Module):
    """Reference plumbing for Captum: tokens -> ``(grid (N, C, h, w), class token)``, a layer Captum can read."""

    def __init__(self, h: int, w: int, skip: int) -> None:
        super().__init__()
        self.h, self.w, self.skip = h, w, skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, c = x.shape
        grid = x[:, self.skip :].transpose(1, 2).reshape(n, c, self.h, self.w)
        return grid, x[:, : self.skip]


class FromGrid(nn.Module):
    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        grid, head = pair
        return torch.cat([head, grid.flatten(2).transpose(1, 2)], 1)


def captum_reference(
    net: nn.Module, layer: str, x: torch.Tensor, targets: torch.Tensor, h: int = 4, w: int = 4, skip: int = 1
):
    """Captum's LayerGradCam on a copy of ``net`` whose ``layer`` is followed by ToGrid -> FromGrid."""
    from captum.attr import LayerAttribution, LayerGradCam

    ref = copy.deepcopy(net)
    parent_name, _, child = layer.rpartition(".")
    parent = ref.get_submodule(parent_name) if parent_name else ref
    to_grid = ToGrid(h, w, skip)
    setattr(parent, child, nn.Sequential(getattr(parent, child), to_grid, FromGrid()))
    torch.testing.assert_close(ref(x), net(x))  # the plumbing changes nothing
    raw = LayerGradCam(ref, to_grid).attribute(x, targets, relu_attributions=True)[0]
    return raw[:, 0].detach(), LayerAttribution.interpolate(raw, tuple(x.shape[-2:]), interpolate_mode="bilinear")[
        :, 0
    ].detach()


def vit_reshape(h: int = 4, w: int = 4):
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    return partial(vit_reshape_transform, height=h, width=w)


def pgc_maps(
    net: nn.Module, layers: list[str], x: torch.Tensor, targets: list[int], method: str = "gradcam", reshape=None
) -> torch.Tensor:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ref = copy.deepcopy(net)  # pytorch-grad-cam calls .eval() and .backward() on its model
    cls = pgc.GradCAM if method == "gradcam" else pgc.GradCAMPlusPlus
    with cls(ref, [ref.get_submodule(n) for n in layers], reshape_transform=reshape or vit_reshape()) as explainer:
        return torch.from_numpy(explainer(x, [ClassifierOutputTarget(t) for t in targets]))


# ------------------------------------------------------------------------------------------------
# the token layout
# ------------------------------------------------------------------------------------------------
def test_tokens_to_grid_drops_the_class_token_and_keeps_row_major_order():
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    grid = tokens_to_grid(tokens)
    assert grid.shape == (2, 3, 4, 4)
    # patch p (row-major, after the class token) at (p // 4, p % 4), channel c
    for p in (0, 5, 15):
        torch.testing.assert_close(grid[:, :, p // 4, p % 4], tokens[:, 1 + p])
    torch.testing.assert_close(tokens_to_grid(tokens[:, 1:]), grid)  # no class token: square T
    assert (token_grid(16), token_grid(17), token_grid(33), token_grid(1)) == ((4, 4, 0), (4, 4, 1), None, None)
    with pytest.raises(ValueError, match="pass `reshape=`"):
        tokens_to_grid(torch.zeros(1, 33, 3))


# ------------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pool", "blocks", "layer"),
    [("cls", "prenorm", "blocks.1.norm1"), ("cls", "postnorm", "blocks.0"), ("mean", "prenorm", "blocks.1")],
)
def test_grad_cam_on_tokens_matches_captum_on_a_grid_layer(pool, blocks, layer):
    net, x = make_vit(pool, blocks), images()
    targets = torch.tensor([0, 1, 4, 2])
    result = grad_cam(net, x, layer, targets)
    raw, upsampled = captum_reference(net, layer, x, targets, skip=int(pool == "cls"))
    assert raw.flatten(1).amax(1).min() > 0 and raw.flatten(1).std(1).min() > 0  # non-degenerate maps
    torch.testing.assert_close(result.raw[layer], raw, atol=1e-5, rtol=1e-4)
    close_scaled(result.maps[layer], upsampled)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("layers", [["blocks.1.norm1"], ["blocks.0", "blocks.1.norm1"]])
def test_maps_and_aggregate_match_pytorch_grad_cam_with_reshape_transform(method, layers):
    net, x = make_vit(seed=3), images(seed=4)
    targets = [3, 0, 1, 1]
    result = class_activation_maps(net, x, layers, torch.tensor(targets), method=method, aggregate="mean")
    reference = pgc_maps(net, layers, x, targets, method)
    close_scaled(result.aggregate, reference)
    if len(layers) == 1:
        close_scaled(result.maps[layers[0]], reference)


def test_cam_on_a_mean_pooled_vit_is_the_head_weights_times_the_token_grid():
    net, x = make_vit("mean"), images()
    targets = torch.tensor([1, 0, 3, 4])
    result = cam(net, x, "norm", targets)
    acts = {}
    handle = net.norm.register_forward_hook(lambda _m, _i, out: acts.setdefault("norm", out.detach()))
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    grid = acts["norm"].transpose(1, 2).reshape(4, 16, 4, 4)  # by hand: (N, T, C) -> (N, C, 4, 4)
    expected = torch.einsum("nc,nchw->nhw", net.head.weight.detach()[targets], grid).clamp_min(0)
    torch.testing.assert_close(result.raw["norm"], expected, atol=1e-4, rtol=1e-5)
    close_scaled(result.maps["norm"], grad_cam(net, x, "norm", targets).maps["norm"])  # = Grad-CAM for mean pooling


def test_cam_does_not_apply_to_a_class_token_head():
    with pytest.raises(ValueError, match="CAM does not apply at layer 'norm'"):
        cam(make_vit("cls"), images(), "norm", 0)


def test_gradient_is_taken_at_the_token_layer_then_reshaped():
    net, x = make_vit(), images(2)
    p = activations_and_gradients(net, x, "blocks.1.norm1", torch.tensor([2, 3]))
    acts = {}
    handle = net.blocks[1].norm1.register_forward_hook(lambda _m, _i, out: acts.setdefault("t", out))
    try:
        x_ = x.clone().requires_grad_(True)
        logits = net(x_)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(logits[0, 2] + logits[1, 3], acts["t"])
    assert p.activations["blocks.1.norm1"].shape == (2, 16, 4, 4) and p.gradients["blocks.1.norm1"].shape == (
        1,
        2,
        16,
        4,
        4,
    )
    torch.testing.assert_close(p.gradients["blocks.1.norm1"][0], g[:, 1:].transpose(1, 2).reshape(2, 16, 4, 4))
    torch.testing.assert_close(
        p.activations["blocks.1.norm1"], acts["t"][:, 1:].detach().transpose(1, 2).reshape(2, 16, 4, 4)
    )


def test_reshape_for_a_non_square_grid_matches_pytorch_grad_cam():
    net, x = make_vit(seed=5, size=(16, 32)), images(size=(16, 32))  # 4 x 8 patches + a class token
    with pytest.raises(ValueError, match="outputs tokens \\(4, 33, 16\\).*pass `reshape=`"):
        grad_cam(net, x, "blocks.1.norm1", 0)
    with pytest.raises(ValueError, match="pass `reshape=`"):
        grad_cam(net, x, "auto", 0)  # auto finds the token layer, the default layout does not fit
    targets = [0, 2, 4, 1]
    reshape = vit_reshape(4, 8)
    result = grad_cam(net, x, "auto", torch.tensor(targets), reshape=reshape)
    assert list(result.maps) == ["blocks.1.norm1"] and result.aggregate.shape == (4, 16, 32)
    close_scaled(result.aggregate, pgc_maps(net, ["blocks.1.norm1"], x, targets, reshape=reshape))
    raw, _ = captum_reference(net, "blocks.1.norm1", x, torch.tensor(targets), h=4, w=8)
    torch.testing.assert_close(result.raw["blocks.1.norm1"], raw, atol=1e-5, rtol=1e-4)


def test_guided_grad_cam_and_hooks_on_a_vit():
    net, x = make_vit(), images(2)
    with pytest.warns(UserWarning, match="no nn.ReLU module in ViT"):  # GELU: the guided gradient is the plain one
        result = guided_grad_cam(net, x, "blocks.1.norm1", 1)
    assert result.guided_grad_cam.shape == (2, 3, 16, 16) and count_hooks(net) == 0
    close_scaled(result.aggregate, grad_cam(net, x, "blocks.1.norm1", 1).aggregate)


# ------------------------------------------------------------------------------------------------
# "auto"
# ------------------------------------------------------------------------------------------------
def patch_gradient(net: nn.Module, layer: str, x: torch.Tensor, skip: int) -> torch.Tensor:
    """Largest |d score / d patch token| at ``layer`` (the predicted class), computed by hand."""
    acts = {}
    handle = net.get_submodule(layer).register_forward_hook(lambda _m, _i, out: acts.setdefault("t", out))
    try:
        logits = net(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), acts["t"])
    return g[:, skip:].abs().amax()


@pytest.mark.parametrize(
    ("pool", "blocks", "expected", "blank"),
    [
        ("cls", "prenorm", "blocks.1.norm1", "blocks.1"),  # pytorch-grad-cam's choice: blocks[-1].norm1
        ("cls", "postnorm", "blocks.0", "blocks.1.norm1"),  # post-norm: norm1 comes after the attention
        ("mean", "prenorm", "norm", None),
        ("mean", "postnorm", "norm", None),
    ],
)
def test_auto_picks_a_token_layer_with_a_patch_gradient_not_the_patch_embedding(pool, blocks, expected, blank, caplog):
    net, x = make_vit(pool, blocks), images()
    skip = int(pool == "cls")
    with caplog.at_level(logging.INFO, logger="trainviz.core.layers"):
        name, module = resolve_layer(net, "auto", x[:1])
    assert name == expected and module is net.get_submodule(expected)
    assert f"chose {expected!r}" in caplog.text and "patch_embed" in caplog.text
    assert patch_gradient(net, expected, x, skip) > 0
    if blank is not None:  # the later layers really are blank: the class token is all the head reads
        assert patch_gradient(net, blank, x, skip) == 0
        assert patch_gradient(net, "blocks.1", x, skip) == 0
        assert bool((grad_cam(net, x, blank, 0).raw[blank] == 0).all())
    result = grad_cam(net, x, "auto", torch.tensor([0, 1, 2, 3]))
    assert list(result.maps) == [expected]
    raw = result.raw[expected].flatten(1)
    assert bool((raw.amax(1) > 0).all()) and bool((raw.std(1) > 0).all())
    assert count_hooks(net) == 0


def test_auto_with_a_custom_reshape_and_without_a_patch_embedding():
    class Patchify(nn.Module):  # einops' Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)") as in vit-pytorch
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 4, 5, 1).reshape(x.shape[0], 16, 48)

    class Unfolded(nn.Module):  # no 4-D module output at all; raw patch tokens (width 48) come first
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Sequential(Patchify(), nn.LayerNorm(48), nn.Linear(48, 16), nn.LayerNorm(16))
            self.blocks = nn.Sequential(Block(16), Block(16))
            self.head = nn.Linear(16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.blocks(self.embed(x)).mean(1))

    torch.manual_seed(0)
    net, x = Unfolded().eval(), images()
    # the last module returning the last token tensor, as for CNNs (the container, whose output is blocks.1's)
    assert find_last_spatial_layer(net, x[:1]) == "blocks"

    def column_major(t: torch.Tensor) -> torch.Tensor:  # a layout of its own: tokens in column-major order
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], 4, 4).transpose(2, 3)

    assert find_last_spatial_layer(net, x[:1], reshape=column_major) == "blocks"
    result = grad_cam(net, x, "blocks.1", 0, reshape=column_major)
    reference = grad_cam(net, x, "blocks.1", 0)
    torch.testing.assert_close(result.raw["blocks.1"], reference.raw["blocks.1"].transpose(1, 2))
    with pytest.raises(ValueError, match="Expected `reshape` to turn the output"):
        grad_cam(net, x, "blocks.1", 0, reshape=lambda t: t)


def test_auto_on_cnns_is_unchanged():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    assert resolve_layer(net, "auto", torch.rand(1, 3, 8, 8))[0] == "3"
    with pytest.raises(ValueError, match="found no module with a 4-D"):
        resolve_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), "auto", torch.rand(1, 3, 2, 2))


def test_token_maps_resize_like_grid_maps():
    net, x = make_vit(), images(2)
    result = grad_cam(net, x, "blocks.1.norm1", 0)
    torch.testing.assert_close(
        result.maps["blocks.1.norm1"], resize_maps(minmax_scale(result.raw["blocks.1.norm1"]), (16, 16))
    )
