"""Device -> host in one transfer (house rule 5: tensors move to the CPU once, at the sink)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["to_cpu", "to_host", "whole"]


def to_cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Move several device tensors to the CPU in one transfer, as float64 arrays with their shapes kept.

    Example:
        >>> out = to_cpu({"acc": torch.tensor(0.5), "per_class": torch.tensor([1.0, 0.0])})
        >>> float(out["acc"]), out["per_class"].tolist()
        (0.5, [1.0, 0.0])
    """
    if not tensors:
        return {}
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors.values()]).cpu().numpy()
    out, start = {}, 0
    for name, t in tensors.items():
        out[name] = flat[start : start + t.numel()].reshape(tuple(t.shape))
        start += t.numel()
    return out


def to_host(tree: Any) -> Any:
    """Every tensor of a nested structure (dicts, lists, tuples; other values kept) on the CPU, detached, with its
    dtype kept: what a share's partial result holds, so it can be gathered between processes. Device copies are
    queued without blocking and waited for once.

    Example:
        >>> out = to_host({"maps": {"a": torch.ones(2, 3, dtype=torch.float16)}, "n": 2, "ids": [torch.arange(2)]})
        >>> out["maps"]["a"].dtype, out["n"], out["ids"][0].device.type
        (torch.float16, 2, 'cpu')
    """
    devices: set[torch.device] = set()

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            if x.device.type == "cpu":
                return x.detach()
            devices.add(x.device)
            return x.detach().to("cpu", non_blocking=True)
        if isinstance(x, Mapping):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(move(v) for v in x)
        return x

    out = move(tree)
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return out


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter as one plain tensor, detached: a parameter sharded across processes (FSDP2's ``DTensor``) is
    gathered from every rank, which is a collective, so every rank calls it together (the probes' lockstep,
    :mod:`trainviz.core.strategy`); any other tensor is itself.

    Example:
        >>> whole(torch.nn.Linear(2, 3).weight).shape
        torch.Size([3, 2])
    """
    full = getattr(tensor, "full_tensor", None)  # torch.distributed.tensor.DTensor
    return (full() if callable(full) else tensor).detach()
