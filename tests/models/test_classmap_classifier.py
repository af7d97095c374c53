"""ClassMapClassifier's `decoder` option: threaded to the net, and validated by LightningCLI from YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning.cli import LightningCLI

from trainviz.data import ShapesDataModule
from trainviz.models import ClassMapClassifier

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("decoder, groups", [("seed003", [1, 6]), ("grouped", [6, 6])])
def test_decoder_option_reaches_the_net(decoder, groups):
    model = ClassMapClassifier(num_classes=6, encoder="small", decoder=decoder)
    assert model.hparams.decoder == decoder and model.net.decoder.variant == decoder
    assert [stage.upsample.groups for stage in model.net.decoder.stages] == groups
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 6)


def _cli(args: list[str], tmp_path, monkeypatch) -> LightningCLI:
    monkeypatch.chdir(tmp_path)
    return LightningCLI(ClassMapClassifier, ShapesDataModule, args=[*args, "--trainer.logger", "false"], run=False)


def test_lightning_cli_validates_the_decoder_literal(tmp_path, monkeypatch):
    cli = _cli(["--model.decoder", "grouped", "--model.encoder", "small"], tmp_path, monkeypatch)
    assert cli.model.net.decoder.variant == "grouped"
    with pytest.raises(SystemExit):
        _cli(["--model.decoder", "ungrouped"], tmp_path, monkeypatch)


def test_full_preset_names_zhangs_decoder():
    config = yaml.safe_load((ROOT / "callbacks" / "full.yaml").read_text())
    assert config["model"]["init_args"]["decoder"] == "seed003"
