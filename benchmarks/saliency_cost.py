"""Cost of trainviz's saliency and occlusion ops as ratios, all measured in one run on one model and batch.

    python benchmarks/saliency_cost.py [--batch 64] [--size 64] [--samples 8] [--rounds 9] [--threads N] [--quick]

The model is a user-like CNN (4 conv-BN-ReLU-pool blocks, 64x64x3 inputs, batch 64, CPU). Ratios and targets:

(a) ``saliency(method="gradient")`` / one forward + one ``torch.autograd.grad`` to the input written by hand:
    target <= 1.1 (the op adds only checks and the target gather);
(b) ``saliency(method="smoothgrad", samples=S)`` / S times (a)'s hand-written reference: target <= 1.1 (the
    noisy copies go through the model batched); also against one hand-written forward + backward of all S
    copies at once (the floor);
(c) ``occlusion`` / Captum ``Occlusion`` on the same windows (its default ``perturbations_per_eval=1``, and
    batched like ours): target <= 1.0;

plus Captum ``Saliency``, ``NoiseTunnel(Saliency)``, guided backprop and integrated gradients for reference, and
every variant's ratio to one training step (forward + backward to the parameters + an SGD step). After two
warm-up calls each, every round times each variant once in a rotated order; a ratio is the median over rounds
of the two times measured in the same round, which keeps ratios stable on a loaded machine (absolute times are
not). Only quote numbers from an otherwise idle machine; ``--quick`` is a smoke run with tiny sizes.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def user_cnn(classes: int = 10, width: int = 16) -> nn.Module:
    """4 conv blocks (conv-BN-ReLU(inplace)-maxpool), global average pooling, a linear head."""
    layers: list[nn.Module] = []
    c_in = 3
    for i in range(4):
        c_out = width * 2**i
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes))


def interleaved_times(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per round for every variant, each timed once per round in a rotated order, after 2 warm-ups."""
    names = list(fns)
    for name in names:
        fns[name]()
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], a: str, b: str, scale: float = 1.0) -> float:
    """Median over rounds of ``time(a) / (scale * time(b))``."""
    return statistics.median(x / (scale * y) for x, y in zip(times[a], times[b]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--samples", type=int, default=8, help="SmoothGrad samples")
    parser.add_argument("--steps", type=int, default=8, help="integrated-gradients steps")
    parser.add_argument("--window", type=int, default=16, help="occlusion window")
    parser.add_argument("--stride", type=int, default=8, help="occlusion stride")
    parser.add_argument("--occlusion-batch", type=int, default=8, help="images in the occlusion comparison")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.size, args.samples, args.steps = 4, 32, 2, 2
        args.window, args.stride, args.occlusion_batch, args.rounds = 16, 16, 2, 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from captum.attr import GuidedBackprop, IntegratedGradients, NoiseTunnel, Occlusion
    from captum.attr import Saliency as CaptumSaliency

    from trainviz.ops.occlusion import occlusion, occlusion_windows
    from trainviz.ops.saliency import saliency

    torch.manual_seed(0)
    model = user_cnn(args.classes)
    reference_model = copy.deepcopy(model)  # Captum's module hooks need out-of-place ReLUs
    for m in reference_model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    model.eval()
    reference_model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    y = torch.randint(0, args.classes, (args.batch,), generator=g)
    xo, yo = x[: args.occlusion_batch], y[: args.occlusion_batch]
    s = args.samples
    windows = occlusion_windows(args.size, args.size, args.window, args.stride)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    state = copy.deepcopy(model.state_dict())

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.eval()

    def by_hand(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        inp = images.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(inp).gather(1, targets[:, None]).sum(), inp)
        return grad

    noisy = x.repeat_interleave(s, 0) + 0.1 * torch.randn(args.batch * s, *x.shape[1:], generator=g)
    noisy_targets = y.repeat_interleave(s)
    captum_saliency = CaptumSaliency(reference_model)
    tunnel = NoiseTunnel(captum_saliency)
    captum_occlusion = Occlusion(reference_model)
    occlusion_kwargs = {
        "sliding_window_shapes": (3, args.window, args.window),
        "strides": (3, args.stride, args.stride),
    }

    fns: dict[str, Callable[[], object]] = {
        "training step (forward + backward + SGD step)": train_step,
        "hand: forward + autograd.grad to the input": lambda: by_hand(x, y),
        f"hand: forward + autograd.grad of {s} noisy copies, one batch": lambda: by_hand(noisy, noisy_targets),
        "trainviz saliency gradient": lambda: saliency(model, x, y),
        "trainviz saliency guided_backprop": lambda: saliency(model, x, y, "guided_backprop"),
        f"trainviz saliency smoothgrad, {s} samples": lambda: saliency(model, x, y, "smoothgrad", samples=s),
        f"trainviz integrated gradients, {args.steps} steps": lambda: saliency(
            model, x, y, "integrated_gradients", steps=args.steps
        ),
        "captum Saliency": lambda: captum_saliency.attribute(x, target=y, abs=False),
        "captum GuidedBackprop": lambda: GuidedBackprop(reference_model).attribute(x, target=y),
        f"captum NoiseTunnel(Saliency), {s} samples": lambda: tunnel.attribute(
            x, nt_type="smoothgrad", nt_samples=s, stdevs=0.1, target=y, abs=False
        ),
        f"captum IntegratedGradients, {args.steps} steps": lambda: IntegratedGradients(reference_model).attribute(
            x, target=y, n_steps=args.steps
        ),
        f"trainviz occlusion, {args.occlusion_batch} images x {windows} windows": lambda: occlusion(
            model, xo, yo, window=args.window, stride=args.stride
        ),
        "captum Occlusion (perturbations_per_eval=1)": lambda: captum_occlusion.attribute(
            xo, target=yo, **occlusion_kwargs
        ),
        f"captum Occlusion (perturbations_per_eval={windows})": lambda: captum_occlusion.attribute(
            xo, target=yo, perturbations_per_eval=windows, **occlusion_kwargs
        ),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's notices about hooks and inputs without grad
        times = interleaved_times(fns, args.rounds)
    model.load_state_dict(state)

    names = list(fns)
    step, hand, hand_noisy = names[0], names[1], names[2]
    occl, captum_occl, captum_occl_batched = names[-3], names[-2], names[-1]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, 4-block CNN, batch {args.batch}x3x{args.size}"
        f"x{args.size}, occlusion on {args.occlusion_batch} images, window {args.window}, stride {args.stride}, "
        f"median of {args.rounds} interleaved rounds{' (QUICK SMOKE RUN: not a measurement)' if args.quick else ''}"
    )
    print("\n| variant | ms | ratio to a training step |\n| --- | ---: | ---: |")
    for name, t in times.items():
        print(f"| {name} | {1000 * statistics.median(t):.1f} | {ratio(times, name, step):.2f} |")
    print("\n| ratio | value | target |\n| --- | ---: | ---: |")
    rows = [
        ("(a) saliency gradient / hand forward + grad", ratio(times, names[3], hand), "<= 1.1"),
        (f"(b) smoothgrad {s} samples / {s} x hand forward + grad", ratio(times, names[5], hand, s), "<= 1.1"),
        (f"(b') smoothgrad {s} samples / hand batched {s} copies", ratio(times, names[5], hand_noisy), "-"),
        ("(c) occlusion / captum Occlusion (1 per eval)", ratio(times, occl, captum_occl), "<= 1.0"),
        ("(c') occlusion / captum Occlusion (batched)", ratio(times, occl, captum_occl_batched), "<= 1.0"),
        ("saliency gradient / captum Saliency", ratio(times, names[3], names[7]), "-"),
        ("guided_backprop / captum GuidedBackprop", ratio(times, names[4], names[8]), "-"),
        ("smoothgrad / captum NoiseTunnel", ratio(times, names[5], names[9]), "-"),
        ("integrated gradients / captum IntegratedGradients", ratio(times, names[6], names[10]), "-"),
    ]
    for label, value, target in rows:
        print(f"| {label} | {value:.2f} | {target} |")


if __name__ == "__main__":
    main()
