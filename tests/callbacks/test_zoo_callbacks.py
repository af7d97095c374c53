"""CAM, feature-map and embedding callbacks with ``layers="auto"`` in real fits of timm vision transformers
(random weights): the layers they choose, and what they write."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from trainviz.callbacks.cam import CAMCallback
from trainviz.callbacks.dynamics import DynamicsCallback
from trainviz.callbacks.embedding import EmbeddingCallback
from trainviz.callbacks.features import FeatureMapCallback
from trainviz.core.hooks import count_hooks
from trainviz.probes.embedding import EmbeddingOptions, capture

timm = pytest.importorskip("timm")


class TimmClassifier(pl.LightningModule):
    def __init__(self, name: str, **kwargs) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = timm.create_model(name, pretrained=False, num_classes=6, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, _idx):
        x, y = batch[0], batch[1]
        out = self.net(x)
        logits = out if isinstance(out, torch.Tensor) else out[0]  # DeiT distilled trains on (cls, dist)
        return nn.functional.cross_entropy(logits, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kwargs", "cam_layer", "embedding_layer"),
    [
        # class + distillation token: 2 prefix tokens, declared by timm
        ("deit_tiny_distilled_patch16_224", {"patch_size": 8}, "net.blocks.1.norm1", "net.norm"),
        # channels-last maps: the final norm, whose (N, H, W, C) output the head averages
        ("swin_tiny_patch4_window7_224", {"window_size": 2, "depths": (1, 1, 1, 1)}, "net.norm", "net.norm"),
    ],
)
def test_auto_layers_on_transformers_in_a_fit(tmp_path, name, kwargs, cam_layer, embedding_layer, make_trainer):
    from trainviz.data import ShapesDataModule

    side = 32 if "deit" in name else 64  # Swin at 32 px ends on 1 x 1 maps
    model = TimmClassifier(name, img_size=side, **({"depth": 2} if "deit" in name else {}), **kwargs)
    cam = CAMCallback(probe_size=12)
    features = FeatureMapCallback(probe_size=12)
    embedding = EmbeddingCallback(methods="pca", linear_probe_folds=0, projector=False, html=False)
    dynamics = DynamicsCallback()  # the same 60 images as the embedding: its forward is the embedding's capture
    trainer = make_trainer(tmp_path, [cam, features, dynamics, embedding], max_epochs=1, limit_train_batches=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(does not have many workers|number of training batches).*")
        trainer.fit(model, ShapesDataModule(n_train=60, n_val=60, batch_size=30, size=side))
    assert list(cam._layers) == [cam_layer] and list(features._layers) == [cam_layer]
    assert list(embedding._layers) == [embedding_layer]
    assert cam.done_epochs == [0] and features.done_epochs == [0] and embedding.done_epochs == [0]
    assert count_hooks(model) == 0
    assert dynamics.clean_forward is embedding.clean_forward and embedding.clean_forward.hits == 1
    # the embedding: the class token after the final norm (timm's DeiT averages it with the distillation token);
    # Swin: timm's own pooled features, the average of its channels-last maps
    images = embedding.probe.images[:8]
    model.eval()
    feats, _ = capture(model, embedding._layers, images, EmbeddingOptions(methods="pca"), embedding._layout)
    with torch.no_grad():
        tokens = model.net.forward_features(images)
        expected = tokens[:, 0] if "deit" in name else model.net.forward_head(tokens, pre_logits=True)
    torch.testing.assert_close(feats[embedding_layer], expected, atol=1e-5, rtol=1e-5)
