"""``python -m runners.fed mode=local dataset=... partition=... augment=ggeur|none``: federated learning on
frozen embeddings.

``mode=local`` (the only mode so far) trains one linear classifier per client on that client's own data,
with or without GGEUR (the server step included), and records the mean accuracy of the client classifiers
on the global test set (``acc_local_mean``), with the per-client values as the series ``acc_local``.
The partition is saved with the run (``partition.npz``, ``partition.json`` with its hash and counts).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from common.errors import ConfigError
from common.experiment import RunContext, RunOutput
from common.progress import track
from common.seeding import derive_seed
from fedgeo.classifier import make_classifier, predict, train_epochs
from fedgeo.data import EmbeddingDataset, ImageDataset, train_test_split
from fedgeo.ggeur import ClientData, augment_federation
from fedgeo.normalize import Normalizer
from fedgeo.partitions import Partition, dirichlet_label_skew, domain_label_dirichlet, domain_skew
from runners.hydra_entry import CONF_DIR, hydra_cli, run_from_hydra

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

MODES = ("local",)
DATASETS = ("synthetic", "office_caltech_googlenet", "office_caltech_surf", "digits", "clip")
CLIP_SOURCES = ("office_caltech_images", "digits", "cifar10", "cifar100", "tiny_imagenet", "image_folder")
AUGMENTS = ("ggeur", "none")


def _req(cfg: Mapping[str, Any], key: str, prefix: str) -> Any:
    if key not in cfg:
        raise ConfigError(f"{prefix}.{key}", "missing")
    return cfg[key]


def _clip_images(d: Mapping[str, Any], data_root: str) -> ImageDataset:
    from fedgeo.datasets import digits_image_dataset, load_office_caltech_images
    from fedgeo.image_sources import cifar_images, image_folder, tiny_imagenet_images

    source, root, domains = d.get("source"), d.get("root"), d.get("domains")
    if source not in CLIP_SOURCES:
        raise ConfigError("dataset.source", f"expected one of {CLIP_SOURCES}, got {source!r}")
    if source == "office_caltech_images":
        return load_office_caltech_images(data_root, domains)
    if source == "digits":
        return digits_image_dataset(data_root, int(d.get("grid") or 32), domains)
    if not root:
        raise ConfigError("dataset.root", f"source {source} needs the folder that holds its files")
    if source in ("cifar10", "cifar100"):
        return cifar_images(root, source)
    if source == "tiny_imagenet":
        return tiny_imagenet_images(root)
    return image_folder(root, str(d.get("folder_name") or "image_folder"), domains)


def load_data(
    d: Mapping[str, Any], paths: Mapping[str, Any], seed: int
) -> tuple[EmbeddingDataset, EmbeddingDataset]:
    """The ``dataset`` config group as ``(train, test)`` raw features (before normalisation)."""
    name = d.get("name")
    if name not in DATASETS:
        raise ConfigError("dataset.name", f"expected one of {DATASETS}, got {name!r}")
    if name == "synthetic":
        from fedgeo.synthetic import make_synthetic

        keys = ("num_classes", "dim", "num_domains", "train_per_class", "test_per_class", "separation")
        keys += ("anisotropy", "domain_shift", "domain_mode")
        syn = make_synthetic(**{k: d[k] for k in keys if k in d}, seed=derive_seed(seed, "synthetic"))
        return syn.train, syn.test
    data_root = str(_req(paths, "fl_data", "paths"))
    if name in ("office_caltech_googlenet", "office_caltech_surf"):
        from fedgeo.datasets import load_office_caltech_features

        ds = load_office_caltech_features(data_root, name.rsplit("_", 1)[1], d.get("domains"))
    elif name == "digits":
        from fedgeo.datasets import load_digits_domains

        ds = load_digits_domains(data_root, int(d.get("grid", 16)), d.get("domains"))
    else:
        from fedgeo.clip_features import clip_embedding_dataset

        ds = clip_embedding_dataset(
            _clip_images(d, data_root),
            cache_dir=_req(paths, "feature_cache", "paths"),
            model_name=str(d.get("model", "ViT-B-32")),
            pretrained=d.get("pretrained"),
            batch_size=int(d.get("batch_size", 64)),
            device=str(d.get("device", "cpu")),
            image_size=d.get("image_size"),
            seed=derive_seed(seed, "clip-init"),
        )
    return train_test_split(ds, float(d.get("test_fraction", 0.3)), derive_seed(seed, "split"))


def make_partition(p: Mapping[str, Any], train: EmbeddingDataset, seed: int) -> Partition:
    """The ``partition`` config group applied to the training set."""
    method = p.get("method")
    pseed = derive_seed(seed, "partition")
    if method == "dirichlet":
        return dirichlet_label_skew(
            train.labels,
            _req(p, "clients", "partition"),
            _req(p, "beta", "partition"),
            pseed,
            num_classes=train.num_classes,
            one_per_class=bool(p.get("one_per_class", True)),
            min_size=p.get("min_size", 0),
            domains=train.domains,
        )
    if method == "domain":
        return domain_skew(
            train.labels,
            train.domains,
            pseed,
            fraction=p.get("fraction", 1.0),
            clients_per_domain=p.get("clients_per_domain", 1),
            num_classes=train.num_classes,
            num_domains=train.num_domains,
        )
    if method == "domain_dirichlet":
        return domain_label_dirichlet(
            train.labels,
            train.domains,
            _req(p, "clients", "partition"),
            _req(p, "beta", "partition"),
            pseed,
            num_classes=train.num_classes,
            min_size=p.get("min_size", 0),
        )
    raise ConfigError("partition.method", f"expected dirichlet, domain or domain_dirichlet, got {method!r}")


def _augment(
    a: Mapping[str, Any], clients: list[ClientData], train: EmbeddingDataset, seed: int, ctx: RunContext
) -> list[ClientData]:
    kind = a.get("kind")
    if kind not in AUGMENTS:
        raise ConfigError("augment.kind", f"expected one of {AUGMENTS}, got {kind!r}")
    if kind == "none":
        return clients
    md = a.get("multi_domain", "auto")
    if md not in ("auto", True, False):
        raise ConfigError("augment.multi_domain", f"expected auto, true or false, got {md!r}")
    multi = train.num_domains > 1 if md == "auto" else bool(md)
    rngs = [np.random.default_rng(derive_seed(seed, "ggeur", k)) for k in range(len(clients))]
    out, shapes = augment_federation(
        clients,
        train.num_classes,
        train.num_domains,
        rngs,
        target_per_class=a.get("target_per_class"),
        samples_per_original=a.get("samples_per_original"),
        noise_scale=a.get("noise_scale", "sqrt"),
        keep_originals=bool(a.get("keep_originals", True)),
        multi_domain=multi,
        per_prototype=a.get("per_prototype", 500),
    )
    ctx.logger.event(
        "ggeur",
        noise_scale=a.get("noise_scale", "sqrt"),
        multi_domain=multi,
        clipped_eigenvalues=shapes.clipped,
        generated=int(sum(o.labels.size - c.labels.size for o, c in zip(out, clients, strict=True))),
    )
    return out


def run_local(ctx: RunContext) -> RunOutput:
    """``mode=local``: one classifier per client on its own (optionally GGEUR-augmented) data."""
    cfg, seed = ctx.config, ctx.seed
    log = ctx.log
    train, test = load_data(cfg["dataset"], cfg.get("paths", {}), seed)
    log.info(
        f"dataset {train.name}: {len(train)} train / {len(test)} test, d={train.dim}, C={train.num_classes}"
    )
    part = make_partition(cfg["partition"], train, seed)
    part.save(ctx.artifact("partition.npz"), ctx.artifact("partition.json"))
    ctx.logger.event(
        "partition", method=part.method, hash=part.hash, sizes=[int(i.size) for i in part.client_indices]
    )
    raw = [ClientData(train.features[i], train.labels[i], train.domains[i]) for i in part.client_indices]
    t0 = time.perf_counter()
    clients = _augment(cfg["augment"], raw, train, seed, ctx)
    augment_s = time.perf_counter() - t0
    norm = Normalizer.fit(str(cfg["dataset"].get("normalize", "none")), train.features)
    X_test = norm(test.features)
    t = cfg.get("train", {})
    accs, dom_avgs, sizes = [], [], []
    t1 = time.perf_counter()
    for k in track(range(len(clients)), description="local training"):
        c = clients[k]
        model = make_classifier(train.dim, train.num_classes, seed=derive_seed(seed, "model", k))
        train_epochs(
            model,
            norm(c.features),
            c.labels,
            epochs=t.get("epochs", 10),
            batch_size=t.get("batch_size", 64),
            lr=t.get("lr", 1e-3),
            seed=derive_seed(seed, "batches", k),
            weight_decay=float(t.get("weight_decay", 0.0)),
            min_steps=t.get("min_steps", 0),
        )
        pred = predict(model, X_test)
        acc = float(np.mean(pred == test.labels))
        per_dom = [
            float(np.mean(pred[test.domains == d] == test.labels[test.domains == d]))
            for d in range(test.num_domains)
            if np.any(test.domains == d)
        ]
        accs.append(acc)
        dom_avgs.append(float(np.mean(per_dom)))
        sizes.append(int(c.labels.size))
        ctx.logger.log(
            {"acc_local": acc, "acc_local_domain_avg": dom_avgs[-1], "n_train": sizes[-1]}, k, "client"
        )
    metrics = {
        "acc_local_mean": float(np.mean(accs)),
        "acc_local_std": float(np.std(accs)),
        "acc_local_min": float(np.min(accs)),
        "acc_local_max": float(np.max(accs)),
        "acc_local_domain_avg": float(np.mean(dom_avgs)),
        "num_clients": len(clients),
        "n_train_mean": float(np.mean(sizes)),
        "n_raw_mean": float(np.mean([c.labels.size for c in raw])),
        "augment_s": augment_s,
        "train_s": time.perf_counter() - t1,
    }
    series = {"acc_local": accs, "acc_local_domain_avg": dom_avgs, "n_train": [float(s) for s in sizes]}
    return RunOutput(metrics, series, {k: "client" for k in series})


def body(ctx: RunContext) -> RunOutput:
    mode = ctx.config.get("mode")
    if mode not in MODES:
        raise ConfigError(
            "mode", f"expected one of {list(MODES)} (federated training is not available yet), got {mode!r}"
        )
    return run_local(ctx)


@hydra.main(config_path=CONF_DIR, config_name="fed", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_from_hydra(cfg, "fed", body)


if __name__ == "__main__":
    hydra_cli(main)
