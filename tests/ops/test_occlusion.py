"""Occlusion sensitivity against Captum's Occlusion (window placement with partial last windows, baselines,
normalised inputs), a hand-computed linear case, batching under the memory cap, and no trace on the model."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from trainviz.core.hooks import count_hooks
from trainviz.ops.occlusion import occlusion, occlusion_masks, occlusion_windows

N, C, K = 3, 3, 5
TARGETS = torch.tensor([1, 4, 0])
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def cnn(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(C, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, K),
        ).eval()


def images(h: int = 12, w: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(N, C, h, w, generator=torch.Generator().manual_seed(seed))


def captum_occlusion(net, x, targets, window, stride, baseline):
    from captum.attr import Occlusion

    if isinstance(baseline, torch.Tensor):
        baseline = baseline.reshape(1, C, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (
            Occlusion(net)
            .attribute(
                x.clone(),
                target=targets,
                sliding_window_shapes=(C, window, window),
                strides=(C, stride, stride),
                baselines=baseline,
            )
            .detach()
        )


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert b.abs().amax() > 0
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("size", "window", "stride", "baseline"),
    [
        ((12, 12), 4, 4, 0.0),  # windows tile the image
        ((12, 12), 5, 3, 0.0),  # starts 0, 3, 6, 9: the last window is cropped to 3 px
        ((11, 14), 4, 3, -1.0),  # non-square, partial windows on both sides
        ((12, 12), 3, 1, 0.5),  # overlapping windows: the mean over the covering ones
        ((10, 10), 10, 2, 0.0),  # one window covering everything
        ((12, 12), 4, 3, "tensor"),  # a per-channel baseline tensor
    ],
)
def test_matches_captum(size, window, stride, baseline):
    net, x = cnn(), images(*size)
    if baseline == "tensor":
        baseline = (0 - MEAN) / STD  # black, per channel, in normalised space
    ours = occlusion(net, x, TARGETS, window=window, stride=stride, baseline=baseline)
    close(ours, captum_occlusion(net, x, TARGETS, window, stride, baseline))


def test_window_count_is_captums_forward_count():
    from captum.attr import Occlusion

    net, x = cnn(), images(11, 14)
    calls = []
    handle = net.register_forward_hook(lambda *_: calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Occlusion(net).attribute(x, target=TARGETS, sliding_window_shapes=(C, 4, 4), strides=(C, 3, 3))
    handle.remove()
    assert occlusion_windows(11, 14, 4, 3) == len(calls) - 1 == 4 * 5  # one forward per window + the original
    assert occlusion_windows(32, 32, 8, 4) == 49 and occlusion_windows(10, 10, 4, 4) == 9
    masks = occlusion_masks(11, 14, 4, 3)
    assert masks.shape == (20, 11, 14) and masks.any(0).all()
    assert masks[4].sum() == 4 * 2  # the last window of the first row: columns 12..13 only


def test_hand_computed_on_a_linear_model():
    """For a linear model, occluding a window changes the logit by sum over the window of w * (x - b)."""
    w = torch.arange(16.0).view(1, 1, 4, 4) - 7
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 1, bias=True))
    with torch.no_grad():
        net[1].weight.copy_(w.flatten()[None])
        net[1].bias.fill_(3.0)
    x = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    b = 0.25
    contrib = (w * (x - b))[0, 0]
    ours = occlusion(net, x, torch.tensor([0]), window=2, stride=2, baseline=b)[0, 0]
    expected = torch.zeros(4, 4)
    for i in (0, 2):
        for j in (0, 2):
            expected[i : i + 2, j : j + 2] = contrib[i : i + 2, j : j + 2].sum()
    torch.testing.assert_close(ours, expected)
    # stride 1: each pixel averages the windows covering it (corner: 1 window, centre: 4)
    ours = occlusion(net, x, torch.tensor([0]), window=2, stride=1, baseline=b)[0, 0]
    windows = {(i, j): contrib[i : i + 2, j : j + 2].sum() for i in range(3) for j in range(3)}
    for (p, q), value in [((0, 0), windows[0, 0]), ((1, 1), sum(windows[i, j] for i in (0, 1) for j in (0, 1)) / 4)]:
        torch.testing.assert_close(ours[p, q], value)


def test_batched_under_the_memory_cap_with_the_same_result():
    net, x = cnn(), images()
    whole = occlusion(net, x, TARGETS, window=4, stride=2)
    rows = []
    handle = net.register_forward_hook(lambda _m, inputs, _o: rows.append(inputs[0].shape[0]))
    occlusion(net, x, TARGETS, window=4, stride=2)
    windows = occlusion_windows(12, 12, 4, 2)
    assert rows == [N, N * windows]  # one forward for the originals, one for every occluded copy
    rows.clear()
    capped = occlusion(net, x, TARGETS, window=4, stride=2, max_elements=7 * C * 12 * 12 + 5)
    assert max(rows) == 7 and sum(rows) == N + N * windows
    handle.remove()
    torch.testing.assert_close(capped, whole, atol=1e-6, rtol=1e-5)
    tiny = occlusion(net, x, TARGETS, window=4, stride=2, max_elements=1)  # at least one row per forward
    torch.testing.assert_close(tiny, whole, atol=1e-6, rtol=1e-5)


def test_normalised_inputs_black_baseline_is_pixel_black():
    """Occluding normalised inputs with (0 - mean) / std equals occluding pixels with 0 in front of a Normalize."""
    from torchvision.transforms import Normalize

    net = cnn()
    pixels = torch.rand(N, C, 12, 12, generator=torch.Generator().manual_seed(1))
    normalize = Normalize(MEAN.tolist(), STD.tolist())
    in_pixels = occlusion(nn.Sequential(normalize, net), pixels, TARGETS, window=4, stride=4, baseline=0.0)
    normalised = occlusion(net, normalize(pixels), TARGETS, window=4, stride=4, baseline=(0 - MEAN) / STD)
    close(normalised, in_pixels)
    close(
        occlusion(net, normalize(pixels), TARGETS, window=4, stride=4, baseline=((0 - MEAN) / STD)[:, None, None]),
        in_pixels,
    )


def test_no_trace_and_inference_mode():
    net, x = cnn(), images()
    expected = occlusion(net, x, TARGETS)
    state = torch.get_rng_state()
    with torch.inference_mode():
        inside = occlusion(net, x.clone(), TARGETS)
    torch.testing.assert_close(inside.clone(), expected)
    assert not any(m.training for m in net.modules())  # modes are the caller's: untouched
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in net.parameters()) and count_hooks(net) == 0
    assert occlusion(net, x, 2).shape == x.shape and not x.requires_grad  # one int target for all


def test_a_model_returning_a_tuple_through_logits_model():
    from trainviz.core.outputs import LogitsModel

    class TupleNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = cnn()

        def forward(self, x):
            return self.net(x), x.mean((2, 3))

    model, x = TupleNet().eval(), images()
    close(
        occlusion(LogitsModel(model), x, TARGETS, window=4, stride=4),
        occlusion(model.net, x, TARGETS, window=4, stride=4),
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, r"`window` to be an int in 1..12, got 0"),
        ({"window": 13}, r"`window` to be an int in 1..12"),
        ({"stride": 0}, "`stride` to be a positive int"),
        ({"stride": 5, "window": 4}, r"`stride` to be at most `window` \(4\)"),
        ({"max_elements": 0}, "`max_elements` to be a positive int"),
        ({"baseline": torch.zeros(4)}, r"`baseline` to be a float, a \(3,\) or \(3, 1, 1\) tensor"),
        ({"baseline": "black"}, "`baseline` to be a float or a tensor"),
        ({"baseline": float("nan")}, "`baseline` to be finite"),
        ({"targets": torch.tensor([0, 1])}, r"`targets` to be an int tensor of shape \(3,\)"),
        ({"targets": torch.tensor([0, 1, 9])}, r"`targets` in 0..4 \(the model has 5 outputs\), got \[9\]"),
        ({"images": torch.zeros(3, 12, 12)}, "`images` to be a floating tensor of shape"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"model": cnn(), "images": images(), "targets": TARGETS, **kwargs}
    with pytest.raises(ValueError, match=match):
        occlusion(**args)
    with pytest.raises(ValueError, match="`window` to be an int in 1..8"):
        occlusion_windows(8, 10, 9, 1)
