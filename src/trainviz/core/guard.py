"""``probe_guard``: the "a probe leaves no trace" contract in one place.

Inside the guard a probe may run forwards and ``torch.autograd.grad`` on the model; on exit:

* gradient mode, inference mode and autocast are as before (Lightning validates under
  ``torch.inference_mode()``; the guard turns it off so gradients can flow),
* every module's ``training`` flag is restored (the probe runs in eval mode, so BatchNorm running
  statistics and dropout are untouched),
* the global random streams (torch CPU and CUDA, numpy, Python ``random``) continue as if the probe never ran,
* parameter ``.grad`` tensors are the same objects as before (probes use ``torch.autograd.grad`` only,
  which never accumulates into ``.grad``; the guard also puts back any ``.grad`` a probe replaced),
* ``requires_grad`` flags of parameters are restored.

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.core.guard import probe_guard
    >>> net = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)).train()
    >>> with torch.inference_mode(), probe_guard(net):
    ...     x = torch.randn(4, 3, requires_grad=True)
    ...     g, = torch.autograd.grad(net(x).sum(), x)
    >>> net.training
    True
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
from torch import nn

__all__ = ["probe_guard", "preserve_rng", "model_device", "model_dtype"]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a stateless model)."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the model's first floating parameter (float32 if none)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


@contextmanager
def preserve_rng() -> Iterator[None]:
    """Fork the global random streams (torch CPU and initialised CUDA devices, numpy, Python ``random``):
    whatever runs inside, they continue afterwards as if it had not."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextmanager
def probe_guard(model: nn.Module, *, eval_mode: bool = True) -> Iterator[None]:
    """Run a probe on ``model`` without leaving a trace on training.

    Args:
        model: the raw module (a LightningModule, not its DDP wrapper).
        eval_mode: put the model in eval mode for the probe (default). Each module's own flag is
            restored afterwards, so mixed train/eval sub-modules (frozen BatchNorm) survive.
    """
    flags = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    grads = [p.grad for p in params]
    requires = [p.requires_grad for p in params]
    with ExitStack() as stack:
        stack.enter_context(preserve_rng())
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        device_type = model_device(model).type
        if device_type in ("cpu", "cuda"):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        try:
            if eval_mode:
                model.eval()
            yield
        finally:
            for m, flag in flags:
                m.training = flag
            for p, g, r in zip(params, grads, requires):
                if p.grad is not g:
                    p.grad = g
                if p.requires_grad != r:
                    p.requires_grad_(r)
