"""The routing trace: which experts every token chose at every MoE layer, its file format and its checks.

File format (``.npz``, the layout of ``../shared/data/moe/deepseek_v2_lite_prefill.npz``):

========================  =====================================================================
key                       content
========================  =====================================================================
``experts``               unsigned or signed integers ``[tokens, layers, top_k]``: expert ids
``num_experts``           0-d integer: routed experts per layer (E)
``weights`` (optional)    floats ``[tokens, layers, top_k]``: gate weight of each choice
``prompt_offsets`` (opt)  int64 ``[prompts + 1]``: prompt p is rows ``offsets[p]:offsets[p+1]``
``top_k`` (optional)      0-d integer; when present it must equal ``experts.shape[2]``
``slot_order`` (optional) 0-d string: ``score`` (slot 0 is the router's top-1 choice, then descending gate
                          score) or ``unordered`` (a token's ids are a set); absent = not declared
``meta_json`` (optional)  0-d string: JSON object with the metadata (written by ``save_trace``)
any other key             metadata: 0-d values become scalars, small 1-d arrays become lists
========================  =====================================================================

In memory the expert ids are stored compactly (``uint8`` when E <= 256, ``uint16`` when E <= 65536, else
``int32``, see ``expert_dtype``); cast to a signed type before arithmetic. Every loader and constructor path
goes through ``validate``, whose errors name the field and the first offending token and layer.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_savez
from common.errors import InputError

FORMAT = "moe.trace/1"
_ARRAY_KEYS = (
    "experts",
    "weights",
    "prompt_offsets",
    "num_experts",
    "top_k",
    "meta_json",
    "format",
    "slot_order",
)
SLOT_ORDERS = ("score", "unordered")
_META_LIST_MAX = 100_000  # metadata arrays longer than this are refused (they are data, not provenance)


@dataclass
class Trace:
    """A routing trace.

    Attributes:
        experts: integer array ``[tokens, layers, top_k]`` of expert ids in ``0..num_experts-1``; a token's
            ids are distinct; their order is what ``slot_order`` says.
        num_experts: routed experts per layer (E).
        weights: optional float array ``[tokens, layers, top_k]`` of gate weights.
        prompt_offsets: optional int64 ``[prompts + 1]``; prompt p is rows ``offsets[p]:offsets[p+1]``.
        meta: free-form provenance (model name, source, layer ids, ...); JSON-serialisable.
        slot_order: ``score`` (slot 0 = top-1 expert), ``unordered`` (a set) or ``None`` (not declared).
    """

    experts: np.ndarray
    num_experts: int
    weights: np.ndarray | None = None
    prompt_offsets: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    slot_order: str | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @property
    def num_prompts(self) -> int:
        """Prompts in the trace; a trace without ``prompt_offsets`` counts as one prompt."""
        return 1 if self.prompt_offsets is None else int(len(self.prompt_offsets) - 1)

    @property
    def num_choices(self) -> int:
        """Token-layer choices: ``tokens * layers * top_k``."""
        return int(self.experts.size)

    def validate(self, where: str = "trace") -> Trace:
        """Check every field (see ``validate_trace``); returns ``self`` so calls chain."""
        validate_trace(self, where)
        return self

    def compact(self) -> Trace:
        """A validated copy whose ``experts`` use ``expert_dtype(num_experts)`` and weights ``float32``."""
        validate_trace(self)
        return Trace(
            experts=self.experts.astype(expert_dtype(self.num_experts), copy=False),
            num_experts=int(self.num_experts),
            weights=None if self.weights is None else self.weights.astype(np.float32, copy=False),
            prompt_offsets=None
            if self.prompt_offsets is None
            else self.prompt_offsets.astype(np.int64, copy=False),
            meta=dict(self.meta),
            slot_order=self.slot_order,
        )

    def describe(self) -> str:
        """One line: shape, experts, prompts and whether it has weights."""
        return (
            f"{self.num_tokens} tokens x {self.num_layers} layers x top-{self.top_k} of {self.num_experts} "
            f"experts, {self.num_prompts} prompts, weights {'yes' if self.weights is not None else 'no'}, "
            f"slot order {self.slot_order or 'not declared'}"
        )


def expert_dtype(num_experts: int) -> np.dtype:
    """The smallest dtype that holds ids ``0..num_experts-1``: uint8, uint16 or int32."""
    if num_experts <= 256:
        return np.dtype(np.uint8)
    if num_experts <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def _first(mask: np.ndarray) -> tuple[int, ...]:
    """Index of the first true entry of ``mask`` in C order."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def validate_trace(trace: Trace, where: str = "trace") -> None:
    """Raise ``InputError`` saying what is wrong and where (field, token, layer) unless ``trace`` is valid.

    Checks: ``num_experts`` is a positive integer; ``experts`` is an integer array of rank 3 with at least
    one token, layer and choice, ``top_k <= num_experts``; no id is negative or ``>= num_experts``; no token
    repeats an expert within one layer's top-k; ``weights`` (if any) has the same shape, is floating point,
    finite and non-negative; ``prompt_offsets`` (if any) is 1-d integer, starts at 0, ends at ``tokens`` and
    strictly increases (no empty prompt). ``where`` prefixes the messages (a file name, say).
    """
    e = trace.num_experts
    if isinstance(e, bool) or not isinstance(e, int | np.integer) or int(e) < 1:
        raise InputError(f"{where}: 'num_experts' must be a positive integer, got {e!r}")
    e = int(e)
    ex = trace.experts
    if not isinstance(ex, np.ndarray):
        raise InputError(f"{where}: 'experts' must be a numpy array, got {type(ex).__name__}")
    if ex.ndim != 3:
        raise InputError(f"{where}: 'experts' must have rank 3 [tokens, layers, top_k], got shape {ex.shape}")
    if not np.issubdtype(ex.dtype, np.integer):
        raise InputError(f"{where}: 'experts' must hold integers, got dtype {ex.dtype}")
    t, num_layers, k = ex.shape
    if t == 0 or num_layers == 0 or k == 0:
        raise InputError(
            f"{where}: empty trace: 'experts' has shape {ex.shape}; need at least one token, layer and choice"
        )
    if k > e:
        raise InputError(f"{where}: top_k {k} (experts.shape[2]) exceeds num_experts {e}")
    if np.issubdtype(ex.dtype, np.signedinteger):
        neg = ex < 0
        if neg.any():
            tok, lay, slot = _first(neg)
            raise InputError(
                f"{where}: negative expert id {int(ex[tok, lay, slot])} at token {tok}, layer {lay}, "
                f"slot {slot}; ids must be in 0..{e - 1}"
            )
    if int(ex.max()) >= e:
        tok, lay, slot = _first(ex >= e)
        raise InputError(
            f"{where}: expert id {int(ex[tok, lay, slot])} at token {tok}, layer {lay}, slot {slot} is out of "
            f"range; ids must be in 0..{e - 1} (num_experts={e})"
        )
    if k > 1:
        _check_distinct(ex, where)
    if trace.weights is not None:
        _check_weights(trace.weights, ex.shape, where)
    if trace.prompt_offsets is not None:
        _check_offsets(trace.prompt_offsets, t, where)
    if not isinstance(trace.meta, dict):
        raise InputError(f"{where}: 'meta' must be a dict, got {type(trace.meta).__name__}")
    if trace.slot_order is not None and trace.slot_order not in SLOT_ORDERS:
        raise InputError(
            f"{where}: 'slot_order' must be one of {list(SLOT_ORDERS)}, got {trace.slot_order!r}"
        )


def _check_distinct(ex: np.ndarray, where: str) -> None:
    """No token repeats an expert within one layer; chunked over tokens to bound memory."""
    chunk = 1 << 16
    for start in range(0, ex.shape[0], chunk):
        part = np.sort(ex[start : start + chunk], axis=2)
        dup = (part[:, :, 1:] == part[:, :, :-1]).any(axis=2)
        if dup.any():
            tok, lay = _first(dup)
            ids = ex[start + tok, lay].tolist()
            raise InputError(
                f"{where}: token {start + tok}, layer {lay} repeats an expert within its top-k: {ids}"
            )


def _check_weights(w: Any, shape: tuple[int, ...], where: str) -> None:
    if not isinstance(w, np.ndarray):
        raise InputError(f"{where}: 'weights' must be a numpy array, got {type(w).__name__}")
    if w.shape != shape:
        raise InputError(f"{where}: 'weights' has shape {w.shape}, expected the shape of 'experts' {shape}")
    if not np.issubdtype(w.dtype, np.floating):
        raise InputError(f"{where}: 'weights' must be floating point, got dtype {w.dtype}")
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        tok, lay, slot = _first(bad)
        raise InputError(
            f"{where}: weight {float(w[tok, lay, slot])} at token {tok}, layer {lay}, slot {slot}; gate weights "
            "must be finite and >= 0"
        )


def _check_offsets(off: Any, num_tokens: int, where: str) -> None:
    if not isinstance(off, np.ndarray) or off.ndim != 1 or not np.issubdtype(off.dtype, np.integer):
        desc = f"shape {off.shape}, dtype {off.dtype}" if isinstance(off, np.ndarray) else type(off).__name__
        raise InputError(f"{where}: 'prompt_offsets' must be a 1-d integer array [prompts + 1], got {desc}")
    if off.size < 2:
        raise InputError(f"{where}: 'prompt_offsets' needs at least 2 entries (one prompt), got {off.size}")
    if int(off[0]) != 0 or int(off[-1]) != num_tokens:
        raise InputError(
            f"{where}: 'prompt_offsets' must start at 0 and end at the token count {num_tokens}, "
            f"got {int(off[0])}..{int(off[-1])}"
        )
    steps = np.diff(off.astype(np.int64))
    if (steps <= 0).any():
        p = int(np.argmax(steps <= 0))
        raise InputError(
            f"{where}: 'prompt_offsets' must strictly increase; prompt {p} spans {int(off[p])}:{int(off[p + 1])}"
        )


# ---------------------------------------------------------------------------------------------- files
def save_trace(trace: Trace, path: str | os.PathLike[str], compressed: bool = True) -> Path:
    """Validate ``trace`` and write it as ``.npz`` atomically (see the module docstring for the keys).

    ``meta`` is stored as JSON in ``meta_json``; it must be JSON-serialisable.
    """
    trace = trace.compact()
    try:
        meta_json = json.dumps(trace.meta, sort_keys=True, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise InputError(f"trace: 'meta' is not JSON-serialisable ({exc})") from exc
    arrays: dict[str, Any] = {
        "format": np.array(FORMAT),
        "experts": trace.experts,
        "num_experts": np.array(trace.num_experts, dtype=np.int64),
        "top_k": np.array(trace.top_k, dtype=np.int64),
        "meta_json": np.array(meta_json),
    }
    if trace.weights is not None:
        arrays["weights"] = trace.weights
    if trace.prompt_offsets is not None:
        arrays["prompt_offsets"] = trace.prompt_offsets
    if trace.slot_order is not None:
        arrays["slot_order"] = np.array(trace.slot_order)
    return atomic_savez(path, compressed=compressed, **arrays)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def require_npz(path: Path) -> None:
    """Raise ``InputError`` naming ``path`` unless it is a zip archive (what every ``.npz`` is)."""
    if not zipfile.is_zipfile(path):
        raise InputError(
            f"{path}: not an .npz archive (an .npz is a zip of .npy arrays, e.g. from numpy.savez_compressed; "
            "see docs/traces.md for the keys a trace needs)"
        )


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and validate a trace ``.npz``; every problem raises ``InputError`` naming the file.

    Truncated or corrupt files, missing keys, wrong shapes or dtypes, bad ids, repeated experts, bad weights
    and bad offsets are all reported with the field (and token, layer) at fault.
    """
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise InputError(f"{where}: trace file not found")
    raw: dict[str, np.ndarray] = {}
    require_npz(p)
    try:
        with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            for key in z.files:
                raw[key] = z[key]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise InputError(f"{where}: not a readable .npz trace (truncated or corrupt file: {exc})") from exc
    except ValueError as exc:  # pickled objects, bad array headers
        first = str(exc).split(". ")[0]
        raise InputError(f"{where}: not a valid .npz trace (an array could not be read: {first})") from exc
    for key in ("experts", "num_experts"):
        if key not in raw:
            raise InputError(f"{where}: missing key '{key}' (found {sorted(raw)})")
    n = raw["num_experts"]
    if n.ndim != 0 or not np.issubdtype(n.dtype, np.integer):
        raise InputError(
            f"{where}: 'num_experts' must be a 0-d integer, got shape {n.shape}, dtype {n.dtype}"
        )
    experts = raw["experts"]
    if "top_k" in raw:
        k = raw["top_k"]
        if k.ndim != 0 or not np.issubdtype(k.dtype, np.integer):
            raise InputError(f"{where}: 'top_k' must be a 0-d integer, got shape {k.shape}, dtype {k.dtype}")
        if experts.ndim == 3 and int(k) != experts.shape[2]:
            raise InputError(f"{where}: 'top_k' is {int(k)} but 'experts' has shape {experts.shape}")
    if "format" in raw and str(raw["format"]) != FORMAT:
        raise InputError(f"{where}: 'format' is {str(raw['format'])!r}, this reader knows {FORMAT!r}")
    meta = _read_meta(raw, where)
    trace = Trace(
        experts=experts,
        num_experts=int(n),
        weights=raw.get("weights"),
        prompt_offsets=raw.get("prompt_offsets"),
        meta=meta,
        slot_order=str(raw["slot_order"]) if "slot_order" in raw else None,
    )
    validate_trace(trace, where)
    return trace.compact()


def _read_meta(raw: dict[str, np.ndarray], where: str) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, arr in raw.items():
        if key in _ARRAY_KEYS:
            continue
        if arr.ndim == 0:
            meta[key] = arr.item()
        elif arr.ndim == 1 and arr.size <= _META_LIST_MAX:
            meta[key] = arr.tolist()
        else:
            raise InputError(
                f"{where}: unknown key '{key}' with shape {arr.shape}; extra keys must be scalars or short "
                "1-d arrays (metadata)"
            )
    if "meta_json" in raw:
        try:
            extra = json.loads(str(raw["meta_json"]))
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: 'meta_json' is not valid JSON ({exc})") from exc
        if not isinstance(extra, dict):
            raise InputError(f"{where}: 'meta_json' must hold a JSON object")
        meta.update(extra)
    return meta


# ---------------------------------------------------------------------- slot order
def slot0_min_fraction(experts: np.ndarray, max_rows: int = 200_000) -> float:
    """Fraction of (token, layer) rows whose slot 0 holds the row's smallest id (first ``max_rows`` tokens).

    About ``1 / top_k`` when slot 0 is the router's top-1 choice; near 1 when the slots were stored sorted
    by id (the shared DeepSeek-V2-Lite trace: 0.83).
    """
    part = np.asarray(experts[:max_rows])
    if part.shape[2] < 2:
        return 1.0
    return float((part[:, :, 0] == part.min(axis=2)).mean())


def looks_id_sorted(experts: np.ndarray) -> tuple[bool, float]:
    """``(verdict, fraction)``: slot 0 is the row's smallest id far more often than ``1 / top_k``.

    The threshold is halfway between ``1 / top_k`` (score order) and 1 (sorted); top-1 traces are never
    flagged (one slot has no order).
    """
    k = int(experts.shape[2])
    if k < 2:
        return False, 1.0
    frac = slot0_min_fraction(experts)
    return frac > 0.5 * (1.0 / k + 1.0), frac


def check_slot_order(trace: Trace, declared: str, where: str, key: str = "trace.slot_order") -> None:
    """Refuse ``declared == "score"`` when the slots look id-sorted (one line naming ``key``)."""
    if declared not in SLOT_ORDERS:
        raise InputError(f"{where}: {key} must be one of {list(SLOT_ORDERS)}, got {declared!r}")
    if declared != "score":
        return
    sorted_, frac = looks_id_sorted(trace.experts)
    if sorted_:
        raise InputError(
            f"{where}: slot 0 holds the row's smallest expert id in {frac:.0%} of rows (score order gives about "
            f"{1 / trace.top_k:.0%}): the slots look sorted by id, not by score; set {key}=unordered"
        )
