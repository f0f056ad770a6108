"""Federated learning on frozen embeddings: datasets, partitions, GGEUR augmentation, classifiers.

Modules: ``data`` (the dataset types and the train/test split), ``synthetic`` (generated embeddings),
``datasets`` (real offline data and the registry by name), ``normalize``, ``partitions``, ``ggeur``
(statistics, aggregation, shapes, generation, multi-domain prototypes), ``classifier`` (a linear softmax
model in torch) and ``clip_features`` (optional open_clip feature extraction with an ``.npz`` cache).
``fedgeo`` never imports ``moe``.
"""
