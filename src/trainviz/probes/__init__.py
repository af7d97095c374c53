"""Per capability, the pure computation (torch, no Lightning) and its typed result: ``compute(model, probe,
config) -> Result`` (see :mod:`trainviz.core.result`). The callbacks in :mod:`trainviz.callbacks` call these and
hand the result to their sink; the report reads the results back with ``from_record``."""
