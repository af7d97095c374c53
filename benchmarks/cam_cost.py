"""Cost of class activation maps as a ratio to one training step (forward + full backward) on the same batch.

    python benchmarks/cam_cost.py [--model resnet18|demo] [--batch 32] [--size 64] [--rounds 15]

Everything is timed in one run, on the same batch and model: trainviz's Grad-CAM for 1 layer and for 3 layers
(one forward + one ``autograd.grad`` to all layers), Grad-CAM++, CAM, guided Grad-CAM, and, when installed,
Captum's ``LayerGradCam`` (+ bilinear interpolation; looped over the layers for 3) and pytorch-grad-cam's
``GradCAM``. After two warm-up calls each, every round times each variant once (rotated order); the ratio is
the median over rounds of the variant's time over that round's training step, which keeps the ratios stable on
a loaded machine. Maps include the ReLU, scaling and resizing to the input size. Targets: ``at most 0.4x`` a
training step for 1 layer and ``0.6x`` for 3 layers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def interleaved_ratios(
    fns: dict[str, Callable[[], object]], reference: str, rounds: int
) -> dict[str, tuple[float, float]]:
    """Median seconds and median ratio to ``fns[reference]`` per variant. Every round times each variant once
    (in a rotated order), so load changes on a shared machine hit all variants alike; each round's ratio is
    taken to that round's reference time."""
    names = list(fns)
    for name in names:  # warm-up
        fns[name]()
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {
        name: (statistics.median(t), statistics.median(a / b for a, b in zip(t, times[reference])))
        for name, t in times.items()
    }


def build(model_name: str, classes: int) -> tuple[nn.Module, list[str]]:
    torch.manual_seed(0)
    if model_name == "resnet18":
        from torchvision.models import resnet18

        return resnet18(weights=None, num_classes=classes), ["layer2", "layer3", "layer4"]
    from trainviz.models.small import SmallCNN

    return SmallCNN(num_classes=classes), ["features.0", "features.1", "features.2"]


def variants(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: list[str]) -> dict[str, Callable[[], object]]:
    from trainviz.ops.cam import cam, grad_cam, grad_cam_pp
    from trainviz.ops.guided import guided_grad_cam

    last = layers[-1]
    out: dict[str, Callable[[], object]] = {
        "trainviz grad_cam, 1 layer": lambda: grad_cam(model, x, last, y),
        "trainviz grad_cam, 3 layers": lambda: grad_cam(model, x, layers, y),
        "trainviz grad_cam_pp, 3 layers": lambda: grad_cam_pp(model, x, layers, y),
        "trainviz cam, 1 layer (forward only)": lambda: cam(model, x, last, y),
        "trainviz guided_grad_cam, 1 layer": lambda: guided_grad_cam(model, x, last, y),
    }
    modules = dict(model.named_modules())
    try:
        from captum.attr import LayerAttribution, LayerGradCam

        explainers = {name: LayerGradCam(model, modules[name]) for name in layers}

        def captum(names: list[str]) -> list[torch.Tensor]:
            maps = []
            for name in names:
                attr = explainers[name].attribute(x, y, relu_attributions=True)
                maps.append(LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear"))
            return maps

        out["captum LayerGradCam, 1 layer"] = lambda: captum([last])
        out["captum LayerGradCam looped, 3 layers"] = lambda: captum(layers)
    except ImportError:
        print("captum not installed: skipped")
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(c)) for c in y]

        def pgc(names: list[str]) -> object:
            with GradCAM(model, [modules[n] for n in names]) as explainer:
                return explainer(x, targets)

        out["pytorch-grad-cam GradCAM, 1 layer"] = lambda: pgc([last])
        out["pytorch-grad-cam GradCAM, 3 layers"] = lambda: pgc(layers)
    except ImportError:
        print("grad-cam (pytorch-grad-cam) not installed: skipped")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet18", choices=("resnet18", "demo"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    model, layers = build(args.model, args.classes)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    y = torch.randint(0, args.classes, (args.batch,), generator=g)

    def train_step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)
        model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    model.eval()
    fns = {"training step (forward + full backward)": train_step, "forward only (no_grad)": forward}
    fns.update(variants(model, x, y, layers))
    results = interleaved_ratios(fns, "training step (forward + full backward)", args.rounds)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}, "
        f"batch {args.batch}x3x{args.size}x{args.size}, "
        f"layers {layers}, median of {args.rounds} interleaved rounds"
    )
    print("| variant | ms | ratio to a training step |\n| --- | ---: | ---: |")
    for name, (seconds, ratio) in results.items():
        print(f"| {name} | {1000 * seconds:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
