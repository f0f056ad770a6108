"""Turn a ``trace`` config group node (``conf/trace/*.yaml``) into traces: the whole one, or profile + evaluation.

``kind: file`` reads an ``.npz`` (``path``; a relative path is looked up from the current directory, then from
the repository root). ``kind: synthetic`` generates one (``moe.synthetic.generate_trace``). Both then apply
``max_tokens`` and split by prompt with ``profile_fraction`` and ``split_seed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.errors import ConfigError, InputError
from common.log import get_logger
from common.seeding import derive_seed
from moe.synthetic import PRESETS, ModelShape, generate_trace
from moe.trace import Trace, load_trace
from moe.trace_split import head, split_by_prompt, split_by_tokens

REPO_ROOT = Path(__file__).resolve().parent.parent
KINDS = ("file", "synthetic")


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    return cfg.get(key, default)


def _int_or_none(cfg: Mapping[str, Any], key: str, minimum: int) -> int | None:
    v = cfg.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"trace.{key}", f"expected an integer >= {minimum} or null, got {v!r}")
    return v


def _number(cfg: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise ConfigError(f"trace.{key}", f"expected a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def resolve_trace_path(path: str) -> Path:
    """An absolute path as is; a relative one from the current directory if it exists there, else from the
    repository root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def _synthetic(cfg: Mapping[str, Any], seed: int) -> Trace:
    preset = cfg.get("preset")
    dims = {k: cfg.get(k) for k in ("num_experts", "top_k", "num_layers")}
    if all(v is None for v in dims.values()):
        if preset not in PRESETS:
            raise ConfigError("trace.preset", f"expected one of {sorted(PRESETS)}, got {preset!r}")
        shape: str | ModelShape = preset
    elif any(v is None for v in dims.values()):
        raise ConfigError("trace.num_experts", "set num_experts, top_k and num_layers together (or none)")
    else:
        for k, v in dims.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"trace.{k}", f"expected a positive integer, got {v!r}")
        shape = ModelShape(str(preset or "custom"), **dims)
    tokens = _int_or_none(cfg, "tokens", 2)
    if tokens is None:
        raise ConfigError("trace.tokens", "expected an integer >= 2")
    trace_seed = _int_or_none(cfg, "seed", 0)
    if trace_seed is None:
        trace_seed = derive_seed(seed, "synthetic_trace")
    skew = cfg.get("skew", 1.0)
    if isinstance(skew, bool) or not isinstance(skew, int | float | list | tuple):
        raise ConfigError("trace.skew", f"expected a number or a list of numbers, got {skew!r}")
    tpp = cfg.get("tokens_per_prompt", 256)
    if isinstance(tpp, bool) or not isinstance(tpp, int | float) or tpp < 1:
        raise ConfigError("trace.tokens_per_prompt", f"expected a number >= 1, got {tpp!r}")
    try:
        return generate_trace(
            shape,
            tokens,
            skew=skew,
            affinity=_number(cfg, "affinity", 0.5, 0.0, 1.0),
            drift=_number(cfg, "drift", 0.0, 0.0, 1.0),
            seed=trace_seed,
            fanout=_int_or_none(cfg, "fanout", 1),
            tokens_per_prompt=float(tpp),
            drift_start=_number(cfg, "profile_fraction", 0.5, 0.0, 1.0),
            with_weights=bool(cfg.get("with_weights", False)),
        )
    except InputError as exc:
        raise ConfigError("trace", str(exc)) from exc


def load_trace_from_config(trace_cfg: Mapping[str, Any], seed: int) -> Trace:
    """The whole trace a ``trace`` config node describes, after ``max_tokens``.

    Args:
        trace_cfg: the plain ``trace`` node (``kind``, then ``path`` or the synthetic knobs).
        seed: the run seed (used by synthetic traces whose ``seed`` is null).
    """
    if not isinstance(trace_cfg, Mapping):
        raise ConfigError("trace", f"expected a mapping (a trace config group), got {trace_cfg!r}")
    kind = trace_cfg.get("kind")
    if kind == "file":
        path = trace_cfg.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError("trace.path", f"expected the path of a trace .npz, got {path!r}")
        resolved = resolve_trace_path(path)
        if not resolved.is_file():
            raise ConfigError("trace.path", f"trace file not found: {path} (looked at {resolved})")
        trace = load_trace(resolved)
    elif kind == "synthetic":
        trace = _synthetic(trace_cfg, seed)
    else:
        raise ConfigError("trace.kind", f"expected one of {list(KINDS)}, got {kind!r}")
    return head(trace, _int_or_none(trace_cfg, "max_tokens", 2))


def split_from_config(trace: Trace, trace_cfg: Mapping[str, Any]) -> tuple[Trace, Trace]:
    """(profile, evaluation) of ``trace`` by ``profile_fraction`` and ``split_seed``; a trace without prompt
    boundaries (or with a single prompt) is split by tokens instead, with a warning."""
    frac = trace_cfg.get("profile_fraction", 0.5)
    if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 < frac < 1:
        raise ConfigError("trace.profile_fraction", f"expected a number in (0, 1), got {frac!r}")
    split_seed = _int_or_none(trace_cfg, "split_seed", 0)
    if trace.num_prompts < 2:
        get_logger("moe.inputs").warning(
            "trace has fewer than 2 prompts: splitting by tokens (profile and evaluation may share a prompt)"
        )
        return split_by_tokens(trace, float(frac))
    return split_by_prompt(trace, float(frac), split_seed)


def load_traces(trace_cfg: dict, seed: int) -> tuple[Trace, Trace]:
    """(profile, evaluation) traces for a ``trace`` config group node; the placement runner's entry point.

    Args:
        trace_cfg: the plain ``trace`` node of the resolved config.
        seed: the run seed.

    Returns:
        Two validated traces of the same model that share no prompt.
    """
    trace = load_trace_from_config(trace_cfg, seed)
    profile, evaluation = split_from_config(trace, trace_cfg)
    get_logger("moe.inputs").info(
        f"trace {trace_cfg.get('name', trace_cfg.get('kind'))}: {trace.describe()}; profile "
        f"{profile.num_tokens} tokens / {profile.num_prompts} prompts, evaluation {evaluation.num_tokens} "
        f"tokens / {evaluation.num_prompts} prompts"
    )
    return profile, evaluation
