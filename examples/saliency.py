"""Saliency maps during training (Fleuret, EE-559 'Under the hood': gradients, SmoothGrad, guided backpropagation,
occlusion) with the sanity checks of Adebayo et al. 2018 on the embedded shapes data, then the maths alone.

    python examples/saliency.py              # then: tensorboard --logdir runs/saliency
    python examples/saliency.py --quick      # a few seconds: tiny settings, one epoch

What to look for: ``trainviz/saliency/maps`` (one column per method), the deletion / insertion AUCs, and at the
sanity runs ``trainviz/saliency/<method>/sanity/<layer>``: gradient maps decorrelate from the original ones as
the layers are re-initialised from the top, guided backpropagation's barely do (Adebayo et al.'s finding).
"""

import sys

import pytorch_lightning as pl

from trainviz.callbacks.saliency import SaliencyCallback
from trainviz.data import ShapesDataModule
from trainviz.models import DemoClassifier
from trainviz.ops.saliency import saliency, saliency_map
from trainviz.ops.sanity import cascading_randomization, spearman

if __name__ == "__main__":
    quick = "--quick" in sys.argv
    pl.seed_everything(0)
    dm = ShapesDataModule(n_train=128, n_val=64) if quick else ShapesDataModule()
    small = dict(probe_size=8, smoothgrad_samples=4, deletion_steps=4, sanity_images=2) if quick else {}
    callback = SaliencyCallback(methods=["gradient", "smoothgrad", "guided_backprop"], sanity_every=2, **small)
    trainer = pl.Trainer(
        max_epochs=1 if quick else 6,
        limit_train_batches=2 if quick else None,
        default_root_dir="runs/saliency-quick" if quick else "runs/saliency",
        callbacks=[callback],
        enable_progress_bar=not quick,
    )
    model = DemoClassifier(num_classes=dm.num_classes, in_channels=dm.in_channels)
    trainer.fit(model, dm)

    # The same check by hand with the ops: randomise the trained model from the top and compare the maps.
    images, labels = callback.probe.images[:8], callback.probe.labels[:8]
    model.eval()
    for method in ["gradient", "guided_backprop"]:

        def explain(m, x, t, method=method):
            return saliency_map(saliency(m, x, t, method))

        reference = explain(model, images, labels)
        steps = cascading_randomization(model, images, labels, explain)
        print(method, {layer: round(spearman(reference, maps).mean().item(), 2) for layer, maps in steps})
    print(f"sanity runs at epochs {callback.sanity_epochs}; tensorboard --logdir {trainer.log_dir}")
