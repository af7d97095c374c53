"""Layers as embeddings: pool activations, project them to 2-D, align frames over epochs, score the result.

A layer's activations on a fixed probe set are a point cloud in a high-dimensional space; watching how the
classes separate in it over training shows what the layer learns (Fleuret, EE-559 "Layers as embeddings";
van der Maaten and Hinton, 2008). The pipeline is:

1. :func:`pool_features` turns activations into an ``(N, D)`` matrix with ``D <= max_dim``.
2. :func:`pca`, :func:`tsne` or :func:`umap_embed` map it to 2-D (t-SNE and UMAP warm-start from the
   previous frame through ``init``); :func:`aligned_umap` embeds all epochs jointly at the end of a fit.
3. :func:`procrustes_align` puts each frame in the previous frame's orientation, so an animation does not
   spin or mirror; :func:`frame_stability` measures how much the points still move.
4. :func:`knn_accuracy`, :func:`silhouette`, :func:`trustworthiness` and :func:`linear_probe_accuracy` score
   how well the features (or a 2-D frame) separate the classes and how faithful a frame is.

Randomness: the functions that draw random numbers take an int ``seed`` and pass it to a private
``torch.Generator`` or as ``random_state`` to scikit-learn, openTSNE and umap-learn; the others are deterministic.
None of them reads or advances the global torch or numpy RNG (checked by the tests), so they are safe in a
background thread and leave training reproducible.
UMAP is imported lazily (``import umap`` compiles numba code on first use).

Example:
    >>> import torch
    >>> act = torch.randn(60, 8, 4, 4)
    >>> feats = pool_features(act)
    >>> frame, ratio = pca(feats, 2, return_variance=True)
    >>> tuple(frame.shape), tuple(ratio.shape)
    ((60, 2), (2,))
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal, Union

import numpy as np
import torch
from scipy.linalg import orthogonal_procrustes
from torch import Tensor

from trainviz.core.checks import check_choice, check_positive_int

__all__ = [
    "aligned_umap",
    "frame_stability",
    "knn_accuracy",
    "linear_probe_accuracy",
    "pca",
    "pool_features",
    "procrustes_align",
    "silhouette",
    "trustworthiness",
    "tsne",
    "umap_embed",
    "unit_radius",
    "warmup_umap",
]

ArrayLike = Union[Tensor, np.ndarray]

MIN_EMBED_POINTS = 5
"""Fewest points :func:`tsne`, :func:`umap_embed` and :func:`aligned_umap` accept."""

_PROJECTION_BLOCK = 1024  # rows of the random projection drawn at once: bounds memory, fixes the draw order
_KNN_CHUNK = 1024  # query rows per distance block in knn_accuracy
_TSNE_INIT_STD = 1e-4  # scale of a t-SNE start (scikit-learn's PCA init, openTSNE's advice)
_UMAP_INSTALL = "UMAP needs umap-learn: pip install umap-learn"


# ----------------------------------------------------------------------------------------------- checks


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"Expected `seed` to be an int in 0..2**32-1, got {seed!r}.")
    return seed


def _check_matrix(name: str, x: Tensor, min_rows: int) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < min_rows or x.shape[1] < 1:
        shape = tuple(x.shape) if isinstance(x, (Tensor, np.ndarray)) else type(x).__name__
        raise ValueError(f"Expected `{name}` to be a tensor (N, D) with N >= {min_rows} and D >= 1, got {shape}.")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"Expected `{name}` to be finite, found NaN or inf.")
    return x


def _as_points(name: str, x: ArrayLike, min_rows: int, dtype: type = np.float64) -> np.ndarray:
    """A finite ``(N, D)`` numpy array with ``N >= min_rows`` (tensors move to the CPU once, here)."""
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] < min_rows or arr.shape[1] < 1:
        raise ValueError(f"Expected `{name}` to have shape (N, D) with N >= {min_rows} and D >= 1, got {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"Expected `{name}` to be numeric, got dtype {arr.dtype}.")
    arr = arr.astype(dtype, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"Expected `{name}` to be finite, found NaN or inf.")
    return arr


def _as_labels(labels: ArrayLike, n: int, min_per_class: int = 1) -> np.ndarray:
    """Labels as class indices ``0..C-1`` (in sorted label order), checked against ``n`` points."""
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if arr.shape != (n,):
        raise ValueError(f"Expected `labels` to have shape ({n},), one per point, got {arr.shape}.")
    _, codes, counts = np.unique(arr, return_inverse=True, return_counts=True)
    if counts.min() < min_per_class:
        raise ValueError(f"Expected at least {min_per_class} points per class, got a class with {counts.min()}.")
    return codes.reshape(n)


def _check_n_classes(codes: np.ndarray, what: str) -> None:
    n_classes = int(codes.max()) + 1
    if not 2 <= n_classes <= len(codes) - 1:
        raise ValueError(f"Expected 2..N-1 distinct labels for {what}, got {n_classes} for N={len(codes)}.")


def _check_start(init: ArrayLike | str, n: int, choices: tuple[str, ...]) -> np.ndarray | str:
    """``init`` as a library string or an ``(n, 2)`` float array (a previous frame)."""
    if isinstance(init, str):
        return check_choice("init", init, choices)
    start = _as_points("init", init, 1)
    if start.shape != (n, 2):
        raise ValueError(f"Expected `init` to be one of {choices} or an array of shape ({n}, 2), got {start.shape}.")
    return start


def _import_umap():
    try:
        import umap
    except ImportError as err:
        raise ImportError(_UMAP_INSTALL) from err
    return umap


# ---------------------------------------------------------------------------------------------- features


def pool_features(act: Tensor, max_dim: int = 4096, *, seed: int = 0) -> Tensor:
    """Turn one layer's activations into an ``(N, D)`` feature matrix with ``D <= max_dim``.

    4-D activations ``(N, C, H, W)`` are averaged over ``H, W`` (global average pooling: one value per
    channel); 2-D ones are kept; other ranks are flattened per sample. When ``D > max_dim``, the features are
    multiplied by a fixed Gaussian random matrix ``R`` of shape ``(D, max_dim)``, entries ``N(0, 1/max_dim)``.
    By the Johnson-Lindenstrauss lemma, such a projection keeps all pairwise distances of ``N`` points within a
    factor ``1 +- eps`` with high probability once ``max_dim >~ 8 ln(N) / eps**2`` (about ``eps = 0.1`` for
    ``N = 2000`` and ``max_dim = 4096``), so neighbourhoods and hence t-SNE/UMAP/kNN results are preserved.
    ``R`` is drawn on the CPU from a private ``torch.Generator`` seeded with ``seed``, in fixed blocks of rows,
    so it is the same at every epoch, on every device and for every batch size, and is never stored.

    Args:
        act: activations, batch first; any floating dtype (half precision is computed in float32).
        max_dim: largest feature dimension kept before projecting.
        seed: seed of the random projection.

    Returns:
        Detached features on ``act``'s device, float32 (float64 for float64 input).

    Shape:
        act ``(N, C, H, W)`` -> ``(N, min(C, max_dim))``; ``(N, D)`` -> ``(N, min(D, max_dim))``;
        ``(N, *)`` -> ``(N, min(prod(*), max_dim))``

    Example:
        >>> import torch
        >>> pool_features(torch.randn(10, 64, 7, 7)).shape
        torch.Size([10, 64])
        >>> pool_features(torch.randn(10, 3, 32, 32).flatten(1), max_dim=256).shape
        torch.Size([10, 256])
    """
    if not isinstance(act, Tensor) or act.dim() < 1 or act.shape[0] < 1:
        shape = tuple(act.shape) if isinstance(act, Tensor) else type(act).__name__
        raise ValueError(f"Expected `act` to be a tensor with a non-empty batch dimension, got {shape}.")
    check_positive_int("max_dim", max_dim)
    _check_seed(seed)
    x = act.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    x = x.mean(dim=(2, 3)) if x.dim() == 4 else x.reshape(x.shape[0], -1)
    if x.shape[1] <= max_dim:
        return x
    generator = torch.Generator().manual_seed(seed)
    out = x.new_zeros(x.shape[0], max_dim)
    for start in range(0, x.shape[1], _PROJECTION_BLOCK):
        stop = min(start + _PROJECTION_BLOCK, x.shape[1])
        block = torch.randn(stop - start, max_dim, generator=generator)
        out += x[:, start:stop] @ block.to(device=x.device, dtype=x.dtype)
    return out / math.sqrt(max_dim)


# --------------------------------------------------------------------------------------------- 2-D maps


def pca(x: Tensor, k: int = 2, *, return_variance: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Exact principal component scores of ``x``, with a sign convention that is stable over epochs.

    The centred data's covariance ``Xc^T Xc`` (when ``D <= N``) or Gram matrix ``Xc Xc^T`` (when ``D > N``) is
    diagonalised with ``torch.linalg.eigh``: exact, deterministic, no random start (unlike
    ``torch.pca_lowrank``, which draws from the global RNG), and cost ``O(N D min(N, D) + min(N, D)^3)``.
    Each component's sign is chosen so that its loadings have a positive sum of cubes, i.e. its heaviest
    loadings point to positive values: a smooth version of scikit-learn's "largest loading positive" rule,
    which keeps a frame from mirroring when the features change a little between epochs.

    Args:
        x: features, one row per point.
        k: number of components, ``1 <= k <= min(N, D)``.
        return_variance: also return the explained variance ratio of each component.

    Returns:
        Scores ``(N, k)`` on ``x``'s device; with ``return_variance``, also the ratios ``(k,)`` (each
        component's variance over the total; 0 for constant data).

    Shape:
        x ``(N, D)`` -> ``(N, k)`` [, ``(k,)``]

    Example:
        >>> import torch
        >>> x = torch.randn(100, 5, generator=torch.Generator().manual_seed(0)) * torch.tensor([5., 1, 1, 1, 1])
        >>> scores, ratio = pca(x, 2, return_variance=True)
        >>> scores.shape, bool(ratio[0] > 0.7)
        (torch.Size([100, 2]), True)
    """
    x = _check_matrix("x", x, min_rows=2)
    check_positive_int("k", k)
    n, d = x.shape
    if k > min(n, d):
        raise ValueError(f"Expected `k` to be at most min(N, D) = {min(n, d)}, got {k}.")
    xc = x - x.mean(0)
    if d <= n:
        evals, evecs = torch.linalg.eigh(xc.T @ xc)
        evals, loadings = evals.flip(0)[:k], evecs.flip(1)[:, :k]
        scores = xc @ loadings
    else:
        evals, evecs = torch.linalg.eigh(xc @ xc.T)
        evals, u = evals.flip(0)[:k], evecs.flip(1)[:, :k]
        scores = u * evals.clamp_min(0).sqrt()
        loadings = xc.T @ u  # the components up to a positive factor: enough for the sign
    sign = torch.where(loadings.pow(3).sum(0) < 0, -1.0, 1.0).to(scores.dtype)
    scores = scores * sign
    if not return_variance:
        return scores
    total = xc.pow(2).sum()
    ratio = torch.where(total > 0, evals.clamp_min(0) / total.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
    return scores, ratio


def _tsne_start(init: ArrayLike | str, n: int) -> np.ndarray | str:
    start = _check_start(init, n, ("pca", "random"))
    if isinstance(start, str):
        return start
    start = start - start.mean(0)
    spread = start.std(0).max()
    if spread == 0:
        raise ValueError("Expected `init` to have distinct points, got a frame where all points coincide.")
    return start * (_TSNE_INIT_STD / spread)


def tsne(
    x: ArrayLike,
    *,
    init: ArrayLike | Literal["pca", "random"] = "pca",
    seed: int = 0,
    perplexity: float = 30.0,
    backend: Literal["auto", "opentsne", "sklearn"] = "auto",
    n_jobs: int | None = 1,
) -> np.ndarray:
    """2-D t-SNE of ``x`` (van der Maaten and Hinton, 2008) with openTSNE or scikit-learn.

    ``backend="auto"`` uses openTSNE when it is importable, else scikit-learn's Barnes-Hut ``TSNE``; both are
    deterministic for a given ``seed``, but they give different frames. ``perplexity`` is clipped to
    ``(N - 1) / 3`` so small probe sets work. ``init`` is ``"pca"`` (the default: preserves the global layout),
    ``"random"``, or a previous frame ``(N, 2)`` to warm-start from: it is centred and rescaled to a standard
    deviation of 1e-4 (as the libraries do with a PCA start), which keeps its layout and orientation while
    letting the optimisation converge normally.

    ``n_jobs`` caps the backend's threads (scikit-learn's OpenMP pool through ``threadpoolctl``, openTSNE's
    ``n_jobs``). The default, 1, is deliberate: on a busy machine (data loader workers, a UMAP warm-up thread,
    other jobs) both backends' threads spin-wait on each other and a 2-thread fit measured 5-10x slower than
    a 1-thread one; on an idle machine 1 thread costs at most the parallel speed-up. ``None`` uses all cores.

    Args:
        x: features, one row per point (a tensor is copied to the CPU once).
        init: start of the optimisation (see above).
        seed: ``random_state`` of the backend.
        perplexity: effective number of neighbours, > 0.
        backend: ``"auto"``, ``"opentsne"`` or ``"sklearn"``.
        n_jobs: number of threads, a positive int, or ``None`` for all cores.

    Returns:
        float32 frame.

    Shape:
        x ``(N, D)``, init ``(N, 2)`` -> ``(N, 2)``, ``N >= 5``

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(50, 10))
        >>> tsne(x, perplexity=10).shape
        (50, 2)
    """
    data = _as_points("x", x, MIN_EMBED_POINTS)
    n = data.shape[0]
    start = _tsne_start(init, n)
    _check_seed(seed)
    if not isinstance(perplexity, (int, float)) or isinstance(perplexity, bool) or not perplexity > 0:
        raise ValueError(f"Expected `perplexity` to be a positive number, got {perplexity!r}.")
    perplexity = min(float(perplexity), (n - 1) / 3)
    check_choice("backend", backend, ("auto", "opentsne", "sklearn"))
    if n_jobs is not None:
        check_positive_int("n_jobs", n_jobs)
    if backend != "sklearn":
        try:
            import openTSNE
        except ImportError as err:
            if backend == "opentsne":
                raise ImportError("backend='opentsne' needs openTSNE: pip install openTSNE") from err
            backend = "sklearn"
    if backend == "sklearn":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=n_jobs, user_api="openmp"):
            model = TSNE(n_components=2, perplexity=perplexity, init=start, random_state=seed, n_jobs=n_jobs)
            out = model.fit_transform(data)
    else:
        model = openTSNE.TSNE(
            n_components=2, perplexity=perplexity, initialization=start, random_state=seed, n_jobs=n_jobs or -1
        )
        out = model.fit(data)
    return np.asarray(out, dtype=np.float32)


def umap_embed(
    x: ArrayLike,
    *,
    init: ArrayLike | Literal["spectral", "pca", "random"] = "spectral",
    seed: int = 0,
    n_neighbors: int = 15,
) -> np.ndarray:
    """2-D UMAP of ``x`` (McInnes et al., 2018) with umap-learn, deterministic for a given ``seed``.

    A fixed ``random_state`` makes umap-learn run single-threaded. ``n_neighbors`` is clipped to ``N - 1``.
    ``init`` is ``"spectral"`` (default), ``"pca"``, ``"random"`` or a previous frame ``(N, 2)`` to warm-start
    from; umap-learn rescales any start to a 10 x 10 box, axis by axis, so the output keeps the start's layout
    and orientation but not its scale: align it with :func:`procrustes_align` before plotting. The first call
    in a process compiles numba code (~20 s); run :func:`warmup_umap` early, in a background thread, to hide it.

    Args:
        x: features, one row per point (a tensor is copied to the CPU once).
        init: start of the optimisation (see above).
        seed: ``random_state`` of umap-learn.
        n_neighbors: size of the local neighbourhood, >= 2.

    Returns:
        float32 frame.

    Raises:
        ImportError: umap-learn is not installed (``pip install umap-learn``).

    Shape:
        x ``(N, D)``, init ``(N, 2)`` -> ``(N, 2)``, ``N >= 5``

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(50, 10))
        >>> umap_embed(x, n_neighbors=10).shape
        (50, 2)
    """
    umap = _import_umap()
    data = _as_points("x", x, MIN_EMBED_POINTS, dtype=np.float32)
    start = _check_start(init, data.shape[0], ("spectral", "pca", "random"))
    _check_seed(seed)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 2:
        raise ValueError(f"Expected `n_neighbors` to be an int >= 2, got {n_neighbors!r}.")
    model = umap.UMAP(
        n_components=2, n_neighbors=min(n_neighbors, data.shape[0] - 1), init=start, random_state=seed, n_jobs=1
    )
    return np.asarray(model.fit_transform(data), dtype=np.float32)


def warmup_umap(*, approximate: bool = True) -> None:
    """Compile umap-learn's numba code with a tiny fit, so the first real :func:`umap_embed` is fast.

    Meant to run in a background thread at the start of a fit: it touches no global RNG and returns nothing.
    The exact nearest-neighbour path (used below 4096 points) takes ~7 s to compile; with ``approximate`` the
    pynndescent path (used from 4096 points up) is compiled too, ~20 s more, which otherwise lands on the first
    large embedding. Pass ``approximate=n_points >= 4096``.

    Args:
        approximate: also compile the approximate nearest-neighbour path.

    Raises:
        ImportError: umap-learn is not installed (``pip install umap-learn``).

    Example:
        >>> import threading
        >>> thread = threading.Thread(target=warmup_umap, kwargs={"approximate": False}, daemon=True)
        >>> thread.start()
    """
    umap = _import_umap()
    data = np.random.RandomState(0).normal(size=(64, 8)).astype(np.float32)
    for force in (False, True) if approximate else (False,):
        umap.UMAP(n_neighbors=5, n_epochs=10, random_state=0, n_jobs=1, force_approximation_algorithm=force).fit(data)


def aligned_umap(frames: Sequence[ArrayLike], *, seed: int = 0, n_neighbors: int = 15) -> list[np.ndarray]:
    """Joint 2-D UMAP of the same points at several epochs (umap-learn's ``AlignedUMAP``).

    Each frame is fitted with a penalty that keeps every point near its position in the neighbouring frames
    (identity relations: point ``i`` is point ``i`` at every epoch), which gives the steadiest animation, at a
    cost of about 15 s per frame: a pass for the end of a fit, not for every epoch.

    Args:
        frames: features of the same ``N`` points at each epoch, at least 2 frames.
        seed: ``random_state`` of umap-learn.
        n_neighbors: size of the local neighbourhood, >= 2 (clipped to ``N - 1``).

    Returns:
        One float32 frame per input frame.

    Raises:
        ImportError: umap-learn is not installed (``pip install umap-learn``).

    Shape:
        frames ``[(N, D_t)] * T`` -> ``[(N, 2)] * T``, ``T >= 2``, ``N >= 5``

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(40, 5))
        >>> [f.shape for f in aligned_umap([x, x + 0.01])]
        [(40, 2), (40, 2)]
    """
    umap = _import_umap()
    if not isinstance(frames, Sequence) or len(frames) < 2:
        raise ValueError(f"Expected `frames` to be a list of at least 2 arrays, got {type(frames).__name__}.")
    data = [_as_points(f"frames[{i}]", frame, MIN_EMBED_POINTS, dtype=np.float32) for i, frame in enumerate(frames)]
    n = data[0].shape[0]
    if any(frame.shape[0] != n for frame in data):
        raise ValueError(f"Expected every frame to hold the same points, got sizes {[f.shape[0] for f in data]}.")
    _check_seed(seed)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 2:
        raise ValueError(f"Expected `n_neighbors` to be an int >= 2, got {n_neighbors!r}.")
    relations = [{i: i for i in range(n)}] * (len(data) - 1)
    model = umap.AlignedUMAP(n_neighbors=min(n_neighbors, n - 1), random_state=seed)
    with warnings.catch_warnings():  # each slice's UMAP says a seed forces n_jobs=1: expected, not news
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        model.fit(data, relations=relations)
    return [np.asarray(e, dtype=np.float32) for e in model.embeddings_]


# ----------------------------------------------------------------------------------------------- frames


def procrustes_align(cur: ArrayLike, prev: ArrayLike, *, scale: bool = False) -> np.ndarray:
    """Rotate (or reflect) and translate ``cur`` onto ``prev``: orthogonal Procrustes.

    ``R = scipy.linalg.orthogonal_procrustes(cur - cur.mean(0), prev - prev.mean(0))`` is the orthogonal
    matrix minimising ``||(cur - mean) R - (prev - mean)||``; the result is ``c (cur - cur.mean(0)) R +
    prev.mean(0)``, i.e. ``cur`` in ``prev``'s frame. With ``scale=False`` (default) ``c = 1`` and the frame
    keeps its own size; with ``scale=True`` ``c`` is the least-squares isotropic scale (trace of the singular
    values over ``||cur - mean||^2``), which also matches the sizes, useful for methods whose output scale
    drifts (UMAP's 10 x 10 box, t-SNE's growth). Distances within ``cur`` change only by ``c``.

    Args:
        cur: frame to align.
        prev: reference frame (usually the previous, already aligned, frame) of the same points.
        scale: also fit an isotropic scale.

    Returns:
        ``cur`` aligned, float64.

    Shape:
        cur ``(N, C)``, prev ``(N, C)`` -> ``(N, C)``

    Example:
        >>> import numpy as np
        >>> prev = np.random.default_rng(0).normal(size=(20, 2))
        >>> cur = prev @ np.array([[0.0, -1.0], [1.0, 0.0]]) + 5.0
        >>> bool(np.allclose(procrustes_align(cur, prev), prev))
        True
    """
    a = _as_points("cur", cur, 2)
    b = _as_points("prev", prev, 2)
    if a.shape != b.shape:
        raise ValueError(f"Expected `cur` and `prev` to have the same shape, got {a.shape} and {b.shape}.")
    ac, b_mean = a - a.mean(0), b.mean(0)
    rotation, singular_sum = orthogonal_procrustes(ac, b - b_mean)
    factor = 1.0
    if scale:
        norm2 = float((ac**2).sum())
        if norm2 == 0:
            raise ValueError("Expected `cur` to have distinct points to fit a scale, got a frame where all coincide.")
        factor = singular_sum / norm2
    return factor * (ac @ rotation) + b_mean


def unit_radius(frame: ArrayLike) -> np.ndarray:
    """``frame`` centred, with a root-mean-square distance of 1 to the centre (unchanged if all points coincide),
    so frames neither grow nor shrink over epochs (early features are tiny).

    Shape:
        frame ``(N, C)`` -> ``(N, C)`` float32

    Example:
        >>> import numpy as np
        >>> f = unit_radius(np.array([[0.0, 0.0], [4.0, 0.0]]))
        >>> f.tolist(), float(np.sqrt((f**2).sum(1).mean()))
        ([[-1.0, 0.0], [1.0, 0.0]], 1.0)
    """
    arr = np.asarray(frame)
    centred = arr - arr.mean(0)
    radius = float(np.sqrt((centred**2).sum(1).mean()))
    return (centred / radius if radius > 0 else centred).astype(np.float32)


def frame_stability(prev: ArrayLike, cur: ArrayLike, *, scale: bool = True) -> float:
    """How far points move from one frame to the next once aligned: lower is steadier.

    ``cur`` is aligned to ``prev`` with :func:`procrustes_align` (with an isotropic scale by default, so the
    score ignores rotation, reflection, translation and zoom), then the mean displacement of the points is
    divided by ``prev``'s RMS radius ``sqrt(mean ||prev_i - mean(prev)||^2)``. 0 for the same layout;
    ``sqrt(pi / 2) sigma / radius`` for small isotropic noise of std ``sigma`` per axis; for two unrelated 2-D
    Gaussian frames, ``sqrt(pi) / 2 = 0.89`` (the fitted scale shrinks ``cur`` to a point) or ``1.25`` with
    ``scale=False``.

    Args:
        prev: earlier frame.
        cur: later frame of the same points.
        scale: fit an isotropic scale in the alignment.

    Returns:
        The normalised mean displacement.

    Shape:
        prev ``(N, C)``, cur ``(N, C)`` -> scalar

    Example:
        >>> import numpy as np
        >>> prev = np.random.default_rng(0).normal(size=(20, 2))
        >>> round(frame_stability(prev, 3 * prev[:, ::-1] + 1), 6)
        0.0
    """
    aligned = procrustes_align(cur, prev, scale=scale)
    b = _as_points("prev", prev, 2)
    radius = math.sqrt(float(((b - b.mean(0)) ** 2).sum(1).mean()))
    if radius == 0:
        raise ValueError("Expected `prev` to have distinct points, got a frame where all points coincide.")
    return float(np.linalg.norm(aligned - b, axis=1).mean() / radius)


# ---------------------------------------------------------------------------------------------- quality


def knn_accuracy(features: ArrayLike, labels: ArrayLike, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy: how often a point's ``k`` nearest other points vote its class.

    Euclidean distances, computed with torch on ``features``' device in blocks of rows (memory ``O(N)`` per
    row, not ``O(N^2)``); unweighted majority vote, ties going to the smallest label.

    Args:
        features: features or a 2-D frame, one row per point.
        labels: class of each point (any sortable values).
        k: number of neighbours, ``1 <= k <= N - 1``.

    Returns:
        Accuracy in [0, 1].

    Shape:
        features ``(N, D)``, labels ``(N,)`` -> scalar

    Example:
        >>> import torch
        >>> knn_accuracy(torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]]), [0, 0, 0, 1, 1, 1], k=2)
        1.0
    """
    x = features if isinstance(features, Tensor) else torch.as_tensor(np.asarray(features))
    x = _check_matrix("features", x, min_rows=2)
    n = x.shape[0]
    codes = torch.as_tensor(_as_labels(labels, n), device=x.device)
    check_positive_int("k", k)
    if k > n - 1:
        raise ValueError(f"Expected `k` to be at most N - 1 = {n - 1}, got {k}.")
    n_classes = int(codes.max()) + 1
    hits = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, n, _KNN_CHUNK):
        rows = x[start : start + _KNN_CHUNK]
        dist = torch.cdist(rows, x)
        dist[:, start : start + len(rows)].fill_diagonal_(float("inf"))  # leave each point out
        votes = torch.zeros(len(rows), n_classes, device=x.device)
        votes.scatter_add_(1, codes[dist.topk(k, largest=False).indices], torch.ones(len(rows), k, device=x.device))
        hits += (votes.argmax(1) == codes[start : start + len(rows)]).sum()
    return float(hits) / n


def silhouette(features: ArrayLike, labels: ArrayLike) -> float:
    """Mean silhouette coefficient of the classes (scikit-learn's ``silhouette_score``, Euclidean).

    In [-1, 1]: near 1 when each point is much closer to its own class than to the nearest other class.

    Args:
        features: features or a 2-D frame, one row per point.
        labels: class of each point, with 2..N-1 distinct values.

    Returns:
        The mean silhouette.

    Shape:
        features ``(N, D)``, labels ``(N,)`` -> scalar

    Example:
        >>> round(silhouette([[0.0], [0.1], [5.0], [5.1]], [0, 0, 1, 1]), 2)
        0.98
    """
    from sklearn.metrics import silhouette_score

    data = _as_points("features", features, 3)
    codes = _as_labels(labels, data.shape[0])
    _check_n_classes(codes, "a silhouette")
    return float(silhouette_score(data, codes))


def trustworthiness(high: ArrayLike, low: ArrayLike, n_neighbors: int = 5) -> float:
    """How far a frame can be trusted: 1 when each point's ``n_neighbors`` nearest neighbours in ``low`` are
    also near it in ``high`` (Venna and Kaski, 2001; scikit-learn's ``trustworthiness``).

    Args:
        high: features, one row per point.
        low: the embedding of the same points.
        n_neighbors: neighbourhood size, ``1 <= n_neighbors < N / 2``.

    Returns:
        Trustworthiness in [0, 1].

    Shape:
        high ``(N, D)``, low ``(N, C)`` -> scalar

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(30, 2))
        >>> trustworthiness(np.hstack([x, np.zeros((30, 3))]), x)
        1.0
    """
    from sklearn.manifold import trustworthiness as sk_trustworthiness

    a = _as_points("high", high, 3)
    b = _as_points("low", low, 3)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"Expected `high` and `low` to hold the same points, got {a.shape[0]} and {b.shape[0]} rows.")
    check_positive_int("n_neighbors", n_neighbors)
    if n_neighbors >= a.shape[0] / 2:
        raise ValueError(f"Expected `n_neighbors` to be below N / 2 = {a.shape[0] / 2}, got {n_neighbors}.")
    return float(sk_trustworthiness(a, b, n_neighbors=n_neighbors))


def linear_probe_accuracy(features: ArrayLike, labels: ArrayLike, *, seed: int = 0, n_splits: int = 5) -> float:
    """Cross-validated accuracy of a linear classifier on the features: how linearly separable the classes are.

    A scikit-learn pipeline ``StandardScaler`` + ``LogisticRegression`` (L2, C=1, lbfgs, up to 1000 iterations)
    is scored by stratified k-fold cross-validation, shuffled with ``random_state=seed``; ``n_splits`` is
    lowered to the size of the smallest class when needed. Returns the mean accuracy over the held-out folds.

    Args:
        features: features, one row per point.
        labels: class of each point, at least 2 classes of at least 2 points.
        seed: seed of the fold shuffle.
        n_splits: number of folds, >= 2.

    Returns:
        Mean held-out accuracy in [0, 1].

    Shape:
        features ``(N, D)``, labels ``(N,)`` -> scalar

    Example:
        >>> import numpy as np
        >>> x = np.concatenate([np.zeros((10, 2)), np.ones((10, 2))]) + np.random.default_rng(0).normal(0, 0.1, (20, 2))
        >>> linear_probe_accuracy(x, [0] * 10 + [1] * 10)
        1.0
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = _as_points("features", features, 4)
    codes = _as_labels(labels, data.shape[0], min_per_class=2)
    _check_n_classes(codes, "a linear probe")
    _check_seed(seed)
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 2:
        raise ValueError(f"Expected `n_splits` to be an int >= 2, got {n_splits!r}.")
    folds = StratifiedKFold(n_splits=min(n_splits, int(np.bincount(codes).min())), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return float(cross_val_score(model, data, codes, cv=folds).mean())
