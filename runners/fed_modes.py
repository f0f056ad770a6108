"""The two modes of ``python -m runners.fed`` (``conf/mode/local.yaml``, ``conf/mode/fl.yaml``) and their recipe.

A recipe: build the dataset, partition, augmenter, model (and strategy), run, record. The algorithms live
in ``fedgeo`` (``fedgeo.local`` for ``mode=local``, ``fedgeo.fl`` for ``mode=fl``); every option is a
``@schema`` dataclass built from its YAML (``common.config``). The partition is saved with the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class

from common.config import build
from common.errors import ConfigError
from common.experiment import RunContext, RunOutput
from common.threads import limit_threads
from fedgeo.federation import client_datasets
from fedgeo.fl.checkpoint import NAME as CHECKPOINT
from fedgeo.fl.checkpoint import checkpoint_key, find_checkpoint, prepare_folder
from fedgeo.fl.loop import CheckpointPlan
from fedgeo.fl.run import run_federated
from fedgeo.fl.settings import FLSettings
from fedgeo.local import run_local
from fedgeo.models import ClassifierModel
from runners.hydra_entry import job_roots


def classifier_model(node: Mapping[str, Any]) -> ClassifierModel:
    """The ``model`` option, refused in one line unless it is a classifier on embeddings."""
    target = str(node.get("_target_", ""))
    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001 - any import failure means it is not one of ours
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, ClassifierModel)):
        raise ConfigError(
            "model", f"{target or node!r} is not a classifier on embeddings (use model=linear or model=mlp)"
        )
    return build(node, "model")


def local(ctx: RunContext) -> RunOutput:
    """``mode=local``: one classifier per client on its own data (``fedgeo.local``)."""
    limit_threads()
    parts = build_parts(ctx)
    return run_local(
        parts["clients"], parts["test"], parts["normalize"], parts["augment"], parts["model"],
        parts["train"], ctx.seed, ctx.logger,
    )  # fmt: skip


def fl(ctx: RunContext) -> RunOutput:
    """``mode=fl``: Flower federated training (``fedgeo.fl``), with checkpoints and resume."""
    limit_threads()
    parts = build_parts(ctx)
    settings = parts["fl"]
    work = ctx.artifact("fl")
    plan, source = checkpoint_plan(ctx, settings, work)
    out = run_federated(
        parts["clients"], parts["test"], parts["normalize"], parts["augment"], parts["model"],
        parts["strategy"], parts["train"], settings, ctx.seed, ctx.logger, work, plan,
    )  # fmt: skip
    return label_resume(out, source)


def checkpoint_roots(ctx: RunContext) -> list[Path]:
    """Where ``resume=true`` looks for a checkpoint: this run's folder first, then ``resume_dir`` (relative
    to the launch folder) or this sweep's folder, as for run records (``runners.hydra_entry.resume_roots``)."""
    if not HydraConfig.initialized():
        named = ctx.config.get("resume_dir")
        return [ctx.run_dir, *([Path(named)] if named else [])]
    return [ctx.run_dir, *job_roots(ctx.config.get("resume_dir"))]


def checkpoint_plan(ctx: RunContext, fl: FLSettings, work: Path) -> tuple[CheckpointPlan | None, Path | None]:
    """The server's checkpoint plan in ``work`` (``None`` with ``fl.checkpoint=false``) and, with
    ``resume=true``, the unfinished run's checkpoint it continues from (copied into ``work``)."""
    if not fl.checkpoint:
        return None, None
    key = checkpoint_key(ctx.config)
    source = find_checkpoint(checkpoint_roots(ctx), key) if ctx.config.get("resume", False) else None
    rnd = prepare_folder(work, source)
    if source is not None:
        ctx.log.info(f"resume: continuing after round {rnd} of {source}")
        ctx.logger.event("resume", checkpoint=str(source), round=rnd)
    return CheckpointPlan(str(work / CHECKPOINT), key), source


def label_resume(out: RunOutput, source: Path | None) -> RunOutput:
    """Label a run that continued from a checkpoint with where it came from."""
    if source is not None:
        out.labels["resumed_from_checkpoint"] = str(source)
    return out


def build_parts(ctx: RunContext) -> dict[str, Any]:
    """Dataset, partition (saved with the run), clients' raw sets, test set, normaliser kind, augmenter
    (resolved for the partition), model and training settings, from the run's config."""
    cfg = ctx.config
    fl = build(cfg["fl"], "fl")  # every option is checked before any data is read
    strategy = build(cfg["strategy"], "strategy") if cfg.get("mode") == "fl" else None
    source = build(cfg["dataset"], "dataset")
    partitioner = build(cfg["partition"], "partition")
    augment = build(cfg["augment"], "augment").resolve(partitioner.method)
    model = classifier_model(cfg["model"])
    train = build(cfg["train"], "train")
    train_set, test_set = source.load(cfg.get("paths", {}), ctx.seed)
    ctx.log.info(
        f"dataset {train_set.name}: {len(train_set)} train / {len(test_set)} test, d={train_set.dim}, C={train_set.num_classes}"
    )
    part = partitioner.split(train_set, ctx.seed)
    part.save(ctx.artifact("partition.npz"), ctx.artifact("partition.json"))
    ctx.logger.event(
        "partition", method=part.method, hash=part.hash, sizes=[int(i.size) for i in part.client_indices]
    )
    parts = {
        "clients": client_datasets(train_set, part), "test": test_set, "normalize": source.normalize,
        "augment": augment, "model": model, "train": train,
        "partition_method": partitioner.method, "fl": fl, "strategy": strategy,
    }  # fmt: skip
    return parts
