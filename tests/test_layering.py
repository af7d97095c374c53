"""The layering rule: ops/, probes/ and render/ never import Lightning (either namespace), nor trainviz.data
(``Normalization`` lives in core/). Every submodule is imported
in one fresh process (their package `__init__` files import little, so the packages are walked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

CHECK = """
import importlib, pkgutil, sys
names = []
for package in ("trainviz.ops", "trainviz.probes", "trainviz.render"):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(info.name)
        names.append(info.name)
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"lightning", "pytorch_lightning"})
loaded += sorted(m for m in sys.modules if m.startswith("trainviz.data"))
print(len(names), loaded)
"""


def test_ops_probes_and_render_import_no_lightning():
    env = {k: v for k, v in os.environ.items() if k != "TRAINVIZ_LIGHTNING"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    count, loaded = done.stdout.split(" ", 1)
    assert int(count) >= 30 and loaded.strip() == "[]", done.stdout


def test_normalization_lives_in_core_and_keeps_its_old_names():
    from trainviz.core.normalization import Normalization
    from trainviz.data import Normalization as from_data
    from trainviz.data.base import Normalization as from_base

    assert from_data is from_base is Normalization
