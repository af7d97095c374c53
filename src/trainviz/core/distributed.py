"""The collectives of the compute contract across processes: rank 0's plan to every rank, every rank's partial to
rank 0, and one agreed decision when a share failed.

Every rank calls each of these in the same order, so the collectives match (a rank with an empty share calls them
too). With one process, or without an initialised default process group, they are local and free.

Example:
    >>> c = Collective(world=1, rank=0)
    >>> c.broadcast({"rows": [1, 2]}), c.gather("part"), c.all_ok(True)
    ({'rows': [1, 2]}, ['part'], True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Collective"]


@dataclass(frozen=True)
class Collective:
    """The processes that compute a probe together: ``world`` of them, this one ``rank``.

    Objects travel pickled (:func:`torch.distributed.broadcast_object_list`, :func:`torch.distributed.gather_object`):
    plans and partials are plain data with CPU tensors (:func:`trainviz.core.transfer.to_host`).
    """

    world: int = 1
    rank: int = 0

    @classmethod
    def of(cls, trainer: Any) -> Collective:
        """The trainer's processes (one when the default process group is not initialised)."""
        world = int(getattr(trainer, "world_size", 1) or 1)
        if world > 1 and not (dist.is_available() and dist.is_initialized()):
            world = 1
        return cls(world, int(getattr(trainer, "global_rank", 0) or 0) if world > 1 else 0)

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0; ``None`` on the other ranks."""
        if self.world == 1:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_ok(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every rank (one all-reduce): the point where a rank's failure becomes everyone's."""
        if self.world == 1:
            return bool(ok)
        flag = torch.tensor([0 if ok else 1], device=self._device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) == 0

    @staticmethod
    def _device() -> torch.device:
        """Where the backend wants its tensors: the current CUDA device under NCCL, else the CPU."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
