"""Embedding ops against references: scikit-learn's PCA, brute-force kNN, hand-computed silhouette,
scipy's Procrustes disparity, a plane in 10-D, separable data; determinism, warm starts and the global RNG."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import random
import sys

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import procrustes as scipy_procrustes
from sklearn.decomposition import PCA

from trainviz.ops.embedding import (
    aligned_umap,
    frame_stability,
    knn_accuracy,
    linear_probe_accuracy,
    pca,
    pool_features,
    procrustes_align,
    silhouette,
    trustworthiness,
    tsne,
    umap_embed,
    warmup_umap,
)

TSNE_BACKENDS = ["sklearn"] + (["opentsne"] if importlib.util.find_spec("openTSNE") else [])


@contextlib.contextmanager
def global_rng_unchanged():
    """Fail if the block reads or advances the global torch, numpy or Python RNG."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    yield
    assert torch.equal(torch.get_rng_state(), torch_state), "global torch RNG changed"
    after = np.random.get_state()
    assert np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:], "global numpy RNG changed"
    assert random.getstate() == py_state, "global Python RNG changed"


@pytest.fixture(scope="module")
def blobs():
    """Three well-separated Gaussian blobs in 20-D, 100 points each."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 100)
    return rng.normal(0, 10, size=(3, 20))[labels] + rng.normal(size=(300, 20)), labels


def rotation_angle(frame: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Angle (degrees) and determinant of the orthogonal map that best takes ``frame`` onto ``target``."""
    r = orthogonal_procrustes(frame - frame.mean(0), target - target.mean(0))[0]
    return math.degrees(math.atan2(r[1, 0], r[0, 0])), float(np.linalg.det(r))


# --------------------------------------------------------------------------------------------- features


def test_pool_features_shapes_and_pooling():
    gen = torch.Generator().manual_seed(0)
    act4 = torch.randn(6, 5, 3, 4, generator=gen)
    with global_rng_unchanged():
        torch.testing.assert_close(pool_features(act4), act4.mean(dim=(2, 3)))
        act2 = torch.randn(6, 7, generator=gen)
        assert torch.equal(pool_features(act2), act2)
        act3 = torch.randn(6, 4, 8, generator=gen)
        assert torch.equal(pool_features(act3), act3.reshape(6, 32))
        assert pool_features(torch.arange(6.0)).shape == (6, 1)
        half = pool_features(act4.half())
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match="max_dim"):
        pool_features(act2, max_dim=0)
    with pytest.raises(ValueError, match="batch dimension"):
        pool_features(torch.tensor(1.0))


def test_pool_features_projection_is_fixed_and_keeps_distances():
    act = torch.randn(40, 3000, generator=torch.Generator().manual_seed(0))  # 3 blocks of the projection
    with global_rng_unchanged():
        feats = pool_features(act, max_dim=512, seed=3)
        again = pool_features(act, max_dim=512, seed=3)
        first_rows = pool_features(act[:7], max_dim=512, seed=3)
        other_seed = pool_features(act, max_dim=512, seed=4)
    assert feats.shape == (40, 512)
    assert torch.equal(feats, again)
    torch.testing.assert_close(first_rows, feats[:7], rtol=1e-4, atol=1e-4)  # same map whatever the batch
    assert not torch.allclose(feats, other_seed)
    # Johnson-Lindenstrauss: with 512 dimensions, pairwise distances move by a few percent.
    ratio = torch.pdist(feats) / torch.pdist(act)
    assert (ratio - 1).abs().max() < 0.15
    assert abs(float(ratio.mean()) - 1) < 0.02


# ---------------------------------------------------------------------------------------------------- PCA


@pytest.mark.parametrize("shape", [(200, 10), (30, 50)], ids=["covariance", "gram"])
def test_pca_matches_sklearn(shape):
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape) * np.linspace(3, 0.5, shape[1])
    with global_rng_unchanged():
        scores, ratio = pca(torch.from_numpy(x), 3, return_variance=True)
    ref = PCA(n_components=3, svd_solver="full").fit(x)
    ref_scores = ref.transform(x)
    signs = np.sign((scores.numpy() * ref_scores).sum(0))
    np.testing.assert_allclose(scores.numpy() * signs, ref_scores, atol=1e-8)
    np.testing.assert_allclose(ratio.numpy(), ref.explained_variance_ratio_, rtol=1e-8)
    full = pca(torch.from_numpy(x), min(shape), return_variance=True)[1]
    assert float(full.sum()) == pytest.approx(1.0)


def test_pca_sign_is_stable_under_perturbation():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(300, 16, generator=gen) * torch.linspace(4, 1, 16)
    noisy = x + 1e-3 * torch.randn(300, 16, generator=gen)
    a, b = pca(x, 2), pca(noisy, 2)
    torch.testing.assert_close(a, b, atol=0.05, rtol=0)
    # The heavier loadings decide the sign, not the single largest one: swapping which of two near-equal,
    # opposite loadings is larger flips scikit-learn's convention but not this one.
    t = torch.randn(200, generator=gen, dtype=torch.float64)
    frames = []
    for top in ([0.61, -0.6], [0.6, -0.61]):
        loading = torch.tensor(top + [0.3, 0.3, 0.3], dtype=torch.float64)
        frames.append(pca(torch.outer(t, loading / loading.norm()), 1))
    assert float((frames[0] * frames[1]).sum()) > 0


def test_pca_checks():
    with pytest.raises(ValueError, match="at most min"):
        pca(torch.randn(5, 3), 4)
    with pytest.raises(ValueError, match="finite"):
        pca(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    scores, ratio = pca(torch.zeros(5, 3), 2, return_variance=True)
    assert torch.equal(scores, torch.zeros(5, 2)) and torch.equal(ratio, torch.zeros(2))


# ---------------------------------------------------------------------------------------- frame alignment


def test_procrustes_recovers_rotation_reflection_translation():
    rng = np.random.default_rng(3)
    prev = rng.normal(size=(50, 2)) * [3.0, 1.0]
    theta = 0.7
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    reflection = np.diag([1.0, -1.0])
    cur = prev @ rotation @ reflection + [4.0, -2.0]
    np.testing.assert_allclose(procrustes_align(cur, prev), prev, atol=1e-6)
    # A rescaled copy: only scale=True brings it back; scale=False keeps the frame's own size.
    np.testing.assert_allclose(procrustes_align(2.5 * cur, prev, scale=True), prev, atol=1e-6)
    kept = procrustes_align(2.5 * cur, prev)
    np.testing.assert_allclose(kept.std(0).sum(), 2.5 * prev.std(0).sum(), rtol=1e-6)
    np.testing.assert_allclose(kept.mean(0), prev.mean(0), atol=1e-9)
    with pytest.raises(ValueError, match="same shape"):
        procrustes_align(cur[:10], prev)


def test_procrustes_with_scale_matches_scipy_disparity():
    rng = np.random.default_rng(4)
    prev, cur = rng.normal(size=(40, 2)), rng.normal(size=(40, 2))
    aligned = procrustes_align(cur, prev, scale=True)
    disparity = ((aligned - prev) ** 2).sum() / ((prev - prev.mean(0)) ** 2).sum()
    assert disparity == pytest.approx(scipy_procrustes(prev, cur)[2], rel=1e-10)


def test_frame_stability():
    rng = np.random.default_rng(5)
    prev = rng.normal(size=(5000, 2))
    assert frame_stability(prev, -3 * prev[:, ::-1] + 7) == pytest.approx(0.0, abs=1e-12)
    sigma = 0.02
    radius = math.sqrt(((prev - prev.mean(0)) ** 2).sum(1).mean())
    expected = math.sqrt(math.pi / 2) * sigma / radius  # mean of a 2-D Rayleigh variable
    assert frame_stability(prev, prev + rng.normal(0, sigma, prev.shape)) == pytest.approx(expected, rel=0.05)
    unrelated = rng.normal(size=prev.shape)  # best scale ~0: the mean radius over the RMS radius, sqrt(pi)/2
    assert frame_stability(prev, unrelated) == pytest.approx(math.sqrt(math.pi) / 2, rel=0.05)
    mean_radius = np.linalg.norm(prev - prev.mean(0), axis=1).mean()
    assert frame_stability(prev, 2 * prev, scale=False) == pytest.approx(mean_radius / radius)  # zoom counts


# -------------------------------------------------------------------------------------------------- metrics


def brute_force_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    hits = 0
    for i in range(len(x)):
        dist = [(float(np.linalg.norm(x[i] - x[j])), j) for j in range(len(x)) if j != i]
        nearest = [j for _, j in sorted(dist)[:k]]
        classes = sorted(set(y))
        counts = [sum(y[j] == c for j in nearest) for c in classes]
        hits += classes[counts.index(max(counts))] == y[i]  # ties go to the smallest label
    return hits / len(x)


@pytest.mark.parametrize("k", [1, 4, 5])
def test_knn_accuracy_matches_brute_force(k):
    rng = np.random.default_rng(6)
    labels = rng.choice([3, 7, 9], size=90)
    x = rng.normal(size=(90, 4)) + labels[:, None] * 0.15  # overlapping classes: accuracy strictly inside (0, 1)
    with global_rng_unchanged():
        got = knn_accuracy(torch.from_numpy(x), torch.from_numpy(labels), k=k)
    expected = brute_force_knn(x, labels, k)
    assert 0 < expected < 1
    assert got == expected
    assert knn_accuracy(x, list(labels), k=k) == expected


def test_knn_accuracy_checks():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="at most N - 1"):
        knn_accuracy(x, np.zeros(10), k=10)
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        knn_accuracy(x, np.zeros(9))


def test_silhouette_hand_computed():
    x, y = np.array([[0.0], [1.0], [10.0], [11.0]]), np.array([0, 0, 1, 1])
    expected = ((1 - 1 / 10.5) + (1 - 1 / 9.5)) / 2  # a(i) = 1; b(i) = 10.5 for the outer points, 9.5 for the inner
    assert silhouette(x, y) == pytest.approx(expected)
    with pytest.raises(ValueError, match="distinct labels"):
        silhouette(x, np.zeros(4))


def test_trustworthiness_of_pca_on_a_plane():
    rng = np.random.default_rng(7)
    basis = np.linalg.qr(rng.normal(size=(10, 2)))[0]
    high = rng.normal(size=(200, 2)) * [3.0, 1.0] @ basis.T + 5.0
    with global_rng_unchanged():
        low = pca(torch.from_numpy(high), 2).numpy()
        assert trustworthiness(high, low, n_neighbors=5) == pytest.approx(1.0, abs=1e-9)
    assert trustworthiness(high, rng.normal(size=(200, 2))) < 0.7
    with pytest.raises(ValueError, match="below N / 2"):
        trustworthiness(high, low, n_neighbors=100)


def test_linear_probe():
    rng = np.random.default_rng(8)
    labels = np.repeat([0, 1, 2], 40)
    separable = rng.normal(size=(120, 5)) + np.eye(3, 5)[labels] * 8
    with global_rng_unchanged():
        assert linear_probe_accuracy(separable, labels, seed=1) == 1.0
        assert linear_probe_accuracy(rng.normal(size=(120, 5)), labels) < 0.6  # noise: about chance (1/3)
    with pytest.raises(ValueError, match="at least 2 points per class"):
        linear_probe_accuracy(separable[:81], labels[:81])


# ------------------------------------------------------------------------------------------------- t-SNE


@pytest.mark.parametrize("backend", TSNE_BACKENDS)
def test_tsne_separates_blobs_deterministically(blobs, backend):
    x, labels = blobs
    with global_rng_unchanged():
        a = tsne(torch.from_numpy(x), seed=0, backend=backend)
        b = tsne(x, seed=0, backend=backend)
    assert a.shape == (300, 2) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert knn_accuracy(a, labels) == 1.0


@pytest.mark.parametrize("backend", TSNE_BACKENDS)
def test_tsne_warm_start_keeps_the_init_orientation(blobs, backend):
    x, labels = blobs
    turned = tsne(x, seed=0, backend=backend) @ np.array([[0.0, -1.0], [1.0, 0.0]])  # the default frame, turned 90 deg
    with global_rng_unchanged():
        warm = tsne(x, init=turned, seed=0, backend=backend)
    angle, det = rotation_angle(warm, turned)
    assert abs(angle) < 20 and det > 0
    assert knn_accuracy(warm, labels) == 1.0


def test_tsne_small_n_and_checks(monkeypatch):
    x = np.random.default_rng(9).normal(size=(6, 3))
    assert tsne(x, perplexity=30.0, backend="sklearn").shape == (6, 2)  # perplexity clipped to (N-1)/3
    with pytest.raises(ValueError, match="N >= 5"):
        tsne(x[:4])
    with pytest.raises(ValueError, match=r"array of shape \(6, 2\)"):
        tsne(x, init=np.zeros((6, 3)))
    with pytest.raises(ValueError, match="perplexity"):
        tsne(x, perplexity=0)
    with pytest.raises(ValueError, match="n_jobs"):
        tsne(x, n_jobs=0)
    monkeypatch.setitem(sys.modules, "openTSNE", None)
    with pytest.raises(ImportError, match="pip install openTSNE"):
        tsne(x, backend="opentsne")
    assert np.array_equal(tsne(x, backend="auto"), tsne(x, backend="sklearn"))


# -------------------------------------------------------------------------------------------------- UMAP


def test_umap_separates_blobs_and_warm_starts(blobs):
    x, labels = blobs
    with global_rng_unchanged():
        warmup_umap(approximate=False)
        a = umap_embed(torch.from_numpy(x), seed=0)
        b = umap_embed(x, seed=0)
    assert a.shape == (300, 2) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert knn_accuracy(a, labels) == 1.0
    turned = a @ np.array([[0.0, -1.0], [1.0, 0.0]])
    with global_rng_unchanged():
        warm = umap_embed(x, init=turned, seed=0)
    angle, det = rotation_angle(warm, turned)
    assert abs(angle) < 20 and det > 0
    assert knn_accuracy(warm, labels) == 1.0


def test_umap_checks(monkeypatch):
    x = np.zeros((20, 3))
    with pytest.raises(ValueError, match="n_neighbors"):
        umap_embed(x, n_neighbors=1)
    with pytest.raises(ValueError, match="init"):
        umap_embed(x, init="tsne")
    monkeypatch.setitem(sys.modules, "umap", None)
    for call in (lambda: umap_embed(x), warmup_umap, lambda: aligned_umap([x, x])):
        with pytest.raises(ImportError, match="pip install umap-learn"):
            call()


@pytest.mark.slow
def test_aligned_umap_gives_steady_frames(blobs):
    x, labels = blobs
    rng = np.random.default_rng(10)
    frames = [x[::3] + rng.normal(0, 0.3, size=(100, 20)) for _ in range(2)]
    with global_rng_unchanged():
        out = aligned_umap(frames, seed=0)
    assert [f.shape for f in out] == [(100, 2)] * 2
    assert all(knn_accuracy(f, labels[::3]) == 1.0 for f in out)
    assert max(frame_stability(p, c) for p, c in zip(out, out[1:])) < 0.3
    with pytest.raises(ValueError, match="same points"):
        aligned_umap([x, x[:100]])
