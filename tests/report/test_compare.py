"""``trainviz report RUN_A --compare RUN_B``: two real small demo runs (the same data and probe sets, different
training seeds) on one page: the overlaid curves and the deltas B - A checked against each run's metrics.jsonl,
the CAM drift against numpy's correlation, the probe-set mismatch error, a run without a manifest, the note on
sections only one run has, and the page in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import chromium
import numpy as np
import pytest
import pytorch_lightning as pl

from trainviz.cli import main
from trainviz.report import ProbeSetMismatchError, build_report

needs_chromium = pytest.mark.skipif(
    not chromium.available(), reason="needs Debian's chromium (make browser / apt-get install chromium)"
)


def _demo(out: Path, training_seed: int) -> Path:
    """``trainviz demo --small --epochs 2``. The CLI's ``--seed`` also seeds the data and the probe sets, so run
    B keeps ``--seed 0`` (same data, probe_seed 0) and only the training's global seed is changed."""
    original = pl.seed_everything
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pl, "seed_everything", lambda seed=None, **kw: original(training_seed, **kw))
        assert main(["demo", "--small", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    return out / "version_0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    return _demo(root / "a", 0), _demo(root / "b", 1)


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("events.out*", "projector", "report"))
    return dest


def _data(page: Path) -> dict:
    found = re.search(r'<script type="application/json" id="tv-compare">(.*?)</script>', page.read_text())
    assert found is not None
    return json.loads(found.group(1))


def _figures(page: Path) -> list[dict]:
    text = page.read_text()
    return [json.loads(m) for m in re.findall(r'<script type="application/json" id="fig-\d+">(.*?)</script>', text)]


def _jsonl(path: Path) -> list[dict]:
    return sorted((json.loads(line) for line in path.read_text().splitlines() if line), key=lambda r: r["epoch"])


def _curve(data: dict, section: str, title: str, name: str) -> dict:
    items = {i["title"]: i for i in data["sections"][section]["items"]}
    return {c["name"]: c for c in items[title]["curves"]}[name]


def test_the_runs_share_their_probe_sets_and_differ(runs):
    a, b = runs
    prints = [
        {
            v["fingerprint"]
            for v in json.loads((r / "trainviz/manifest/manifest.json").read_text())["probe_sets"].values()
        }
        for r in runs
    ]
    assert prints[0] == prints[1] and len(prints[0]) == 1
    assert _jsonl(a / "trainviz/robustness/metrics.jsonl") != _jsonl(b / "trainviz/robustness/metrics.jsonl")


def test_curves_overlaid_and_deltas_match_each_runs_metrics(runs, tmp_path):
    a, b = runs
    page = build_report(a, tmp_path / "cmp.html", compare=b)
    assert page == tmp_path / "cmp.html" and (tmp_path / "plotly.min.js").exists()
    data = _data(page)
    assert data["runs"] == {"A": "a/version_0", "B": "b/version_0"} and data["notes"] == []
    assert list(data["sections"]) == ["robustness", "dynamics", "embedding", "cam", "features", "saliency", "maxact"]

    rob = [_jsonl(r / "trainviz/robustness/metrics.jsonl") for r in runs]
    expected = {
        ("Clean and corrupted accuracy", "clean accuracy"): lambda r: r["clean"]["accuracy"],
        ("Mean corruption error", "mCE"): lambda r: r["mce"],
        **{
            ("Accuracy per corruption", c): (lambda r, c=c: r["corruptions"][c]["accuracy"])
            for c in rob[0][-1]["corruptions"]
        },
    }
    for (title, name), get in expected.items():
        curve = _curve(data, "robustness", title, name)
        va, vb = [get(r) for r in rob[0]], [get(r) for r in rob[1]]
        assert curve["A"] == {"epochs": [0, 1], "values": pytest.approx(va)}
        assert curve["B"] == {"epochs": [0, 1], "values": pytest.approx(vb)}
        assert curve["delta"]["values"] == pytest.approx([y - x for x, y in zip(va, vb)])
    dyn = [_jsonl(r / "trainviz/dynamics/metrics.jsonl") for r in runs]
    curve = _curve(data, "dynamics", "Probe accuracy", "probe accuracy")
    assert curve["delta"] == {
        "epochs": [0, 1],
        "values": pytest.approx([y["accuracy"] - x["accuracy"] for x, y in zip(*dyn)]),
    }
    assert any(
        v != 0
        for v in curve["delta"]["values"]
        + _curve(data, "robustness", "Mean corruption error", "mCE")["delta"]["values"]
    )

    # the figures: each series twice, named by run folder, with the same numbers; the deltas B - A
    traces = {t["name"]: t for f in _figures(page) for t in f["data"] if "name" in t}
    clean = [r["clean"]["accuracy"] for r in rob[0]], [r["clean"]["accuracy"] for r in rob[1]]
    assert traces["clean accuracy (a/version_0)"]["y"] == pytest.approx(clean[0])
    assert traces["clean accuracy (b/version_0)"]["y"] == pytest.approx(clean[1])
    assert traces["clean accuracy (b/version_0)"]["line"]["dash"] == "dash"
    deltas = [f for f in _figures(page) if "delta" in f["layout"]["title"]["text"]]
    clean_delta = next(t for f in deltas for t in f["data"] if t["name"] == "clean accuracy")
    assert clean_delta["y"] == pytest.approx([y - x for x, y in zip(*clean)])
    assert "b/version_0 minus a/version_0" in deltas[0]["layout"]["title"]["text"]
    assert page.read_text().count('class="cells compare-deltas"') == len(deltas)


def test_cam_drift_is_the_correlation_of_the_same_probe_ids(runs, tmp_path):
    a, b = runs
    # issue 18: the CAM drift is the CAM section's own declared comparison
    drift = _data(build_report(a, tmp_path / "cmp.html", compare=b))["sections"]["cam"]["correlations"][0]
    assert drift["title"] == "CAM drift" and drift["epoch"] == 1 and drift["key"] == "aggregate"
    za, zb = (np.load(r / "trainviz/cam/epoch_0001/maps.npz") for r in runs)
    ids_b = list(zb["ids"])
    assert drift["ids"] == [int(i) for i in za["ids"]] and set(drift["ids"]) == set(int(i) for i in ids_b)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant map (all zero) has no correlation
        expected = np.array(
            [
                np.corrcoef(
                    za["maps/aggregate"][i].astype(np.float64).ravel(),
                    zb["maps/aggregate"][ids_b.index(pid)].astype(np.float64).ravel(),
                )[0, 1]
                for i, pid in enumerate(za["ids"])
            ]
        )
    finite = np.isfinite(expected)
    assert [v is None for v in drift["correlation"]] == list(~finite) and finite.sum() > len(expected) // 2
    assert [v for v in drift["correlation"] if v is not None] == pytest.approx(expected[finite].tolist())
    assert drift["keys"]["aggregate"] == pytest.approx(float(expected[finite].mean()))
    assert set(drift["keys"]) == {"aggregate", "net.features", "net.features.1"}


def test_the_cli_writes_the_comparison(runs, tmp_path, capsys):
    a, b = runs
    assert main(["report", str(a), "--compare", str(b)]) == 0
    out = capsys.readouterr()
    assert f"comparison: {a / 'trainviz' / 'report' / 'compare.html'}" in out.out and "warning" not in out.err
    assert main(["report", str(a), "--compare", str(b), "--fail-under", "clean_accuracy=0.5"]) == 2
    assert "do not apply with --compare" in capsys.readouterr().err


def test_different_probe_sets_are_an_error(runs, tmp_path, capsys):
    a, b = runs
    other = _copy(b, tmp_path / "c" / "version_0")
    path = other / "trainviz/manifest/manifest.json"
    manifest = json.loads(path.read_text())
    key = next(k for k in manifest["probe_sets"] if k.startswith("RobustnessCallback"))
    ours = manifest["probe_sets"][key]["fingerprint"]
    manifest["probe_sets"][key]["fingerprint"] = "0123456789abcdef"
    path.write_text(json.dumps(manifest))
    assert main(["report", str(a), "--compare", str(other), "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert ours in err and "0123456789abcdef" in err and "robustness" in err
    assert "probe sets must match" in err and "probe_size" in err and "probe_seed" in err
    assert not (tmp_path / "x.html").exists()
    with pytest.raises(ProbeSetMismatchError):
        build_report(a, tmp_path / "x.html", compare=other)


def test_a_run_without_manifest_is_compared_with_a_warning(runs, tmp_path, capsys):
    a, b = runs
    other = _copy(b, tmp_path / "c" / "version_0")
    shutil.rmtree(other / "trainviz" / "manifest")
    assert main(["report", str(a), "--compare", str(other), "--out", str(tmp_path / "x.html")]) == 0
    err = capsys.readouterr().err
    assert "trainviz report: warning: no manifest in c/version_0" in err
    assert "No manifest in c/version_0" in (tmp_path / "x.html").read_text()
    with pytest.warns(UserWarning, match="no manifest"):
        build_report(other, tmp_path / "y.html", compare=a)


def test_different_callbacks_compare_the_common_sections(runs, tmp_path):
    a, b = runs
    only_a = _copy(a, tmp_path / "p" / "version_0")
    only_b = _copy(b, tmp_path / "q" / "version_0")
    (only_a / "trainviz/cam/section.json").unlink()  # run A without CAM's section, run B without the embedding
    shutil.rmtree(only_b / "trainviz/embedding")
    page = build_report(only_a, tmp_path / "cmp.html", compare=only_b)
    data = _data(page)
    common = ["robustness", "dynamics", "features", "saliency", "maxact"]
    assert list(data["sections"]) == common and "cam" not in data["sections"]
    assert data["only_in"] == {"A": ["embedding"], "B": ["cam"]}
    note = (
        "only the sections both runs have are compared "
        "(missing from q/version_0: embedding; missing from p/version_0: cam)"
    )
    assert data["notes"] == [note]
    assert "Only the sections both runs have are compared" in page.read_text()


@needs_chromium
def test_the_comparison_is_drawn_without_console_errors(runs, tmp_path):
    a, b = runs
    page = build_report(a, tmp_path / "site" / "compare.html", compare=b)
    n = len(_figures(page))
    loaded = chromium.load(page)
    assert loaded.console == [] and loaded.errors is None and loaded.dialogs is None
    assert f'data-rendered="{n}"' in loaded.dom and n > 20
    assert loaded.dom.count('class="main-svg"') >= n
    assert "clean accuracy (b/version_0)" in loaded.dom and "CAM drift" in loaded.dom
