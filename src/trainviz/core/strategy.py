"""Which training strategies trainviz can probe under, checked at setup (never a crash or a hang at epoch end).

trainviz's probes run their forwards and backwards on rank 0 while the other ranks go on. That is right under DDP,
where every rank holds the whole model, and wrong for a model sharded across processes: FSDP2
(``ModelParallelStrategy`` with ``fully_shard``), FSDP1 (``FSDPStrategy``) and DeepSpeed ZeRO stage 3 gather the
parameters with collectives inside every forward, so a forward on rank 0 alone meets the other ranks' training
collectives: gloo aborts the job ("Is there a distributed collective mismatch?"), NCCL hangs until its watchdog.
Until every rank takes part in every probe, such a run is refused at setup, on every rank, with what to do.

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
        f"{trainer.world_size}). Its probes run forwards on rank 0 alone, which would desynchronise the ranks' "
        "collectives and crash or hang the run at the first epoch end. Supported: one process, DDP "
        "(strategy='ddp' or 'ddp_spawn'), DeepSpeed stages 1-2. Train this run without trainviz's callbacks, "
        "or probe its checkpoints in a DDP or single-device run."
    )
