"""Cost of PGD (:func:`trainviz.ops.adversarial.pgd_accuracy`) against FGSM (:func:`fgsm_accuracy`) on the same
batch, and against torchattacks' PGD (3.5.1, the reference; a test-only dependency) doing the same attack.

    python benchmarks/pgd_cost.py [--probe-size 128] [--steps 10] [--repeats 5] [--threads N]

One process, the demo CNN on ``shapes`` probe images (normalised inputs, attacks in pixel space), 4 epsilons
(1/255 .. 8/255), the whole probe set as one batch, inside the probe guard. Each round times, in turn, the clean
forward pass, FGSM accuracy at the 4 epsilons, trainviz's PGD accuracy at the 4 epsilons and torchattacks' PGD
at the 4 epsilons (the attack and one forward each, random start from the global RNG, the model wrapped with its
normalisation); the ratios are medians of the per-round ratios, so a load change on a shared machine hits both
sides of a ratio. The expected PGD/FGSM ratio from counting passes (a backward about 2 forwards): ``E (3 S + 1)
/ (3 + E)``, 17.7 at 4 epsilons and 10 steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    import torchattacks

    from trainviz.core.guard import probe_guard
    from trainviz.core.probeset import ProbeSet
    from trainviz.data import ShapesDataModule
    from trainviz.models import DemoClassifier
    from trainviz.ops.adversarial import fgsm_accuracy, pgd_accuracy

    parser = argparse.ArgumentParser()
    parser.add_argument("--probe-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dm = ShapesDataModule()
    dm.setup()
    model = DemoClassifier(num_classes=dm.num_classes, in_channels=dm.in_channels).eval()
    probe = ProbeSet.from_dataset(dm.val_set, args.probe_size, 0, class_names=dm.class_names)
    norm = dm.normalization
    x, y, ids = norm.denormalize(probe.images), probe.labels, probe.ids
    epsilons = [1 / 255, 2 / 255, 4 / 255, 8 / 255]
    wrapped = torch.nn.Sequential(_Normalize(norm), model).eval()

    def clean() -> None:
        with probe_guard(model), torch.no_grad():
            model(probe.images)

    def fgsm() -> None:
        with probe_guard(model):
            fgsm_accuracy(model, x, y, epsilons, preprocess=norm.normalize)

    def ours() -> None:
        with probe_guard(model):
            pgd_accuracy(model, x, y, epsilons, steps=args.steps, ids=ids, preprocess=norm.normalize)

    def theirs() -> None:
        with probe_guard(model):
            for eps in epsilons:
                attack = torchattacks.PGD(wrapped, eps=eps, alpha=2.5 * eps / args.steps, steps=args.steps)
                adv = attack(x, y)
                with torch.no_grad():
                    wrapped(adv).argmax(1).eq(y).float().mean()

    parts = (clean, fgsm, ours, theirs)
    for fn in parts:
        fn()  # warm-up
    rounds = [tuple(seconds(fn) for fn in parts) for _ in range(args.repeats)]
    t_clean, t_fgsm, t_ours, t_theirs = (statistics.median(column) for column in zip(*rounds))
    pgd_fgsm = statistics.median(r[2] / r[1] for r in rounds)
    ours_theirs = statistics.median(r[2] / r[3] for r in rounds)
    pgd_clean = statistics.median(r[2] / r[0] for r in rounds)
    e, s = len(epsilons), args.steps
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.probe_size} shapes images "
        f"{tuple(x.shape[1:])}, {e} epsilons, PGD {s} steps, {args.repeats} interleaved rounds (medians)"
    )
    print(f"clean forward {t_clean:.3f} s; FGSM {t_fgsm:.3f} s; PGD {t_ours:.3f} s; torchattacks PGD {t_theirs:.3f} s")
    print(f"PGD / FGSM: {pgd_fgsm:.1f}x (counting passes: {e * (3 * s + 1) / (3 + e):.1f}x)")
    print(f"PGD / clean forward: {pgd_clean:.1f}x (counting passes: {e * (3 * s + 1):.0f}x)")
    print(f"PGD / torchattacks PGD: {ours_theirs:.2f}x")
    print("per-round PGD/FGSM:", ", ".join(f"{r[2] / r[1]:.1f}" for r in rounds))
    print("per-round PGD/torchattacks:", ", ".join(f"{r[2] / r[3]:.2f}" for r in rounds))


class _Normalize(torch.nn.Module):
    def __init__(self, norm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm.normalize(x)


if __name__ == "__main__":
    main()
