"""Which training strategies trainviz can probe under, checked at setup (never a crash or a hang at epoch end).

Under DDP every rank computes its share of each probe on its own full copy of the model, and rank 0 merges
(:meth:`trainviz.callbacks.base.ProbeCallback.run`). A model sharded across processes needs more: FSDP2
(``ModelParallelStrategy`` with ``fully_shard``), FSDP1 (``FSDPStrategy``) and DeepSpeed ZeRO stage 3 gather the
parameters with collectives inside every forward, so every rank must run the same number of probe forwards and
backwards in the same order, which shares of different sizes (an empty one, a last short batch) and the probes'
data-dependent loops (steps-to-flip stops when every image flipped) do not guarantee; gloo aborts such a job ("Is
there a distributed collective mismatch?"), NCCL hangs until its watchdog. Until the probes are lock-stepped, such
a run is refused at setup, on every rank, with what to do.

Supported: one process (any strategy, sharded ones with ``devices=1`` included), DDP (``"ddp"``, ``"ddp_spawn"``,
``"ddp_notebook"``) and DeepSpeed stages 1 and 2 (parameters are not sharded). Refused with more than one process:
``ModelParallelStrategy``, ``FSDPStrategy`` and DeepSpeed stage 3.

Example:
    >>> from types import SimpleNamespace
    >>> class FSDPStrategy: ...
    >>> sharded_strategy(SimpleNamespace(strategy=FSDPStrategy(), world_size=2))
    'FSDPStrategy'
    >>> sharded_strategy(SimpleNamespace(strategy=FSDPStrategy(), world_size=1)) is None
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["SHARDED", "check_strategy", "sharded_strategy"]

SHARDED = ("ModelParallelStrategy", "FSDPStrategy")
"""Strategies (by class name, in either Lightning namespace) whose forwards gather sharded parameters."""


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


def check_strategy(trainer: Any, who: str) -> None:
    """Raise before the first epoch when ``trainer`` shards its model across processes (see the module).

    Raises:
        ValueError: the strategy is not supported; the message names it, the world size and what to do.
    """
    name = sharded_strategy(trainer)
    if name is None:
        return
    raise ValueError(
        f"{who}: trainviz cannot probe a model sharded across processes yet ({name}, world size "
        f"{trainer.world_size}). Its probes' forwards differ in number from rank to rank, which would "
        "desynchronise the ranks' collectives and crash or hang the run at the first epoch end. Supported: one "
        "process, DDP "
        "(strategy='ddp' or 'ddp_spawn'), DeepSpeed stages 1-2. Train this run without trainviz's callbacks, "
        "or probe its checkpoints in a DDP or single-device run."
    )
