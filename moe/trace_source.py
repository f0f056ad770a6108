"""Where a run's routing trace comes from (config group ``trace``): a file or the synthetic generator.

Each option is a ``@schema("trace", ...)`` dataclass: ``FileTrace`` (``conf/trace/file.yaml``,
``conf/trace/deepseek_v2_lite.yaml``) and ``SyntheticTrace`` (``conf/trace/synthetic.yaml``). A source
``load(seed)``s the whole trace (after ``max_tokens``) and ``split(trace, seed)``s it by prompt into a
profile part and an evaluation part; ``profile_and_evaluation(seed)`` does both. ``seed`` is the run's.

Defaults that do not mislead: prompts are drawn at random for the two parts (``split_seed``, default the
run's seed), never in file order by default, so profile and evaluation are not different topics; a file
trace says how its slots are ordered (``slot_order``) and which model made it (``model``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import rekey, schema
from common.errors import ConfigError, InputError
from common.log import get_logger
from common.seeding import derive_seed
from moe.drift import apply_drift
from moe.synthetic import PRESETS, ModelShape, generate_trace
from moe.topology import Topology
from moe.trace import SLOT_ORDERS, Trace, check_slot_order, load_trace, require_npz
from moe.trace_split import head, split_by_prompt, split_by_tokens, split_windows

REPO_ROOT = Path(__file__).resolve().parent.parent
_log = get_logger("moe.trace_source")


def resolve_trace_path(path: str) -> Path:
    """An absolute path as is; a relative one from the current directory if it exists there, else from the
    repository root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def _opt_int(key: str, v: Any, minimum: int) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
        raise ConfigError(key, f"expected an integer >= {minimum} or null, got {v!r}")


def _unit(key: str, v: Any, lo: float, hi: float, open_ends: bool = False) -> None:
    ok = isinstance(v, int | float) and not isinstance(v, bool)
    ok = ok and ((lo < v < hi) if open_ends else (lo <= v <= hi))
    if not ok:
        raise ConfigError(
            key,
            f"expected a number in {'(' if open_ends else '['}{lo}, {hi}{')' if open_ends else ']'}, got {v!r}",
        )


@dataclass
class ModelDims:  # not frozen: a nested config node must stay writable
    """The dimensions of the model that made a trace (they set the cost model's token bytes and FLOPs).

    Attributes:
        hidden_size: hidden size; bytes per token = ``hidden_size x topology.dtype_bytes``.
        expert_ffn: a routed expert's intermediate size; FLOPs per token = 6 x hidden x ffn (SwiGLU: 3
            matmuls of 2 FLOP per multiply-add).
        bytes_per_token: explicit bytes of one token on the wire (wins over ``hidden_size``).
        expert_flops_per_token: explicit FLOPs of one expert on one token (wins over ``expert_ffn``).
    """

    hidden_size: int | None = None
    expert_ffn: int | None = None
    bytes_per_token: float | None = None
    expert_flops_per_token: float | None = None

    def __post_init__(self) -> None:
        for key in ("hidden_size", "expert_ffn"):
            _opt_int(f"model.{key}", getattr(self, key), 1)
        for key in ("bytes_per_token", "expert_flops_per_token"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v <= 0):
                raise ConfigError(f"model.{key}", f"expected a positive number or null, got {v!r}")
        if self.expert_ffn is not None and self.hidden_size is None and self.expert_flops_per_token is None:
            raise ConfigError("model.expert_ffn", "needs model.hidden_size to give FLOPs (6 x hidden x ffn)")

    @property
    def flops(self) -> float | None:
        """FLOPs of one expert on one token, when known."""
        if self.expert_flops_per_token is not None:
            return float(self.expert_flops_per_token)
        if self.expert_ffn is not None and self.hidden_size is not None:
            return 6.0 * self.hidden_size * self.expert_ffn
        return None

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))

    def apply(self, topology: Topology) -> Topology:
        """``topology`` with these dimensions (fields left null keep the topology's)."""
        out = topology.with_model(self.hidden_size, self.flops)
        if self.bytes_per_token is not None:
            out = dataclasses.replace(out, dtype_bytes=float(self.bytes_per_token) / out.hidden_size)
        return out


@dataclass(frozen=True)
class TraceSource:
    """Options every trace source has.

    Attributes:
        name: the trace's name in tables.
        max_tokens: keep only the first N tokens (quick runs); null = all.
        profile_fraction: share of the prompts that profile (place); the rest evaluates.
        split_seed: seed of the random prompt split; null = the run's seed.
        windows: ``mode=replan`` only: cut the trace into this many windows of whole prompts in prompt
            order (``moe.trace_split.split_windows``); null = no windows (``mode=place``).
        drift: the rate in [0, 1] at which the hot experts shift at each window boundary (``moe.drift``);
            needs ``windows`` (a synthetic trace without windows keeps its own one-step drift, see
            ``SyntheticTrace``).
    """

    name: str = "trace"
    max_tokens: int | None = None
    profile_fraction: float = 0.5
    split_seed: int | None = None
    windows: int | None = None
    drift: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name", f"expected a non-empty string, got {self.name!r}")
        _opt_int("max_tokens", self.max_tokens, 2)
        _unit("profile_fraction", self.profile_fraction, 0.0, 1.0, open_ends=True)
        _opt_int("split_seed", self.split_seed, 0)
        _opt_int("windows", self.windows, 2)
        _unit("drift", self.drift, 0.0, 1.0)

    def generate(self, seed: int) -> Trace:
        """The whole trace before ``max_tokens``."""
        raise NotImplementedError(type(self).__name__)

    def load(self, seed: int) -> Trace:
        """The whole trace after ``max_tokens`` (``seed``: the run's)."""
        return head(self.generate(seed), self.max_tokens)

    def split_order_seed(self, seed: int) -> int | None:
        """The seed of the prompt split: ``split_seed``, else the run's; ``None`` = file order."""
        return self.split_seed if self.split_seed is not None else int(seed)

    def split(self, trace: Trace, seed: int) -> tuple[Trace, Trace]:
        """(profile, evaluation) along prompt boundaries; a trace with one prompt is split by tokens."""
        if trace.num_prompts < 2:
            _log.warning(
                "trace has fewer than 2 prompts: splitting by tokens (profile and evaluation may share a prompt)"
            )
            return split_by_tokens(trace, float(self.profile_fraction))
        return split_by_prompt(trace, float(self.profile_fraction), self.split_order_seed(seed))

    def profile_and_evaluation(self, seed: int) -> tuple[Trace, Trace]:
        """Load and split; logs one line describing both parts."""
        if self.windows is not None:
            raise ConfigError("trace.windows", "windows are for mode=replan; set trace.windows=null here")
        if self.drift > 0 and not isinstance(self, SyntheticTrace):
            raise ConfigError(
                "trace.drift", "drift of a recorded trace needs windows (mode=replan trace.windows=N)"
            )
        trace = self.load(seed)
        profile, evaluation = self.split(trace, seed)
        _log.info(
            f"trace {self.name}: {trace.describe()}; profile {profile.num_tokens} tokens / "
            f"{profile.num_prompts} prompts, evaluation {evaluation.num_tokens} tokens / "
            f"{evaluation.num_prompts} prompts"
        )
        return profile, evaluation

    def windowed(self, seed: int) -> list[Trace]:
        """The whole trace (after ``max_tokens``) cut into ``windows`` windows in prompt order, with ``drift``
        applied (shifts seeded from ``seed``, the run's); logs one line.

        Raises:
            ConfigError: ``trace.windows`` unset, or more windows than the trace has prompts.
        """
        if self.windows is None:
            raise ConfigError("trace.windows", "expected an integer >= 2 (mode=replan serves window k+1 "
                              "with a placement profiled on window k), got null")  # fmt: skip
        trace = self.load(seed)
        try:
            parts = split_windows(trace, int(self.windows))
        except InputError as exc:
            raise ConfigError("trace.windows", str(exc)) from None
        parts = apply_drift(parts, float(self.drift), derive_seed(seed, "trace_drift"))
        _log.info(
            f"trace {self.name}: {trace.describe()}; {len(parts)} windows of "
            f"{min(p.num_tokens for p in parts)}-{max(p.num_tokens for p in parts)} tokens, drift {self.drift}"
        )
        return parts

    def topology_for(self, topology: Topology) -> Topology:
        """The topology with this trace's model dimensions (``FileTrace``); unchanged here."""
        return topology


@schema("trace", "file")
@dataclass(frozen=True)
class FileTrace(TraceSource):
    """A trace ``.npz`` (docs/traces.md).

    Attributes:
        path: the file; a relative path is looked up from the current directory, then the repository root.
        slot_order: ``score`` or ``unordered``; null = what the file declares (an error when it declares
            nothing). ``score`` is refused when the slots look sorted by expert id.
        model: the traced model's dimensions (``ModelDims``); all null = the topology's, with a warning.
    """

    name: str = "file"
    path: str = "???"  # OmegaConf MISSING: required
    slot_order: str | None = None
    model: ModelDims = field(default_factory=ModelDims)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.model, Mapping):
            unknown = set(self.model) - {f.name for f in dataclasses.fields(ModelDims)}
            if unknown:
                raise ConfigError("model", f"unknown keys {sorted(unknown)}")
            object.__setattr__(self, "model", ModelDims(**dict(self.model)))
        if not isinstance(self.path, str) or self.path in ("", "???"):
            raise ConfigError("path", f"expected the path of a trace .npz, got {self.path!r}")
        if self.slot_order is not None and self.slot_order not in SLOT_ORDERS:
            raise ConfigError(
                "slot_order", f"expected one of {list(SLOT_ORDERS)} or null, got {self.slot_order!r}"
            )

    def resolved_path(self) -> Path:
        """The trace file (``resolve_trace_path``); a missing one is refused naming ``trace.path``, one that is
        not an ``.npz`` archive naming the file."""
        resolved = resolve_trace_path(self.path)
        if not resolved.is_file():
            raise ConfigError("trace.path", f"trace file not found: {self.path} (looked at {resolved})")
        require_npz(resolved)
        return resolved

    def generate(self, seed: int) -> Trace:
        trace = load_trace(self.resolved_path())
        order = self.slot_order or trace.slot_order
        if order is None:
            raise ConfigError(
                "trace.slot_order",
                f"{self.path} does not say how its slots are ordered; set trace.slot_order=score (slot 0 is "
                "the top-1 expert) or trace.slot_order=unordered (a set)",
            )
        check_slot_order(trace, order, str(self.path))
        return dataclasses.replace(trace, slot_order=order)

    def topology_for(self, topology: Topology) -> Topology:
        if self.model.empty:
            self.resolved_path()  # a missing or non-.npz file is the error to report, not the dimensions it lacks
            _log.warning(
                f"trace {self.name}: trace.model not set; token bytes and expert FLOPs are topology "
                f"{topology.name}'s (set trace.model.hidden_size and trace.model.expert_ffn)"
            )
            return topology
        return self.model.apply(topology)


@schema("trace", "synthetic")
@dataclass(frozen=True)
class SyntheticTrace(TraceSource):
    """A synthetic trace (``moe.synthetic.generate_trace``); slot 0 is each token's leading expert (score).

    Attributes:
        preset: model shape (``mixtral_8x7b``, ``deepseek_v2_lite``, ``olmoe``, ``qwen3_235b``,
            ``deepseek_v3``), unless ``num_experts``, ``top_k`` and ``num_layers`` are all set.
        tokens, tokens_per_prompt, skew, affinity, fanout, drift, with_weights: see docs/traces.md.
        seed: the generator's seed; null = derived from the run's seed.

    With ``drift > 0`` the prompts are split in file order (the drift starts exactly at the evaluation part).
    With ``windows`` set (``mode=replan``) the generator runs without its own drift and ``drift`` is the
    per-window shift rate of ``moe.drift``, as for every trace.
    """

    name: str = "synthetic"
    preset: str = "mixtral_8x7b"
    num_experts: int | None = None
    top_k: int | None = None
    num_layers: int | None = None
    tokens: int = 200000
    tokens_per_prompt: float = 256.0
    skew: Any = 0.5
    affinity: float = 0.8
    fanout: int | None = None
    drift: float = 0.0
    with_weights: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        dims = (self.num_experts, self.top_k, self.num_layers)
        if all(v is None for v in dims):
            if self.preset not in PRESETS:
                raise ConfigError("preset", f"expected one of {sorted(PRESETS)}, got {self.preset!r}")
        elif any(v is None for v in dims):
            raise ConfigError("num_experts", "set num_experts, top_k and num_layers together (or none)")
        for key in ("num_experts", "top_k", "num_layers", "fanout"):
            _opt_int(key, getattr(self, key), 1)
        _opt_int("tokens", self.tokens, 2)
        _opt_int("seed", self.seed, 0)
        _unit("affinity", self.affinity, 0.0, 1.0)
        _unit("drift", self.drift, 0.0, 1.0)
        if (
            isinstance(self.tokens_per_prompt, bool)
            or not isinstance(self.tokens_per_prompt, int | float)
            or self.tokens_per_prompt < 1
        ):
            raise ConfigError("tokens_per_prompt", f"expected a number >= 1, got {self.tokens_per_prompt!r}")
        if isinstance(self.skew, bool) or not isinstance(self.skew, int | float | list | tuple):
            raise ConfigError("skew", f"expected a number or a list of numbers, got {self.skew!r}")

    def shape(self) -> str | ModelShape:
        if self.num_experts is None:
            return self.preset
        return ModelShape(str(self.preset or "custom"), self.num_experts, self.top_k, self.num_layers)  # type: ignore[arg-type]

    def generate(self, seed: int) -> Trace:
        trace_seed = self.seed if self.seed is not None else derive_seed(seed, "synthetic_trace")
        try:
            trace = generate_trace(
                self.shape(),
                self.tokens,
                skew=self.skew,
                affinity=float(self.affinity),
                drift=0.0 if self.windows is not None else float(self.drift),
                seed=trace_seed,
                fanout=self.fanout,
                tokens_per_prompt=float(self.tokens_per_prompt),
                drift_start=float(self.profile_fraction),
                with_weights=bool(self.with_weights),
            )
        except InputError as exc:
            raise ConfigError("trace", str(exc)) from exc
        return dataclasses.replace(trace, slot_order="score")

    def split_order_seed(self, seed: int) -> int | None:
        return None if self.drift > 0 and self.windows is None else super().split_order_seed(seed)


KINDS: dict[str, type[TraceSource]] = {"file": FileTrace, "synthetic": SyntheticTrace}


def trace_source(cfg: Mapping[str, Any] | TraceSource) -> TraceSource:
    """A ``TraceSource`` from a plain ``trace`` config node: its ``_target_`` class, or legacy ``kind``.

    Raises:
        ConfigError: naming ``trace.<key>``.
    """
    if isinstance(cfg, TraceSource):
        return cfg
    if not isinstance(cfg, Mapping):
        raise ConfigError("trace", f"expected a mapping (a trace config group), got {cfg!r}")
    target = str(cfg.get("_target_") or "")
    cls = next((c for c in KINDS.values() if target.endswith(f".{c.__name__}")), None)
    if cls is None:
        cls = KINDS.get(str(cfg.get("kind")))
    if cls is None:
        raise ConfigError(
            "trace", f"expected a _target_ or kind naming one of {sorted(KINDS)}, got {dict(cfg)!r}"
        )
    kwargs = {k: v for k, v in cfg.items() if k not in ("_target_", "defaults", "kind")}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs) - names
    if unknown:
        raise ConfigError(
            "trace", f"unknown keys {sorted(unknown)} for {cls.__name__}; allowed: {sorted(names)}"
        )
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise rekey(exc, "trace") from None
