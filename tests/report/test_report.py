"""The HTML report and summary.json, built from a real run's artifacts after its checkpoints are deleted:
run lookup, the summary and its intervals, --fail-under / --fail-over exit codes, escaping of user strings, a
build without torch, and the page in headless Chromium (no console errors, no dialog, every figure drawn)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import chromium
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from scipy.stats import binomtest

from trainviz.callbacks.robustness import RobustnessCallback
from trainviz.cli import main
from trainviz.report import build_report, find_run, summary_from_record

EVIL_CLASS = "<script>alert(1)</script>"
EVIL_RUN = "<img src=x onerror=alert(2)>"
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_model, make_trainer):
    """A 2-epoch run with the manifest, dynamics and robustness callbacks, a hostile class name and run name;
    its checkpoints are deleted before any report is built."""
    from trainviz import DynamicsCallback, RunManifestCallback
    from trainviz.data import ShapesDataModule

    root = tmp_path_factory.mktemp("report")
    dm = ShapesDataModule(n_train=96, n_val=48, batch_size=32)
    dm.class_names = [EVIL_CLASS, *dm.class_names[1:]]
    callbacks = [
        RunManifestCallback(),
        DynamicsCallback(probe_size=24),
        RobustnessCallback(
            corruptions=["grayscale", "gaussian_blur_5x5", "gaussian_noise"],
            severities=[1, 3],
            epsilons=[2 / 255, 4 / 255],
            flip_max_steps=3,
            probe_size=24,
            n_examples=3,
            cam_shift=True,
            strict=True,
        ),
        ModelCheckpoint(dirpath=root / "ckpt"),
    ]
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(
        root,
        callbacks,
        max_epochs=2,
        enable_checkpointing=True,
        logger=TensorBoardLogger(str(root / "runs"), name="", version=EVIL_RUN),
    )
    trainer.fit(demo_model(), dm)
    log_dir = Path(trainer.log_dir)
    shutil.rmtree(root / "ckpt")  # the report needs the artifacts only
    assert not list(root.rglob("*.ckpt"))
    return log_dir


def test_find_run_accepts_the_log_dir_its_trainviz_folder_or_a_parent_of_one_run(run, tmp_path):
    assert find_run(run) == run / "trainviz"
    assert find_run(run / "trainviz") == run / "trainviz"
    assert find_run(run.parent) == run / "trainviz"
    with pytest.raises(FileNotFoundError, match="No trainviz run"):
        find_run(tmp_path)
    (tmp_path / "a" / "trainviz" / "robustness").mkdir(parents=True)
    (tmp_path / "b" / "trainviz" / "manifest").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"holds 2 trainviz runs[\s\S]*a\n[\s\S]*b"):
        find_run(tmp_path)


def test_summary_json_holds_the_flat_metrics_of_the_last_record(run, tmp_path):
    page = build_report(run, tmp_path / "out" / "report.html")
    summary = json.loads((page.parent / "summary.json").read_text())
    records = [
        json.loads(line) for line in (run / "trainviz" / "robustness" / "metrics.jsonl").read_text().splitlines()
    ]
    metrics = {k: v for k, v in summary.items() if k not in ("intervals", "probe", "protocol")}
    assert set(summary) - set(metrics) == {"intervals", "probe", "protocol"}
    assert summary["protocol"]["corruption_params"] == records[-1]["corruption_params"]  # how they were made
    assert metrics == pytest.approx(summary_from_record(records[-1]))
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert summary["epoch"] == 1
    for key in (
        "clean_accuracy",
        "corruption_accuracy",
        "mce",
        "relative_mce",
        "fgsm_accuracy@0.0078",
        "fgsm_accuracy@0.0157",
        "corruption_accuracy/grayscale",
        "corruption_accuracy/gaussian_noise/s3",
        "ce/gaussian_blur_5x5",
        "flip_never_fraction",
        "cam_shift",
        "cam_shift/grayscale",
    ):
        assert key in summary, key
    table = records[-1]["table"]
    gn = [row["accuracy"] for row in table if row["corruption"] == "gaussian_noise"]
    assert summary["corruption_accuracy/gaussian_noise"] == pytest.approx(np.mean(gn))
    assert (page.parent / "plotly.min.js").stat().st_size > 1_000_000
    assert '<script src="plotly.min.js"></script>' in page.read_text()


def test_the_record_carries_its_counts_and_the_intervals_equal_scipys(run, tmp_path):
    """The callback records n and the images per class; the report's intervals, from the record alone, equal
    scipy's for the counts of correct predictions in the table's per-image predictions."""
    page = build_report(run, tmp_path / "out" / "index.html")
    summary = json.loads((page.parent / "summary.json").read_text())
    record = json.loads((run / "trainviz" / "robustness" / "metrics.jsonl").read_text().splitlines()[-1])
    table = np.load(run / "trainviz" / "robustness" / "epoch_0001" / "table.npz")
    labels, pred = table["labels"], table["pred"]
    assert record["n"] == len(labels) == 24
    counts = np.bincount(labels, minlength=6).tolist()
    assert record["class_counts"] == counts and sum(counts) == 24
    assert summary["probe"] == {
        "n": 24,
        "class_counts": dict(zip(record["class_names"], counts)),
        "low_count_classes": record["class_names"],
        "low_count_threshold": 10,
    }  # all under 10
    keys = ["clean_accuracy"] + [
        f"corruption_accuracy/{c}/s{s}" for c, s in zip(table["corruption"][1:], table["severity"][1:])
    ]
    correct = (pred == labels[None]).sum(1)
    for key, k in zip(keys, correct):
        ci = binomtest(int(k), 24).proportion_ci(confidence_level=0.95, method="wilson")
        assert summary["intervals"][key] == pytest.approx([ci.low, ci.high], abs=1e-12), key
    assert {k for k in summary["intervals"] if k.startswith("fgsm_accuracy@")} == {
        "fgsm_accuracy@0.0078",
        "fgsm_accuracy@0.0157",
    }


def test_reliability_bins_agree_with_the_ece_op(run):
    """The record's reliability bins (what the report draws, read through the result type) give the ECE of the
    op on the table's per-image confidences."""
    from trainviz.ops.robustness import expected_calibration_error
    from trainviz.probes.robustness_result import RobustnessResult

    last = json.loads((run / "trainviz" / "robustness" / "metrics.jsonl").read_text().splitlines()[-1])
    result = RobustnessResult.from_record(last)
    bins = result.reliability["clean"]
    mean_conf, acc, count = (np.array(v, dtype=np.float64) for v in (bins.confidence, bins.accuracy, bins.count))
    ece = np.nansum(count / count.sum() * np.abs(acc - mean_conf))
    table = np.load(run / "trainviz" / "robustness" / "epoch_0001" / "table.npz")
    conf, pred, labels = table["confidences"][0], table["pred"][0], table["labels"]
    probs = torch.zeros(len(labels), 6, dtype=torch.float64)  # top probability `conf` on class `pred`, rest spread
    probs[torch.arange(len(labels)), torch.from_numpy(pred)] = torch.from_numpy(conf.astype(np.float64))
    assert float(expected_calibration_error(probs, torch.from_numpy(labels))) == pytest.approx(ece, abs=1e-6)
    assert ece == pytest.approx(result.clean.ece, abs=1e-9) and count.sum() == len(labels)
    assert sum(result.reliability["corrupted"].count) == (len(table["pred"]) - 1) * len(labels)


def test_fail_under_and_fail_over_exit_codes(run, tmp_path, capsys):
    out = str(tmp_path / "r" / "index.html")
    summary = json.loads((build_report(run, out).parent / "summary.json").read_text())
    acc, mce = summary["clean_accuracy"], summary["mce"]
    assert (
        main(
            [
                "report",
                str(run),
                "--out",
                out,
                "--fail-under",
                f"clean_accuracy={acc - 0.01}",
                "corruption_accuracy=0",
                "--fail-over",
                f"mce={mce + 0.01}",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["report", str(run), "--out", out, "--fail-under", f"clean_accuracy={acc + 0.01}"]) == 1
    assert f"clean_accuracy = {acc:.6g} is below" in capsys.readouterr().err
    assert main(["report", str(run), "--out", out, "--fail-over", f"mce={mce - 0.01}"]) == 1
    assert f"mce = {mce:.6g} is above" in capsys.readouterr().err
    assert main(["report", str(run), "--out", out, "--fail-under", f"mce={mce + 0.01}"]) == 2  # the wrong way round
    assert f"use --fail-over mce={mce + 0.01:g}" in capsys.readouterr().err
    assert main(["report", str(run), "--out", out, "--fail-under", "accuracy_of_everything=0.5"]) == 2
    err = capsys.readouterr().err
    assert "Metric 'accuracy_of_everything' is unknown" in err and "clean_accuracy" in err and "mce" in err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert main(["report", str(run), "--out", out, "--fail-under", "clean_accuracy"]) == 2


def test_user_strings_are_escaped_in_the_html(run, tmp_path):
    text = build_report(run, tmp_path / "index.html").read_text()
    assert EVIL_CLASS not in text and EVIL_RUN not in text
    assert html_escaped(EVIL_RUN) in text  # the run name is shown, as text
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in text  # class names travel as JSON, < escaped


def html_escaped(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def test_the_report_builds_without_torch(run, tmp_path):
    """From artifacts alone: import and build with torch (and Lightning) made unimportable."""
    code = f"""
import sys, types
for name in ("torch", "pytorch_lightning", "lightning"):
    sys.modules[name] = None  # any import of them now fails
pkg = types.ModuleType("trainviz"); pkg.__path__ = [{str(SRC / "trainviz")!r}]
sys.modules["trainviz"] = pkg  # skip trainviz/__init__ (it exports the callbacks)
from trainviz.report import build_report
print(build_report({str(run)!r}, {str(tmp_path / "nt" / "index.html")!r}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "nt" / "index.html").exists() and (tmp_path / "nt" / "summary.json").exists()


@pytest.mark.skipif(
    not chromium.available(), reason="needs Debian's chromium (make browser / apt-get install chromium)"
)
@pytest.mark.parametrize("inline", [False, True], ids=["plotly-directory", "plotly-inline"])
def test_the_page_renders_in_headless_chromium(run, tmp_path, inline):
    folder = tmp_path / "site"
    page = build_report(run, folder / "index.html", plotlyjs="inline" if inline else "directory")
    if inline:
        assert not (folder / "plotly.min.js").exists() and "<script src=" not in page.read_text()
    shot = tmp_path / "page.png"
    loaded = chromium.load(page, screenshot=None if inline else shot)
    assert loaded.console == []  # no console message at all: no error, no warning
    assert loaded.dialogs is None and loaded.errors is None  # no alert fired, no uncaught error
    n_figures = page.read_text().count('class="plot" data-figure=')
    robustness = page.read_text().split('id="corruptions"', 1)[1].count('class="plot" data-figure=')
    assert robustness == 10  # heat map, 4 curves (with CAM shift), class drops, 2 calibration, 2 adversarial
    assert n_figures == robustness + 2  # and the logged training loss and accuracy, before them
    assert f'data-rendered="{n_figures}"' in loaded.dom
    assert loaded.dom.count('class="main-svg"') >= n_figures  # plotly drew every figure
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in loaded.dom  # the class name is visible as text
    assert "<script>alert(1)</script>" not in loaded.dom
    assert html_escaped(EVIL_RUN) in loaded.dom
    assert 'src="data:image/png;base64,' in loaded.dom  # the example grid is embedded
    assert loaded.dom.count("95% CI [") >= 3  # headline: clean accuracy and the two FGSM accuracies
    assert "\u2020 fewer than 10 probe images" in loaded.dom  # 2 to 5 images per class here: every class flagged
    assert len(re.findall("<text [^>]*>[^<]* \u2020</text>", loaded.dom)) == 6  # the marker on the 6 drawn class labels
    if not inline:
        from PIL import Image

        pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
        assert pixels.shape == (6000, 1280) and pixels.std() > 10  # not a blank page


@pytest.mark.parametrize("model", ["cnn", "classmap"])
def test_trainviz_demo_runs_every_callback_and_writes_the_report(tmp_path, capsys, model):
    """The main job end to end on tiny data: every callback of the demo runs without a failure and the
    demo ends by building the report of its run."""
    from trainviz.cli import demo_callbacks, run_demo

    names = {type(cb).__name__ for cb in demo_callbacks(model)}
    assert ("DecoderMapCallback" in names) == (model == "classmap")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="trainviz:.*")  # a failing probe warns "trainviz: ..."
        log_dir = run_demo(
            epochs=2, out=str(tmp_path / "demo"), accelerator="cpu", small=True, progress=False, model=model
        )
    trainviz_dir = Path(log_dir) / "trainviz"
    assert {p.name for p in trainviz_dir.iterdir()} >= {"manifest", "dynamics", "cam", "robustness", "report"}
    page = Path(log_dir) / "trainviz" / "report" / "index.html"
    assert page.exists() and (page.parent / "summary.json").exists()
    assert f"trainviz report: {page}" in capsys.readouterr().out


def test_the_manifest_section_and_the_fit_end_line_give_the_tensorboard_command_for_every_epoch(
    run, tmp_path, monkeypatch
):
    import html as html_module
    import shlex

    from trainviz.sinks import ArtifactStore, BackgroundWriter, registry

    page = html_module.unescape(build_report(run, tmp_path / "r.html").read_text("utf-8"))
    manifest = page[page.index('<section id="manifest">') :]
    quoted = shlex.quote(str(run))  # the run's name holds shell characters
    assert f"tensorboard --logdir {quoted} --samples_per_plugin images=10" in manifest  # 2 epochs: the default

    said = []
    writer = type("Writer", (), {"log_dir": str(run)})()
    folder = registry.Folder(
        writer=writer, loggers=[], store=ArtifactStore(run / "trainviz"), background=BackgroundWriter(), epochs=100
    )
    monkeypatch.setattr(registry, "info", lambda message, obj=None: said.append(message))
    registry.where_to_look(str(run), folder)
    assert f"tensorboard --logdir {quoted} --samples_per_plugin images=100" in said[0]


def test_a_run_written_before_the_name_table_still_builds_its_report(tmp_path, capsys):
    """Issue 18: a run of the older layout (a robustness record and a robustness/summary.json with the older names
    only, no robustness section.json) builds its report, its summary.json has both names, and the gates take the
    older and the new names."""
    import handmade

    run = handmade.write_run(tmp_path / "old")
    old_summary = {"clean_accuracy": 0.75, "corruption_accuracy/fog/s3": 0.4, "mce": handmade.MCE}
    (run / "trainviz" / "robustness" / "summary.json").write_text(json.dumps(old_summary))
    page = build_report(run)
    text = page.read_text()
    assert 'id="corruptions"' in text and "clean/accuracy" in text
    summary = json.loads((page.parent / "summary.json").read_text())
    assert summary["clean_accuracy"] == summary["clean/accuracy"] == 0.75
    assert summary["corruption_accuracy/fog/s3"] == summary["accuracy/fog/s3"] == 0.4
    assert main(["report", str(run), "--fail-over", "mce=0.3"]) == 1
    assert "FAIL mce = 0.35 is above 0.3" in capsys.readouterr().err
    assert main(["report", str(run), "--fail-under", "clean_accuracy=0.7", "clean/accuracy=0.7"]) == 0
