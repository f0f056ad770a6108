"""``python -m runners.record_trace`` on tiny random-weight models and local model folders (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from moe.recorder import TINY_VOCAB, record_trace, tiny_model
from moe.trace import load_trace
from runners.record_trace import CharTokenizer, main

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
LINES = ["hello world", "the quick brown fox jumps", "mixture of experts"]
RECORDS = ["routing traces", "  ", "expert placement by integer programming"]


def write_prompts(folder: Path, field: str = "text") -> Path:
    """``a.txt`` (three lines and a blank one) and ``b.jsonl`` (two prompts, one blank record)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.txt").write_text(f"{LINES[0]}\n\n{LINES[1]}\n{LINES[2]}\n", encoding="utf-8")
    (folder / "b.jsonl").write_text(
        "".join(json.dumps({field: r, "id": i}) + "\n" for i, r in enumerate(RECORDS))
    )
    return folder


def expected_prompts() -> list[str]:
    return LINES + [RECORDS[0], RECORDS[2]]


def test_cli_records_a_tiny_model_like_the_recorder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = write_prompts(tmp_path / "prompts")
    out = tmp_path / "trace.npz"
    args = ["--tiny", "mixtral", "--text", str(text)]  # ``python -m runners.record_trace`` in-process
    assert main([*args, "--out", str(out), "--max-tokens", "70", "--batch-size", "2", "--seed", "4"]) == 0
    trace = load_trace(out)
    # one token per character; the 70-token budget keeps 2 tokens of the last prompt
    lengths = [11, 25, 18, 14, 2]
    assert trace.prompt_offsets.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    assert trace.experts.shape == (70, 3, 2) and trace.num_experts == 8
    assert trace.weights is not None and trace.weights.shape == (70, 3, 2)
    np.testing.assert_allclose(trace.weights.sum(axis=2), 1.0, rtol=1e-5)  # Mixtral renormalises its top-2
    assert trace.meta["model"].startswith("tiny-mixtral") and "seed 4" in trace.meta["model"]
    assert str(text) in trace.meta["source"] and trace.meta["text_files"] == ["a.txt", "b.jsonl"]
    assert trace.meta["batch_size"] == 2 and trace.meta["max_tokens"] == 70
    tok = CharTokenizer(TINY_VOCAB)
    ids = [tok(t)["input_ids"] for t in expected_prompts()]
    ids[-1] = ids[-1][:2]
    ref = record_trace(tiny_model("mixtral", seed=4), ids)
    np.testing.assert_array_equal(trace.experts, ref.experts)
    np.testing.assert_allclose(trace.weights, ref.weights, rtol=1e-5, atol=1e-6)
    summary = capsys.readouterr().out.strip()
    assert "70 tokens in 5 prompts" in summary and "3 MoE layers, top-2 of 8 experts" in summary
    assert "Load imbalance" in summary and str(out) in summary


def test_cli_jsonl_field_other_family_and_logits_mode(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_prompts(tmp_path / "p", field="body") / "b.jsonl"
    out = tmp_path / "q3.npz"
    args = ["--tiny", "qwen3_moe", "--text", str(path), "--out", str(out), "--prompt-field", "body"]
    assert main([*args, "--mode", "logits", "--max-prompt-tokens", "10"]) == 0
    trace = load_trace(out)
    assert trace.experts.shape == (20, 3, 3) and trace.prompt_offsets.tolist() == [0, 10, 20]
    assert "20 tokens in 2 prompts" in capsys.readouterr().out


def save_word_tokenizer(folder: Path) -> None:
    """A whitespace word-level tokenizer over the prompt words (ids 3..), saved as a fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for t in expected_prompts() for w in t.split()})
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="</s>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="</s>")
    fast.save_pretrained(folder)


def test_cli_loads_a_local_model_folder_offline(tmp_path: Path) -> None:
    model_dir = tmp_path / "olmoe-tiny"
    model = tiny_model("olmoe", seed=2)
    model.save_pretrained(model_dir)
    save_word_tokenizer(model_dir)
    out = tmp_path / "olmoe.npz"
    text = write_prompts(tmp_path / "p")
    assert main(["--model", str(model_dir), "--text", str(text), "--out", str(out), "--batch-size", "3"]) == 0
    trace = load_trace(out)
    lengths = [len(t.split()) for t in expected_prompts()]
    assert trace.prompt_offsets.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    assert trace.meta["model"] == str(model_dir) and trace.meta["dtype"] == "float32"
    tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ref = record_trace(model, [tok(t)["input_ids"] for t in expected_prompts()])
    np.testing.assert_array_equal(trace.experts, ref.experts)


def non_moe_model(folder: Path) -> Path:
    cfg = transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    cfg.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_text", "no such file or folder"),
        ("empty_text", "no non-blank prompt"),
        ("empty_folder", "holds no .txt or .jsonl file"),
        ("bad_json", "b.jsonl:2 is not valid JSON"),
        ("missing_field", "with a string field 'prompt'"),
        ("wrong_suffix", "must be a .txt or .jsonl file"),
        ("bad_out", "must end in .npz"),
        ("not_moe", "is not a mixture-of-experts model"),
        ("not_found_offline", "cannot find or read 'nobody/no-such-moe-model' locally"),
        ("missing_local_folder", "cannot find or read"),
        ("bad_batch", "--batch-size: expected a positive integer"),
        ("bad_family", "argument --tiny: invalid choice"),
        ("no_model", "one of the arguments --model --tiny is required"),
    ],
)
def test_errors_exit_2_with_one_line_and_no_file(
    case: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    good = write_prompts(tmp_path / "good")
    out = tmp_path / "out" / "trace.npz"
    src, text, extra = ["--tiny", "mixtral"], good, []
    if case == "missing_text":
        text = tmp_path / "nope.txt"
    elif case == "empty_text":
        text = tmp_path / "empty.txt"
        text.write_text("\n   \n")
    elif case == "empty_folder":
        text = tmp_path / "none"
        text.mkdir()
        (text / "notes.md").write_text("not a prompt file")
    elif case == "bad_json":
        text = tmp_path / "bad"
        text.mkdir()
        (text / "b.jsonl").write_text('{"text": "fine"}\n{"text": broken}\n')
    elif case == "missing_field":
        extra = ["--prompt-field", "prompt"]
    elif case == "wrong_suffix":
        text = tmp_path / "prompts.csv"
        text.write_text("a,b\n")
    elif case == "bad_out":
        out = tmp_path / "trace.npy"
    elif case == "not_moe":
        src = ["--model", str(non_moe_model(tmp_path / "llama"))]
    elif case == "not_found_offline":
        src = ["--model", "nobody/no-such-moe-model"]
    elif case == "missing_local_folder":
        src = ["--model", str(tmp_path / "no-model-here")]
    elif case == "bad_batch":
        extra = ["--batch-size", "0"]
    elif case == "bad_family":
        src = ["--tiny", "llama"]
    elif case == "no_model":
        src = []
    with pytest.raises(SystemExit) as exc:
        main([*src, "--text", str(text), "--out", str(out), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not [f for f in tmp_path.rglob("*") if "trace.np" in f.name]  # no output, no temporary file


def test_cuda_without_a_device_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; the refusal cannot be checked")
    out = tmp_path / "t.npz"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--tiny",
                "olmoe",
                "--text",
                str(write_prompts(tmp_path / "p")),
                "--out",
                str(out),
                "--device",
                "cuda",
            ]
        )
    assert exc.value.code == 2 and "no CUDA device" in capsys.readouterr().err and not out.exists()
