"""Pure tensor operations: no Lightning, TensorBoard or plotly, nothing written to disk.

Sub-modules: ``class_maps`` (per-class decoder maps: eq. 10, pattern stability, sharpness), ``cam`` (CAM,
Grad-CAM, Grad-CAM++, multi-layer), ``guided`` (guided backprop), ``localization`` (pointing game, faithfulness,
drift), ``corruptions`` (Zhang's noise probes, ImageNet-C-style suite, registry), ``adversarial`` (FGSM, steps-to-flip),
``robustness`` (accuracy, ECE, NLL, flip rate, CE/mCE), ``metrics`` (confusion matrix), ``predict`` (batched
logits), ``embedding`` (PCA, t-SNE, UMAP, alignment, quality metrics).
"""

from trainviz.ops.adversarial import fgsm, fgsm_accuracy, steps_to_flip
from trainviz.ops.cam import (
    CAMResult,
    ClassActivationMaps,
    cam,
    class_activation_maps,
    grad_cam,
    grad_cam_pp,
)
from trainviz.ops.class_maps import (
    PatternTracker,
    formation_epochs,
    logits_and_maps,
    map_sharpness,
    normalize_maps,
    stability_series,
)
from trainviz.ops.corruptions import (
    CORRUPTION_PARAMS,
    IMAGENET_C,
    SEED_PROBES,
    Corruption,
    corrupt,
    list_corruptions,
    register_corruption,
)
from trainviz.ops.embedding import (
    aligned_umap,
    frame_stability,
    knn_accuracy,
    linear_probe_accuracy,
    pca,
    pool_features,
    procrustes_align,
    silhouette,
    trustworthiness,
    tsne,
    umap_embed,
)
from trainviz.ops.guided import guided_backprop, guided_grad_cam
from trainviz.ops.localization import (
    confidence_change,
    deletion_curve,
    energy_pointing_game,
    map_correlation,
    pointing_game,
    pointing_game_chance,
)
from trainviz.ops.metrics import confusion_matrix, per_class_accuracy
from trainviz.ops.predict import predict_logits
from trainviz.ops.robustness import (
    corruption_error,
    expected_calibration_error,
    flip_rate,
    mean_corruption_error,
    nll,
    relative_corruption_error,
    wilson_interval,
)

__all__ = [
    "PatternTracker",
    "formation_epochs",
    "logits_and_maps",
    "map_sharpness",
    "normalize_maps",
    "stability_series",
    "CAMResult",
    "ClassActivationMaps",
    "cam",
    "class_activation_maps",
    "confidence_change",
    "deletion_curve",
    "energy_pointing_game",
    "grad_cam",
    "grad_cam_pp",
    "guided_backprop",
    "guided_grad_cam",
    "map_correlation",
    "pointing_game",
    "pointing_game_chance",
    "CORRUPTION_PARAMS",
    "Corruption",
    "aligned_umap",
    "frame_stability",
    "knn_accuracy",
    "linear_probe_accuracy",
    "pca",
    "pool_features",
    "procrustes_align",
    "silhouette",
    "trustworthiness",
    "tsne",
    "umap_embed",
    "IMAGENET_C",
    "SEED_PROBES",
    "confusion_matrix",
    "corrupt",
    "corruption_error",
    "expected_calibration_error",
    "fgsm",
    "fgsm_accuracy",
    "flip_rate",
    "list_corruptions",
    "mean_corruption_error",
    "nll",
    "per_class_accuracy",
    "predict_logits",
    "register_corruption",
    "relative_corruption_error",
    "steps_to_flip",
    "wilson_interval",
]
