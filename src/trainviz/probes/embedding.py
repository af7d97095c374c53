"""Layers as embeddings (Fleuret's EE-559 lecture "Layers as embeddings"): the features of a fixed probe set at
one or more layers, projected to 2-D, kept comparable across epochs and scored.

:class:`EmbeddingOptions` are the user options, declared once. :class:`EmbeddingProbe` follows the compute
contract (:mod:`trainviz.core.contract`): ``plan`` (which methods run: PCA every run, UMAP and t-SNE when due and
affordable), ``compute`` (:func:`capture` of a share of the probe set, torch, on the training thread: one forward
per probe batch with hooks on every layer, each activation reduced by
:func:`~trainviz.ops.embedding.pool_features`), ``merge`` (the shares' features and predictions in probe order,
:class:`Captured`); the projections then follow on a background thread (:meth:`EmbeddingProbe.project`, on
:func:`compute`, numpy): per layer, the feature scores (leave-one-out k-NN accuracy, silhouette, optionally a
cross-validated linear probe) and one 2-D frame per method, PCA, UMAP (McInnes et al. 2018) or t-SNE (van der
Maaten & Hinton 2008), warm-started from the method's previous frame, centred, scaled to an RMS radius of 1 and
rotated onto that previous frame by orthogonal Procrustes (Schonemann 1966), with its trustworthiness (Venna &
Kaski 2001) and its stability against the previous frame. The outcome is one :class:`EmbeddingResult`.

The dear scores, :data:`DEAR_SCORES` (the linear probe and the frames' trustworthiness: most of a PCA run's
background seconds), are amortised: they run every ``scores_every``-th run, at the first and at the last, and
under a budget they are the first thing a short credit drops; the plan says whether they run
(:attr:`EmbeddingPlan.scores`) and so does the record (``scores``, and the dear scores absent when they did not).

:class:`EmbeddingHistory` keeps the frames (the warm starts, the checkpoint, the fit-end animations) and
:class:`EmbeddingWorker` is the background thread the projections run on.

Example:
    >>> import torch
    >>> from trainviz.core.probeset import ProbeSet
    >>> from trainviz.models import DemoClassifier
    >>> model = DemoClassifier(num_classes=3, in_channels=3).eval()
    >>> probe = ProbeSet(torch.rand(12, 3, 32, 32), torch.arange(12) % 3, torch.arange(12))
    >>> options = EmbeddingOptions(methods="pca", linear_probe_folds=0)
    >>> layers = {"net.fc": model.net.fc}
    >>> features, logits = capture(model, layers, probe.images, options)
    >>> captured = Captured.from_tensors(features, logits)
    >>> result = compute(0, captured, probe, options, EmbeddingHistory())
    >>> result.layers["net.fc"].frames["pca"].shape, sorted(result.render())
    ((12, 2), ['net.fc/pca'])

    The same run on the contract, the probe set in two shares:

    >>> from trainviz.core.contract import Credit, Share
    >>> prober = EmbeddingProbe(probe, options, layers=layers)
    >>> plan = prober.plan(Credit(epoch=0))
    >>> merged = prober.merge([prober.compute(model, s, plan, None) for s in Share.split(probe, 2)], plan)
    >>> bool(np.allclose(merged.features["net.fc"], captured.features["net.fc"], atol=1e-6)), plan.methods
    (True, ('pca',))
    >>> prober.project(merged, plan).layers["net.fc"].frames["pca"].shape
    (12, 2)
    >>> EmbeddingResult.from_record(result.record()).record() == result.record()
    True

    Without the dear scores the frames and the other scores are the same, and the record says so:

    >>> cheap = compute(0, captured, probe, options, EmbeddingHistory(), scores=False)
    >>> cheap.record()["scores"], "net.fc/pca/trustworthiness" in cheap.record(), cheap.scores_seconds
    (False, False, None)
    >>> bool(np.array_equal(cheap.layers["net.fc"].frames["pca"], result.layers["net.fc"].frames["pca"]))
    True
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from trainviz.core.checks import check_bool, check_float, check_int, check_layers, check_positive_int
from trainviz.core.common import class_names, json_number
from trainviz.core.contract import Credit, Probe, Share
from trainviz.core.hooks import capture as capture_activations
from trainviz.core.layers import Layout, find_last_spatial_layer, model_layout
from trainviz.core.options import Options
from trainviz.core.probeset import ProbeSet
from trainviz.core.result import Result
from trainviz.core.threads import ACTIVITY, background_threads, contention
from trainviz.core.transfer import to_cpu
from trainviz.ops.embedding import (
    MIN_EMBED_POINTS,
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
from trainviz.probes.embedding_names import NAMES
from trainviz.render.embedding import animation_pages, depth_image, scatter_image

__all__ = [
    "DEAR_SCORES",
    "FIRST_SLOW_SECONDS",
    "MAX_PENDING_BYTES",
    "MAX_POINTS",
    "METHODS",
    "MIN_EMBED_POINTS",
    "Captured",
    "EmbeddingHistory",
    "EmbeddingOptions",
    "EmbeddingPartial",
    "EmbeddingPlan",
    "EmbeddingProbe",
    "import_scores",
    "EmbeddingResult",
    "EmbeddingWorker",
    "LayerEmbedding",
    "aligned_frames",
    "animations",
    "capture",
    "check_methods",
    "check_setting",
    "resolve_layers",
    "compute",
    "probe_arrays",
]

METHODS: tuple[str, ...] = ("pca", "umap", "tsne")
MAX_POINTS = 10_000
"""Largest probe set (UMAP/t-SNE cost, the projector's in-browser limits)."""
MAX_PENDING_BYTES = 256 * 2**20
"""Features waiting for the worker beyond which the training thread waits for the oldest job (bounds memory)."""
FIRST_SLOW_SECONDS = 25.0
"""Budget estimate of a first UMAP or t-SNE job (UMAP: ~18 s of numba compilation)."""
_TRUST_K = 5  # neighbours of the trustworthiness score
DEAR_SCORES: tuple[str, ...] = ("linear_probe_accuracy", "trustworthiness")
"""The scores amortised by ``scores_every`` and dropped first under a budget. Measured on the worker's one thread
(random 256-D features, 6 classes, 2 cores): at 64 and 256 points the 3-fold linear probe took ~20 ms, kNN, the
silhouette, trustworthiness and PCA 0.6-5 ms each; at 2,000 points (the default probe size before 512) one
frame's trustworthiness ~0.17 s, the silhouette ~0.05 s, the linear probe ~0.04 s (0.25 s in BENCHMARKS.md), kNN
~0.02 s, PCA ~0.006 s. A PCA run of one layer without them: 2 ms instead of 21 (64 points), 85 ms instead of 293
(2,000)."""
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


@dataclass(frozen=True, kw_only=True)
class EmbeddingOptions(Options):
    """The options of the embedding probe, declared once (the callback's keyword arguments, its YAML preset, the
    probe); see :class:`~trainviz.callbacks.embedding.EmbeddingCallback` for each.

    Raises:
        ValueError: an option of the wrong type or out of range (the message names it, and the valid methods).
    """

    layers: Sequence[str] | str = ("auto",)
    methods: Sequence[str] | str = ("pca", "umap")
    slow_every_k: int = 2
    aligned_umap_at_end: bool = False
    probe_size: int | None = None
    max_dim: int = 4096
    n_neighbors: int = 15
    perplexity: float = 30.0
    linear_probe_folds: int = 3
    scores_every: int = 1
    save_features: bool = False
    projector: bool = True
    html: bool = True
    batch_size: int = 64

    def check(self) -> None:
        size = self.probe_size
        if size is not None and check_int("probe_size", size, minimum=1) > MAX_POINTS:
            raise ValueError(f"Expected `probe_size` to be at most {MAX_POINTS}, got {size}.")
        self.set(
            layers=check_layers("layers", self.layers),
            methods=check_methods(self.methods),
            slow_every_k=check_int("slow_every_k", self.slow_every_k, minimum=1),
            scores_every=check_int("scores_every", self.scores_every, minimum=1),
            aligned_umap_at_end=check_bool("aligned_umap_at_end", self.aligned_umap_at_end),
            projector=check_bool("projector", self.projector),
            html=check_bool("html", self.html),
        )
        check_positive_int("max_dim", self.max_dim)
        check_int("n_neighbors", self.n_neighbors, minimum=2)
        self.set(perplexity=check_float("perplexity", self.perplexity, 0, strict_minimum=True))
        folds = self.linear_probe_folds
        if isinstance(folds, bool) or not isinstance(folds, int) or folds == 1 or folds < 0:
            raise ValueError(f"Expected `linear_probe_folds` to be 0 (off) or an int >= 2, got {folds!r}.")
        check_bool("save_features", self.save_features)
        check_positive_int("batch_size", self.batch_size)

    @property
    def slow_methods(self) -> tuple[str, ...]:
        """UMAP and t-SNE among the methods (PCA runs every time)."""
        return tuple(m for m in self.methods if m != "pca")


def check_setting(options: EmbeddingOptions, points: int) -> None:
    """Fit start: enough probe points for UMAP/t-SNE (5), and umap-learn for UMAP.

    Raises:
        ValueError: too few probe points. ImportError: UMAP without umap-learn.
    """
    slow = [*options.slow_methods] + (["aligned UMAP"] if options.aligned_umap_at_end else [])
    if slow and points < MIN_EMBED_POINTS:
        raise ValueError(f"{', '.join(slow)} need at least {MIN_EMBED_POINTS} probe points, got {points}.")
    if uses_umap(options) and importlib.util.find_spec("umap") is None:
        raise ImportError("EmbeddingCallback with UMAP needs umap-learn: pip install umap-learn")


def uses_umap(options: EmbeddingOptions) -> bool:
    return "umap" in options.methods or options.aligned_umap_at_end


def resolve_layers(
    model: torch.nn.Module, example: torch.Tensor, specs: Sequence[str]
) -> tuple[list[str], Layout, str | None]:
    """The layer names with ``"auto"`` resolved (the last module with a feature-map output; on a transformer its
    final norm, class token or mean patch token, not a CAM layer), the model's layout, and what ``"auto"`` became."""
    layout = model_layout(model, example)
    auto = find_last_spatial_layer(model, example, layout, gradient=False) if "auto" in specs else None
    return list(dict.fromkeys(auto if s == "auto" else s for s in specs)), layout, auto


# capture (training thread) ---------------------------------------------------------------------------
def capture(
    model: torch.nn.Module,
    layers: Mapping[str, torch.nn.Module],
    images: torch.Tensor,
    options: EmbeddingOptions,
    layout: Layout | None = None,
    *,
    seed: int = 0,
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
    reduce = pooler(options, layout, seed)
    with torch.no_grad(), capture_activations(model, layers) as acts:
        for start in range(0, images.shape[0], options.batch_size):
            acts.clear()
            logits.append(model(images[start : start + options.batch_size]).detach())
            for name in layers:
                if name not in acts:
                    raise ValueError(f"Layer {name!r} returned no tensor during the forward pass: pick another layer.")
                feats[name].append(reduce(name, acts[name]))
    return {name: torch.cat(parts) for name, parts in feats.items()}, torch.cat(logits)


def pooler(
    options: EmbeddingOptions, layout: Layout | None = None, seed: int = 0
) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """``reduce(layer name, a batch's output) -> (B, D)`` pooled features, as :func:`capture` keeps them (also the
    embedding's reducer in the shared clean forward, :mod:`trainviz.core.clean_forward`)."""

    def reduce(name: str, act: torch.Tensor) -> torch.Tensor:
        return pool_features(act if layout is None else layout.pool(act), options.max_dim, seed=seed)

    return reduce


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
    ``linear_probe_accuracy`` (with folds, when the dear scores ran); ``frame_scores[method]``: ``trustworthiness``
    (when the dear scores ran), ``stability`` (from the method's second frame), ``explained_variance`` (PCA).
    ``frames`` and ``features`` are not recorded."""

    scores: dict[str, float]
    frame_scores: dict[str, dict[str, float]]
    _: KW_ONLY
    frames: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    features: np.ndarray | None = field(default=None, repr=False)

    def flat(self) -> dict[str, float]:
        out = dict(self.scores)
        for method, scores in self.frame_scores.items():
            out.update({f"{method}/{name}": value for name, value in scores.items()})
        return out


@dataclass(kw_only=True)
class EmbeddingResult(Result):
    """One run of the embedding probe.

    Record (``embedding/metrics.jsonl``, one flat object per run): ``epoch``; ``methods`` (those run);
    ``scores`` (whether the dear scores, :data:`DEAR_SCORES`, ran: when not, their keys are absent);
    ``<layer>/<score>`` for each score of :class:`LayerEmbedding`, ``<layer>/<method>/<frame score>``;
    ``projection_seconds/<method>`` (all layers); ``worker_seconds`` (the projections and scores of the run).
    Non-finite numbers are ``null``. The same names (all but ``methods`` and ``scores``) are the logged scalars.
    ``scores_seconds`` (not recorded: what the plan estimates the dear scores with) is their seconds, all layers
    and frames, ``None`` when they did not run.
    """

    record_name: ClassVar[str] = "metrics"
    epoch: int
    methods: tuple[str, ...]
    layers: dict[str, LayerEmbedding]
    projection_seconds: dict[str, float]
    worker_seconds: float
    scores: bool = True
    scores_seconds: float | None = None
    ids: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)
    predictions: np.ndarray | None = field(default=None, repr=False)
    class_names: list[str] = field(default_factory=list, repr=False)
    save_features: bool = False

    def scalars(self) -> dict[str, float | None]:
        """The metrics of :data:`~trainviz.probes.embedding_names.NAMES`, by their names."""
        out: dict[str, float | None] = {}
        for layer, emb in self.layers.items():
            out.update({f"{layer}/{key}": value for key, value in emb.flat().items()})
        out.update({f"projection_seconds/{m}": s for m, s in self.projection_seconds.items()})
        out["worker_seconds"] = self.worker_seconds
        return out

    def record(self) -> dict[str, Any]:
        values = {key: json_number(value) for key, value in self.scalars().items()}
        return {"epoch": self.epoch, "methods": list(self.methods), "scores": self.scores, **values}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EmbeddingResult:
        layers: dict[str, LayerEmbedding] = {}
        seconds: dict[str, float] = {}
        for key, value in record.items():
            parts = key.split("/")
            if key in ("epoch", "methods", "scores", "worker_seconds"):
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
        return cls(
            epoch=int(record["epoch"]),
            methods=methods,
            layers=layers,
            projection_seconds=seconds,
            worker_seconds=record.get("worker_seconds"),
            scores=bool(record.get("scores", True)),  # records from before the amortised scores had them every run
        )

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
        """The report section: the feature and frame scores of each layer over epochs (the dear scores' curves
        joined across the runs without them), each layer's frames and the depth view per epoch, and the fit-end
        animation pages (see :meth:`Result.section <trainviz.core.result.Result.section>`)."""
        layers, methods = list(self.layers), list(self.methods)
        scores = {"knn_accuracy": [0, 1.02], "linear_probe_accuracy": [0, 1.02], "silhouette": [-1, 1.02]}
        named = {key: NAMES[f"{{layer}}/{key}"] for key in scores}  # titles and descriptions: the name table
        curves: list[dict[str, Any]] = [
            {
                "title": named[key].heading,
                "description": named[key].text,
                "y": key,
                "y_range": y_range,
                "series": [{"name": layer, "key": [f"{layer}/{key}"]} for layer in layers],
                **({"connect_gaps": True} if key in DEAR_SCORES else {}),
            }
            for key, y_range in scores.items()
        ]
        for score in ("trustworthiness", "stability", "explained_variance"):
            series = [{"name": f"{layer} / {m}", "key": [f"{layer}/{m}/{score}"]} for layer in layers for m in methods]
            frame = NAMES[f"{{layer}}/{{method}}/{score}"]
            curves.append(
                {
                    "title": frame.heading,
                    "description": frame.text,
                    "y": score,
                    "y_range": [0, 1.02],
                    "series": series,
                    **({"connect_gaps": True} if score in DEAR_SCORES else {}),
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
def _class_counts(labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels)
    return counts[counts > 0]


def _feature_scores(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The cheap feature scores: k-NN accuracy and the silhouette (2 to N-1 classes)."""
    n, counts = len(labels), _class_counts(labels)
    out = {"knn_accuracy": knn_accuracy(torch.from_numpy(x), labels, k=min(5, n - 1))}
    if 2 <= len(counts) <= n - 1:
        out["silhouette"] = silhouette(x, labels)
    return out


def _linear_probe(x: np.ndarray, labels: np.ndarray, options: EmbeddingOptions, seed: int) -> dict[str, float]:
    """The dear feature score: the linear probe (with folds, 2 to N-1 classes of 2 points or more)."""
    n, counts = len(labels), _class_counts(labels)
    if not options.linear_probe_folds or not 2 <= len(counts) <= n - 1 or counts.min() < 2:
        return {}
    return {"linear_probe_accuracy": linear_probe_accuracy(x, labels, seed=seed, n_splits=options.linear_probe_folds)}


def import_scores() -> None:
    """scikit-learn's modules of the scores, imported before they are timed (and, by the callback, at fit start):
    the first run's imports (about 1 s, most of it ``sklearn.metrics`` for the silhouette) are not what a run costs,
    and a budget would otherwise skip the next runs for them."""
    import sklearn.linear_model  # noqa: F401
    import sklearn.manifold  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import sklearn.preprocessing  # noqa: F401


def _frame(
    method: str, x: np.ndarray, prev: np.ndarray | None, options: EmbeddingOptions, seed: int
) -> tuple[np.ndarray, dict]:
    """The method's frame of ``x``, warm-started from ``prev``, centred and scaled to an RMS radius of 1 (so
    frames neither grow nor shrink over epochs: early features are tiny), then rotated onto ``prev``; with its
    stability against ``prev`` and, for PCA, the explained variance (the trustworthiness, a dear score, is
    :func:`compute`'s)."""
    scores: dict[str, float] = {}
    if method == "pca":
        projected, ratio = pca(torch.from_numpy(x), 2, return_variance=True)
        raw, variance = projected.numpy(), float(ratio.sum())
    elif method == "umap":
        raw, variance = (
            umap_embed(x, init="spectral" if prev is None else prev, seed=seed, n_neighbors=options.n_neighbors),
            None,
        )
    else:
        raw, variance = (
            tsne(x, init="pca" if prev is None else prev, seed=seed, perplexity=options.perplexity),
            None,
        )
    frame = unit_radius(raw)
    if prev is not None:
        frame = procrustes_align(frame, prev).astype(np.float32)
    if prev is not None:
        scores["stability"] = frame_stability(prev, frame)
    if variance is not None:
        scores["explained_variance"] = variance
    return frame, scores


def compute(
    epoch: int,
    captured: Captured,
    probe: ProbeSet,
    options: EmbeddingOptions,
    history: EmbeddingHistory,
    methods: Sequence[str] | None = None,
    *,
    seed: int = 0,
    scores: bool = True,
) -> EmbeddingResult:
    """Scores and frames of one run's features (``methods``: those to run, default all of ``options``), each
    frame aligned to the method's previous one in ``history`` (read, not written); with ``scores`` the dear
    scores too (:data:`DEAR_SCORES`, timed: the result's ``scores_seconds``), without them neither the frames nor
    the other scores change.

    Raises:
        ValueError: features that the projections or scores reject (too few points, NaN, ...).
        ImportError: UMAP without umap-learn.
    """
    start = time.perf_counter()
    methods = tuple(options.methods if methods is None else methods)
    labels, ids = probe_arrays(probe)
    preds = captured.predictions
    names = class_names(probe.class_names, max(int(labels.max()), int(preds.max())) + 1)
    seconds = dict.fromkeys(methods, 0.0)
    dear = 0.0  # seconds of the dear scores
    if scores:
        import_scores()
    layers = {}
    for layer, x in captured.features.items():
        emb = LayerEmbedding(_feature_scores(x, labels), {}, features=x)
        if scores:
            t0 = time.perf_counter()
            emb.scores.update(_linear_probe(x, labels, options, seed))
            dear += time.perf_counter() - t0
        for method in methods:
            t0 = time.perf_counter()
            prev = history.previous(layer, method)
            emb.frames[method], frame_scores = _frame(method, x, prev, options, seed)
            seconds[method] += time.perf_counter() - t0
            if scores:
                t0 = time.perf_counter()
                trust = trustworthiness(x, emb.frames[method], n_neighbors=min(_TRUST_K, (len(x) - 1) // 2))
                frame_scores = {"trustworthiness": trust, **frame_scores}
                dear += time.perf_counter() - t0
            emb.frame_scores[method] = frame_scores
        layers[layer] = emb
    return EmbeddingResult(
        epoch=epoch,
        methods=methods,
        layers=layers,
        projection_seconds=seconds,
        worker_seconds=time.perf_counter() - start,
        scores=scores,
        scores_seconds=dear if scores else None,
        ids=ids,
        labels=labels,
        predictions=preds,
        class_names=names,
        save_features=options.save_features,
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


def aligned_frames(
    history: EmbeddingHistory, options: EmbeddingOptions, *, seed: int = 0
) -> dict[str, dict[int, np.ndarray]]:
    """AlignedUMAP (umap-learn) over all epochs of each layer with features from two runs on: ``{layer: {epoch:
    frame}}``."""
    out = {}
    for layer, per_epoch in history.feature_snapshot().items():
        epochs = sorted(per_epoch)
        if len(epochs) >= 2:
            joint = aligned_umap([per_epoch[e] for e in epochs], seed=seed, n_neighbors=options.n_neighbors)
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

    def __init__(self, max_pending_bytes: int = MAX_PENDING_BYTES, owner: str = "embedding") -> None:
        self.max_pending_bytes = max_pending_bytes
        self.owner = owner  # whose work it is, for the overhead budget (trainviz.core.threads.ACTIVITY)
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: list[tuple[Future, bool, int]] = []  # (job, runs UMAP/t-SNE, bytes of its features)
        self._errors: list[tuple[int, Exception]] = []
        self.slow_cost: float | None = None

    def __getstate__(self) -> dict[str, Any]:  # pickled with the Trainer by ddp_spawn: threads stay behind
        return {"max_pending_bytes": self.max_pending_bytes, "owner": self.owner}

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
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            with background_threads(), ACTIVITY.working(self.owner):
                job()
        except Exception as err:  # reported on the training thread (warn once, or raise with strict)
            with self._lock:
                self._errors.append((epoch, err))
        finally:
            if slow:
                self.slow_cost = time.perf_counter() - start
            if charge is not None:  # its CPU seconds (inline work is in the training thread's timing already)
                charge(time.thread_time() - cpu)

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


# the compute contract --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbeddingPlan:
    """What a run projects and scores (plain data): the ``methods`` of its frames (PCA, and UMAP/t-SNE when due
    and affordable) and whether the dear ``scores`` (:data:`DEAR_SCORES`) run; the capture itself always runs."""

    epoch: int
    methods: tuple[str, ...]
    scores: bool = True

    @property
    def slow(self) -> bool:
        """Whether UMAP or t-SNE runs."""
        return any(m != "pca" for m in self.methods)


@dataclass
class EmbeddingPartial:
    """One share's capture: ``features`` ``{layer: (n, D)}`` float32 and ``predictions`` ``(n,)`` int64, CPU
    (``n`` may be 0)."""

    features: dict[str, torch.Tensor]
    predictions: torch.Tensor


class EmbeddingProbe(Probe[EmbeddingPlan, EmbeddingPartial, Captured]):
    """The embedding probe on the compute contract: :meth:`compute` captures a share of the probe set,
    :meth:`merge` puts the shares in probe order (:class:`Captured`), and :meth:`submit` hands the projections
    to the background worker (:meth:`project`: one :class:`EmbeddingResult`, added to the history, then written).

    Args:
        probe: the whole probe set.
        options: the user options.
        layers: ``{name: module}`` of the resolved layers.
        layout: the model's layout (:func:`~trainviz.core.layers.model_layout`), for token and channels-last layers.
        seed: the seed of the random projection, the linear probe, UMAP and t-SNE.
        history: the earlier frames (warm starts, alignment); a new one when not given.
        worker: the background thread of the projections; a new one (jobs inline until started) when not given.
    """

    def __init__(
        self,
        probe: ProbeSet,
        options: EmbeddingOptions,
        *,
        layers: Mapping[str, torch.nn.Module],
        layout: Layout | None = None,
        seed: int = 0,
        history: EmbeddingHistory | None = None,
        worker: EmbeddingWorker | None = None,
    ) -> None:
        super().__init__(probe)
        self.options, self.layers, self.layout, self.seed = options, dict(layers), layout, seed
        self.history = EmbeddingHistory(options.aligned_umap_at_end) if history is None else history
        self.worker = EmbeddingWorker() if worker is None else worker
        self.cost: float | None = None  # seconds of the last capture (this process's share)
        # seconds of the last run on the training thread without the dear scores (set by the callback): the price of
        # the least run (capture, merge, PCA inline), else the capture's
        self.run_cost: float | None = None
        self.scores_cost: dict[tuple[str, ...], float] = {}  # seconds of the last dear scores, by the run's methods
        self.skipped: list[tuple[str, str]] = []  # what the last plan left out, and why
        self._slow_owed = False  # UMAP/t-SNE due but postponed (the worker was busy)
        self._scores_owed = False  # the dear scores due but dropped (the credit was short)

    def plan(self, credit: Credit, *, runs: int = 0, last: bool = False) -> EmbeddingPlan | None:
        """The capture and PCA when the last capture (or, once known, the last run without the dear scores:
        ``run_cost``) fits the credit or the run is essential; UMAP and t-SNE
        when their estimated cost (the last slow job's seconds, else a first-call estimate that includes numba's
        compilation) fits too, and they are due: every ``slow_every_k`` runs (``runs``: those done) and at the
        ``last`` epoch, postponed to the next run while the worker still runs an earlier one's. The dear scores
        (:data:`DEAR_SCORES`) are due every ``scores_every`` runs and at the ``last`` epoch; they run when their
        measured seconds (``scores_cost``: the last run's with the same methods, else the dearest, none before the
        first run) fit what the capture and UMAP/t-SNE leave of the credit, else they are dropped first, before
        UMAP/t-SNE and the run, and owed to the next run. An essential run is never skipped."""
        self.skipped = []
        slow_methods, affordable = self.options.slow_methods, True
        left: float | None = None  # seconds of the credit after the capture
        slow_estimate: float | None = None  # what UMAP/t-SNE would take of it
        if credit.seconds is not None:
            capture_cost = self.run_cost if self.run_cost is not None else (self.cost or 0.0)
            if not credit.essential and capture_cost > credit.seconds:
                what = "capture" if self.run_cost is None else "its last run without the dear scores"
                self.skipped = [("run", f"{what} took {capture_cost:.2f} s, credit {credit.seconds:.2f} s")]
                return None
            left = credit.seconds - capture_cost
            if slow_methods:
                raw = self.worker.slow_cost
                raw = FIRST_SLOW_SECONDS * len(slow_methods) if raw is None else raw
                slow_estimate = raw * contention()  # the prior for its cost to training; the batches measure it
                if slow_estimate > left:
                    reason = f"estimated {slow_estimate:.1f} s, credit {left:.2f} s"
                    self.skipped, affordable = [("+".join(slow_methods), reason)], False
        slow = affordable and self._slow_due(runs, last)
        methods = tuple(self.options.methods) if slow else tuple(m for m in self.options.methods if m == "pca")
        short = None  # why the dear scores do not fit the credit
        if left is not None:
            background = any(m != "pca" for m in methods)  # UMAP/t-SNE run: the job goes to the worker
            if background and slow_estimate is not None:
                left -= slow_estimate
            raw = self._estimate_scores(methods)
            # Beside training on the worker with UMAP/t-SNE; a PCA-only job runs inline when the worker is idle.
            estimate = raw * (contention() if background else 1.0) if raw is not None else 0.0
            if raw is not None and estimate > left:
                beside = f", {estimate:.2f} s beside training" if background else ""
                short = f"{' and '.join(DEAR_SCORES)} took {raw:.2f} s{beside}, credit {max(left, 0.0):.2f} s"
        return EmbeddingPlan(credit.epoch, methods, self._scores_due(runs, last, short))

    def _estimate_scores(self, methods: Sequence[str]) -> float | None:
        """Seconds the dear scores took in the last run with ``methods`` (else the dearest measured, ``None``
        before any: the first run measures them)."""
        known = self.scores_cost
        return known.get(tuple(methods), max(known.values())) if known else None

    def _slow_due(self, runs: int, last: bool) -> bool:
        self._slow_owed |= runs % self.options.slow_every_k == 0
        if not (last or (self._slow_owed and not self.worker.busy_slow())):
            return False
        self._slow_owed = False
        return True

    def _scores_due(self, runs: int, last: bool, short: str | None) -> bool:
        """Whether the dear scores run: due (every ``scores_every`` runs, owed, or ``last``) and not ``short``."""
        self._scores_owed |= runs % self.options.scores_every == 0
        if not (last or self._scores_owed):
            return False
        if short is not None:
            self.skipped.append(("scores", short))
            return False
        self._scores_owed = False
        return True

    def compute(
        self, model: torch.nn.Module, share: Share[Any], plan: EmbeddingPlan | None, state: Any
    ) -> EmbeddingPartial:
        """The share's pooled features and predictions, moved to the CPU in one transfer (the capture does not
        depend on the plan: under DDP every rank captures before rank zero plans)."""
        start = time.perf_counter()
        images = share.data.images
        if len(share) == 0:
            empty = torch.zeros(0, 0)
            return EmbeddingPartial(dict.fromkeys(self.layers, empty), torch.zeros(0, dtype=torch.long))
        if self.clean is None:
            features, logits = capture(model, self.layers, images, self.options, self.layout, seed=self.seed)
        else:  # the forward shared with the callbacks probing the same images (trainviz.core.clean_forward)
            logits, features = self.clean.run(model, share, self.options.batch_size)
        cpu = Captured.from_tensors(features, logits)
        self.cost = time.perf_counter() - start
        return EmbeddingPartial(
            {name: torch.from_numpy(x) for name, x in cpu.features.items()}, torch.from_numpy(cpu.predictions)
        )

    def merge(self, partials: Sequence[EmbeddingPartial], plan: EmbeddingPlan | None) -> Captured:
        """The shares' features and predictions, in share (probe) order."""
        parts = [p for p in partials if len(p.predictions)]
        features = {name: torch.cat([p.features[name] for p in parts]).numpy() for name in self.layers}
        return Captured(features, torch.cat([p.predictions for p in parts]).numpy())

    def project(self, captured: Captured, plan: EmbeddingPlan) -> EmbeddingResult:
        """The run's scores and frames (the background job), added to the history; the dear scores' seconds are
        kept for the plan (the last run's with the same methods, else the dearest)."""
        history, options = self.history, self.options
        result = compute(
            plan.epoch, captured, self.probe, options, history, plan.methods, seed=self.seed, scores=plan.scores
        )
        if result.scores_seconds is not None:
            self.scores_cost = {**self.scores_cost, tuple(plan.methods): result.scores_seconds}  # one assignment
        history.add(result)
        return result

    def submit(
        self,
        captured: Captured,
        plan: EmbeddingPlan,
        write: Callable[[EmbeddingResult], None],
        *,
        charge: Callable[[float], None],
        inline_pca: bool = False,
        progress: Callable[[int, int | None, str], None] | None = None,
    ) -> None:
        """Queue :meth:`project` and ``write(result)`` on the worker; with ``inline_pca`` (under a budget) a
        PCA-only run with the worker idle runs on the calling thread: a Python thread beside training holds the
        GIL between its numpy calls (about 2.5 times its own time on 2 cores), and the wait is counted."""
        job = lambda: write(self.project(captured, plan))  # noqa: E731
        inline = inline_pca and not plan.slow
        self.worker.submit(plan.epoch, job, captured.nbytes, plan.slow, charge, inline, progress)

    def recover(self, done: Sequence[int], read: Callable[[int, str], Mapping[str, np.ndarray] | None]) -> None:
        """Frames of ``done`` runs whose job was still going when the checkpoint was saved, read back from their
        artifacts (``read(epoch, layer)``: the run's ``<layer>.npz`` arrays or ``None``)."""
        ids = probe_arrays(self.probe)[1]
        for epoch in done:
            for layer in self.layers:
                self.history.recover(epoch, layer, read(epoch, layer), ids, self.options.methods)

    def fit_end(self) -> tuple[dict[tuple[int, str], dict[str, np.ndarray]], dict[str, str]]:
        """Fit end (after the worker): ``{(epoch, name): arrays}`` of the AlignedUMAP frames over all epochs
        (``aligned_umap_at_end``), and the animation pages ``{file name: html}`` (``html``)."""
        frames, predictions = self.history.snapshot()
        arrays = {}
        if self.options.aligned_umap_at_end:
            for layer, joint in aligned_frames(self.history, self.options, seed=self.seed).items():
                frames[(layer, "aligned_umap")], epochs = joint, sorted(joint)
                stacked = np.stack([joint[e] for e in epochs])
                arrays[(epochs[-1], f"{layer}_aligned_umap")] = {"frames": stacked, "epochs": np.asarray(epochs)}
        pages = animations(frames, predictions, self.probe) if self.options.html and frames else {}
        return arrays, pages
