"""``python -m runners.record_trace``: record a routing trace from a transformers MoE model over text prompts.

::

    python -m runners.record_trace --model allenai/OLMoE-1B-7B-0924 --text prompts/ --out olmoe.npz \\
        [--max-tokens N] [--max-prompt-tokens 2048] [--batch-size B] [--device cpu|cuda] \\
        [--dtype auto|float32|bfloat16|float16] [--prompt-field text] [--mode router|logits] [--allow-download]

``--text`` is a ``.txt`` file (one prompt per non-blank line), a ``.jsonl`` file (one prompt per record, the
string in ``--prompt-field``) or a folder searched recursively for both (files in sorted path order). The
model is loaded from the local Hugging Face cache or a local folder only, unless ``--allow-download``.
``--tiny FAMILY`` replaces the model by ``moe.recorder.tiny_model(FAMILY, --seed)`` with a one-token-per-
character tokenizer (tests, dry runs). The trace (expert ids, gate weights, prompt offsets, provenance in
``meta``) is written atomically with ``moe.trace.save_trace``; then a one-paragraph summary is printed.
Every input error prints one line ``error: ...`` on stderr and exits with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from common.errors import InputError, SuiteError
from moe.recorder import MODES, TINY_FAMILIES, TINY_VOCAB, record_trace, tiny_model
from moe.stats import expert_load, load_imbalance
from moe.trace import Trace, save_trace

TEXT_SUFFIXES = (".txt", ".jsonl")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2, like every other input error
        fail(f"{message} (see python -m runners.record_trace --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see the module docstring)."""
    p = _Parser(
        prog="python -m runners.record_trace",
        description="Record a routing trace from a transformers MoE model over text prompts (docs/traces.md).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face model name (in the local cache) or local model folder")
    src.add_argument("--tiny", choices=TINY_FAMILIES, help="a tiny random-weight model instead (tests)")
    p.add_argument("--text", required=True, type=Path, help="a .txt or .jsonl file, or a folder of them")
    p.add_argument("--out", required=True, type=Path, help="the trace file to write (.npz)")
    p.add_argument(
        "--max-tokens", type=_positive_int, help="stop after this many tokens in all (default: all)"
    )
    p.add_argument("--max-prompt-tokens", type=_positive_int, default=2048, help="truncate each prompt")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="prompts per forward pass (padded)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--prompt-field", default="text", help="the prompt's key in .jsonl records")
    p.add_argument("--mode", choices=MODES, default="router", help="router hooks or router logits")
    p.add_argument("--allow-download", action="store_true", help="let transformers download the model")
    p.add_argument("--seed", type=int, default=0, help="weight seed of --tiny")
    return p


# --------------------------------------------------------------------------------------------- prompts
def text_files(path: Path) -> list[Path]:
    """``path`` itself (a ``.txt``/``.jsonl`` file) or the ``.txt``/``.jsonl`` files under the folder ``path``,
    in sorted path order; ``InputError`` when there is none."""
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise InputError(f"--text: folder {path} holds no .txt or .jsonl file")
        return files
    if not path.exists():
        raise InputError(f"--text: no such file or folder: {path}")
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise InputError(f"--text: {path} must be a .txt or .jsonl file, or a folder of them")
    return [path]


def read_prompts(files: Sequence[Path], field: str = "text") -> list[str]:
    """The prompts of ``files`` in order: each non-blank line of a ``.txt`` file, the string ``record[field]``
    of each non-blank line of a ``.jsonl`` file (records whose string is blank are skipped).

    Raises ``InputError`` naming the file and line for undecodable text, a line that is not a JSON object, or
    a record without a string ``field``; and when there is no prompt at all.
    """
    prompts: list[str] = []
    for f in files:
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise InputError(f"--text: {f} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except OSError as exc:
            raise InputError(f"--text: cannot read {f} ({exc.strerror})") from exc
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if f.suffix.lower() == ".txt":
                prompts.append(line)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"--text: {f}:{n} is not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                got = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise InputError(
                    f"--text: {f}:{n} must be a JSON object with a string field '{field}' (--prompt-field), "
                    f"got {got}"
                )
            if record[field].strip():
                prompts.append(record[field])
    if not prompts:
        names = ", ".join(str(f) for f in files[:3]) + (", ..." if len(files) > 3 else "")
        raise InputError(f"--text: no non-blank prompt in {names}")
    return prompts


class CharTokenizer:
    """One token per character (``3 + ord(c) % (vocab - 3)``, ids 0..2 left to pad/bos/eos); the tokenizer
    of ``--tiny`` models, with the call signature of a Hugging Face tokenizer."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __call__(self, text: str, truncation: bool = False, max_length: int | None = None) -> dict[str, Any]:
        ids = [3 + ord(c) % (self.vocab_size - 3) for c in text]
        return {"input_ids": ids[:max_length] if truncation and max_length else ids}


def token_ids(
    tokenizer: Any, texts: Sequence[str], max_prompt_tokens: int | None, max_tokens: int | None
) -> Iterator[list[int]]:
    """Token ids of each text, truncated to ``max_prompt_tokens``, stopping once ``max_tokens`` ids in all
    have been yielded (the last prompt is cut to fit)."""
    left = max_tokens
    for text in texts:
        if left is not None and left <= 0:
            return
        encoded = tokenizer(text, truncation=max_prompt_tokens is not None, max_length=max_prompt_tokens)
        ids = list(encoded["input_ids"])
        if left is not None:
            ids = ids[:left]
            left -= len(ids)
        yield ids


# ----------------------------------------------------------------------------------------------- model
def _moe_config_problem(config: Any) -> str | None:
    """Why ``config`` is not a mixture-of-experts config, or None when it is one."""
    experts = next(
        (
            getattr(config, k)
            for k in ("num_local_experts", "num_experts", "n_routed_experts")
            if getattr(config, k, None)
        ),
        None,
    )
    if not experts or not getattr(config, "num_experts_per_tok", None):
        return (
            f"its config ({type(config).__name__}) has no routed-expert count (num_local_experts, num_experts "
            "or n_routed_experts) and num_experts_per_tok"
        )
    return None


def load_model(name: str, device: str, dtype: str, allow_download: bool) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for a transformers MoE causal LM, loaded offline unless ``allow_download``.

    Raises ``InputError`` when the model cannot be found or read, or its config is not a MoE config (checked
    before the weights are loaded).
    """
    import transformers  # imported here: it takes seconds, and only this path needs it

    where = "locally (pass --allow-download to fetch it)" if not allow_download else "locally or online"
    local_only = not allow_download
    try:
        config = transformers.AutoConfig.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"--model: cannot find or read {name!r} {where}: {_first_line(exc)}") from exc
    problem = _moe_config_problem(config)
    if problem:
        raise InputError(f"--model: {name!r} is not a mixture-of-experts model: {problem}")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        dtype, torch.bfloat16 if device == "cuda" else torch.float32
    )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, local_files_only=local_only)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            name, config=config, dtype=torch_dtype, local_files_only=local_only
        )
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"--model: cannot load {name!r} {where}: {_first_line(exc)}") from exc
    return model.to(device).eval(), tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------- main
def summary(trace: Trace, model_name: str, out: Path, seconds: float) -> str:
    """One paragraph: tokens, prompts, layers, top_k, E, load imbalance (``moe.stats.load_imbalance``, max over
    mean expert load per layer), recording time in seconds and the output file."""
    imb = load_imbalance(expert_load(trace.experts, trace.num_experts))
    worst = int(np.argmax(imb))
    return (
        f"Recorded {trace.num_tokens} tokens in {trace.num_prompts} prompts from {model_name}: "
        f"{trace.num_layers} MoE layers, top-{trace.top_k} of {trace.num_experts} experts. "
        f"Load imbalance (max/mean expert load) is {imb.mean():.2f} on average over layers, worst "
        f"{imb[worst]:.2f} at layer {worst}. Recording took {seconds:.1f} s "
        f"({trace.num_tokens / max(seconds, 1e-9):.0f} tokens/s); wrote {out}."
    )


def record(args: argparse.Namespace) -> tuple[Trace, str, float]:
    """Read the prompts, load (or build) the model and record the trace.

    Returns:
        ``(trace, model name, seconds spent recording)`` (model loading not included).
    """
    if args.out.suffix != ".npz":
        raise InputError(f"--out: {args.out} must end in .npz")
    if args.out.is_dir():
        raise InputError(f"--out: {args.out} is a folder; give a file name ending in .npz")
    files = text_files(args.text)
    texts = read_prompts(files, args.prompt_field)

    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device: cuda was asked for but torch sees no CUDA device")
    if args.tiny:
        name = f"tiny-{args.tiny} (random weights, seed {args.seed})"
        model, tokenizer = tiny_model(args.tiny, args.seed).to(args.device), CharTokenizer(TINY_VOCAB)
    else:
        name = args.model
        model, tokenizer = load_model(args.model, args.device, args.dtype, args.allow_download)
    meta = {
        "model": name,
        "source": f"{name} prefill routing of {args.text} (runners.record_trace)",
        "text": str(args.text),
        "text_files": [str(f.relative_to(args.text)) if args.text.is_dir() else f.name for f in files],
        "prompt_field": args.prompt_field,
        "max_tokens": args.max_tokens,
        "max_prompt_tokens": args.max_prompt_tokens,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    ids = token_ids(tokenizer, texts, args.max_prompt_tokens, args.max_tokens)
    start = time.monotonic()
    trace = record_trace(model, ids, mode=args.mode, meta=meta, total=len(texts), batch_size=args.batch_size)
    return trace, name, time.monotonic() - start


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, record, write the trace and print the summary; input errors exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        trace, name, seconds = record(args)
        save_trace(trace, args.out)
    except SuiteError as exc:
        fail(str(exc))
    print(summary(trace, name, args.out, seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
