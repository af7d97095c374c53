"""The embedding probe on the compute contract: shares merge to the one-share capture; options declared once."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
import torch

import trainviz.callbacks.embedding as callback_module
from trainviz.callbacks.embedding import EmbeddingCallback
from trainviz.core.contract import Credit, Share
from trainviz.core.options import signature_mismatches
from trainviz.core.probeset import ProbeSet
from trainviz.models import DemoClassifier
from trainviz.probes.embedding import EmbeddingOptions, EmbeddingProbe


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
