"""Options of the engine's two config groups: ``model`` (the MoE model's shapes) and ``engine`` (how it runs).

``conf/model/<name>.yaml`` and ``conf/engine/default.yaml`` start from these dataclasses (``common.config``).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config import schema
from common.errors import ConfigError

BACKENDS = ("auto", "gloo", "nccl")
ROUTINGS = ("router", "trace")
DTYPES = ("auto", "float32", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
DISPATCHES = ("fast", "padded", "legacy")
KERNELS = ("auto", "grouped_mm", "bmm", "loop")
OVERLAPS = ("none", "two_batch", "split")


def _positive(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"expected a positive integer, got {value!r}")


def _choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, f"expected one of {list(choices)}, got {value!r}")


@schema("model", "mixtral_tiny")
@schema("model", "deepseek_v2_lite_shape")
@schema("model", "mixtral_8x7b_shape")
@dataclass(frozen=True)
class MoEModelSpec:
    """A Mixtral-like MoE block stack: ``num_layers`` x (RMSNorm, attention, RMSNorm, MoE feed-forward).

    Attributes:
        name: the preset's name.
        hidden_size: H, the residual width.
        ffn_size: F, the hidden width of one routed SwiGLU expert (gate and up ``[F, H]``, down ``[H, F]``).
        num_experts: E, routed experts per layer.
        top_k: experts each token chooses per layer.
        num_layers: MoE blocks; layer l serves the placement's (and trace's) layer l.
        num_heads: attention heads (``hidden_size`` must be divisible by it).
        num_shared_experts: experts every token passes through on its own rank (DeepSeek's shared experts).
        shared_ffn_size: F of one shared expert; 0 = ``ffn_size``.
        rms_eps: RMSNorm epsilon.
        renormalize: divide the top-k gate weights by their sum (Mixtral) or keep the softmax values.
    """

    name: str = "mixtral_tiny"
    hidden_size: int = 64
    ffn_size: int = 128
    num_experts: int = 8
    top_k: int = 2
    num_layers: int = 2
    num_heads: int = 4
    num_shared_experts: int = 0
    shared_ffn_size: int = 0
    rms_eps: float = 1e-6
    renormalize: bool = True

    def __post_init__(self) -> None:
        for key in ("hidden_size", "ffn_size", "num_experts", "top_k", "num_layers", "num_heads"):
            _positive(key, getattr(self, key))
        if self.top_k > self.num_experts:
            raise ConfigError("top_k", f"expected at most num_experts={self.num_experts}, got {self.top_k}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                "num_heads", f"must divide hidden_size={self.hidden_size}, got {self.num_heads}"
            )
        for key in ("num_shared_experts", "shared_ffn_size"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(key, f"expected a non-negative integer, got {v!r}")
        if not self.rms_eps > 0:
            raise ConfigError("rms_eps", f"expected a positive number, got {self.rms_eps!r}")

    @property
    def shared_ffn(self) -> int:
        """F of a shared expert."""
        return self.shared_ffn_size or self.ffn_size

    @property
    def expert_flops_per_token(self) -> int:
        """FLOPs of one routed expert on one token: 3 matmuls x 2 x H x F."""
        return 6 * self.hidden_size * self.ffn_size


@schema("engine", "default")
@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs and measures.

    Attributes:
        backend: ``auto`` (NCCL when CUDA is available, else gloo), ``gloo`` or ``nccl``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        dtype: ``auto`` (bf16 on GPU, fp32 on CPU), ``float32`` or ``bfloat16``.
        nproc: ranks to spawn when not started by torchrun (1 = this process only).
        warmup_iters: iterations run before measuring.
        measure_iters: measured iterations (each one batch, one forward through all layers).
        timeout_s: process-group timeout: a collective that waits longer fails every rank.
        check_reference: also run the single-process reference of every measured batch and record
            ``max_abs_err_vs_reference`` (needs every expert's weights on each rank, one at a time).
        tolerance: largest accepted ``max_abs_err_vs_reference`` (relative to the output's max magnitude).
        routing: ``router`` (the model's own top-k) or ``trace`` (each layer's choices from the trace).
        batch_tokens: tokens per iteration over all ranks (divisible by world size x ``seq_len``).
        seq_len: tokens per attention sequence; each rank holds whole sequences.
        phase_barriers: a barrier before every phase, so each phase's clock starts on all ranks together.
        require_experts_on_every_rank: refuse a placement that leaves a rank without experts in a layer.
        dispatch: ``fast`` (layout on the device, one count exchange, packed rows and metadata, grouped GEMM),
            ``padded`` (``fast`` with the counts carried in one exchange of fixed-size per-rank buffers: no
            count exchange, up to ``n`` rows to each rank; DeepEP's low-latency layout) or ``legacy`` (the
            first engine's path: the benchmark's baseline).
        experts: the fast path's expert kernel: ``auto`` (``grouped_mm`` where it runs, else ``bmm``),
            ``grouped_mm``, ``bmm`` (padded batched matmul) or ``loop`` (one SwiGLU per expert: the reference).
        overlap: ``none``, ``two_batch`` (two halves, one's exchanges during the other's expert compute) or
            ``split`` (the same halves one after the other: ``two_batch``'s no-overlap reference).
        nccl_async_error_handling: with ``backend=nccl``, ``TORCH_NCCL_ASYNC_ERROR_HANDLING`` (0 none, 1 the
            watchdog aborts the communicators and ends the process when a collective fails or exceeds
            ``timeout_s``, 2 abort without ending the process, 3 end without the abort's clean-up).
        nccl_blocking_wait: with ``backend=nccl``, ``TORCH_NCCL_BLOCKING_WAIT``: a collective's ``wait`` blocks
            the calling thread and raises there after ``timeout_s`` (false: the watchdog alone acts).
    """

    backend: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    nproc: int = 1
    warmup_iters: int = 2
    measure_iters: int = 5
    timeout_s: float = 120.0
    check_reference: bool = False
    tolerance: float = 1e-4
    routing: str = "trace"
    batch_tokens: int = 1024
    seq_len: int = 64
    phase_barriers: bool = True
    require_experts_on_every_rank: bool = True
    dispatch: str = "fast"
    experts: str = "auto"
    overlap: str = "none"
    nccl_async_error_handling: int = 1
    nccl_blocking_wait: bool = False

    def __post_init__(self) -> None:
        _choice("backend", self.backend, BACKENDS)
        _choice("dispatch", self.dispatch, DISPATCHES)
        _choice("experts", self.experts, KERNELS)
        _choice("overlap", self.overlap, OVERLAPS)
        if self.overlap != "none" and self.dispatch == "legacy":
            raise ConfigError(
                "overlap", "two_batch needs engine.dispatch=fast or padded (the legacy path has no overlap)"
            )
        if isinstance(self.nccl_async_error_handling, bool) or self.nccl_async_error_handling not in (
            0,
            1,
            2,
            3,
        ):
            raise ConfigError(
                "nccl_async_error_handling", f"expected 0, 1, 2 or 3, got {self.nccl_async_error_handling!r}"
            )
        if not isinstance(self.nccl_blocking_wait, bool):
            raise ConfigError(
                "nccl_blocking_wait", f"expected true or false, got {self.nccl_blocking_wait!r}"
            )
        _choice("device", self.device, DEVICES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("routing", self.routing, ROUTINGS)
        for key in ("nproc", "measure_iters", "batch_tokens", "seq_len"):
            _positive(key, getattr(self, key))
        if (
            isinstance(self.warmup_iters, bool)
            or not isinstance(self.warmup_iters, int)
            or self.warmup_iters < 0
        ):
            raise ConfigError("warmup_iters", f"expected an integer >= 0, got {self.warmup_iters!r}")
        if not self.timeout_s > 0:
            raise ConfigError("timeout_s", f"expected a positive number of seconds, got {self.timeout_s!r}")
        if not self.tolerance > 0:
            raise ConfigError("tolerance", f"expected a positive number, got {self.tolerance!r}")
        if self.batch_tokens % self.seq_len:
            raise ConfigError(
                "batch_tokens", f"must be a multiple of seq_len={self.seq_len}, got {self.batch_tokens}"
            )
