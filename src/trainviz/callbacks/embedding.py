"""``EmbeddingCallback``: layers as embeddings during training (Fleuret's EE-559 lecture "Layers as embeddings").

The capture, projections, alignment and scores are :mod:`trainviz.probes.embedding`; this module is their
Lightning lifecycle: cadence, budget plan, checkpoint state, the DDP capture, the background worker's jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.contract import Credit
from trainviz.core.display import pictures
from trainviz.core.guard import probe_guard
from trainviz.core.layers import Layout
from trainviz.core.namespace import info
from trainviz.probes import embedding as probes
from trainviz.probes.embedding import MAX_POINTS, METHODS, EmbeddingOptions
from trainviz.render.images import to_uint8

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["EmbeddingCallback", "METHODS", "MAX_POINTS"]

Method = Literal["pca", "umap", "tsne"]
_DEFAULT_POINTS = 256  # default probe size: up to this many points of the split (a linear-probe accuracy of 0.8 to
# +-0.049, as robustness and dynamics; about 25 points a class at 10 classes). Its capture is one forward of every
# point: 512 took 0.5 s at 32 px on 2 CPU cores (a third of budget 0.1's pool at 16 s epochs), 256 half that


class EmbeddingCallback(ProbeCallback):
    """Features of one or more layers for a fixed probe set, projected to 2-D every run, kept comparable across
    epochs, scored, and shown in TensorBoard (scatter images, Embedding Projector) and as plotly animations.

    A run captures the features on the training thread (under DDP every rank captures its share and
    ``all_gather`` assembles it), then projects and scores them on a background thread
    (:mod:`trainviz.probes.embedding`): PCA every run; UMAP and t-SNE every ``slow_every_k`` runs and at the
    last epoch, postponed to the next run while the worker is still busy with earlier ones. The dear scores (the
    linear probe and the frames' trustworthiness) run every ``scores_every`` runs and at the first and last, and
    under a ``budget`` a short credit drops them first (owed to the next run); the record's ``scores`` says
    whether they ran. At fit end it waits for the worker and writes the animations (and, with
    ``aligned_umap_at_end``, one AlignedUMAP over all epochs).

    Logged keys (step = epoch index; ``<layer>`` each resolved layer, ``<method>`` each method run):
        - ``trainviz/embedding/<layer>/knn_accuracy``, ``.../silhouette``, ``.../linear_probe_accuracy``
          (``linear_probe_folds > 0``, runs with the dear scores): leave-one-out 5-NN accuracy, class
          silhouette, cross-validated logistic-regression accuracy, all in feature space.
        - ``trainviz/embedding/<layer>/pca/explained_variance``; ``.../<method>/trustworthiness`` (runs with the
          dear scores; 1: the frame's 5-neighbourhoods are those of the features); ``.../<method>/stability``
          (from a method's second frame on: mean displacement since its previous frame over its radius).
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
        probe_size: probe points; ``None`` takes up to 256 points of the split; at most 10,000.
        max_dim: features wider than this are randomly projected to ``max_dim`` dimensions (Johnson-Lindenstrauss).
        n_neighbors: UMAP's neighbourhood size.
        perplexity: t-SNE's perplexity (clipped to ``(N - 1) / 3``).
        linear_probe_folds: folds of the linear-probe cross-validation (``0`` skips it).
        scores_every: the dear scores (linear probe, trustworthiness: most of a PCA run's background seconds) run
            every ``k``-th run and at the first and the last epoch; the other scores every run. Under a budget
            they are the first part a short credit drops (and the next run owes them). The record's ``scores``
            says whether a run has them; without them their keys are absent.
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
        *,
        aligned_umap_at_end: bool = False,
        probe_size: int | None = None,
        max_dim: int = 4096,
        n_neighbors: int = 15,
        perplexity: float = 30.0,
        linear_probe_folds: int = 3,
        scores_every: int = 1,
        save_features: bool = False,
        projector: bool = True,
        html: bool = True,
        batch_size: int = 64,
        **kwargs: Any,
    ) -> None:
        self.options = EmbeddingOptions.pick(locals())
        super().__init__(probe_size=probe_size or _DEFAULT_POINTS, batch_size=batch_size, **kwargs)
        self.requested_probe_size = probe_size
        self._layers: dict[str, torch.nn.Module] = {}
        self._layout: Layout | None = None
        self.history = probes.EmbeddingHistory(keep_features=self.options.aligned_umap_at_end)
        self.worker = probes.EmbeddingWorker(owner=self.name)
        self.prober: probes.EmbeddingProbe | None = None
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
            if source is not None:  # up to 256 points of the split (the base raises without data)
                self.probe_size = min(_DEFAULT_POINTS, len(source))
        super().setup(trainer, pl_module, stage)

    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        probes.check_setting(self.options, len(self.probe))
        example = self.example_batch(pl_module, 1)
        with probe_guard(pl_module):
            specs, self._layout, auto = probes.resolve_layers(self.logits_model(pl_module), example, self.layers)
        if auto is not None:
            info(f"trainviz: EmbeddingCallback layers='auto' resolved to {auto!r}", self._trainer)
        seed = self.probe_seed % 2**32

        def check(model: Any, example: torch.Tensor, layers: dict[str, torch.nn.Module]) -> None:
            probes.capture(model, layers, example, self.options, self._layout, seed=seed)

        self._layers = self.setup_layers(pl_module, specs, check=check)
        args: dict[str, Any] = {"layout": self._layout, "seed": seed, "history": self.history, "worker": self.worker}
        self.prober = probes.EmbeddingProbe(self.probe, self.options, layers=self._layers, **args)
        # its capture, shared with the dynamics' forward when they probe the same images
        self.prober.clean = self._clean_view(trainer, self._layers, probes.pooler(self.options, self._layout, seed))

    @override
    def _start_fit(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super()._start_fit(trainer, pl_module)
        if not trainer.is_global_zero or self.probe is None:
            return
        # Under a budget umap-learn's compilation is paid, and counted, with the first UMAP that fits.
        warmup = probes.uses_umap(self.options) and self.budget is None
        # before the worker starts: its warm-up imports umap-learn (and scikit-learn) on its own thread, and two
        # threads importing one package at once meet it half-initialised
        probes.import_scores()  # their one-time import is not a run's cost (the budget plans from it)
        self.worker.start(warmup=warmup, approximate=len(self.probe) >= 4096)
        if self.prober is not None:  # runs whose job was still going when the checkpoint was saved
            self.prober.recover(self.done_epochs, self.sink.read_npz)
        self._projector = self.sink.projector(self.probe.fingerprint()[:12]) if self.options.projector else None
        if self._projector is not None:
            self._projector.sprite(to_uint8(pictures(self.probe.images.float(), self.norm, self.display)))

    @override
    def _ran(self, seconds: float) -> None:
        """The run's seconds less its dear scores' when they ran inline: the price of its least run."""
        plan = self.plan
        if self.prober is None or not isinstance(plan, probes.EmbeddingPlan):
            return
        scores = plan.scores and not plan.slow and self.budget is not None  # a PCA-only job ran inline
        dear = self.prober.scores_cost.get(tuple(plan.methods), 0.0) if scores else 0.0
        self.prober.run_cost = max(seconds - dear, self.prober.cost or 0.0)

    @override
    def _least_cost(self) -> float | None:
        """Its last run without the dear scores (UMAP, t-SNE and the scores run when its own credit allows)."""
        return None if self.prober is None else self.prober.run_cost

    @override
    def _plan(self, credit: float | None, essential: bool, epoch: int) -> Any:
        assert self.prober is not None
        max_epochs = None if self._trainer is None else self._trainer.max_epochs
        last = max_epochs is not None and max_epochs > 0 and epoch >= max_epochs - 1
        plan = self.prober.plan(Credit(credit, essential, epoch), runs=len(self.done_epochs), last=last)
        for what, reason in self.prober.skipped:
            self._skip(epoch, what, reason)
        return plan

    @override
    def _merge(self, parts: list[Any]) -> None:
        """Rank 0: the shares' captures merged, then projected and written by the background worker."""
        assert self.prober is not None
        self._report_errors()
        captured = self.prober.merge(parts, self.plan)
        progress = self.progress.update  # shows the queue when the pending-bytes bound makes training wait
        inline = self.budget is not None
        self.prober.submit(
            captured, self.plan, self._write, charge=self._charge_background, inline_pca=inline, progress=progress
        )

    def _write(self, result: probes.EmbeddingResult) -> None:
        """The end of a run's background job."""
        self.sink.write(result)
        if self._projector is not None:
            self._projector.add_epoch(result.epoch, *result.projector())

    def _report_errors(self) -> None:
        for epoch, err in self.worker.errors():
            self._failed(epoch, err, "background projection")

    @override
    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.worker.wait(progress=self.progress.update)  # jobs running and pending, shown when the wait is long
        self._report_errors()
        if self.prober is None:
            return
        arrays, pages = self.prober.fit_end()
        for (epoch, name), values in arrays.items():
            self.sink.npz(epoch, name, **values)
        if pages:
            self.sink.plotly_js()
        for name, page in pages.items():
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
