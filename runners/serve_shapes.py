"""Which model shape a serve run uses: the trace's, unless the command line (or an experiment) names a model.

Rules (``follow_trace``):

- a model named on the command line (``model=...``) or by an ``experiment=`` preset is used as given; a
  synthetic trace whose shape is not named (no ``trace.preset`` / ``trace.num_experts`` override) and whose
  preset routes differently (experts, top-k) then takes the model's experts, top-k and layers;
- otherwise the model follows the trace: the default model is kept when its experts and top-k already equal
  the trace's (``mixtral_tiny`` for the Mixtral-8x7B synthetic preset: the CPU stand-in); else the model
  option ``<trace preset or name>_shape`` when there is one (``trace=deepseek_v2_lite`` ->
  ``deepseek_v2_lite_shape``); else a model built from the trace: its experts and top-k, and the widths of
  ``trace.model`` (hidden size, expert FFN) of a file, or the default model's.

The record labels ``model_from`` (``named``, ``default``, ``preset:<option>``, ``trace``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from moe.synthetic import PRESETS
from runners.hydra_entry import CONF_DIR
from runners.moe_inputs import load_trace_from_config


def override_keys(overrides: Iterable[str]) -> set[str]:
    """The keys of Hydra overrides (``model=x`` -> ``model``, ``+trace.preset=y`` -> ``trace.preset``)."""
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


def model_named(keys: set[str]) -> bool:
    """True when the user (or an experiment preset) chose the model option (``model.<field>`` does not)."""
    return "model" in keys or "experiment" in keys


def _model_fields(overrides: Iterable[str]) -> dict[str, Any]:
    """``model.<field>=value`` overrides as a dict (re-applied to the model the trace picks)."""
    picked = [o.lstrip("+") for o in overrides if o.lstrip("+").startswith("model.")]
    node = OmegaConf.to_container(OmegaConf.from_dotlist(picked), resolve=True)
    return dict(node.get("model") or {}) if isinstance(node, dict) else {}


def _synthetic(trace: Mapping[str, Any]) -> bool:
    return str(trace.get("_target_", "")).endswith("SyntheticTrace") or trace.get("kind") == "synthetic"


def _trace_shape(trace: Mapping[str, Any], seed: int) -> tuple[str, int, int, int, dict]:
    """(name, experts, top-k, layers, model dims) of the trace node (a file trace is loaded)."""
    if _synthetic(trace):
        if trace.get("num_experts") is not None:
            return (str(trace.get("preset") or "synthetic"), int(trace["num_experts"]), int(trace["top_k"]),
                    int(trace["num_layers"]), {})  # fmt: skip
        s = PRESETS.get(str(trace.get("preset")))
        if s is None:
            return "", 0, 0, 0, {}  # the trace source names the bad preset later
        return s.name, s.num_experts, s.top_k, s.num_layers, {}
    t = load_trace_from_config(trace, seed)
    return str(trace.get("name") or ""), t.num_experts, t.top_k, t.num_layers, dict(trace.get("model") or {})


def _option(name: str, conf_dir: str) -> dict[str, Any] | None:
    path = Path(conf_dir) / "model" / f"{name}_shape.yaml"
    if not name or not path.is_file():
        return None
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(node, dict)
    node.pop("defaults", None)
    return node


def _derived(model: Mapping[str, Any], name: str, e: int, k: int, layers: int, dims: Mapping) -> dict:
    """The default model with the trace's experts and top-k and (when given) the trace's widths."""
    out = dict(model)
    h = int(dims.get("hidden_size") or model["hidden_size"])
    heads = int(model.get("num_heads", 1))
    out.update(name=f"{name or 'trace'}_shape", num_experts=e, top_k=k, hidden_size=h,
               ffn_size=int(dims.get("expert_ffn") or model["ffn_size"]),
               num_layers=min(int(model.get("num_layers", 1)), layers) or 1,
               num_heads=heads if h % heads == 0 else math.gcd(h, heads))  # fmt: skip
    return out


def follow_trace(cfg: Mapping[str, Any], overrides: list[str], conf_dir: str = CONF_DIR) -> dict[str, Any]:
    """``cfg`` with its ``model`` (or synthetic ``trace``) shape made to agree (module docstring's rules).

    ``overrides``: the command line's Hydra overrides (``model.<field>=v`` ones are kept on a picked model).
    """
    keys = override_keys(overrides)
    out = dict(cfg)
    trace = dict(cfg.get("trace") or {})
    model = dict(cfg.get("model") or {})
    if model_named(keys):
        shape_named = any(k in keys for k in ("trace.preset", "trace.num_experts"))
        preset = PRESETS.get(str(trace.get("preset")))
        differs = preset is not None and (preset.num_experts, preset.top_k) != (
            model.get("num_experts"), model.get("top_k"))  # fmt: skip
        if _synthetic(trace) and not shape_named and trace.get("num_experts") is None and differs:
            trace.update(
                num_experts=model["num_experts"], top_k=model["top_k"], num_layers=model["num_layers"]
            )
            out["trace"] = trace
        out["model_from"] = "named"
        return out
    name, e, k, layers, dims = _trace_shape(trace, int(cfg.get("seed", 0)))
    if e == 0 or (e, k) == (model.get("num_experts"), model.get("top_k")):
        out["model_from"] = "default"
        return out
    preset = _option(name, conf_dir)
    if preset is not None:
        out["model"], out["model_from"] = preset, f"preset:{name}_shape"
    else:
        out["model"], out["model_from"] = _derived(model, name, e, k, layers, dims), "trace"
    out["model"] = {**out["model"], **_model_fields(overrides)}
    return out
