"""The embedding metrics' one name table (:class:`~trainviz.core.names.NameTable`): each scalar of
:meth:`EmbeddingResult.scalars <trainviz.probes.embedding.EmbeddingResult.scalars>` (logged as
``trainviz/embedding/<name>``, and the record's keys) with its direction and description; the report's curves
take their titles and descriptions from here. Torch-free.

``{layer}`` is a layer's name, ``{method}`` a projection (``pca``, ``umap``, ``tsne``). The silhouette needs 2 to
N-1 classes, the linear probe its folds; the stability starts at a method's second frame, the explained variance
is PCA's only. The dear scores (the linear probe, trustworthiness) are absent from the runs without them
(``scores_every``, or dropped under a budget).

Example:
    >>> NAMES.metric("net.fc/umap/trustworthiness").name, NAMES.metric("worker_seconds").higher_is_better
    ('{layer}/{method}/trustworthiness', False)
"""

from __future__ import annotations

from trainviz.core.names import Metric, NameTable

__all__ = ["NAMES"]

NAMES = NameTable(
    [
        Metric(
            "{layer}/knn_accuracy",
            True,
            "leave-one-out 5-nearest-neighbour accuracy of the layer's features",
            title="kNN accuracy",
        ),
        Metric(
            "{layer}/linear_probe_accuracy",
            True,
            "cross-validated accuracy of a linear classifier on the layer's features",
            title="Linear probe accuracy",
        ),
        Metric(
            "{layer}/silhouette",
            True,
            "silhouette of the classes in the layer's features",
            title="Silhouette",
        ),
        Metric(
            "{layer}/{method}/trustworthiness",
            True,
            "trustworthiness of the 2-D frame, after Venna & Kaski: how far its 5 nearest neighbours are the features'",
            title="Trustworthiness of the 2-D frames",
        ),
        Metric(
            "{layer}/{method}/stability",
            None,
            "agreement of the 2-D frame with the method's previous frame",
            no_direction="a frame that stops changing has settled, which is not a better model",
            title="Stability of the 2-D frames",
        ),
        Metric(
            "{layer}/{method}/explained_variance",
            None,
            "fraction of the features' variance the 2-D PCA frame keeps",
            no_direction="it describes how far 2-D shows the features, not the model's quality",
            title="Explained variance of the 2-D frames",
        ),
        Metric(
            "projection_seconds/{method}",
            False,
            "seconds the method's projections took, all layers",
            title="Projection time",
        ),
        Metric(
            "worker_seconds",
            False,
            "seconds the run's projections and scores took on the background thread",
            title="Worker time",
        ),
    ]
)
"""The embedding metrics (see the module docstring)."""
