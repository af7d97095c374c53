"""Cost of a MaxOut run over every class of a small CNN: trainviz (all classes in ONE batch) against torch-lucent's
``render.render_vis(model, "fc:k")`` called once per class, same model, resolution and iteration count.

    python benchmarks/maxact_cost.py [--classes 10] [--size 64] [--steps 64] [--rounds 5] [--quick]

Variants, each timed once per round in a rotated order (the median over rounds is reported; the ratio is taken to
that round's trainviz time, which keeps ratios stable on a loaded machine):

* ``trainviz pixel``: :func:`trainviz.ops.maxact.maximize`, sigmoid pixels, TV and norm penalties, no transforms.
* ``trainviz robust``: the same with ``robust=True`` (Lucent's FFT + decorrelated colour + jitter/scale/rotate).
* ``lucent pixel``: ``render_vis`` per class with ``param.image(size, fft=False, decorrelate=False)`` (sigmoid
  pixels, as ``trainviz pixel``), ``transforms=[]``, otherwise as ``lucent fair`` (compare with ``trainviz pixel``).
* ``lucent fair``: ``render_vis`` per class with ``param.image(size)`` (FFT, decorrelated), ``transforms=[]``,
  ``preprocess=False``, ``fixed_image_size=size`` (no upsampling to 224), ``thresholds=(steps,)``,
  ``show_image=False``, ``progress=False``: the same work per image as ``trainviz robust`` minus the transforms.
* ``lucent default transforms``: as ``lucent fair`` with Lucent's ``standard_transforms`` (compare with
  ``trainviz robust``).

Target: trainviz >= 2x faster than lucent (a batch of K images instead of K runs of one image).
torch-lucent is a test and benchmark dependency, installed by ``make setup-dev`` with ``--no-deps`` (it needs
torch, torchvision, numpy, pillow, kornia, tqdm and decorator; it imports ``IPython.display`` at import time only,
which is stubbed here when IPython is not installed; scikit-learn, ipython, future and the test packages of its
metadata are not needed).
Its ``random_rotate`` calls ``kornia.get_rotation_matrix2d`` and ``kornia.warp_affine``, which kornia 0.9 keeps in
``kornia.geometry.transform`` only: the two names are aliased here before lucent runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from collections.abc import Callable

import torch
from torch import nn


def small_cnn(classes: int) -> nn.Module:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=2, padding=1),
                nn.ReLU(),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    return Net().eval()


def import_lucent() -> tuple[object, object] | None:
    try:
        import IPython.display  # noqa: F401
    except ImportError:  # lucent.misc.io.showing imports it; render_vis(show_image=False) never calls it
        stub, display = types.ModuleType("IPython"), types.ModuleType("IPython.display")
        display.display = display.HTML = lambda *args, **kwargs: None  # type: ignore[attr-defined]
        stub.display = display  # type: ignore[attr-defined]
        sys.modules.setdefault("IPython", stub)
        sys.modules.setdefault("IPython.display", display)
    try:
        import kornia

        for name in ("get_rotation_matrix2d", "warp_affine"):  # lucent's random_rotate wants kornia <= 0.4 names
            if not hasattr(kornia, name):
                setattr(kornia, name, getattr(kornia.geometry.transform, name))
        from lucent.optvis import param, render
    except ImportError as err:
        print(f"torch-lucent not importable ({err}): pip install --no-deps torch-lucent; lucent variants skipped")
        return None
    return param, render


def interleaved(fns: dict[str, Callable[[], object]], reference: str, rounds: int) -> dict[str, tuple[float, float]]:
    names = list(fns)
    for name in names:  # warm-up
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 classes, 32 px, 4 steps, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.classes, args.size, args.steps, args.rounds = 3, 32, 4, 1

    from trainviz.ops.maxact import maximize

    model = small_cnn(args.classes)
    for p in model.parameters():
        p.requires_grad_(False)  # lucent's loss.backward() would fill parameter .grad otherwise
    targets = [("logit", k) for k in range(args.classes)]
    shape = (3, args.size, args.size)
    fns: dict[str, Callable[[], object]] = {
        "trainviz pixel": lambda: maximize(model, targets, shape, steps=args.steps),
        "trainviz robust": lambda: maximize(model, targets, shape, steps=args.steps, robust=True),
    }
    lucent = import_lucent()
    if lucent is not None:
        param, render = lucent

        def run_lucent(transforms: list | None, fft: bool = True) -> None:
            for k in range(args.classes):
                render.render_vis(  # type: ignore[attr-defined]
                    model,
                    f"fc:{k}",
                    param_f=lambda: param.image(args.size, fft=fft, decorrelate=fft),  # type: ignore[attr-defined]
                    transforms=transforms,
                    thresholds=(args.steps,),
                    preprocess=False,
                    show_image=False,
                    progress=False,
                    fixed_image_size=args.size,
                )

        fns["lucent pixel"] = lambda: run_lucent([], fft=False)
        fns["lucent fair"] = lambda: run_lucent([])
        fns["lucent default transforms"] = lambda: run_lucent(None)

    results = interleaved(fns, "trainviz pixel", args.rounds)
    print(
        f"MaxOut over {args.classes} classes, {args.size}x{args.size}, {args.steps} steps, {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads"
    )
    print("| variant | s | ratio to trainviz pixel |\n| --- | ---: | ---: |")
    for name, (seconds, ratio) in results.items():
        print(f"| {name} | {seconds:.3f} | {ratio:.2f} |")
    if lucent is not None:
        fair = results["lucent fair"][0] / results["trainviz robust"][0]
        full = results["lucent default transforms"][0] / results["trainviz robust"][0]
        print(f"speed-up of trainviz robust: {fair:.1f}x over lucent fair, {full:.1f}x over lucent default transforms")
        pixel = results["lucent pixel"][0] / results["trainviz pixel"][0]
        print(f"speed-up of trainviz pixel over lucent pixel (sigmoid pixels, no transforms): {pixel:.1f}x")


if __name__ == "__main__":
    main()
