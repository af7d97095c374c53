"""Turn what a model returns into logits ``(N, K)``: the ``output=`` option of every probe callback.

Models as users have them return more than logits: ``(logits, aux)`` tuples, dicts, Hugging Face style
``ModelOutput`` objects. An *output spec* says where the logits are:

* ``None`` (default): a tensor is the logits; a tuple/list whose first element is a 2-D tensor gives that
  element; an object with a ``.logits`` attribute (Hugging Face ``ModelOutput``, which is also dict-like) gives
  that attribute; a dict with a ``"logits"`` key gives that value.
* a ``str``: a key of a dict output, else an attribute (``"logits"``, a namedtuple field).
* an ``int``: an index into a tuple/list output (``0`` for ``(logits, aux)``).
* a callable ``out -> logits`` for anything else.

Whatever the spec picks must be a 2-D tensor; otherwise a ``ValueError`` says what the model returned
(types and shapes of the elements) and how to fix it.

:class:`LogitsModel` applies a spec around a model, so that the ops (which take a model returning logits)
can be given any model. It is a call adapter, not a container: it does not register the model as a child,
and its module tree (``named_modules``, ``modules``, ``parameters``, ``buffers``) *is* the model's, with the
model's own layer names, so layers resolve, hooks fire and ``train()``/``eval()``/``to()`` act on the model.

Example:
    >>> import torch, torch.nn as nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(4, 3)
    ...     def forward(self, x):
    ...         return self.fc(x), x.mean(1)
    >>> model = LogitsModel(Net())  # the default takes the first element of the tuple
    >>> model(torch.randn(2, 4)).shape
    torch.Size([2, 3])
    >>> [name for name, _ in model.named_modules()]
    ['', 'fc']
    >>> to_logits({"scores": torch.zeros(2, 5)}, "scores").shape
    torch.Size([2, 5])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Optional

import torch
from torch import nn

__all__ = [
    "LogitsModel",
    "OutputSpec",
    "as_logits_model",
    "check_output_spec",
    "describe_output",
    "expect_logits",
    "to_logits",
    "unwrap",
]

# int before str so that LightningCLI reads `output: 0` from YAML as an index
OutputSpec = Optional[int | str | Callable[[Any], torch.Tensor]]

_HOW = (
    "pass `output=` to the callback (or `default_callbacks(output=...)`): a key, an index or a callable "
    "that returns the logits, e.g. output=0 for (logits, aux), output='logits' for a dict, "
    "output=lambda out: out['head'][0]; with the ops, wrap the model in "
    "`trainviz.core.outputs.LogitsModel(model, output=...)`"
)


def check_output_spec(output: Any) -> OutputSpec:
    """Return ``output`` if it is ``None``, a non-empty str, an int or a callable, else raise ``ValueError``."""
    if output is None or callable(output):
        return output
    if isinstance(output, str) and output:
        return output
    if isinstance(output, int) and not isinstance(output, bool):
        return output
    raise ValueError(
        "Expected `output` to be None, a key (str), an index (int) or a callable that returns the logits, "
        f"got {output!r}."
    )


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)}"
    if value is None:
        return "None"
    return type(value).__name__


def describe_output(out: Any, limit: int = 6) -> str:
    """What a model returned, one level deep: ``tuple(Tensor[8, 6], Tensor[8, 16])``,
    ``dict(logits: Tensor[8, 6], aux: Tensor[8])``, ``Tensor[8, 6, 1]``, ``str``."""
    if isinstance(out, Mapping):
        items = [f"{k}: {_short(v)}" for k, v in list(out.items())[:limit]]
        more = ", ..." if len(out) > limit else ""
        return f"{type(out).__name__}({', '.join(items)}{more})"
    if isinstance(out, (tuple, list)):
        fields = getattr(out, "_fields", None)  # namedtuple
        names = list(fields) if fields else [None] * len(out)
        items = [(f"{n}: " if n else "") + _short(v) for n, v in list(zip(names, out))[:limit]]
        more = ", ..." if len(out) > limit else ""
        return f"{type(out).__name__}({', '.join(items)}{more})"
    if not isinstance(out, torch.Tensor) and hasattr(out, "logits"):
        return f"{type(out).__name__}(logits: {_short(out.logits)})"
    return _short(out)


def _default(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor) and out[0].dim() == 2:
        return out[0]
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    return None


def _pick(out: Any, spec: int | str) -> Any:
    if isinstance(spec, int):
        if not isinstance(out, (tuple, list)):
            raise ValueError(
                f"`output={spec!r}` is an index, but the model returned {describe_output(out)}, "
                f"not a tuple or list; {_HOW}."
            )
        if not -len(out) <= spec < len(out):
            raise ValueError(f"`output={spec!r}` is out of range for the model's {describe_output(out)}; {_HOW}.")
        return out[spec]
    if isinstance(out, Mapping):
        if spec not in out:
            raise ValueError(f"`output={spec!r}`: no such key in the model's {describe_output(out)}; {_HOW}.")
        return out[spec]
    if not hasattr(out, spec):
        raise ValueError(f"`output={spec!r}`: the model's {describe_output(out)} has no such key or attribute; {_HOW}.")
    return getattr(out, spec)


def to_logits(out: Any, output: OutputSpec = None) -> torch.Tensor:
    """The logits in a model's output ``out``, picked by the spec ``output`` (see the module docstring).

    Raises:
        ValueError: the spec does not apply to ``out``, or what it picks is not a 2-D tensor; the message
            describes ``out`` and says how to pass ``output=``.

    Shape:
        returns ``(N, K)``
    """
    if output is None:
        logits = _default(out)
        if logits is None:
            raise ValueError(
                f"Expected the model to return logits of shape (N, K), but it returned {describe_output(out)}; {_HOW}."
            )
    elif callable(output):
        logits = output(out)
    else:
        logits = _pick(out, output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        if output is None:
            what = f"the model returned {describe_output(out)}"
        else:
            name = getattr(output, "__name__", None) if callable(output) else None
            what = (
                f"`output={name or output!r}` picked {describe_output(logits)} from the model's {describe_output(out)}"
            )
        raise ValueError(f"Expected logits of shape (N, K), but {what}; {_HOW}.")
    return logits


def expect_logits(out: Any) -> torch.Tensor:
    """``out`` if it is a 2-D tensor (what the ops take), else a ``ValueError`` that describes it and says how
    to pass ``output=`` (callbacks) or wrap the model in :class:`LogitsModel` (ops)."""
    if isinstance(out, torch.Tensor) and out.dim() == 2:
        return out
    raise ValueError(
        f"Expected the model to return logits of shape (N, K), but it returned {describe_output(out)}; {_HOW}."
    )


class LogitsModel(nn.Module):
    """Calls ``model`` and returns the logits picked from its output by ``output`` (:func:`to_logits`).

    The model is not registered as a child: the wrapper's module tree is the model's own, with the same
    layer names (``named_modules``, ``modules``, ``parameters``, ``buffers``, ``train``/``eval``, ``to``
    delegate to it), so :func:`trainviz.core.layers.resolve_layers` and hooks see the real layers. Save the model
    itself, not the wrapper (its ``state_dict`` is empty).

    Args:
        model: the network (e.g. the LightningModule).
        output: where the logits are (see the module docstring); ``None``: the defaults.

    Shape:
        inputs as the model's; output ``(N, K)``.
    """

    model: nn.Module
    output: OutputSpec

    def __init__(self, model: nn.Module, output: OutputSpec = None) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # not a child: layer names stay the model's own
        object.__setattr__(self, "output", check_output_spec(output))  # a module given as the spec is no child either
        self.training = model.training

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return to_logits(self.model(*args, **kwargs), self.output)

    def named_modules(
        self, memo: set | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Module]]:
        return self.model.named_modules(memo, prefix, remove_duplicate)

    def train(self, mode: bool = True) -> LogitsModel:
        self.model.train(mode)
        self.training = mode
        return self

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> LogitsModel:
        self.model._apply(fn, *args, **kwargs)
        return self

    def extra_repr(self) -> str:
        return f"model={type(self.model).__name__}, output={self.output!r}"


def as_logits_model(model: nn.Module, output: OutputSpec = None) -> LogitsModel:
    """``model`` wrapped in a :class:`LogitsModel` (a :class:`LogitsModel` with ``output=None`` is returned as is)."""
    if isinstance(model, LogitsModel) and output is None:
        return model
    return LogitsModel(model, output)


def unwrap(model: Any) -> Any:
    """The model inside a :class:`LogitsModel` (any other model as is), e.g. for its name in messages."""
    while isinstance(model, LogitsModel):
        model = model.model
    return model
