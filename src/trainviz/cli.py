"""``trainviz`` command line: ``trainviz demo`` trains a demo model on embedded data with every callback;
``trainviz report`` rebuilds a run's HTML robustness report from its artifacts.

Example:
    $ trainviz demo --data shapes --epochs 6 --out runs/demo
    $ tensorboard --logdir runs/demo --samples_per_plugin images=10
    $ trainviz report runs/demo/version_0 --fail-under clean_accuracy=0.8 corruption_accuracy=0.5 --fail-over mce=0.3
    $ trainviz report runs/demo/version_0 --compare runs/demo/version_1

``trainviz report`` gates on ``summary.json``: ``--fail-under`` takes higher-is-better metrics (accuracies,
FGSM accuracy, steps to flip, CAM shift) and fails below the bound, ``--fail-over`` takes lower-is-better ones
(mCE, relative mCE, CE, ECE, NLL, flip rate) and fails above it (see the name table
:data:`trainviz.probes.robustness_names.NAMES`; a metric may be named by its older name, ``clean_accuracy`` for
``clean/accuracy``). It exits with 0 when every bound holds, 1 when a metric is
on the wrong side of its bound, 2 on a usage error (unknown metric, a bound given the wrong way or on a metric
with no direction, no run found).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["demo_callbacks", "main", "run_demo", "run_report"]


def demo_callbacks(model: str = "cnn", small: bool = False, seed: int = 0, budget: float | None = None) -> list:
    """The demo's callback suite: every trainviz callback that applies to the demo ``model``. No overhead budget
    by default: the demo's epochs take about a second, so every probe would otherwise wait for its turn."""
    import trainviz
    from trainviz.callbacks.registry import callback_classes

    probe = 24 if small else None
    cam_layers = ["net.features.1", "net.features"] if model == "cnn" else ["net.encoder.layer2", "net.encoder"]
    depth = (
        ["net.features.0", "net.features.1", "net.features", "net.fc"]
        if model == "cnn"
        else ["net.encoder.layer1", "net.encoder.layer2", "net.encoder", "net.decoder.flatten"]
    )
    options: dict[str, Any] = {
        "dynamics": {"probe_size": probe or 256},
        "cam": {"layers": cam_layers, "probe_size": probe or 64},
        "robustness": {"probe_size": probe or 64, "cam_shift": True},
        "embedding": {
            "layers": depth,
            "methods": ["pca", "umap", "tsne"],
            "slow_every_k": 3,
            **({"probe_size": probe} if probe else {}),
        },
        "decoder_maps": {"probe_size": probe or 96} if model == "classmap" else False,
        "features": {"layers": cam_layers, **({"probe_size": probe} if probe else {})},
        "saliency": {"probe_size": probe or 16, "sanity_every": 3},
        "maxact": {
            "steps": 16 if small else 64,
            "final_steps": 32 if small else 256,
            **({"probe_size": probe} if probe else {}),
        },
    }
    # every registered callback (trainviz.callbacks.registry), the opt-in ones too: its demo settings, else its defaults
    every = {cls.name: options.get(cls.name, {}) for cls in callback_classes()}
    return trainviz.default_callbacks(probe_seed=seed, budget=budget, **every)


def run_demo(
    data: str = "shapes",
    epochs: int = 6,
    out: str = "runs/demo",
    accelerator: str = "auto",
    seed: int = 0,
    small: bool = False,
    progress: bool = True,
    model: str = "cnn",
    decoder: str = "seed003",
    budget: float | None = None,
) -> str:
    """Train a demo model with the full callback suite and write the robustness report; returns the run's
    log folder.

    Args:
        data: ``"shapes"`` (generated RGB shapes with masks) or ``"digits"`` (scikit-learn's digits).
        epochs: training epochs.
        out: output folder (TensorBoard logs and trainviz artifacts go to ``out/version_N``).
        accelerator: Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``).
        seed: global seed (``pl.seed_everything``).
        small: a tiny data set and probe sets, for smoke tests.
        progress: show Lightning's progress bar.
        model: ``"cnn"`` (a small CNN ending in global average pooling + linear) or ``"classmap"`` (Zhang's
            encoder-decoder with group convolution; adds the decoder-map callback).
        decoder: with ``model="classmap"``, ``"seed003"`` (Zhang's decoder, only the last stage grouped) or
            ``"grouped"`` (every stage grouped); see :class:`trainviz.models.GroupConvDecoder`.
        budget: the suite's overhead budget (``default_callbacks(budget=)``); ``None`` runs every probe every
            epoch.
    """
    from trainviz.core.namespace import lightning, namespace_of
    from trainviz.data import DigitsDataModule, ShapesDataModule
    from trainviz.models import ClassMapClassifier, DemoClassifier
    from trainviz.report import build_report

    pl = lightning(namespace_of(DemoClassifier))  # the Trainer of the models' namespace (TRAINVIZ_LIGHTNING)
    pl.seed_everything(seed, workers=True, verbose=False)
    if data == "shapes":
        dm = ShapesDataModule(n_train=240, n_val=120, seed=seed) if small else ShapesDataModule(seed=seed)
    elif data == "digits":
        dm = DigitsDataModule(seed=seed)
    else:
        raise ValueError(f"Expected `data` to be one of 'shapes', 'digits', got {data!r}.")
    if model == "cnn":
        net = DemoClassifier(num_classes=dm.num_classes, in_channels=dm.in_channels)
    elif model == "classmap":
        net = ClassMapClassifier(
            num_classes=dm.num_classes,
            in_channels=dm.in_channels,
            encoder="small",
            decoder=decoder,  # type: ignore[arg-type]
        )
    else:
        raise ValueError(f"Expected `model` to be one of 'cnn', 'classmap', got {model!r}.")
    logger = pl.loggers.TensorBoardLogger(out, name="")
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=logger,
        callbacks=demo_callbacks(model, small, seed, budget),
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(net, dm)
    print(f"trainviz report: {build_report(logger.log_dir)}")
    return logger.log_dir


def run_report(
    run_dir: str,
    out: str | None = None,
    fail_under: Sequence[str] = (),
    inline: bool = False,
    fail_over: Sequence[str] = (),
    compare: str | None = None,
) -> int:
    """Build a run's report and check its ``METRIC=VALUE`` bounds (``fail_under`` for higher-is-better metrics,
    ``fail_over`` for lower-is-better ones); returns the exit code (0, 1 on the wrong side of a bound, 2 usage).
    With ``compare`` (run B), build the page comparing the two runs instead (exit code 2 when their probe sets
    differ; bounds do not apply)."""
    import warnings

    from trainviz.report import build_report, check_bounds, parse_bounds

    if compare is not None:
        if fail_under or fail_over:
            print("trainviz report: error: --fail-under/--fail-over do not apply with --compare", file=sys.stderr)
            return 2
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                path = build_report(run_dir, out, plotlyjs="inline" if inline else "directory", compare=compare)
        except (FileNotFoundError, ValueError) as err:
            print(f"trainviz report: error: {err}", file=sys.stderr)
            return 2
        for warning in caught:
            print(f"trainviz report: warning: {warning.message}", file=sys.stderr)
        print(f"trainviz report: comparison: {path}")
        return 0

    try:
        under, over = parse_bounds(list(fail_under)), parse_bounds(list(fail_over))
        path = build_report(run_dir, out, plotlyjs="inline" if inline else "directory")
    except (FileNotFoundError, ValueError) as err:
        print(f"trainviz report: error: {err}", file=sys.stderr)
        return 2
    print(f"trainviz report: {path}")
    print(f"  summary: {path.parent / 'summary.json'}")
    summary = json.loads((path.parent / "summary.json").read_text("utf-8"))
    try:
        failures = check_bounds(summary, under, over)  # UnknownMetricError, BoundDirectionError: both ValueErrors
    except ValueError as err:
        for line in str(err).splitlines():
            print(f"trainviz report: error: {line}", file=sys.stderr)
        return 2
    for message in failures:
        print(f"trainviz report: FAIL {message}", file=sys.stderr)
    if (under or over) and not failures:
        print(f"  gates: {len(under) + len(over)} bound(s) hold")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    from trainviz.sinks.tensorboard import tensorboard_command

    parser = argparse.ArgumentParser(prog="trainviz", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a demo model on embedded data with every trainviz callback")
    demo.add_argument("--data", choices=("shapes", "digits"), default="shapes")
    demo.add_argument("--epochs", type=int, default=6)
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--accelerator", default="auto")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--model",
        choices=("cnn", "classmap"),
        default="cnn",
        help=(
            "cnn: small CNN with GAP + linear; "
            "classmap: Zhang's encoder-decoder with group convolution (adds decoder maps)"
        ),
    )
    demo.add_argument(
        "--decoder",
        choices=("seed003", "grouped"),
        default="seed003",
        help=(
            "with --model classmap: seed003 = Zhang's decoder (ungrouped, then grouped transposed convolution), "
            "grouped = every stage grouped"
        ),
    )
    demo.add_argument("--small", action="store_true", help="tiny data set (smoke test)")
    demo.add_argument(
        "--budget",
        type=float,
        default=None,
        help="overhead budget of the suite, e.g. 0.1 (default: none, every probe every epoch)",
    )
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument(
        "--lightning",
        choices=("lightning", "pytorch_lightning"),
        default=None,
        help="the Lightning package to train with (default: TRAINVIZ_LIGHTNING, else the installed one, "
        "`lightning` first when both are)",
    )
    report = sub.add_parser("report", help="build the HTML report of a run from its artifacts")
    report.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="the run's log folder (version_N), its trainviz folder, or a parent of one run",
    )
    report.add_argument("--out", metavar="FILE", help="HTML file to write (default RUN_DIR/trainviz/report/index.html)")
    report.add_argument(
        "--fail-under",
        nargs="+",
        action="extend",
        default=[],
        metavar="METRIC=VALUE",
        help="exit with 1 when a higher-is-better summary.json metric (accuracies, fgsm_accuracy@EPS, "
        "flip_steps_mean, flip_never_fraction, cam_shift) is below VALUE, e.g. clean_accuracy=0.9",
    )
    report.add_argument(
        "--fail-over",
        nargs="+",
        action="extend",
        default=[],
        metavar="METRIC=VALUE",
        help="exit with 1 when a lower-is-better summary.json metric (mce, relative_mce, ce/NAME, relative_ce/NAME, "
        "*_ece, *_nll, *_flip_rate) is above VALUE, e.g. mce=0.3; a bound given the wrong way exits with 2",
    )
    report.add_argument("--inline", action="store_true", help="put plotly.js inside the page (one self-contained file)")
    report.add_argument(
        "--compare",
        metavar="RUN_B",
        help="build instead one page comparing RUN_DIR (A) with RUN_B: overlaid curves, deltas B - A, CAM drift "
        "(default RUN_DIR/trainviz/report/compare.html); the runs' probe sets must match",
    )
    args = parser.parse_args(argv)

    if args.command == "report":
        return run_report(args.run_dir, args.out, args.fail_under, args.inline, args.fail_over, args.compare)

    if args.command == "demo":
        if args.epochs < 1:
            parser.error(f"--epochs must be a positive int, got {args.epochs}")
        if args.lightning:
            os.environ["TRAINVIZ_LIGHTNING"] = args.lightning  # read when trainviz.models is first imported
        start = time.perf_counter()
        log_dir = run_demo(
            args.data,
            args.epochs,
            args.out,
            args.accelerator,
            args.seed,
            args.small,
            not args.no_progress,
            args.model,
            args.decoder,
            args.budget,
        )
        print(f"\ntrainviz demo finished in {time.perf_counter() - start:.0f} s.")
        print(f"  TensorBoard:  {tensorboard_command(args.out, args.epochs)}")
        print(f"  Artifacts:    {os.path.join(log_dir, 'trainviz')}")
        print(
            f"  Report:       {os.path.join(log_dir, 'trainviz', 'report', 'index.html')}  "
            f"(rebuild: trainviz report {log_dir})"
        )
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
