"""The embedding probe on the compute contract: shares merge to the one-share capture; options declared once."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pickle

import numpy as np
import pytest
import torch

import trainviz.callbacks.embedding as callback_module
import trainviz.probes.embedding as embedding_module
from trainviz.callbacks.embedding import EmbeddingCallback
from trainviz.core.contract import Credit, Share
from trainviz.core.options import signature_mismatches
from trainviz.core.probeset import ProbeSet
from trainviz.models import DemoClassifier
from trainviz.probes.embedding import EmbeddingOptions, EmbeddingProbe, EmbeddingResult


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = DemoClassifier(num_classes=3, in_channels=3).eval()
    probe = ProbeSet(torch.rand(13, 3, 32, 32), torch.arange(13) % 3, torch.arange(100, 113))
    options = EmbeddingOptions(layers=["net.features", "net.fc"], methods="pca", linear_probe_folds=0, batch_size=4)
    layers = {"net.features": model.net.features, "net.fc": model.net.fc}
    return model, probe, options, layers


def _run(prober, model, shares):
    plan = prober.plan(Credit(epoch=0))
    captured = prober.merge([prober.compute(model, s, plan, prober.state()) for s in shares], plan)
    return captured, prober.project(captured, plan)


@pytest.mark.parametrize("world", [2, 3, 20])  # 20 shares of 13 images: some empty
def test_shares_merge_to_the_one_share_result(setting, world):
    model, probe, options, layers = setting
    one, one_result = _run(EmbeddingProbe(probe, options, layers=layers), model, [Share.of(probe)])
    two, two_result = _run(EmbeddingProbe(probe, options, layers=layers), model, Share.split(probe, world))
    for name in layers:
        np.testing.assert_allclose(two.features[name], one.features[name], atol=1e-5)
    np.testing.assert_array_equal(two.predictions, one.predictions)
    assert two_result.record().keys() == one_result.record().keys()
    for key, value in one_result.record().items():
        if key != "worker_seconds" and not key.startswith("projection_seconds"):
            assert two_result.record()[key] == pytest.approx(value, abs=1e-5)
    np.testing.assert_allclose(
        two_result.layers["net.fc"].frames["pca"], one_result.layers["net.fc"].frames["pca"], atol=1e-5
    )


def test_three_way_split_with_an_empty_share(setting):
    model, probe, options, layers = setting
    shares = [Share(0, 7, probe.subset(0, 7)), Share(7, 7, probe.subset(7, 7)), Share(7, 13, probe.subset(7, 13))]
    merged, _ = _run(EmbeddingProbe(probe, options, layers=layers), model, shares)
    whole, _ = _run(EmbeddingProbe(probe, options, layers=layers), model, [Share.of(probe)])
    np.testing.assert_allclose(merged.features["net.features"], whole.features["net.features"], atol=1e-5)


def test_the_plan_runs_umap_when_due_and_affordable(setting):
    _, probe, _, layers = setting
    prober = EmbeddingProbe(probe, EmbeddingOptions(methods=["pca", "umap"], slow_every_k=2), layers=layers)
    assert prober.plan(Credit(epoch=0), runs=0).methods == ("pca", "umap")
    assert prober.plan(Credit(epoch=1), runs=1).methods == ("pca",)
    assert prober.plan(Credit(epoch=1), runs=1, last=True).methods == ("pca", "umap")
    tight = prober.plan(Credit(1.0, essential=False, epoch=2), runs=2)
    assert tight.methods == ("pca",) and prober.skipped[0][0] == "umap"
    prober.cost = 5.0
    assert prober.plan(Credit(1.0, essential=False, epoch=3), runs=3) is None
    assert prober.skipped == [("run", "capture took 5.00 s, credit 1.00 s")]


def test_options_are_declared_once():
    assert signature_mismatches(EmbeddingCallback.__init__, EmbeddingOptions) == []
    params = inspect.signature(EmbeddingCallback.__init__).parameters.values()
    assert len([p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]) <= 4  # self and three
    cb = EmbeddingCallback(layers="net.fc", methods=["umap", "pca"])
    assert cb.options == EmbeddingOptions(layers="net.fc", methods=("pca", "umap")) and cb.methods == ("pca", "umap")


def test_a_bad_method_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match="Expected `methods` to be distinct names among 'pca', 'umap', 'tsne'; got"):
        EmbeddingOptions(methods=["isomap"])
    with pytest.raises(ValueError, match="Expected `perplexity` to be a positive number"):
        EmbeddingOptions(perplexity=0)


def test_the_callback_imports_nothing_from_ops():
    tree = ast.parse(inspect.getsource(callback_module))
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m and m.startswith("trainviz.ops")]


# the dear scores, amortised ---------------------------------------------------------------------------------------
DEAR_KEYS = ("net.features/linear_probe_accuracy", "net.fc/pca/trustworthiness")
DEAR_KEYS_SUFFIXES = ("/linear_probe_accuracy", "/trustworthiness")


def test_the_dear_scores_run_every_k_th_run_at_the_first_and_the_last(setting):
    _, probe, _, layers = setting
    prober = EmbeddingProbe(probe, EmbeddingOptions(methods="pca", scores_every=3), layers=layers)
    plans = [prober.plan(Credit(epoch=r), runs=r, last=r == 7) for r in range(8)]
    assert [p.scores for p in plans] == [True, False, False, True, False, False, True, True]
    assert all(p.methods == ("pca",) for p in plans) and prober.skipped == []
    assert pickle.loads(pickle.dumps(plans[1])) == plans[1]  # plain data: rank 0 broadcasts it
    default = EmbeddingProbe(probe, EmbeddingOptions(methods="pca"), layers=layers)  # scores_every=1: every run
    assert all(default.plan(Credit(epoch=r), runs=r).scores for r in range(4))


def test_a_run_is_priced_by_its_last_run_without_the_dear_scores_once_known(setting):
    """The capture alone (a read of the shared forward) is a small part of a run: once a run is measured, the plan
    prices the next by that run's seconds less its inline dear scores, which is also the least run its pool may
    lend it (``EmbeddingCallback._least_cost``)."""
    _, probe, _, layers = setting
    cb = EmbeddingCallback(methods="pca", budget=0.1)
    cb.prober = prober = EmbeddingProbe(probe, EmbeddingOptions(methods="pca"), layers=layers)
    prober.cost, prober.scores_cost = 0.05, {("pca",): 0.2}
    assert prober.plan(Credit(0.1, essential=False, epoch=1), runs=1) is not None  # the capture fits
    cb.plan = embedding_module.EmbeddingPlan(1, ("pca",), scores=True)
    cb._ran(0.5)  # 0.5 s, 0.2 of them the dear scores (inline: a PCA-only run under a budget)
    assert prober.run_cost == pytest.approx(0.3) and cb._least_cost() == pytest.approx(0.3)
    assert prober.plan(Credit(0.25, essential=False, epoch=2), runs=2) is None
    assert prober.skipped == [("run", "its last run without the dear scores took 0.30 s, credit 0.25 s")]
    assert prober.plan(Credit(0.25, essential=True, epoch=2), runs=2) is not None  # an essential run never waits
    cb.plan = embedding_module.EmbeddingPlan(2, ("pca",), scores=False)
    cb._ran(0.4)  # no dear scores this run: all of it
    assert prober.run_cost == pytest.approx(0.4)
    cb.plan = embedding_module.EmbeddingPlan(3, ("pca", "umap"), scores=True)
    cb._ran(0.35)  # UMAP's job (with the scores) ran on the worker: the run's seconds are its least run's
    assert prober.run_cost == pytest.approx(0.35)


def test_a_short_credit_drops_the_dear_scores_first_and_they_are_owed(setting, monkeypatch):
    monkeypatch.setattr(embedding_module, "contention", lambda: 1.0)  # no prior for background work: hand-set costs
    _, probe, _, layers = setting
    prober = EmbeddingProbe(probe, EmbeddingOptions(methods="pca", scores_every=3), layers=layers)
    assert prober.plan(Credit(0.01, essential=True, epoch=0), runs=0).scores  # nothing measured: the first run measures
    prober.cost, prober.scores_cost = 0.1, {("pca",): 0.5}
    short = prober.plan(Credit(0.3, essential=False, epoch=3), runs=3)  # due, but 0.1 + 0.5 > 0.3: scores dropped
    assert short is not None and short.methods == ("pca",) and not short.scores
    assert prober.skipped == [("scores", "linear_probe_accuracy and trustworthiness took 0.50 s, credit 0.20 s")]
    owed = prober.plan(Credit(1.0, essential=False, epoch=4), runs=4)  # not due by the schedule, but owed
    assert owed.scores and prober.skipped == []
    assert not prober.plan(Credit(1.0, essential=False, epoch=5), runs=5).scores  # paid: not due again until run 6
    # The run itself is skipped only when the capture does not fit; an essential run never is, it drops the scores.
    assert prober.plan(Credit(0.05, essential=False, epoch=6), runs=6) is None
    assert prober.skipped == [("run", "capture took 0.10 s, credit 0.05 s")]
    essential = prober.plan(Credit(0.05, essential=True, epoch=7), runs=7, last=True)
    assert essential is not None and essential.methods == ("pca",) and not essential.scores
    assert prober.skipped == [("scores", "linear_probe_accuracy and trustworthiness took 0.50 s, credit 0.00 s")]


def test_the_dear_scores_go_before_umap(setting, monkeypatch):
    monkeypatch.setattr(embedding_module, "contention", lambda: 1.0)
    _, probe, _, layers = setting
    prober = EmbeddingProbe(probe, EmbeddingOptions(methods=["pca", "umap"], slow_every_k=1), layers=layers)
    prober.cost, prober.worker.slow_cost = 0.1, 0.5
    prober.scores_cost = {("pca",): 0.2, ("pca", "umap"): 0.4}
    both = prober.plan(Credit(1.1, essential=False, epoch=1), runs=1)  # 0.1 + 0.5 + 0.4 <= 1.1
    assert both.methods == ("pca", "umap") and both.scores and prober.skipped == []
    umap_only = prober.plan(Credit(0.8, essential=False, epoch=2), runs=2)  # UMAP fits, UMAP and the scores do not
    assert umap_only.methods == ("pca", "umap") and not umap_only.scores
    assert [what for what, _ in prober.skipped] == ["scores"]
    pca_scores = prober.plan(Credit(0.4, essential=False, epoch=3), runs=3)  # no UMAP; the PCA run's scores fit
    assert pca_scores.methods == ("pca",) and pca_scores.scores and [w for w, _ in prober.skipped] == ["umap"]


def test_without_the_dear_scores_the_frames_and_the_other_scores_are_the_same(setting):
    model, probe, _, layers = setting
    options = EmbeddingOptions(layers=list(layers), methods="pca", linear_probe_folds=2, batch_size=4)
    every, second = (
        EmbeddingProbe(probe, options, layers=layers),
        EmbeddingProbe(probe, dataclasses.replace(options, scores_every=2), layers=layers),
    )
    records = {}
    for name, prober in (("every", every), ("second", second)):
        results = []
        for run in range(2):  # the second run has a previous frame: stability and the aligned frame
            plan = prober.plan(Credit(epoch=run), runs=run)
            captured = prober.merge([prober.compute(model, Share.of(probe), plan, None)], plan)
            results.append(prober.project(captured, plan))
        records[name] = results
    on, off = records["every"][1], records["second"][1]
    assert on.scores and on.scores_seconds > 0 and not off.scores and off.scores_seconds is None
    assert records["second"][0].scores  # the first run has them
    for layer in layers:
        np.testing.assert_array_equal(off.layers[layer].frames["pca"], on.layers[layer].frames["pca"])
    timing = ("worker_seconds", "projection_seconds/pca")
    expected = {k: v for k, v in on.record().items() if k not in timing and not k.endswith(DEAR_KEYS_SUFFIXES)}
    got = {k: v for k, v in off.record().items() if k not in timing}
    assert got == {**expected, "scores": False}
    assert all(key in on.record() for key in DEAR_KEYS) and not any(key in off.record() for key in DEAR_KEYS)
    assert EmbeddingResult.from_record(off.record()).record() == off.record()  # the record round-trips without them
    assert "net.fc/pca/stability" in got and "net.fc/knn_accuracy" in got and "net.fc/silhouette" in got


def test_bad_scores_every_is_named():
    with pytest.raises(ValueError, match=r"Expected `scores_every` to be a positive int, got 0\."):
        EmbeddingOptions(scores_every=0)
    with pytest.raises(ValueError, match=r"Expected `scores_every` to be a positive int, got True\."):
        EmbeddingOptions(scores_every=True)
