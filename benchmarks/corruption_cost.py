"""One-time cost of each corruption, as a ratio to a bare forward pass of the demo network on the same batch.

    python benchmarks/corruption_cost.py [--batch 64] [--size 32] [--rounds 3] [--threads 1]

Every corruption of :func:`trainviz.ops.corruptions.list_corruptions` at its most severe setting corrupts one batch
of image-like pictures (smooth gradients with a disc and a square, mild noise, values inside (0, 1)); each round
times a bare forward of the demo network (``SmallCNN``, what ``DemoClassifier`` wraps) on the same batch just
before each corruption, so that a load change hits both sides of a ratio. A ratio is the median over rounds.
Milliseconds per image are printed beside it for reference only (the machines are shared and noisy).

One intra-op thread by default: on a shared 2-core machine more threads oversubscribe and time noise. Every
output is checked (shape kept, finite values). This was a test (``test_cost_per_image_batch_of_64`` in
tests/ops/test_corruptions.py) that printed the cost per image; timings belong here, not in the suite.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def scene(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth gradients with a disc and a square plus mild noise: image-like, values inside (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.5 + 0.0 * xx])
    images = []
    for i in range(n):
        img = base.clone()
        cx, cy = 0.3 + 0.1 * i, 0.4
        img[:, (xx - cx) ** 2 + (yy - cy) ** 2 < 0.05] = torch.tensor([0.9, 0.2, 0.1])[:, None]
        img[:, (xx > 0.6) & (xx < 0.9) & (yy > 0.55) & (yy < 0.85)] = torch.tensor([0.1, 0.2, 0.8])[:, None]
        images.append(img)
    x = torch.stack(images) + 0.03 * torch.randn(n, 3, size, size, generator=g)
    return x.clamp(0.02, 0.98)


def seconds(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def main() -> None:
    from trainviz.models.small import SmallCNN
    from trainviz.ops import corruptions as C

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x = scene(args.batch, args.size)
    torch.manual_seed(0)
    net = SmallCNN(num_classes=6).eval()

    def forward():
        with torch.no_grad():
            net(x)

    for _ in range(2):  # warm-up
        forward()
    print(
        f"corruption cost, batch {args.batch}x3x{args.size}x{args.size}, {args.threads} thread(s), median of "
        f"{args.rounds} rounds; ratio to one bare forward of SmallCNN on the batch"
    )
    print(f"{'corruption':22s} {'severity':>8s} {'ratio':>8s} {'ms/image':>9s}")
    for name in C.list_corruptions():
        severity = C.corruption_spec(name).severities  # the most severe setting
        ratios, per_image = [], []
        for _ in range(args.rounds):
            base, _ = seconds(forward)
            took, y = seconds(C.corrupt, x, name, severity, seed=0)
            if y.shape != x.shape or not torch.isfinite(y).all():
                raise SystemExit(f"{name}: invalid output of shape {tuple(y.shape)} or not finite")
            ratios.append(took / base)
            per_image.append(took * 1000 / args.batch)
        print(f"{name:22s} {severity:8d} {statistics.median(ratios):8.2f} {statistics.median(per_image):9.3f}")


if __name__ == "__main__":
    main()
