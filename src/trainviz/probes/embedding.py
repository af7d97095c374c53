"""Layers as embeddings (Fleuret's EE-559 lecture "Layers as embeddings"): the features of a fixed probe set at
one or more layers, projected to 2-D, kept comparable across epochs and scored.

A run is two steps. :func:`capture` (torch, on the training thread): one forward per probe batch with hooks on
every layer, each activation reduced by :func:`~trainviz.ops.embedding.pool_features`. :func:`compute` (numpy,
on a background thread): per layer, the feature scores (leave-one-out k-NN accuracy, silhouette, optionally a
cross-validated linear probe) and one 2-D frame per method, PCA, UMAP (McInnes et al. 2018) or t-SNE (van der
Maaten & Hinton 2008), warm-started from the method's previous frame, centred, scaled to an RMS radius of 1 and
rotated onto that previous frame by orthogonal Procrustes (Schonemann 1966), with its trustworthiness (Venna &
Kaski 2001) and its stability against the previous frame. The outcome is one :class:`EmbeddingResult`.

:class:`EmbeddingHistory` keeps the frames (the warm starts, the checkpoint, the fit-end animations) and
:class:`EmbeddingWorker` is the background thread the projections run on.

Example:
    >>> import torch
    >>> from trainviz.core.probeset import ProbeSet
    >>> from trainviz.models import DemoClassifier
    >>> model = DemoClassifier(num_classes=3, in_channels=3).eval()
    >>> probe = ProbeSet(torch.rand(12, 3, 32, 32), torch.arange(12) % 3, torch.arange(12))
    >>> config = EmbeddingConfig(methods=("pca",), linear_probe_folds=0)
    >>> layers = {"net.fc": model.net.fc}
    >>> features, logits = capture(model, layers, probe.images, config)
    >>> captured = Captured.from_tensors(features, logits)
    >>> result = compute(0, captured, probe, config, EmbeddingHistory())
    >>> result.layers["net.fc"].frames["pca"].shape, sorted(result.render())
    ((12, 2), ['net.fc/pca'])
    >>> EmbeddingResult.from_record(result.record()).record() == result.record()
    True
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from trainviz.core.checks import check_bool, check_float, check_int, check_positive_int
from trainviz.core.common import class_names, json_number
from trainviz.core.hooks import capture as capture_activations
from trainviz.core.layers import Layout
from trainviz.core.probeset import ProbeSet
from trainviz.core.result import Result
from trainviz.core.threads import background_threads
from trainviz.core.transfer import to_cpu
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
    unit_radius,
    warmup_umap,
)
from trainviz.render.embedding import animation_pages, depth_image, scatter_image

__all__ = [
    "FIRST_SLOW_SECONDS",
    "MAX_PENDING_BYTES",
    "METHODS",
    "Captured",
    "EmbeddingConfig",
    "EmbeddingHistory",
    "EmbeddingResult",
    "EmbeddingWorker",
    "LayerEmbedding",
    "aligned_frames",
    "animations",
    "capture",
    "capture_share",
    "check_methods",
    "compute",
    "probe_arrays",
]

METHODS: tuple[str, ...] = ("pca", "umap", "tsne")
MAX_PENDING_BYTES = 256 * 2**20
"""Features waiting for the worker beyond which the training thread waits for the oldest job (bounds memory)."""
FIRST_SLOW_SECONDS = 25.0
"""Budget estimate of a first UMAP or t-SNE job (UMAP: ~18 s of numba compilation)."""
_TRUST_K = 5  # neighbours of the trustworthiness score
_FEATURE_SCORES = ("knn_accuracy", "silhouette", "linear_probe_accuracy")
_FRAME_SCORES = ("trustworthiness", "stability", "explained_variance")
_PREDICTIONS = "@predictions"  # key of the predictions in the one device-to-host transfer (no layer has an "@")


def check_methods(methods: Any) -> tuple[str, ...]:
    """Distinct names among :data:`METHODS`, in that order (PCA first: it is every run's first frame)."""
    if isinstance(methods, str):
        methods = (methods,)
    ok = isinstance(methods, Sequence) and len(methods) > 0 and all(m in METHODS for m in methods)
    if not ok or len(set(methods)) != len(methods):
        raise ValueError(
            f"Expected `methods` to be distinct names among {', '.join(map(repr, METHODS))}; got {methods!r}."
        )
    return tuple(m for m in METHODS if m in methods)


@dataclass(frozen=True)
class EmbeddingConfig:
    """Settings of the capture and the projections (checked on creation; see ``EmbeddingCallback``).

    Raises:
        ValueError: a setting of the wrong type or out of range.
    """

    methods: tuple[str, ...] = ("pca", "umap")
    max_dim: int = 4096
    n_neighbors: int = 15
    perplexity: float = 30.0
    linear_probe_folds: int = 3
    save_features: bool = False
    seed: int = 0
    batch_size: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", check_methods(self.methods))
        check_positive_int("max_dim", self.max_dim)
        check_int("n_neighbors", self.n_neighbors, minimum=2)
        object.__setattr__(self, "perplexity", check_float("perplexity", self.perplexity, 0, strict_minimum=True))
        folds = self.linear_probe_folds
        if isinstance(folds, bool) or not isinstance(folds, int) or folds == 1 or folds < 0:
            raise ValueError(f"Expected `linear_probe_folds` to be 0 (off) or an int >= 2, got {folds!r}.")
        check_bool("save_features", self.save_features)
        check_int("seed", self.seed, minimum=0, maximum=2**32 - 1)
        check_positive_int("batch_size", self.batch_size)


# capture (training thread) ---------------------------------------------------------------------------
def capture(
    model: torch.nn.Module,
    layers: Mapping[str, torch.nn.Module],
    images: torch.Tensor,
    config: EmbeddingConfig,
    layout: Layout | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pooled features ``{layer: (N, D)}`` and logits ``(N, K)`` of ``images``, one forward per batch.

    With the model's ``layout`` (:func:`trainviz.core.layers.model_layout`), a token layer gives its class token,
    or the mean of its patch tokens when the model has none, and channels-last maps are averaged over their
    positions (:meth:`~trainviz.core.layers.Layout.pool`); without it, 4-D outputs are averaged over their last
    two sides and others flattened (:func:`~trainviz.ops.embedding.pool_features`).

    Raises:
        ValueError: a layer gave no tensor, or the model's output is not logits.
    """
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    logits = []
    with torch.no_grad(), capture_activations(model, layers) as acts:
        for start in range(0, images.shape[0], config.batch_size):
            acts.clear()
            logits.append(model(images[start : start + config.batch_size]).detach())
            for name in layers:
                if name not in acts:
                    raise ValueError(f"Layer {name!r} returned no tensor during the forward pass: pick another layer.")
                act = acts[name] if layout is None else layout.pool(acts[name])
                feats[name].append(pool_features(act, config.max_dim, seed=config.seed))
    return {name: torch.cat(parts) for name, parts in feats.items()}, torch.cat(logits)


def capture_share(
    model: torch.nn.Module,
    layers: Mapping[str, torch.nn.Module],
    images: torch.Tensor,
    config: EmbeddingConfig,
    rank: int,
    world: int,
    all_gather: Callable[[torch.Tensor], torch.Tensor],
    layout: Layout | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor] | Exception:
    """Data-parallel :func:`capture`: rank ``rank`` of ``world`` captures a contiguous share of ``images``, then
    ``all_gather`` (the strategy's collective, ``(...) -> (world, ...)``; reached by every rank, also when its
    capture failed) assembles the features and logits in probe order. Returns them, or the error to report
    (on every rank the error of any rank)."""
    n = images.shape[0]
    chunk = -(-n // world)
    rows = torch.arange(rank * chunk, (rank + 1) * chunk, device=images.device).clamp_max(n - 1)  # equal shares
    try:
        result, failed = capture(model, layers, images[rows], config, layout), None
    except Exception as err:
        result, failed = None, err
    flags = all_gather(torch.tensor([int(failed is not None)], device=rows.device)).reshape(-1)
    if bool(flags.any()):
        return failed or RuntimeError(f"the embedding capture failed on rank(s) {flags.nonzero().flatten().tolist()}")

    def gather(t: torch.Tensor) -> torch.Tensor:  # (world, chunk, D) -> the first n rows, in probe order
        return all_gather(t.contiguous()).reshape(world * chunk, -1)[:n]

    return {name: gather(f) for name, f in result[0].items()}, gather(result[1])


@dataclass
class Captured:
    """One run's features and predictions on the CPU: what the background job is given."""

    features: dict[str, np.ndarray]
    predictions: np.ndarray

    @classmethod
    def from_tensors(cls, features: Mapping[str, torch.Tensor], logits: torch.Tensor) -> Captured:
        """Features (float32) and the predicted classes, moved to the CPU in one transfer."""
        cpu = to_cpu({**features, _PREDICTIONS: logits.argmax(1)})
        predictions = cpu.pop(_PREDICTIONS).astype(np.int64)
        return cls({name: x.astype(np.float32) for name, x in cpu.items()}, predictions)

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for x in self.features.values())


# the result ----------------------------------------------------------------------------------------
@dataclass
class LayerEmbedding:
    """One layer's scores and frames. ``scores``: ``knn_accuracy``, ``silhouette`` (2 to N-1 classes),
    ``linear_probe_accuracy`` (with folds); ``frame_scores[method]``: ``trustworthiness``, ``stability`` (from
    the method's second frame), ``explained_variance`` (PCA). ``frames`` and ``features`` are not recorded."""

    scores: dict[str, float]
    frame_scores: dict[str, dict[str, float]]
    frames: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    features: np.ndarray | None = field(default=None, repr=False)

    def flat(self) -> dict[str, float]:
        out = dict(self.scores)
        for method, scores in self.frame_scores.items():
            out.update({f"{method}/{name}": value for name, value in scores.items()})
        return out


@dataclass
class EmbeddingResult(Result):
    """One run of the embedding probe.

    Record (``embedding/metrics.jsonl``, one flat object per run): ``epoch``; ``methods`` (those run);
    ``<layer>/<score>`` for each score of :class:`LayerEmbedding`, ``<layer>/<method>/<frame score>``;
    ``projection_seconds/<method>`` (all layers); ``worker_seconds`` (the projections and scores of the run).
    Non-finite numbers are ``null``. The same names are the logged scalars.
    """

    record_name: ClassVar[str] = "metrics"
    epoch: int
    methods: tuple[str, ...]
    layers: dict[str, LayerEmbedding]
    projection_seconds: dict[str, float]
    worker_seconds: float
    ids: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)
    predictions: np.ndarray | None = field(default=None, repr=False)
    class_names: list[str] = field(default_factory=list, repr=False)
    save_features: bool = False

    def scalars(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for layer, emb in self.layers.items():
            out.update({f"{layer}/{key}": value for key, value in emb.flat().items()})
        out.update({f"projection_seconds/{m}": s for m, s in self.projection_seconds.items()})
        out["worker_seconds"] = self.worker_seconds
        return out

    def record(self) -> dict[str, Any]:
        values = {key: json_number(value) for key, value in self.scalars().items()}
        return {"epoch": self.epoch, "methods": list(self.methods), **values}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EmbeddingResult:
        layers: dict[str, LayerEmbedding] = {}
        seconds: dict[str, float] = {}
        for key, value in record.items():
            parts = key.split("/")
            if key in ("epoch", "methods", "worker_seconds"):
                continue
            if parts[0] == "projection_seconds" and len(parts) == 2:
                seconds[parts[1]] = value
                continue
            emb = layers.setdefault(parts[0], LayerEmbedding({}, {}))
            if len(parts) == 2 and parts[1] in _FEATURE_SCORES:
                emb.scores[parts[1]] = value
            elif len(parts) == 3 and parts[1] in METHODS and parts[2] in _FRAME_SCORES:
                emb.frame_scores.setdefault(parts[1], {})[parts[2]] = value
            else:
                raise ValueError(f"Unknown key {key!r} in an embedding record.")
        methods = tuple(record.get("methods", ()))
        return cls(int(record["epoch"]), methods, layers, seconds, record.get("worker_seconds"))

    def _wrong(self) -> np.ndarray:
        return self.predictions != self.labels

    def render(self) -> dict[str, np.ndarray]:
        """``<layer>/<method>``: the frame coloured by class, misclassified points as rings; ``depth/<method>``
        (several layers): all layers side by side. Empty for a result read back from its record."""
        if self.labels is None:
            return {}
        images, wrong, names = {}, self._wrong(), self.class_names
        for layer, emb in self.layers.items():
            for method, frame in emb.frames.items():
                title = f"{layer} / {method} / epoch {self.epoch}"
                images[f"{layer}/{method}"] = scatter_image(frame, self.labels, names, wrong=wrong, title=title)
        if len(self.layers) > 1:
            for method in self.methods:
                frames = {layer: emb.frames[method] for layer, emb in self.layers.items()}
                images[f"depth/{method}"] = depth_image(frames, self.labels, names, wrong=wrong)
        return images

    def arrays(self) -> dict[str, dict[str, Any]]:
        """``<layer>.npz``: ``ids``, ``labels``, ``predictions``, one aligned ``(N, 2)`` frame per method run,
        and ``features`` with ``save_features``."""
        if self.labels is None:
            return {}
        out = {}
        for layer, emb in self.layers.items():
            extra = {"features": emb.features} if self.save_features else {}
            out[layer] = {
                "ids": self.ids,
                "labels": self.labels,
                "predictions": self.predictions,
                **emb.frames,
                **extra,
            }
        return out

    def embeddings(self) -> dict[str, tuple[np.ndarray, list[str], list[str]]]:
        """``<layer>/<method>``: each aligned frame with the class names of its points' labels and predictions
        (a W&B table, for its 2-D projection panel)."""
        if self.labels is None:
            return {}
        names = self.class_names
        labels, predictions = [names[c] for c in self.labels], [names[c] for c in self.predictions]
        return {
            f"{layer}/{method}": (frame, labels, predictions)
            for layer, emb in self.layers.items()
            for method, frame in emb.frames.items()
        }

    def projector(self) -> tuple[dict[str, np.ndarray], dict[str, list]]:
        """The TensorBoard projector's tensors ``{<layer>@epoch<k>: features}`` and metadata columns."""
        names = self.class_names
        columns = {
            "id": self.ids.tolist(),
            "label": [names[c] for c in self.labels],
            "prediction": [names[c] for c in self.predictions],
            "correct": (~self._wrong()).tolist(),
        }
        return {f"{layer}@epoch{self.epoch}": emb.features for layer, emb in self.layers.items()}, columns

    def section(self) -> dict[str, Any]:
        """The report section: the feature and frame scores of each layer over epochs, each layer's frames and
        the depth view per epoch, and the fit-end animation pages (see :meth:`Result.section
        <trainviz.core.result.Result.section>`)."""
        layers, methods = list(self.layers), list(self.methods)
        scores = {
            "knn_accuracy": ("kNN accuracy", [0, 1.02]),
            "linear_probe_accuracy": ("Linear probe accuracy", [0, 1.02]),
            "silhouette": ("Silhouette", [-1, 1.02]),
        }
        curves: list[dict[str, Any]] = [
            {
                "title": title,
                "y": key,
                "y_range": y_range,
                "series": [{"name": layer, "key": [f"{layer}/{key}"]} for layer in layers],
            }
            for key, (title, y_range) in scores.items()
        ]
        for score in ("trustworthiness", "stability", "explained_variance"):
            series = [{"name": f"{layer} / {m}", "key": [f"{layer}/{m}/{score}"]} for layer in layers for m in methods]
            curves.append(
                {
                    "title": score.replace("_", " ").capitalize() + " of the 2-D frames",
                    "y": score,
                    "y_range": [0, 1.02],
                    "series": series,
                }
            )
        galleries: list[dict[str, Any]] = [
            {
                "title": f"Frames per layer ({m})",
                "description": "Each layer's 2-D frame coloured by class (rings: misclassified points).",
                "images": [f"{layer}/{m}" for layer in layers],
                "labels": layers,
                "maps": True,
            }
            for m in methods
        ]
        if len(layers) > 1:
            galleries.insert(
                0,
                {
                    "title": "Depth view",
                    "description": "Every layer side by side, per method.",
                    "images": [f"depth/{m}" for m in methods],
                    "labels": methods,
                },
            )
        return {
            "version": 1,
            "order": 20,
            "title": "Embeddings",
            "description": "Probe-set features of each layer projected to 2-D (aligned across epochs), with their "
            "neighbourhood and separability scores.",
            "curves": curves,
            "galleries": galleries,
            "files": [
                {
                    "title": "Animations",
                    "description": "Fit end: each layer's frames over epochs, and the depth view (one page each).",
                    "glob": "*.html",
                    "kind": "html",
                }
            ],
        }


# history ---------------------------------------------------------------------------------------------
class EmbeddingHistory:
    """The aligned frames and predictions of every run, and with ``keep_features`` the features (for
    AlignedUMAP); thread-safe (written by the worker, read by the checkpoint and the fit end)."""

    def __init__(self, keep_features: bool = False) -> None:
        self.keep_features = keep_features
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.frames: dict[tuple[str, str], dict[int, np.ndarray]] = {}  # (layer, method) -> {epoch: frame}
            self.predictions: dict[int, np.ndarray] = {}
            self.features: dict[str, dict[int, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:  # pickled with the Trainer by ddp_spawn: the lock stays behind
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def previous(self, layer: str, method: str) -> np.ndarray | None:
        with self._lock:
            history = self.frames.get((layer, method), {})
            return history[max(history)] if history else None

    def add(self, result: EmbeddingResult) -> None:
        with self._lock:
            self.predictions[result.epoch] = result.predictions
            for layer, emb in result.layers.items():
                for method, frame in emb.frames.items():
                    self.frames.setdefault((layer, method), {})[result.epoch] = frame
                if self.keep_features:
                    self.features.setdefault(layer, {})[result.epoch] = emb.features

    def recover(
        self, epoch: int, layer: str, data: Mapping[str, np.ndarray] | None, ids: np.ndarray, methods: Sequence[str]
    ) -> None:
        """Frames of ``methods`` and predictions of a run read back from its ``<layer>.npz`` (kept if already
        known; ignored when ``data`` is ``None`` or of another probe set)."""
        if data is None or not np.array_equal(data.get("ids"), ids):
            return
        with self._lock:
            for method in methods:
                if method in data:
                    self.frames.setdefault((layer, method), {}).setdefault(epoch, data[method].astype(np.float32))
            self.predictions.setdefault(epoch, data["predictions"])

    def snapshot(self) -> tuple[dict[tuple[str, str], dict[int, np.ndarray]], dict[int, np.ndarray]]:
        with self._lock:
            return {key: dict(fr) for key, fr in self.frames.items() if fr}, dict(self.predictions)

    def feature_snapshot(self) -> dict[str, dict[int, np.ndarray]]:
        with self._lock:
            return {layer: dict(per_epoch) for layer, per_epoch in self.features.items()}

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            frames = [
                [layer, method, e, torch.from_numpy(f.copy())]
                for (layer, method), fr in self.frames.items()
                for e, f in fr.items()
            ]
            predictions = {e: torch.from_numpy(p.copy()) for e, p in self.predictions.items()}
            return {"frames": frames, "predictions": predictions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.clear()
        with self._lock:
            for layer, method, epoch, frame in state.get("frames", []):
                self.frames.setdefault((layer, method), {})[int(epoch)] = frame.numpy().astype(np.float32)
            self.predictions = {int(e): p.numpy() for e, p in (state.get("predictions") or {}).items()}


# computation (background thread) -------------------------------------------------------------------
def _feature_scores(x: np.ndarray, labels: np.ndarray, config: EmbeddingConfig) -> dict[str, float]:
    n, counts = len(labels), np.bincount(labels)
    counts = counts[counts > 0]
    out = {"knn_accuracy": knn_accuracy(torch.from_numpy(x), labels, k=min(5, n - 1))}
    if 2 <= len(counts) <= n - 1:
        out["silhouette"] = silhouette(x, labels)
        if config.linear_probe_folds and counts.min() >= 2:
            folds = config.linear_probe_folds
            out["linear_probe_accuracy"] = linear_probe_accuracy(x, labels, seed=config.seed, n_splits=folds)
    return out


def _frame(method: str, x: np.ndarray, prev: np.ndarray | None, config: EmbeddingConfig) -> tuple[np.ndarray, dict]:
    """The method's frame of ``x``, warm-started from ``prev``, centred and scaled to an RMS radius of 1 (so
    frames neither grow nor shrink over epochs: early features are tiny), then rotated onto ``prev``; with its
    stability against ``prev`` and, for PCA, the explained variance."""
    scores: dict[str, float] = {}
    if method == "pca":
        projected, ratio = pca(torch.from_numpy(x), 2, return_variance=True)
        raw, variance = projected.numpy(), float(ratio.sum())
    elif method == "umap":
        raw, variance = (
            umap_embed(x, init="spectral" if prev is None else prev, seed=config.seed, n_neighbors=config.n_neighbors),
            None,
        )
    else:
        raw, variance = (
            tsne(x, init="pca" if prev is None else prev, seed=config.seed, perplexity=config.perplexity),
            None,
        )
    frame = unit_radius(raw)
    if prev is not None:
        frame = procrustes_align(frame, prev).astype(np.float32)
    scores["trustworthiness"] = trustworthiness(x, frame, n_neighbors=min(_TRUST_K, (len(x) - 1) // 2))
    if prev is not None:
        scores["stability"] = frame_stability(prev, frame)
    if variance is not None:
        scores["explained_variance"] = variance
    return frame, scores


def compute(
    epoch: int,
    captured: Captured,
    probe: ProbeSet,
    config: EmbeddingConfig,
    history: EmbeddingHistory,
    methods: Sequence[str] | None = None,
) -> EmbeddingResult:
    """Scores and frames of one run's features (``methods``: those to run, default all of ``config``), each
    frame aligned to the method's previous one in ``history`` (read, not written).

    Raises:
        ValueError: features that the projections or scores reject (too few points, NaN, ...).
        ImportError: UMAP without umap-learn.
    """
    start = time.perf_counter()
    methods = tuple(config.methods if methods is None else methods)
    labels, ids = probe_arrays(probe)
    preds = captured.predictions
    names = class_names(probe.class_names, max(int(labels.max()), int(preds.max())) + 1)
    seconds = dict.fromkeys(methods, 0.0)
    layers = {}
    for layer, x in captured.features.items():
        emb = LayerEmbedding(_feature_scores(x, labels, config), {}, features=x)
        for method in methods:
            t0 = time.perf_counter()
            emb.frames[method], emb.frame_scores[method] = _frame(method, x, history.previous(layer, method), config)
            seconds[method] += time.perf_counter() - t0
        layers[layer] = emb
    return EmbeddingResult(
        epoch, methods, layers, seconds, time.perf_counter() - start, ids, labels, preds, names, config.save_features
    )


def probe_arrays(probe: ProbeSet) -> tuple[np.ndarray, np.ndarray]:
    """The probe set's labels and ids as int64 arrays (one transfer)."""
    arrays = to_cpu({"labels": probe.labels, "ids": probe.ids})
    return arrays["labels"].astype(np.int64), arrays["ids"].astype(np.int64)


def animations(
    frames: Mapping[tuple[str, str], Mapping[int, np.ndarray]], predictions: Mapping[int, np.ndarray], probe: ProbeSet
) -> dict[str, str]:
    """The fit-end pages of the frames ``{(layer, method): {epoch: frame}}`` (see
    :func:`~trainviz.render.embedding.animation_pages`)."""
    labels, ids = probe_arrays(probe)
    names = class_names(probe.class_names, max([int(labels.max())] + [int(p.max()) for p in predictions.values()]) + 1)
    return animation_pages(frames, labels, ids, names, predictions=predictions)


def aligned_frames(history: EmbeddingHistory, config: EmbeddingConfig) -> dict[str, dict[int, np.ndarray]]:
    """AlignedUMAP (umap-learn) over all epochs of each layer with features from two runs on: ``{layer: {epoch:
    frame}}``."""
    out = {}
    for layer, per_epoch in history.feature_snapshot().items():
        epochs = sorted(per_epoch)
        if len(epochs) >= 2:
            joint = aligned_umap([per_epoch[e] for e in epochs], seed=config.seed, n_neighbors=config.n_neighbors)
            out[layer] = dict(zip(epochs, joint))
    return out


# the worker ----------------------------------------------------------------------------------------
def _warmup(approximate: bool) -> None:
    try:
        warmup_umap(approximate=approximate)
    except Exception:  # the first real UMAP fails the same way, and is reported then
        pass


class EmbeddingWorker:
    """The one background thread of the projections: jobs run in order; when the features waiting exceed
    ``max_pending_bytes`` the submitting thread waits for the oldest job; errors are kept for
    :meth:`errors`; ``slow_cost`` is the seconds of the last job with UMAP/t-SNE (what the budget plans with).
    Without :meth:`start` (a direct call) jobs run inline. :meth:`counts` says how many jobs run and wait; a
    ``progress(done, total, note)`` given to :meth:`submit` and :meth:`wait` (:data:`trainviz.core.progress.Reporter`)
    is told them while the training thread waits for the worker."""

    def __init__(self, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.max_pending_bytes = max_pending_bytes
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: list[tuple[Future, bool, int]] = []  # (job, runs UMAP/t-SNE, bytes of its features)
        self._errors: list[tuple[int, Exception]] = []
        self.slow_cost: float | None = None

    def __getstate__(self) -> dict[str, Any]:  # pickled with the Trainer by ddp_spawn: threads stay behind
        return {"max_pending_bytes": self.max_pending_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, **state)

    def start(self, warmup: bool = False, approximate: bool = True) -> None:
        """Open the thread; with ``warmup``, compile umap-learn's numba code on it first."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainviz-embedding")
        if warmup:
            self._executor.submit(_warmup, approximate)

    def busy_slow(self) -> bool:
        """Whether a submitted UMAP/t-SNE job is still running or queued."""
        return any(slow and not future.done() for future, slow, _ in self._jobs)

    def counts(self) -> tuple[int, int]:
        """``(running, pending)``: submitted jobs running on the worker, and queued behind it."""
        live = [future for future, _, _ in self._jobs if not future.done()]
        running = sum(1 for future in live if future.running())
        return running, len(live) - running

    def _report(self, progress: Callable[[int, int | None, str], None] | None, done: int, total: int | None) -> None:
        if progress is not None:
            running, pending = self.counts()
            progress(done, total, f"embedding worker: {running} running, {pending} pending")

    def _await(
        self, future: Future, progress: Callable[[int, int | None, str], None] | None, done: int, total: int | None
    ) -> None:
        """Wait for ``future``, telling ``progress`` the queue now and every quarter of a second."""
        if progress is not None:
            finished = threading.Event()
            future.add_done_callback(lambda _: finished.set())
            while not finished.is_set():
                self._report(progress, done, total)
                finished.wait(0.25)
        future.result()

    def submit(
        self,
        epoch: int,
        job: Callable[[], None],
        nbytes: int,
        slow: bool,
        charge: Callable[[float], None],
        inline_when_idle: bool = False,
        progress: Callable[[int, int | None, str], None] | None = None,
    ) -> None:
        """Queue ``job`` (``nbytes`` of features, ``slow``: with UMAP/t-SNE); run it on the calling thread
        without a started worker, or with ``inline_when_idle`` when nothing is queued. ``charge(seconds)`` books
        the seconds of a job that ran on the worker; ``progress`` hears the queue while the call waits."""
        self._jobs = [j for j in self._jobs if not j[0].done()]
        while self._jobs and sum(j[2] for j in self._jobs) + nbytes > self.max_pending_bytes:
            self._await(self._jobs[0][0], progress, 0, None)  # the worker is far behind: wait rather than pile up
            self._jobs.pop(0)
        if self._executor is None or (inline_when_idle and not self._jobs):
            self._run(epoch, job, slow, None)
            return
        self._jobs.append((self._executor.submit(self._run, epoch, job, slow, charge), slow, nbytes))

    def _run(self, epoch: int, job: Callable[[], None], slow: bool, charge: Callable[[float], None] | None) -> None:
        start = time.perf_counter()
        try:
            with background_threads():
                job()
        except Exception as err:  # reported on the training thread (warn once, or raise with strict)
            with self._lock:
                self._errors.append((epoch, err))
        finally:
            seconds = time.perf_counter() - start
            if slow:
                self.slow_cost = seconds
            if charge is not None:  # inline work is in the training thread's timing already
                charge(seconds)

    def errors(self) -> list[tuple[int, Exception]]:
        """The errors of finished jobs since the last call, ``[(epoch, error)]``."""
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def wait(self, progress: Callable[[int, int | None, str], None] | None = None) -> None:
        """Wait for every submitted job; ``progress(finished, jobs, note)`` hears the queue meanwhile."""
        jobs = [j for j in self._jobs if not j[0].done()]
        for done, (future, _, _) in enumerate(jobs):
            self._await(future, progress, done, len(jobs))
        if progress is not None and jobs:
            progress(len(jobs), len(jobs), "embedding jobs done")
        self._jobs = []

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._jobs = []
