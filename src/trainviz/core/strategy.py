"""Which training strategies trainviz can probe under, checked at setup (never a crash or a hang at epoch end).

Under DDP every rank computes its share of each probe on its own full copy of the model, and rank 0 merges
(:meth:`trainviz.callbacks.base.ProbeCallback.run`). A model sharded across processes needs more: its forwards and
backwards gather the parameters with collectives, so every rank must run the same probe forwards and backwards in
the same order. A rank-0-only forward meets the other ranks' training collectives: gloo aborts the job ("Is there a
distributed collective mismatch?"), NCCL hangs until its watchdog.

So under FSDP2 (Lightning's ``ModelParallelStrategy`` with ``fully_shard`` in ``configure_model``) the probes run in
*lockstep* (:attr:`trainviz.core.distributed.Collective.lockstep`): every rank computes the whole probe set with the
plan rank 0 broadcast, the same inputs and the per-image seeds, so every rank makes the same calls, data-dependent
loops included (steps-to-flip stops at the same step), and rank 0 keeps its own result. The parts that copy the model
(the saliency sanity checks' randomised copies) are skipped with the reason in the record.

Supported: one process (any strategy, sharded ones with ``devices=1`` included), DDP (``"ddp"``, ``"ddp_spawn"``,
``"ddp_notebook"``), DeepSpeed stages 1 and 2 (parameters are not sharded), and ``ModelParallelStrategy`` with a
tensor-parallel size of 1 (FSDP2). Refused at setup with more than one process: ``FSDPStrategy`` (FSDP1: Lightning
wraps the whole LightningModule, and a forward that does not enter through the wrapper sees flattened, unsharded
shards), DeepSpeed ZeRO stage 3 (its parameters are gathered by hooks of the engine's own forward, which a probe
does not enter) and tensor parallelism (a layer's activations are split across ranks).

Example:
    >>> from types import SimpleNamespace
    >>> class FSDPStrategy: ...
    >>> sharded_strategy(SimpleNamespace(strategy=FSDPStrategy(), world_size=2))
    'FSDPStrategy'
    >>> sharded_strategy(SimpleNamespace(strategy=FSDPStrategy(), world_size=1)) is None
    True
    >>> refusal(SimpleNamespace(strategy=FSDPStrategy(), world_size=2)) is not None
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["SHARDED", "check_strategy", "refusal", "sharded_strategy"]

SHARDED = ("ModelParallelStrategy", "FSDPStrategy")
"""Strategies (by class name, in either Lightning namespace) whose forwards gather sharded parameters."""

LOCKSTEP = ("ModelParallelStrategy",)
"""The sharded strategies the probes run under, every rank in lockstep."""


def sharded_strategy(trainer: Any) -> str | None:
    """The strategy's name when it shards the model across more than one process, else ``None``."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is None or int(getattr(trainer, "world_size", 1) or 1) <= 1:
        return None
    names = {klass.__name__ for klass in type(strategy).__mro__}
    for name in SHARDED:
        if name in names:
            return type(strategy).__name__
    if "DeepSpeedStrategy" in names:
        config = getattr(strategy, "config", None) or {}
        if int((config.get("zero_optimization") or {}).get("stage", 0) or 0) == 3:
            return f"{type(strategy).__name__} (ZeRO stage 3)"
    return None


def _tensor_parallel_size(strategy: Any) -> int:
    mesh = getattr(strategy, "device_mesh", None)  # ModelParallelStrategy's, once the processes are set up
    try:
        return int(mesh["tensor_parallel"].size()) if mesh is not None else 1
    except (KeyError, RuntimeError, TypeError, AttributeError):
        return 1


def refusal(trainer: Any) -> str | None:
    """Why trainviz cannot probe under the trainer's strategy (``None``: it can)."""
    name = sharded_strategy(trainer)
    if name is None:
        return None
    names = {klass.__name__ for klass in type(trainer.strategy).__mro__}
    if any(lockstep in names for lockstep in LOCKSTEP):
        size = _tensor_parallel_size(trainer.strategy)
        if size == 1:
            return None
        return (
            f"tensor parallelism (tensor_parallel_size={size}) splits a layer's activations across ranks, which the "
            "probes' hooks and maps cannot read whole. Use ModelParallelStrategy(tensor_parallel_size=1) (FSDP2 "
            "sharding only), which trainviz supports"
        )
    return (
        f"{name} with {trainer.world_size} processes gathers its parameters inside the strategy's own wrapped "
        "forward, which a probe's forward does not enter. Shard with FSDP2 instead: "
        "strategy=ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1) and `fully_shard` in "
        "`configure_model`, which trainviz supports (every rank probes in lockstep)"
    )


def check_strategy(trainer: Any, who: str) -> None:
    """Raise before the first epoch when trainviz cannot probe under ``trainer``'s strategy (see the module).

    Raises:
        ValueError: the strategy is not supported; the message names it, the world size and what to do.
    """
    why = refusal(trainer)
    if why is None:
        return
    raise ValueError(
        f"{who}: trainviz cannot probe this sharded model: {why}. Supported: one process, DDP (strategy='ddp' or "
        "'ddp_spawn'), DeepSpeed stages 1-2, and FSDP2 (ModelParallelStrategy with tensor_parallel_size=1). "
        "Otherwise train this run without trainviz's callbacks and probe its checkpoints in a supported run."
    )
