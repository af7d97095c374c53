"""One name table per capability (issue 18, item 5): every scalar a small run of each capability logs is a name of
its table, every name of the table has a direction and a description, and the report's curves take their titles
and descriptions from the table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainviz.core.contract import Credit, Share
from trainviz.core.names import Metric, NameTable, UnknownNameError
from trainviz.core.probeset import ProbeSet
from trainviz.models import ClassMapNet, DemoClassifier
from trainviz.ops.class_maps import PatternTracker
from trainviz.ops.sanity import randomizable_layers
from trainviz.probes import (
    cam_names,
    decoder_maps_names,
    dynamics_names,
    embedding_names,
    features_names,
    maxact_names,
    robustness_names,
    saliency_names,
)
from trainviz.probes.cam import CAMConfig, CAMHistory, CAMOptions, CAMProbe
from trainviz.probes.decoder_maps import DecoderMapConfig, DecoderMapProbe
from trainviz.probes.dynamics import DynamicsConfig, DynamicsProbe
from trainviz.probes.dynamics_result import DynamicsResult
from trainviz.probes.embedding import EmbeddingOptions, EmbeddingProbe, EmbeddingResult
from trainviz.probes.features import FeatureConfig, FeatureProbe
from trainviz.probes.maxact import MaxActOptions, MaxActProbe, MaxActResult, build_targets
from trainviz.probes.saliency import METHODS, SaliencyConfig, SaliencyProbe

TABLES: dict[str, NameTable] = {
    "dynamics": dynamics_names.NAMES,
    "cam": cam_names.NAMES,
    "decoder_maps": decoder_maps_names.NAMES,
    "features": features_names.NAMES,
    "saliency": saliency_names.NAMES,
    "maxact": maxact_names.NAMES,
    "embedding": embedding_names.NAMES,
    "robustness": robustness_names.NAMES,
}


def _cnn(classes: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    ).eval()  # fmt: skip


def _probe(n: int = 9, side: int = 12, masks: bool = True) -> ProbeSet:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, side, side, generator=g)
    mask = torch.zeros(n, side, side, dtype=torch.bool)
    mask[:, 3:8, 4:9] = True
    return ProbeSet(images, torch.arange(n) % 3, torch.arange(n) + 100, masks=mask if masks else None)


def _twice(prober, model):
    """Two runs (what needs a previous run, drift or stability, comes in the second); the weights move between."""
    first = prober.run(model, Credit(epoch=0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return [first, prober.run(model, Credit(epoch=1))]


def _dynamics():
    net = _cnn()
    plain = _probe(masks=False)
    probe = ProbeSet(plain.images, plain.labels, plain.ids, class_names=["T-shirt/top", "trouser", "bag@home"])
    return _twice(DynamicsProbe(probe, DynamicsConfig(n_examples=2, batch_size=4)), net)


def _cam():
    net = _cnn()
    config = CAMConfig({"0": net[0], "2": net[2]}, CAMOptions(deletion_steps=2, n_grid=3, n_tracked=2), batch_size=4)
    return _twice(CAMProbe(_probe(), config, CAMHistory()), net)


def _decoder_maps():
    torch.manual_seed(0)
    net = ClassMapNet(num_classes=4, encoder="small").eval()
    probe = ProbeSet(torch.rand(8, 3, 32, 32), torch.arange(8) % 4, torch.arange(8), class_names=["a/b", "c", "d", "e"])
    config = DecoderMapConfig("decoder.class_maps", n_tracked=2, n_grid=2, n_examples=2, batch_size=4)
    return _twice(DecoderMapProbe(probe, config, PatternTracker()), net)


def _features():
    net = _cnn()
    config = FeatureConfig({"1": net[1], "3": net[3]}, n_channels=2, n_images=2, batch_size=4, hist_values=50)
    return _twice(FeatureProbe(_probe(masks=False), config), net)


def _saliency():
    net = _cnn()
    config = SaliencyConfig(
        methods=tuple(m for m in METHODS if m != "occlusion")[:2], smoothgrad_samples=2, ig_steps=2,
        deletion_steps=2, sanity_images=2, n_grid=2, n_tracked=2, batch_size=4,
        sanity_layers=randomizable_layers(net),
    )  # fmt: skip
    result = SaliencyProbe(_probe(), config).run(net, Credit(epoch=0))  # the first run has the sanity checks
    assert result is not None and result.sanity is not None
    return [result]


def _maxact():
    net = _cnn()
    probe = _probe(2, 8, masks=False)
    options = MaxActOptions(layers=["0"], channels=2, units=[("0", (1, 2, 3))], classes=[0, 2], steps=2)
    targets, layers = build_targets(net, probe.images, options)
    prober = MaxActProbe(probe, options, targets, layers=layers, seed=7)
    out = []
    for epoch in (0, 1):  # MaxOut's shares are of its targets; the second run has `moved`
        plan = prober.plan(Credit(epoch=epoch))
        out.append(prober.merge([prober.compute(net, s, plan, prober.state()) for s in prober.shares(plan, 1)], plan))
    return out


def _embedding():
    torch.manual_seed(0)
    model = DemoClassifier(num_classes=3, in_channels=3).eval()
    probe = ProbeSet(torch.rand(13, 3, 32, 32), torch.arange(13) % 3, torch.arange(100, 113))
    options = EmbeddingOptions(layers=["net.fc"], methods="pca", linear_probe_folds=2, batch_size=8)
    prober = EmbeddingProbe(probe, options, layers={"net.fc": model.net.fc})
    out = []
    for epoch in (0, 1):  # the second frame has its stability
        plan = prober.plan(Credit(epoch=epoch))
        captured = prober.merge([prober.compute(model, Share.of(probe), plan, None)], plan)
        out.append(prober.project(captured, plan))
    return out


RUNS = {
    "dynamics": _dynamics,
    "cam": _cam,
    "decoder_maps": _decoder_maps,
    "features": _features,
    "saliency": _saliency,
    "maxact": _maxact,
    "embedding": _embedding,
}


@pytest.fixture(scope="module", params=list(RUNS))
def run(request):
    return request.param, RUNS[request.param]()


def test_every_scalar_of_a_run_is_a_name_of_its_table(run):
    name, results = run
    table = TABLES[name]
    keys = [k for r in results for k in r.scalars()]
    assert keys
    unknown = [k for k in keys if k not in table]
    assert unknown == [], f"{name}: scalars not in its table: {unknown}"
    assert all(table.canonical(k) == k for k in keys)  # no scalar is logged under an older name
    assert all(table.metric(k).logged for k in keys)


def test_the_small_runs_produce_every_logged_name(run):
    """No stale name: each logged name of the table is produced by the small run (``{method}`` etc. filled)."""
    name, results = run
    table = TABLES[name]
    produced = {table.metric(k).name for r in results for k in r.scalars()}
    missing = [m.name for m in table if m.logged and m.name not in produced]
    assert missing == [], f"{name}: table names no small run logs: {missing}"


@pytest.mark.parametrize("name", list(TABLES))
def test_every_name_has_a_direction_and_a_description(name):
    table = TABLES[name]
    assert len(table) > 0
    for metric in table:
        assert metric.higher_is_better in (True, False, None), metric.name
        assert metric.description.strip() and "\n" not in metric.description, metric.name
        assert metric.direction in ("higher is better", "lower is better", "no better direction")
        if metric.higher_is_better is None:
            assert metric.no_direction.strip(), f"{name}: {metric.name} says no why it has no direction"
    patterns = [m.name for m in table]
    assert len(patterns) == len(set(patterns))
    for metric in table:  # a name is found as itself
        sample = NameTable.format(metric.name, **{f: "x1" for f in _fields(metric.name)})
        assert table.metric(sample) is metric, (name, metric.name)


def _fields(pattern: str) -> list[str]:
    import re

    return re.findall(r"\{(\w+)\*?\}", pattern)


def test_a_starred_field_takes_any_text():
    table = dynamics_names.NAMES
    assert table.metric("per_class_accuracy/T-shirt/top").name == "per_class_accuracy/{class*}"
    assert table.canonical("per_class_accuracy/bag@home") == "per_class_accuracy/bag@home"
    assert "accuracy/extra" not in table and "per_class_accuracy/" not in table
    with pytest.raises(UnknownNameError):
        table["per_class_accuracy/cat"]  # indexing takes the pattern itself
    plain = NameTable([Metric("a/{x}", True, "one part")])
    assert "a/b" in plain and "a/b/c" not in plain and "a/b@c" not in plain
    with pytest.raises(ValueError, match="must have its fields"):
        NameTable([Metric("a/{x*}", True, "any", aliases=("old/{x}",))])


def test_the_text_states_the_direction():
    assert cam_names.NAMES["{map}/deletion_auc"].text.endswith("(lower is better).")
    assert cam_names.NAMES["{map}/pointing_game"].text.endswith("(higher is better).")
    drift = cam_names.NAMES["{map}/drift_correlation"]
    assert "better" not in drift.text and drift.text.startswith("Drift: ")


def _curves(section):
    return {c["title"]: c for c in section["curves"]}


def _name_of(capability: str, key: list[str]) -> str:
    """The metric name of a curve's record key (the record nests some names: ``["methods", m, metric]``)."""
    if capability == "saliency" and key[0] == "methods":
        return f"{key[1]}/{key[2]}"
    if capability == "saliency" and key[0] in ("sanity", "random_logit"):
        return "/".join([key[1], key[0], *key[2:]])
    if capability == "maxact":
        return f"{key[1]}/{key[0]}"
    return "/".join(key)


def test_the_report_sections_take_their_words_from_the_tables(run):
    name, results = run
    table, last = TABLES[name], results[-1]
    checked = 0
    for curve in last.section()["curves"]:
        keys = [_name_of(name, s["key"]) for s in curve["series"] if s["key"] != ["pointing_game_chance"]]
        assert all(k in table for k in keys), (name, curve["title"], keys)
        metrics = {table.metric(k) for k in keys}
        if len(metrics) == 1:  # a curve of one metric: the table's heading and text
            (metric,) = metrics
            title = curve["title"]
            assert title == metric.heading or title.startswith(metric.heading + ": "), (name, title)
            assert curve["description"].startswith(metric.text), (name, title)
            checked += 1
    assert checked >= 2


def test_cam_deletion_auc_curve_says_what_the_table_says():
    results = _cam()
    curve = _curves(results[-1].section())["Deletion AUC"]
    metric = cam_names.NAMES.metric("aggregate/deletion_auc")
    assert curve["description"] == metric.text == cam_names.NAMES["{map}/deletion_auc"].text
    assert "lower is better" in curve["description"]
    assert curve["y"] == "deletion_auc" and {"name": "aggregate", "key": ["aggregate/deletion_auc"]} in curve["series"]


def test_nested_record_curves_take_their_words_from_the_tables():
    dyn = _curves(DynamicsResult(epoch=0, accuracy=0.5, per_class_accuracy={"a/b": 0.5}, class_names=["a/b"]).section())
    assert dyn["Probe accuracy"]["description"] == dynamics_names.NAMES["accuracy"].text
    per_class = dynamics_names.NAMES["per_class_accuracy/{class*}"]
    assert dyn[per_class.heading]["description"].startswith(per_class.text)
    sal = _curves(_saliency()[-1].section())
    for metric in ("deletion_auc", "insertion_auc", "pointing_game"):
        named = saliency_names.NAMES[f"{{method}}/{metric}"]
        assert sal[named.heading]["description"] == named.text
    assert sal["Random logit"]["description"] == saliency_names.NAMES["{method}/random_logit"].text
    assert any(t.startswith("Sanity: ") for t in sal)


def test_maxact_curves_of_mixed_targets_are_worded_for_any_target():
    result = MaxActResult(epoch=0, activation={"0/channel_1": 1.0, "0/unit_1_2_3": 2.0, "classes/0": 3.0}, moved={})
    curves = _curves(result.section())
    assert curves["Activation reached: classes"]["description"] == maxact_names.NAMES["classes/{index}/activation"].text
    assert curves["Activation reached: 0"]["description"] == maxact_names.any_target("activation").text
    assert "target" in curves["Moved: 0"]["description"]


def test_the_embedding_record_keys_of_every_method_are_names():
    record = {"epoch": 0, "methods": ["pca", "umap", "tsne"], "worker_seconds": 1.0}
    for method in ("pca", "umap", "tsne"):
        record |= {f"net.fc/{method}/trustworthiness": 0.9, f"net.fc/{method}/stability": 0.8}
        record[f"projection_seconds/{method}"] = 0.1
    result = EmbeddingResult.from_record(record)
    assert all(k in embedding_names.NAMES for k in result.scalars())
    assert embedding_names.NAMES.metric("net.fc/tsne/trustworthiness").higher_is_better is True
