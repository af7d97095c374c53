"""``DynamicsCallback``: how predictions evolve during training, as in Iuzzolino et al., "Interactive Deep
Convolutional Neural Network Visualization" (per-epoch confusion matrices and the probabilities of every class).

The computation is :class:`trainviz.probes.dynamics.DynamicsProbe` (plan, compute a share, merge); this module is
the Lightning lifecycle around it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import override

from trainviz.callbacks.base import ProbeCallback
from trainviz.core.contract import Credit, Share
from trainviz.core.guard import probe_guard
from trainviz.probes.dynamics import DynamicsConfig, DynamicsOptions, DynamicsProbe

if TYPE_CHECKING:
    import pytorch_lightning as pl

__all__ = ["DynamicsCallback"]


class DynamicsCallback(ProbeCallback):
    """Per-epoch confusion matrix, per-class accuracy, probability histograms and class-probability bars.

    Logged keys (step = epoch index):
        - ``trainviz/dynamics/accuracy`` (scalar): probe-set accuracy.
        - ``trainviz/dynamics/per_class_accuracy/<class>`` (scalars).
        - ``trainviz/dynamics/confusion_matrix`` (image): row-normalised, counts in cells.
        - ``trainviz/dynamics/prob_true_class`` and ``trainviz/dynamics/confidence`` (histograms):
          probability given to the true class, and the top probability.
        - ``trainviz/dynamics/probabilities`` (image): probe images beside bars of all class probabilities.
        - ``trainviz/dynamics/seconds`` (scalar): cost of the run.
        - artifacts ``dynamics/epoch_XXXX/predictions.npz`` (``probs``, ``labels``, ``ids``, ``confusion``)
          and ``dynamics/metrics.jsonl`` (:class:`~trainviz.probes.dynamics.DynamicsResult` records).

    Args:
        n_examples: probe images shown with their probability bars (one per class first).
        **kwargs: :class:`~trainviz.callbacks.base.ProbeCallback` arguments (``every_n_epochs``,
            ``probe_size`` (default 256), ...).

    Raises:
        ValueError: in ``__init__``, for an argument out of range (``n_examples`` not a positive int, or a
            base-class argument); at fit start, before the first epoch, when there is no data to draw the probe
            set from or the model's output is not logits (the message names ``output=``).

    Example:
        >>> import tempfile, pytorch_lightning as pl
        >>> from trainviz import DynamicsCallback
        >>> from trainviz.data import ShapesDataModule
        >>> from trainviz.models import DemoClassifier
        >>> cb = DynamicsCallback(probe_size=16, n_examples=2)
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, callbacks=[cb], logger=False,
        ...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...                      default_root_dir=tempfile.mkdtemp())
        >>> trainer.fit(DemoClassifier(num_classes=6, in_channels=3), ShapesDataModule(n_train=64, n_val=32))
        >>> cb.done_epochs
        [0]
    """

    name = "dynamics"
    budget_share = 0.1  # of default_callbacks(budget=)
    needs_pixels = False  # computes on the model's own inputs; only its pictures need a display mapping
    default_probe_size = 256

    def __init__(self, n_examples: int = 6, *, probe_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(probe_size=probe_size, **kwargs)
        self.options = DynamicsOptions(n_examples=n_examples)
        self.prober: DynamicsProbe | None = None

    @override
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        config = DynamicsConfig(
            n_examples=self.options.n_examples, batch_size=self.batch_size, norm=self.norm, display=self.display
        )
        self.prober = DynamicsProbe(self.device_probe(pl_module), config)
        with probe_guard(pl_module):  # raises now if the output is not logits (names `output=`)
            self.prober.compute(self.logits_model(pl_module), Share.of(self.prober.probe.subset(0, 2)), True, None)
        self.prober.clean = self._clean_view(trainer)  # its forward, shared with robustness and the embedding

    @override
    def _plan(self, credit: float | None, essential: bool, epoch: int) -> Any:
        if super()._plan(credit, essential, epoch) is None:  # the last whole run does not fit the credit
            return None
        return self.prober.plan(Credit(credit, essential, epoch))
