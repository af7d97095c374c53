"""``EmbeddingCallback``: layers as embeddings during training (issue 5; seed 001, "Layers as embeddings").

Example:
    >>> import pytorch_lightning as pl
    >>> from trainviz.callbacks.embedding import EmbeddingCallback
    >>> from trainviz.data import ShapesDataModule
    >>> from trainviz.models import DemoClassifier
    >>> cb = EmbeddingCallback(layers=["net.features.1", "net.features", "net.fc"], methods=["pca", "umap"])
    >>> trainer = pl.Trainer(max_epochs=4, callbacks=[cb], enable_progress_bar=False,
    ...                      default_root_dir="/tmp/trainviz-doctest")  # doctest: +SKIP
    >>> trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule())  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.checks import check_positive_int
from trainviz.core.guard import model_device, model_dtype, probe_guard
from trainviz.core.hooks import capture
from trainviz.core.threads import background_threads, contention
from trainviz.core.layers import resolve_layers
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
    warmup_umap,
)
from trainviz.render.embedding import animation_figure, depth_image, figure_html, scatter_image
from trainviz.render.images import to_uint8
from trainviz.sinks.projector import ProjectorWriter

__all__ = ["EmbeddingCallback", "METHODS", "MAX_POINTS"]

Method = Literal["pca", "umap", "tsne"]
METHODS: tuple[str, ...] = ("pca", "umap", "tsne")
MAX_POINTS = 10_000
"""Largest probe set (UMAP/t-SNE cost, the projector's in-browser limits)."""
_DEFAULT_POINTS = 2_000  # default probe size: up to this many points of the split
_MAX_PENDING_BYTES = 256 * 2**20  # features waiting for the worker before the training thread waits for it
_TRUST_K = 5  # neighbours of the trustworthiness score
_FIRST_SLOW_SECONDS = 25.0  # budget estimate of a first UMAP or t-SNE job (UMAP: ~18 s of numba compilation)


def _unit_radius(frame: np.ndarray) -> np.ndarray:
    """``frame`` centred, with a root-mean-square distance of 1 to the centre (unchanged if all points coincide)."""
    centred = frame - frame.mean(0)
    radius = float(np.sqrt((centred**2).sum(1).mean()))
    return (centred / radius if radius > 0 else centred).astype(np.float32)


def _check_layers(layers: Any) -> tuple[str, ...]:
    if isinstance(layers, str):
        layers = (layers,)
    ok = isinstance(layers, Sequence) and len(layers) > 0 and all(isinstance(n, str) and n for n in layers)
    if not ok or len(set(layers)) != len(layers):
        raise ValueError(f"Expected `layers` to be a layer name, 'auto', or a list of distinct names, got {layers!r}.")
    return tuple(layers)


def _check_methods(methods: Any) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    ok = isinstance(methods, Sequence) and len(methods) > 0 and all(m in METHODS for m in methods)
    if not ok or len(set(methods)) != len(methods):
        raise ValueError(f"Expected `methods` to be distinct names among {', '.join(map(repr, METHODS))}; got {methods!r}.")
    return tuple(m for m in METHODS if m in methods)  # PCA first: it is every run's first frame


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"Expected `{name}` to be a bool, got {value!r}.")
    return value


class EmbeddingCallback(ProbeCallback):
    """Features of one or more layers for a fixed probe set, projected to 2-D every run, with the frames kept
    comparable across epochs, scored, and shown in TensorBoard (scatter images, Embedding Projector) and as
    plotly animations.

    What a run does:

    1. **Capture** (training thread; all that training waits for): one forward per probe batch with hooks on
       every layer (:func:`trainviz.core.hooks.capture`), each activation reduced by
       :func:`trainviz.ops.embedding.pool_features` (global average pooling for ``(N, C, H, W)``, flattening
       otherwise, and beyond ``max_dim`` features a fixed Gaussian random projection that keeps pairwise
       distances, Johnson-Lindenstrauss), and the logits for the predictions; copied to the CPU once. Under DDP
       every rank captures its share of the probe set and ``all_gather`` assembles it (rank 0 goes on).
    2. **Projections and metrics** (a background thread, so training goes on): PCA every run; UMAP and t-SNE
       every ``slow_every_k`` runs and at the last epoch (postponed to the next run while the worker is still
       busy with an earlier run's UMAP/t-SNE), warm-started from the method's previous frame; every
       frame is then centred, scaled to an RMS radius of 1 and rotated (orthogonal Procrustes) onto the
       previous aligned frame, so an animation does not spin, mirror, grow or shrink. umap-learn's numba code is compiled in
       the background at fit start. When the features waiting for the worker exceed 256 MB, the training thread
       waits for the oldest run to finish (bounds memory).
    3. **Fit end**: waits for the background work, then writes one plotly animation per layer and method, the
       depth view of each method (all layers side by side over epochs), and optionally one AlignedUMAP pass
       over all epochs (``aligned_umap_at_end``; ~15 s per epoch and layer, off by default).

    Logged keys (step = epoch index; ``<layer>`` is each resolved layer name, ``<method>`` each method run):
        - ``trainviz/embedding/<layer>/knn_accuracy`` (scalar): leave-one-out 5-NN accuracy in feature space.
        - ``trainviz/embedding/<layer>/silhouette`` (scalar): mean silhouette of the classes in feature space.
        - ``trainviz/embedding/<layer>/linear_probe_accuracy`` (scalar, ``linear_probe_folds > 0``):
          cross-validated accuracy of a logistic regression on the features.
        - ``trainviz/embedding/<layer>/pca/explained_variance`` (scalar): variance share of the 2 components.
        - ``trainviz/embedding/<layer>/<method>/trustworthiness`` (scalar): how faithful the 2-D frame's
          5-neighbourhoods are to the features (1: perfectly).
        - ``trainviz/embedding/<layer>/<method>/stability`` (scalar, from a method's second frame on): mean
          displacement of the points since the method's previous frame, relative to its radius (0: still).
        - ``trainviz/embedding/<layer>/<method>`` (image): the frame coloured by class, misclassified points
          as rings; ``trainviz/embedding/depth/<method>`` (image, several layers): all layers side by side.
        - ``trainviz/embedding/projection_seconds/<method>`` (scalar): background time of the method, all
          layers; ``trainviz/embedding/worker_seconds`` (scalar): the whole background job of the run.
        - ``trainviz/embedding/seconds`` (scalar, base class): time the training thread was held (capture).
        - ``trainviz/embedding/failures`` (scalar): failed runs so far.
        - TensorBoard projector (with a TensorBoard logger): tensors ``<layer>@epoch<k>`` (the pooled features),
          one metadata table per epoch (id, label, prediction, correct) and one sprite of the probe images,
          listed in the run folder's ``projector_config.pbtxt``, merged so a resumed run keeps earlier epochs
          (see :mod:`trainviz.sinks.projector`).
        - artifacts: ``embedding/epoch_XXXX/<layer>.npz`` (``ids``, ``labels``, ``predictions``, one aligned
          ``(N, 2)`` frame per method run, and ``features`` with ``save_features``),
          ``embedding/epoch_XXXX/<layer>/<method>.png`` and ``depth/<method>.png``, ``embedding/metrics.jsonl``
          (the scalars of each run), and at fit end ``embedding/<layer>_<method>.html`` (animation over epochs),
          ``embedding/depth_<method>.html`` (several layers), ``embedding/plotly.min.js`` (shared by the
          pages) and, with ``aligned_umap_at_end``, ``embedding/<layer>_aligned_umap.html`` and
          ``embedding/epoch_XXXX/<layer>_aligned_umap.npz`` (``frames`` ``(epochs, N, 2)``, ``epochs``).

    Args:
        layers: layer names (see ``trainviz.list_layers(model)``) or ``"auto"`` (the last module with a 4-D
            output); resolved at setup, where an unknown name raises ``ValueError`` naming close matches.
        methods: 2-D projections among ``"pca"``, ``"umap"``, ``"tsne"`` (t-SNE uses openTSNE when it is
            installed, else scikit-learn).
        slow_every_k: UMAP and t-SNE run every ``k``-th run (the 1st, the ``k+1``-th, ...) and at the last epoch;
            when the worker is still busy with the previous ones, at the next run instead.
        aligned_umap_at_end: also fit umap-learn's AlignedUMAP over all epochs at fit end (slow; needs the
            features of every run in memory).
        probe_size: probe points; ``None`` takes up to 2,000 points of the split (all when it is smaller); at most
            10,000.
        max_dim: features wider than this are randomly projected to ``max_dim`` dimensions (see above).
        n_neighbors: UMAP's neighbourhood size.
        perplexity: t-SNE's perplexity (clipped to ``(N - 1) / 3``).
        linear_probe_folds: folds of the linear-probe cross-validation (``0`` skips the probe, ~1-3 s per layer
            at 2,000 points).
        save_features: also store the pooled features in the npz artifacts.
        projector: write TensorBoard projector files.
        html: write the plotly animations at fit end.
        batch_size: probe batch size of the capture.
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``, ``probe_seed``,
            ``split``, ...).

    Example:
        ``Trainer(callbacks=[EmbeddingCallback(layers=["net.features.1", "net.features"])]).fit(model, dm)``
        or the preset ``callbacks/embedding.yaml`` with LightningCLI.
    """

    name = "embedding"

    def __init__(
        self,
        layers: Sequence[str] | str = ("auto",),
        methods: Sequence[Method] | Method = ("pca", "umap"),
        slow_every_k: int = 2,
        aligned_umap_at_end: bool = False,
        probe_size: int | None = None,
        max_dim: int = 4096,
        n_neighbors: int = 15,
        perplexity: float = 30.0,
        linear_probe_folds: int = 3,
        save_features: bool = False,
        projector: bool = True,
        html: bool = True,
        batch_size: int = 128,
        **kwargs: Any,
    ) -> None:
        if probe_size is not None:
            check_positive_int("probe_size", probe_size)
            if probe_size > MAX_POINTS:
                raise ValueError(f"Expected `probe_size` to be at most {MAX_POINTS}, got {probe_size}.")
        super().__init__(probe_size=probe_size or _DEFAULT_POINTS, batch_size=batch_size, **kwargs)
        self.requested_probe_size = probe_size
        self.layers = _check_layers(layers)
        self.methods = _check_methods(methods)
        self.slow_every_k = check_positive_int("slow_every_k", slow_every_k)
        self.aligned_umap_at_end = _check_bool("aligned_umap_at_end", aligned_umap_at_end)
        self.max_dim = check_positive_int("max_dim", max_dim)
        if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 2:
            raise ValueError(f"Expected `n_neighbors` to be an int >= 2, got {n_neighbors!r}.")
        self.n_neighbors = n_neighbors
        if isinstance(perplexity, bool) or not isinstance(perplexity, (int, float)) or not perplexity > 0:
            raise ValueError(f"Expected `perplexity` to be a positive number, got {perplexity!r}.")
        self.perplexity = float(perplexity)
        folds = linear_probe_folds
        if isinstance(folds, bool) or not isinstance(folds, int) or folds == 1 or folds < 0:
            raise ValueError(f"Expected `linear_probe_folds` to be 0 (off) or an int >= 2, got {linear_probe_folds!r}.")
        self.linear_probe_folds = linear_probe_folds
        self.save_features = _check_bool("save_features", save_features)
        self.projector = _check_bool("projector", projector)
        self.html = _check_bool("html", html)
        self._layers: dict[str, torch.nn.Module] = {}
        # History, written by the background job only (under the lock), read by the state dict and at fit end.
        self._frames: dict[tuple[str, str], dict[int, np.ndarray]] = {}  # (layer, method) -> {epoch: aligned frame}
        self._predictions: dict[int, np.ndarray] = {}  # epoch -> predicted class of each probe point
        self._features: dict[str, dict[int, np.ndarray]] = {}  # layer -> {epoch: features}, for AlignedUMAP only
        self._gathered: dict[int, Any] = {}  # epoch -> features gathered from all ranks (DDP)
        self._init_worker_state()

    def _init_worker_state(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._futures: list[tuple[Future, bool, int]] = []  # (job, runs UMAP/t-SNE, bytes of its features)
        self._slow_owed = False  # UMAP/t-SNE due but postponed (the worker was busy)
        self._slow_cost: float | None = None  # seconds of the last background job with UMAP/t-SNE (the budget)
        self._errors: list[tuple[int, Exception]] = []
        self._projector_writer: ProjectorWriter | None = None

    def __getstate__(self) -> dict[str, Any]:  # a Trainer is pickled by ddp_spawn: threads and locks stay behind
        state = self.__dict__.copy()
        for key in ("_lock", "_executor", "_futures", "_errors", "_projector_writer"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_worker_state()

    # identity & state ------------------------------------------------------------------------------
    @override
    def _state_args(self) -> dict[str, Any]:
        return {
            **super()._state_args(),
            "probe_size": self.requested_probe_size,
            "layers": self.layers,
            "methods": self.methods,
            "slow_every_k": self.slow_every_k,
        }

    @override
    def _extra_state(self) -> dict[str, Any]:
        # Frames of runs still in the background are not in the checkpoint: `on_fit_start` reads them back
        # from the artifacts when the resumed run logs to the same folder.
        with self._lock:
            return {
                "frames": [
                    [layer, method, e, torch.from_numpy(f.copy())] for (layer, method), fr in self._frames.items() for e, f in fr.items()
                ],
                "predictions": {e: torch.from_numpy(p.copy()) for e, p in self._predictions.items()},
            }

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._frames = {}
            for layer, method, epoch, frame in state.get("frames", []):
                self._frames.setdefault((layer, method), {})[int(epoch)] = frame.numpy().astype(np.float32)
            self._predictions = {int(e): p.numpy() for e, p in (state.get("predictions") or {}).items()}

    @override
    def _on_probe_changed(self) -> None:
        with self._lock:
            self._frames, self._predictions, self._features = {}, {}, {}

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, methods {list(self.methods)}, layers {list(self._layers) or list(self.layers)}"

    # setup -----------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.probe is None and self.requested_probe_size is None:
            source = self._probe_source(trainer)
            if source is not None:  # up to 2,000 points of the split (the base raises without data)
                self.probe_size = min(_DEFAULT_POINTS, len(source))
        super().setup(trainer, pl_module, stage)

    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        slow = [m for m in self.methods if m != "pca"] + (["aligned UMAP"] if self.aligned_umap_at_end else [])
        if slow and len(self.probe) < MIN_EMBED_POINTS:
            raise ValueError(f"{', '.join(slow)} need at least {MIN_EMBED_POINTS} probe points, got {len(self.probe)}.")
        if ("umap" in self.methods or self.aligned_umap_at_end) and importlib.util.find_spec("umap") is None:
            raise ImportError("EmbeddingCallback with UMAP needs umap-learn: pip install umap-learn")
        example = self.probe.images[:2].to(model_device(pl_module), model_dtype(pl_module))
        with probe_guard(pl_module):
            self._layers = resolve_layers(self.logits_model(pl_module), list(self.layers), example[:1])
            self._capture(pl_module, example)  # raises now if a layer gives no tensor or the output is not logits (names `output=`)
        if "auto" in self.layers:
            rank_zero_info(f"trainviz: {type(self).__name__} layers='auto' resolved to {list(self._layers)}")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if not trainer.is_global_zero or self.probe is None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainviz-embedding")
        if ("umap" in self.methods or self.aligned_umap_at_end) and self.budget is None:
            # Under a budget the compilation is paid, and counted, with the first UMAP that fits.
            self._executor.submit(self._warmup, len(self.probe) >= 4096)
        self._recover_frames()
        writer = self.sink.writer if self.sink is not None else None
        if self.projector and writer is not None:
            log_dir = getattr(writer, "log_dir", None) or writer.get_logdir()
            self._projector_writer = ProjectorWriter(log_dir, self.probe.fingerprint()[:12], self.sink.background, self.name)
            self._projector_writer.sprite(to_uint8(self.norm.denormalize(self.probe.images.float())))

    @staticmethod
    def _warmup(approximate: bool) -> None:
        try:
            warmup_umap(approximate=approximate)
        except Exception:  # the first real UMAP fails the same way, and is reported then
            pass

    def _recover_frames(self) -> None:
        """Frames of done epochs missing from the checkpoint (their job was still running when it was saved),
        read back from this folder's artifacts."""
        if self.sink is None or self.sink.store is None:
            return
        ids = self.probe.ids.cpu().numpy()
        for epoch in self.done_epochs:
            for layer in self._layers:
                path = f"{self.name}/epoch_{epoch:04d}/{layer}.npz"
                if not self.sink.store.path(path).exists():
                    continue
                data = self.sink.store.read_npz(path)
                if not np.array_equal(data.get("ids"), ids):
                    continue
                with self._lock:
                    for method in self.methods:
                        if method in data:
                            self._frames.setdefault((layer, method), {}).setdefault(epoch, data[method].astype(np.float32))
                    self._predictions.setdefault(epoch, data["predictions"])

    # capture ---------------------------------------------------------------------------------------
    def _capture(self, pl_module: pl.LightningModule, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Pooled features ``{layer: (N, D)}`` and logits ``(N, K)`` of ``images``, one forward per batch."""
        feats: dict[str, list[torch.Tensor]] = {name: [] for name in self._layers}
        logits = []
        seed = self.probe_seed % 2**32
        model = self.logits_model(pl_module)
        with torch.no_grad(), capture(model, self._layers) as acts:
            for start in range(0, images.shape[0], self.batch_size):
                acts.clear()
                out = model(images[start : start + self.batch_size])  # logits (N, K), else a ValueError naming `output=`
                logits.append(out.detach())
                for name in self._layers:
                    if name not in acts:
                        raise ValueError(f"Layer {name!r} returned no tensor during the forward pass: pick another layer.")
                    feats[name].append(pool_features(acts[name], self.max_dim, seed=seed))
        return {name: torch.cat(parts) for name, parts in feats.items()}, torch.cat(logits)

    def _capture_shared(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        """DDP: every rank captures a contiguous share of the probe set, then ``all_gather`` (a collective
        that every rank reaches, also when its capture failed) assembles the features in probe order.

        Returns ``(features, logits)``, or the error to report (on rank 0 the error of any rank)."""
        world, rank = trainer.world_size, trainer.global_rank
        probe = self.device_probe(pl_module)
        n = len(probe)
        chunk = -(-n // world)
        rows = torch.arange(rank * chunk, (rank + 1) * chunk, device=probe.images.device).clamp_max(n - 1)  # equal shares
        with probe_guard(pl_module):
            try:
                result, failed = self._capture(pl_module, probe.images[rows]), None
            except Exception as err:
                result, failed = None, err
            flags = trainer.strategy.all_gather(torch.tensor([int(failed is not None)], device=rows.device)).reshape(-1)
            if bool(flags.any()):
                bad = flags.nonzero().flatten().tolist()
                return failed or RuntimeError(f"the embedding capture failed on rank(s) {bad}")
            feats, logits = result
            def gather(t: torch.Tensor) -> torch.Tensor:  # (world, chunk, D) -> the first n rows, in probe order
                return trainer.strategy.all_gather(t.contiguous()).reshape(world * chunk, -1)[:n]

            return {name: gather(f) for name, f in feats.items()}, gather(logits)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every rank captures its share (a collective), then rank zero runs as the base class does.
        if not self._due(trainer):
            return
        if trainer.world_size > 1 and self.probe is not None:
            self._gathered[trainer.current_epoch] = self._capture_shared(trainer, pl_module)
        try:
            self.run(trainer, pl_module, trainer.current_epoch)
        finally:
            self._gathered.clear()

    # running ---------------------------------------------------------------------------------------
    @override
    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        self._report_errors()
        captured = self._gathered.pop(epoch, None)
        if isinstance(captured, Exception):
            raise captured
        if captured is None:
            captured = self._capture(pl_module, self.device_probe(pl_module).images)
        feats, logits = captured
        cpu = {name: f.float().cpu().numpy() for name, f in feats.items()}
        preds = logits.argmax(1).cpu().numpy()
        slow = (self.plan is True or self.plan.get("slow", False)) and self._slow_due(trainer, epoch)
        methods = self.methods if slow else tuple(m for m in self.methods if m == "pca")
        self._submit(epoch, cpu, preds, methods)

    def _slow_due(self, trainer: pl.Trainer, epoch: int) -> bool:
        """UMAP/t-SNE are due every ``slow_every_k`` runs and at the last epoch; while the worker still runs an
        earlier run's UMAP/t-SNE they are postponed to the next run, so training never queues behind them."""
        max_epochs = trainer.max_epochs
        last = max_epochs is not None and max_epochs > 0 and epoch >= max_epochs - 1
        self._slow_owed |= len(self.done_epochs) % self.slow_every_k == 0
        busy = any(slow and not future.done() for future, slow, _ in self._futures)
        if not (last or (self._slow_owed and not busy)):
            return False
        self._slow_owed = False
        return True

    def _submit(self, epoch: int, feats: dict[str, np.ndarray], preds: np.ndarray, methods: tuple[str, ...]) -> None:
        size = sum(x.nbytes for x in feats.values())
        self._futures = [job for job in self._futures if not job[0].done()]
        while self._futures and sum(job[2] for job in self._futures) + size > _MAX_PENDING_BYTES:
            self._futures.pop(0)[0].result()  # the worker is far behind: wait rather than pile up features
        slow = any(m != "pca" for m in methods)
        if self._executor is None or (self.budget is not None and not slow and not self._futures):
            # No fit start (a direct call), or under a budget a PCA-only run with the worker idle: inline. A
            # Python thread beside training holds the GIL between its numpy calls, which slowed the training
            # steps by about 2.5 times its own time on 2 cores: the training thread's wait is cheaper, and counted.
            self._job(epoch, feats, preds, methods, inline=True)
            return
        future = self._executor.submit(self._job, epoch, feats, preds, methods)
        self._futures.append((future, slow, size))

    @override
    def _plan(self, credit: float, essential: bool, epoch: int) -> Any:
        """The capture (and PCA) when it fits or is essential; UMAP and t-SNE only when their estimated cost
        (the last slow job's seconds, else a first-call estimate that includes numba's compilation) fits too."""
        capture = self._last_cost or 0.0
        if not essential and capture > credit:
            self._skip(epoch, "run", f"capture took {capture:.2f} s, credit {credit:.2f} s")
            return None
        slow_methods = [m for m in self.methods if m != "pca"]
        if not slow_methods:
            return True
        raw = self._slow_cost if self._slow_cost is not None else _FIRST_SLOW_SECONDS * len(slow_methods)
        estimate = raw * contention()  # what it will be charged: it runs beside training
        if estimate > credit - capture:
            self._skip(epoch, "+".join(slow_methods), f"estimated {estimate:.1f} s, credit {credit - capture:.2f} s")
            return {"slow": False}
        return {"slow": True}

    def _job(self, epoch: int, feats: dict[str, np.ndarray], preds: np.ndarray, methods: tuple[str, ...], inline: bool = False) -> None:
        start = time.perf_counter()
        try:
            with background_threads():
                self._project(epoch, feats, preds, methods)
        except Exception as err:  # reported on the training thread (warn once, or raise with strict)
            with self._lock:
                self._errors.append((epoch, err))
        finally:
            seconds = time.perf_counter() - start
            if any(m != "pca" for m in methods):
                self._slow_cost = seconds
            if not inline:  # inline work is in the training thread's timing already
                self._charge_background(seconds)

    def _report_errors(self) -> None:
        with self._lock:
            errors, self._errors = self._errors, []
        for epoch, err in errors:
            self._failed(epoch, err, "background projection")

    # background job --------------------------------------------------------------------------------
    def _class_names(self, k: int) -> list[str]:
        names = list(self.probe.class_names or [])
        return names + [str(c) for c in range(len(names), k)]

    def _project(self, epoch: int, feats: dict[str, np.ndarray], preds: np.ndarray, methods: tuple[str, ...]) -> None:
        """Metrics, frames, images and artifacts of one run (runs on the background thread)."""
        start = time.perf_counter()
        labels = self.probe.labels.cpu().numpy()
        ids = self.probe.ids.cpu().numpy()
        names = self._class_names(max(int(labels.max()), int(preds.max())) + 1)
        wrong = preds != labels
        scalars: dict[str, float] = {}
        seconds = dict.fromkeys(methods, 0.0)
        depth: dict[str, dict[str, np.ndarray]] = {m: {} for m in methods}
        for layer, x in feats.items():
            values = self._feature_metrics(x, labels)
            frames = {}
            for method in methods:
                t0 = time.perf_counter()
                frame, stability, variance = self._frame(layer, method, x)
                seconds[method] += time.perf_counter() - t0
                frames[method] = depth[method][layer] = frame
                values[f"{method}/trustworthiness"] = trustworthiness(x, frame, n_neighbors=min(_TRUST_K, (len(x) - 1) // 2))
                if stability is not None:
                    values[f"{method}/stability"] = stability
                if variance is not None:
                    values[f"{method}/explained_variance"] = variance
                image = scatter_image(frame, labels, names, wrong=wrong, title=f"{layer} / {method} / epoch {epoch}")
                self.sink.image(f"{layer}/{method}", image, epoch, artifact=True)
            scalars.update({f"{layer}/{key}": value for key, value in values.items()})
            extra = {"features": x} if self.save_features else {}
            self.sink.npz(epoch, layer, ids=ids, labels=labels, predictions=preds, **frames, **extra)
            if self.aligned_umap_at_end:
                self._features.setdefault(layer, {})[epoch] = x
        if len(feats) > 1:
            for method, frames in depth.items():
                self.sink.image(f"depth/{method}", depth_image(frames, labels, names, wrong=wrong), epoch, artifact=True)
        if self._projector_writer is not None:
            columns = {"id": ids.tolist(), "label": [names[c] for c in labels], "prediction": [names[c] for c in preds],
                       "correct": (~wrong).tolist()}
            self._projector_writer.add_epoch(epoch, {f"{layer}@epoch{epoch}": x for layer, x in feats.items()}, columns)
        with self._lock:
            self._predictions[epoch] = preds
            for method, frames in depth.items():
                for layer, frame in frames.items():
                    self._frames.setdefault((layer, method), {})[epoch] = frame
        scalars.update({f"projection_seconds/{m}": s for m, s in seconds.items()})
        scalars["worker_seconds"] = time.perf_counter() - start
        self.sink.scalars(scalars, epoch)
        self.sink.record("metrics", {"epoch": epoch, "methods": list(methods), **scalars})

    def _feature_metrics(self, x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        n, counts = len(labels), np.bincount(labels)
        counts = counts[counts > 0]
        out = {"knn_accuracy": knn_accuracy(torch.from_numpy(x), labels, k=min(5, n - 1))}
        if 2 <= len(counts) <= n - 1:
            out["silhouette"] = silhouette(x, labels)
            if self.linear_probe_folds and counts.min() >= 2:
                out["linear_probe_accuracy"] = linear_probe_accuracy(
                    x, labels, seed=self.probe_seed % 2**32, n_splits=self.linear_probe_folds
                )
        return out

    def _frame(self, layer: str, method: str, x: np.ndarray) -> tuple[np.ndarray, float | None, float | None]:
        """The method's frame of ``x``, warm-started from its previous frame of the layer, centred and scaled to
        an RMS radius of 1 (so frames neither grow nor shrink over epochs: early features are tiny), then
        rotated onto that previous frame; also its stability against it and, for PCA, the explained variance."""
        with self._lock:
            history = self._frames.get((layer, method), {})
            prev = history[max(history)] if history else None
        seed, variance = self.probe_seed % 2**32, None
        if method == "pca":
            scores, ratio = pca(torch.from_numpy(x), 2, return_variance=True)
            raw, variance = scores.numpy(), float(ratio.sum())
        elif method == "umap":
            raw = umap_embed(x, init="spectral" if prev is None else prev, seed=seed, n_neighbors=self.n_neighbors)
        else:
            raw = tsne(x, init="pca" if prev is None else prev, seed=seed, perplexity=self.perplexity)
        frame = _unit_radius(raw)
        if prev is None:
            return frame, None, variance
        aligned = procrustes_align(frame, prev).astype(np.float32)
        return aligned, frame_stability(prev, aligned), variance

    # fit end ---------------------------------------------------------------------------------------
    def _wait(self) -> None:
        for future, _, _ in self._futures:
            future.result()
        self._futures = []

    @override
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._wait()
        self._report_errors()
        labels, ids = self.probe.labels.cpu().numpy(), self.probe.ids.cpu().numpy()
        with self._lock:
            frames = {key: dict(fr) for key, fr in self._frames.items() if fr}
            predictions = dict(self._predictions)
        if self.aligned_umap_at_end:
            frames.update(self._aligned_umap(trainer))
        if not self.html or not frames:
            return
        names = self._class_names(max([int(labels.max())] + [int(p.max()) for p in predictions.values()]) + 1)
        self.sink.plotly_js()
        for (layer, method), fr in frames.items():
            fig = animation_figure({f"{layer} / {method}": fr}, labels, ids, names, predictions=predictions,
                                   title=f"{layer}: {method} of the probe set over epochs")
            self.sink.file(f"{layer}_{method}.html", figure_html(fig))
        for method in {m for _, m in frames}:
            panels = {layer: fr for (layer, m), fr in frames.items() if m == method}
            common = set.intersection(*(set(fr) for fr in panels.values()))
            if len(panels) > 1 and common:
                panels = {layer: {e: fr[e] for e in common} for layer, fr in panels.items()}
                fig = animation_figure(panels, labels, ids, names, predictions=predictions,
                                       title=f"Layers as embeddings ({method}): classes across depth, over epochs")
                self.sink.file(f"depth_{method}.html", figure_html(fig))

    def _aligned_umap(self, trainer: pl.Trainer) -> dict[tuple[str, str], dict[int, np.ndarray]]:
        out = {}
        for layer, per_epoch in self._features.items():
            epochs = sorted(per_epoch)
            if len(epochs) < 2:
                continue
            joint = aligned_umap([per_epoch[e] for e in epochs], seed=self.probe_seed % 2**32, n_neighbors=self.n_neighbors)
            out[(layer, "aligned_umap")] = dict(zip(epochs, joint))
            self.sink.npz(epochs[-1], f"{layer}_aligned_umap", frames=np.stack(joint), epochs=np.asarray(epochs))
        return out

    def _shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._futures = []

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            super().on_train_end(trainer, pl_module)
        finally:
            self._shutdown()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._shutdown()
        super().on_exception(trainer, pl_module, exception)
