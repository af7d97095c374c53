"""Cost of RobustnessCallback: one probe run as a ratio to the bare forward passes of the same images, and the
one-time cost of corrupting the probe set, per image.

    python benchmarks/robustness_cost.py [--probe-size 128] [--data shapes] [--repeats 5] [--threads N]
    python benchmarks/robustness_cost.py --size 224 [--probe-size 8]

``--size 224`` measures only the corruption cache at ImageNet size instead: ``--probe-size`` random smooth
224x224 images corrupted by the default suite (82 rows, the ImageNet-C parameter set), the seconds per corrupted
image (one-time, per row and image), the peak resident memory added while building the cache, the bytes the
cache holds (uint8 on the host) and what float32 rows on the device held before, and one streamed pass over it.

The probe run (cache built, default corruptions and severities, adversarial parts off) is compared with
``predict_logits`` over the same ``(1 + rows) x probe_size`` images, both under the probe guard. The run's
metrics and pictures are in its time; the file writes it queues run on the sink's background thread (they
overlap training) and are timed apart, when the writer is flushed.
The CAM shift (Grad-CAM from the same forward passes, truncated backward) and the adversarial parts (FGSM at
4 eps, steps to flip with a cap of 20) are timed separately, since they cost backward passes by design. The three
are timed in turn, ``--repeats`` times, in one process; the ratios are medians of the per-round ratios, so that a
load change on a shared machine hits both sides of a ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict

import torch


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    from trainviz.callbacks.robustness import RobustnessCallback
    from trainviz.core.guard import probe_guard
    from trainviz.core.probeset import ProbeSet
    from trainviz.data import DigitsDataModule, ShapesDataModule
    from trainviz.models import DemoClassifier
    from trainviz.ops.corruptions import corrupt
    from trainviz.ops.predict import predict_logits
    from trainviz.sinks import ArtifactStore, BackgroundWriter, Sink

    parser = argparse.ArgumentParser()
    parser.add_argument("--probe-size", type=int, default=128)
    parser.add_argument("--data", default="shapes", choices=("shapes", "digits"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 gives steadier ratios on a busy machine)"
    )
    parser.add_argument("--size", type=int, default=None, help="only the corruption cache, on random images")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.size:
        cache_at_size(args.size, args.probe_size)
        return

    torch.manual_seed(0)
    dm = ShapesDataModule() if args.data == "shapes" else DigitsDataModule()
    dm.setup()
    model = DemoClassifier(num_classes=dm.num_classes, in_channels=dm.in_channels)

    def callback(**kwargs) -> RobustnessCallback:
        cb = RobustnessCallback(probe_size=args.probe_size, **kwargs)
        cb.probe = ProbeSet.from_dataset(dm.val_set, args.probe_size, 0, class_names=dm.class_names)
        cb.norm = dm.normalization
        cb._setup(None, model)
        cb.sink = Sink("robustness", None, ArtifactStore(tempfile.mkdtemp()), background=BackgroundWriter())
        return cb

    def run(cb: RobustnessCallback) -> None:
        with probe_guard(model):
            cb.plan = cb._plan(None, True, 0)  # everything, as without a budget
            cb._run(None, model, 0)

    forward_only = callback(epsilons=[], flip_max_steps=0)
    with probe_guard(model):
        start = time.perf_counter()
        inputs = forward_only.prober.inputs(forward_only.active, 0)
        cache_seconds = time.perf_counter() - start
    n_images = inputs.shape[0]
    n_corrupted = n_images - args.probe_size

    def bare() -> None:
        with probe_guard(model), torch.no_grad():
            predict_logits(model, inputs, forward_only.batch_size)

    with_cam = callback(epsilons=[], flip_max_steps=0, cam_shift=True)
    full = callback(cam_shift=True)
    for cb in (forward_only, with_cam, full):
        run(cb)  # warm-up (builds the other callbacks' caches)
        cb.sink.flush()
    rounds, writes = [], []
    for _ in range(args.repeats):
        times = [seconds(bare)]
        for cb in (forward_only, with_cam, full):
            times.append(seconds(lambda cb=cb: run(cb)))
            flushed = seconds(cb.sink.flush)  # what the background writer still had to do
            if cb is forward_only:
                writes.append(flushed)
        rounds.append(tuple(times))
    t_bare, t_probe, t_cam, t_full = (statistics.median(column) for column in zip(*rounds))
    probe_ratio, cam_ratio, full_ratio = (statistics.median(r[i] / r[0] for r in rounds) for i in (1, 2, 3))

    per_corruption: dict[str, float] = defaultdict(float)
    pixels = dm.normalization.denormalize(forward_only.probe.images)
    for name, severity in forward_only.active:
        start = time.perf_counter()
        corrupt(pixels, name, severity, seed=0)
        per_corruption[name] += time.perf_counter() - start

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, data {args.data}, "
        f"probe_size {args.probe_size}, "
        f"{len(forward_only.active)} corruption rows, batch_size {forward_only.batch_size}"
    )
    print(f"bare forward passes of {n_images} images: {t_bare:.3f} s (median of {args.repeats})")
    print(f"probe run (forwards + metrics + pictures): {t_probe:.3f} s; ratio {probe_ratio:.2f}x (target <= 1.15x)")
    print(
        f"its background writes (PNG, npz, jsonl): {statistics.median(writes):.3f} s; ratio with them "
        f"{statistics.median((r[1] + w) / r[0] for r, w in zip(rounds, writes)):.2f}x"
    )
    print(f"probe run with CAM shift: {t_cam:.3f} s; ratio {cam_ratio:.2f}x")
    print(f"probe run with CAM shift, FGSM (4 eps) and steps-to-flip (cap 20): {t_full:.3f} s; ratio {full_ratio:.2f}x")
    print(
        "per-round ratios (probe / cam / full):",
        ", ".join(f"{p / b:.2f}/{c / b:.2f}/{f / b:.2f}" for b, p, c, f in rounds),
    )
    print(
        f"one-time corruption of the probe set: {cache_seconds:.2f} s, "
        f"{1000 * cache_seconds / n_corrupted:.3f} ms per corrupted image"
    )
    slowest = sorted(per_corruption.items(), key=lambda kv: -kv[1])[:5]
    print(
        "slowest corruptions (ms per image, all severities):",
        ", ".join(
            f"{name} {1000 * seconds / (args.probe_size * sum(1 for n, _ in forward_only.active if n == name)):.2f}"
            for name, seconds in slowest
        ),
    )


def cache_at_size(size: int, n: int) -> None:
    """The corruption cache at ``size`` px: one-time cost per image, peak memory, what it holds, a streamed pass."""
    import resource

    from trainviz.callbacks.robustness import IMAGENET_C, SEED_PROBES
    from trainviz.core.probeset import ProbeSet
    from trainviz.data import Normalization
    from trainviz.probes.robustness import CorruptionCache, suite

    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, size // 8, size // 8), size=(size, size), mode="bilinear")
    images = (0.7 * smooth + 0.3 * torch.rand(n, 3, size, size)).clamp(0, 1)
    norm = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    probe = ProbeSet(norm.normalize(images), torch.arange(n) % 10, torch.arange(n))
    _, _, rows = suite(SEED_PROBES + IMAGENET_C, [1, 2, 3, 4, 5])
    cache, per_row = CorruptionCache(), {}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    for row in rows:  # one row at a time, to time each; the cache keeps every row
        t = time.perf_counter()
        cache.inputs(probe, [row], norm, 0, source=probe)
        per_row[row] = time.perf_counter() - t
    total = time.perf_counter() - start
    peak_added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    inputs, again = cache.inputs(probe, rows, norm, 0, source=probe)
    held = sum(b.nbytes for b in inputs.blocks)
    start = time.perf_counter()
    for a in range(0, len(inputs), 64):
        inputs[a : a + 64]
    stream = time.perf_counter() - start
    by_name: dict[str, float] = defaultdict(float)
    for (name, _), sec in per_row.items():
        by_name[name] += sec
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {n} images of 3x{size}x{size}, {len(rows)} rows"
    )
    print(f"one-time corruption: {total:.1f} s, {1000 * total / (n * len(rows)):.1f} ms per corrupted image")
    print(f"  = {1000 * total / n:.0f} ms per probe image for the whole suite; 256 images: {256 * total / n:.0f} s")
    print(f"cache holds {held / 2**20:.1f} MiB uint8 on the host ({held / n / len(rows) / 1024:.0f} KiB per image);")
    print(
        f"  256 images: {256 * held / n / 2**30:.2f} GiB "
        f"(float32 rows on the device: {4 * 256 * held / n / 2**30:.1f} GiB)"
    )
    print(f"peak resident memory added while corrupting: {peak_added:.0f} MiB (cached rows included)")
    print(f"streamed pass over {len(inputs)} inputs in batches of 64 (uint8 -> float, normalise): {stream:.2f} s")
    print(f"served from the cache again: {again is None}")
    slowest = sorted(by_name.items(), key=lambda kv: -kv[1])[:6]
    per = {name: sum(1 for r in rows if r[0] == name) for name in by_name}
    print(
        "slowest (ms per image, mean over severities):",
        ", ".join(f"{k} {1000 * v / n / per[k]:.0f}" for k, v in slowest),
    )


if __name__ == "__main__":
    main()
