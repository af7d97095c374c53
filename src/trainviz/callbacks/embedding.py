"""``EmbeddingCallback``: layers as embeddings during training (Fleuret's EE-559 lecture "Layers as embeddings").

The capture, projections, alignment and scores are :mod:`trainviz.probes.embedding`; this module is their
Lightning lifecycle: cadence, budget plan, checkpoint state, the DDP capture, the background worker's jobs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.checks import check_bool, check_int, check_layers
from trainviz.core.display import pictures
from trainviz.core.guard import probe_guard
from trainviz.core.layers import Layout, find_last_spatial_layer, model_layout
from trainviz.core.namespace import info
from trainviz.core.threads import contention
from trainviz.ops.embedding import MIN_EMBED_POINTS
from trainviz.probes.embedding import (
    FIRST_SLOW_SECONDS,
    METHODS,
    Captured,
    EmbeddingConfig,
    EmbeddingHistory,
    EmbeddingWorker,
    aligned_frames,
    animations,
    capture,
    capture_share,
    compute,
    probe_arrays,
)
from trainviz.render.images import to_uint8

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["EmbeddingCallback", "METHODS", "MAX_POINTS"]

Method = Literal["pca", "umap", "tsne"]
MAX_POINTS = 10_000
"""Largest probe set (UMAP/t-SNE cost, the projector's in-browser limits)."""
_DEFAULT_POINTS = 2_000  # default probe size: up to this many points of the split


class EmbeddingCallback(ProbeCallback):
    """Features of one or more layers for a fixed probe set, projected to 2-D every run, kept comparable across
    epochs, scored, and shown in TensorBoard (scatter images, Embedding Projector) and as plotly animations.

    A run captures the features on the training thread (under DDP every rank captures its share and
    ``all_gather`` assembles it), then projects and scores them on a background thread
    (:mod:`trainviz.probes.embedding`): PCA every run; UMAP and t-SNE every ``slow_every_k`` runs and at the
    last epoch, postponed to the next run while the worker is still busy with earlier ones. At fit end it waits
    for the worker and writes the animations (and, with ``aligned_umap_at_end``, one AlignedUMAP over all epochs).

    Logged keys (step = epoch index; ``<layer>`` each resolved layer, ``<method>`` each method run):
        - ``trainviz/embedding/<layer>/knn_accuracy``, ``.../silhouette``, ``.../linear_probe_accuracy``
          (``linear_probe_folds > 0``): leave-one-out 5-NN accuracy, class silhouette, cross-validated
          logistic-regression accuracy, all in feature space.
        - ``trainviz/embedding/<layer>/pca/explained_variance``; ``.../<method>/trustworthiness`` (1: the
          frame's 5-neighbourhoods are those of the features); ``.../<method>/stability`` (from a method's
          second frame on: mean displacement since its previous frame over its radius).
        - ``trainviz/embedding/<layer>/<method>`` (image), ``trainviz/embedding/depth/<method>`` (image, several
          layers); ``trainviz/embedding/projection_seconds/<method>``, ``trainviz/embedding/worker_seconds``,
          ``trainviz/embedding/seconds`` (the capture), ``trainviz/embedding/failures``.
        - TensorBoard projector (with a TensorBoard logger): tensors ``<layer>@epoch<k>``, one metadata table per
          epoch (id, label, prediction, correct), one sprite (see :mod:`trainviz.sinks.projector`).
        - artifacts: ``embedding/epoch_XXXX/<layer>.npz`` (ids, labels, predictions, one frame per method run,
          ``features`` with ``save_features``), ``epoch_XXXX/<layer>/<method>.png``, ``depth/<method>.png``,
          ``embedding/metrics.jsonl`` (:class:`~trainviz.probes.embedding.EmbeddingResult`); at fit end
          ``<layer>_<method>.html``, ``depth_<method>.html``, ``plotly.min.js`` and with ``aligned_umap_at_end``
          ``<layer>_aligned_umap.html`` and ``epoch_XXXX/<layer>_aligned_umap.npz`` (``frames``, ``epochs``).

    Args:
        layers: layer names (``trainviz.list_layers(model)``) or ``"auto"``: the last module with a feature-map
            output (averaged over its positions); on a vision transformer its last token layer of the residual
            stream (timm's final ``norm``), whose class token is the embedding, or the mean of its patch tokens
            when the model has no class token (the prefix tokens as the model declares them).
        methods: 2-D projections among ``"pca"``, ``"umap"``, ``"tsne"`` (openTSNE if installed, else sklearn).
        slow_every_k: UMAP and t-SNE run every ``k``-th run and at the last epoch.
        aligned_umap_at_end: also fit umap-learn's AlignedUMAP over all epochs at fit end (slow).
        probe_size: probe points; ``None`` takes up to 2,000 points of the split; at most 10,000.
        max_dim: features wider than this are randomly projected to ``max_dim`` dimensions (Johnson-Lindenstrauss).
        n_neighbors: UMAP's neighbourhood size.
        perplexity: t-SNE's perplexity (clipped to ``(N - 1) / 3``).
        linear_probe_folds: folds of the linear-probe cross-validation (``0`` skips it).
        save_features: also store the pooled features in the npz artifacts.
        projector: write TensorBoard projector files.
        html: write the plotly animations at fit end.
        batch_size: probe batch size of the capture.
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``, ``budget``, ...).

    Raises:
        ValueError: at init, a setting of the wrong type or out of range; at fit start, an unknown layer (naming
            close matches), a layer that gives no tensor, too few probe points for UMAP/t-SNE (5).
        ImportError: at fit start, UMAP without umap-learn.

    Example:
        >>> import tempfile
        >>> import pytorch_lightning as pl
        >>> from trainviz.data import ShapesDataModule
        >>> from trainviz.models import DemoClassifier
        >>> cb = EmbeddingCallback(layers=["net.features", "net.fc"], methods="pca", linear_probe_folds=0)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
        ...                      enable_progress_bar=False, enable_model_summary=False,
        ...                      default_root_dir=tempfile.mkdtemp(), callbacks=[cb])
        >>> trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule(n_train=64, n_val=32))
        >>> cb.done_epochs, sorted(cb.history.frames)
        ([0], [('net.fc', 'pca'), ('net.features', 'pca')])
    """

    name = "embedding"
    budget_share = 0.25  # of default_callbacks(budget=)
    needs_pixels = False  # computes on the model's own inputs; only its pictures need a display mapping

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
        if probe_size is not None and check_int("probe_size", probe_size, minimum=1) > MAX_POINTS:
            raise ValueError(f"Expected `probe_size` to be at most {MAX_POINTS}, got {probe_size}.")
        super().__init__(probe_size=probe_size or _DEFAULT_POINTS, batch_size=batch_size, **kwargs)
        self.requested_probe_size = probe_size
        self.layers = check_layers("layers", layers)
        self.config = EmbeddingConfig(
            methods,  # type: ignore[arg-type]  # checked by EmbeddingConfig
            max_dim,
            n_neighbors,
            perplexity,
            linear_probe_folds,
            save_features,
            self.probe_seed % 2**32,
            self.batch_size,
        )
        self.methods = self.config.methods
        self.slow_every_k = check_int("slow_every_k", slow_every_k, minimum=1)
        self.aligned_umap_at_end = check_bool("aligned_umap_at_end", aligned_umap_at_end)
        self.projector, self.html = check_bool("projector", projector), check_bool("html", html)
        self._layers: dict[str, torch.nn.Module] = {}
        self._layout: Layout | None = None
        self.history = EmbeddingHistory(keep_features=self.aligned_umap_at_end)
        self.worker = EmbeddingWorker()
        self._slow_owed = False  # UMAP/t-SNE due but postponed (the worker was busy)
        self._gathered: dict[int, Any] = {}  # epoch -> features gathered from all ranks (DDP)
        self._projector: Any = None

    def __getstate__(self) -> dict[str, Any]:  # a Trainer is pickled by ddp_spawn: the projector's thread stays
        return {**self.__dict__, "_projector": None}

    @override
    def _state_args(self) -> dict[str, Any]:
        extra = {"probe_size": self.requested_probe_size, "layers": self.layers, "methods": self.methods}
        return {**super()._state_args(), **extra, "slow_every_k": self.slow_every_k}

    @override
    def _extra_state(self) -> dict[str, Any]:  # frames of jobs still running: read back from the artifacts
        return self.history.state_dict()

    @override
    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state)

    @override
    def _on_probe_changed(self) -> None:
        self.history.clear()

    @override
    def _describe(self) -> str:
        return f"callback {self.name}, methods {list(self.methods)}, layers {list(self._layers) or list(self.layers)}"

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
        if self._uses_umap() and importlib.util.find_spec("umap") is None:
            raise ImportError("EmbeddingCallback with UMAP needs umap-learn: pip install umap-learn")
        specs = list(self.layers)
        example = self.example_batch(pl_module, 1)
        with probe_guard(pl_module):
            model = self.logits_model(pl_module)
            self._layout = model_layout(model, example)
            if "auto" in specs:  # on a transformer its final norm (class token or mean patch token), not a CAM layer
                auto = find_last_spatial_layer(model, example, self._layout, gradient=False)
                specs = [auto if s == "auto" else s for s in specs]
                info(f"trainviz: EmbeddingCallback layers='auto' resolved to {auto!r}", self._trainer)
        check = lambda model, example, layers: capture(model, layers, example, self.config, self._layout)  # noqa: E731
        self._layers = self.setup_layers(pl_module, list(dict.fromkeys(specs)), check=check)

    def _uses_umap(self) -> bool:
        return "umap" in self.methods or self.aligned_umap_at_end

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if not trainer.is_global_zero or self.probe is None:
            return
        # Under a budget umap-learn's compilation is paid, and counted, with the first UMAP that fits.
        self.worker.start(warmup=self._uses_umap() and self.budget is None, approximate=len(self.probe) >= 4096)
        ids = probe_arrays(self.probe)[1]
        for epoch in self.done_epochs:  # runs whose job was still going when the checkpoint was saved
            for layer in self._layers:
                self.history.recover(epoch, layer, self.sink.read_npz(epoch, layer), ids, self.methods)
        self._projector = self.sink.projector(self.probe.fingerprint()[:12]) if self.projector else None
        if self._projector is not None:
            self._projector.sprite(to_uint8(pictures(self.probe.images.float(), self.norm, self.display)))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._due(trainer):  # every rank captures its share (a collective), then rank zero runs
            return
        if trainer.world_size > 1 and self.probe is not None:
            images, model = self.device_probe(pl_module).images, self.logits_model(pl_module)
            with probe_guard(pl_module):
                self._gathered[trainer.current_epoch] = capture_share(
                    model,
                    self._layers,
                    images,
                    self.config,
                    trainer.global_rank,
                    trainer.world_size,
                    trainer.strategy.all_gather,
                    self._layout,
                )
        try:
            self.run(trainer, pl_module, trainer.current_epoch)
        finally:
            self._gathered.clear()

    @override
    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        self._report_errors()
        captured = self._gathered.pop(epoch, None)
        if isinstance(captured, Exception):
            raise captured
        if captured is None:
            images = self.device_probe(pl_module).images
            captured = capture(self.logits_model(pl_module), self._layers, images, self.config, self._layout)
        captured = Captured.from_tensors(*captured)
        slow = (self.plan is True or self.plan.get("slow", False)) and self._slow_due(trainer, epoch)
        methods = self.methods if slow else tuple(m for m in self.methods if m == "pca")
        slow = any(m != "pca" for m in methods)
        # Under a budget a PCA-only run with the worker idle runs inline: a Python thread beside training holds
        # the GIL between its numpy calls (about 2.5 times its own time on 2 cores); the wait is counted.
        self.worker.submit(
            epoch,
            partial(self._project, epoch, captured, methods),
            captured.nbytes,
            slow,
            self._charge_background,
            inline_when_idle=self.budget is not None and not slow,
            progress=self.progress.update,  # shows the queue when the pending-bytes bound makes training wait
        )

    def _slow_due(self, trainer: pl.Trainer, epoch: int) -> bool:
        """UMAP/t-SNE are due every ``slow_every_k`` runs and at the last epoch; while the worker still runs an
        earlier run's UMAP/t-SNE they are postponed to the next run, so training never queues behind them."""
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs - 1
        self._slow_owed |= len(self.done_epochs) % self.slow_every_k == 0
        if not (last or (self._slow_owed and not self.worker.busy_slow())):
            return False
        self._slow_owed = False
        return True

    @override
    def _plan(self, credit: float | None, essential: bool, epoch: int) -> Any:
        """The capture (and PCA) when it fits or is essential; UMAP and t-SNE only when their estimated cost
        (the last slow job's seconds, else a first-call estimate that includes numba's compilation) fits too."""
        if credit is None:
            return True
        capture_cost = self._last_cost or 0.0
        if not essential and capture_cost > credit:
            self._skip(epoch, "run", f"capture took {capture_cost:.2f} s, credit {credit:.2f} s")
            return None
        slow_methods = [m for m in self.methods if m != "pca"]
        if not slow_methods:
            return True
        raw = self.worker.slow_cost if self.worker.slow_cost is not None else FIRST_SLOW_SECONDS * len(slow_methods)
        estimate = raw * contention()  # what it will be charged: it runs beside training
        if estimate > credit - capture_cost:
            reason = f"estimated {estimate:.1f} s, credit {credit - capture_cost:.2f} s"
            self._skip(epoch, "+".join(slow_methods), reason)
            return {"slow": False}
        return {"slow": True}

    def _project(self, epoch: int, captured: Captured, methods: tuple[str, ...]) -> None:
        """The background job of a run."""
        result = compute(epoch, captured, self.probe, self.config, self.history, methods)
        self.history.add(result)
        self.sink.write(result)
        if self._projector is not None:
            self._projector.add_epoch(epoch, *result.projector())

    def _report_errors(self) -> None:
        for epoch, err in self.worker.errors():
            self._failed(epoch, err, "background projection")

    @override
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.worker.wait(progress=self.progress.update)  # jobs running and pending, shown when the wait is long
        self._report_errors()
        frames, predictions = self.history.snapshot()
        if self.aligned_umap_at_end:
            for layer, joint in aligned_frames(self.history, self.config).items():
                frames[(layer, "aligned_umap")], epochs = joint, sorted(joint)
                stacked = np.stack([joint[e] for e in epochs])
                self.sink.npz(epochs[-1], f"{layer}_aligned_umap", frames=stacked, epochs=np.asarray(epochs))
        if self.html and frames:
            self.sink.plotly_js()
            for name, page in animations(frames, predictions, self.probe).items():
                self.sink.file(name, page)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            super().on_train_end(trainer, pl_module)
        finally:
            self.worker.shutdown()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.worker.shutdown()
        super().on_exception(trainer, pl_module, exception)
