"""Tiny random Llama checkpoints with a tokenizer, made here with transformers (the hub is unreachable)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "operator",
    "plans",
    "gpu",
    "memory",
    "model",
    "kubernetes",
    "schedules",
    "pods",
    "nodes",
    "job",
    "runs",
    "pod",
    "completion",
    "records",
    "result",
    "quantization",
    "stores",
    "weights",
    "fewer",
    "bits",
    "trading",
    "little",
    "accuracy",
    "speed",
    "humans",
    "walked",
    "moon",
    "world",
    "watched",
    "television",
    "central",
    "bank",
    "raised",
    "interest",
    "rates",
    "slow",
    "inflation",
]
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")


def build_tokenizer(directory: Path) -> int:
    """A word-level tokenizer over WORDS; returns its size (the model's vocab must match it exactly, or
    vLLM decodes the ids the tokenizer lacks to empty strings)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(directory)
    return len(vocab)


def build_tiny_llama(
    directory: Path, *, seed: int = 0, vocab_size: int | None = None, initializer_range: float = 0.02
) -> Path:
    """Hidden 256 and intermediate 512: every Linear's input is a multiple of the 128 group size.

    ``vocab_size=None`` sizes the vocabulary to the tokenizer. Serving tests use ``initializer_range``
    around 0.1: at 0.02 a random model's next-token distribution is so flat that greedy decoding repeats.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokens = build_tokenizer(directory)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size or tokens,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    return directory


def quantize_with_qmo(source: Path, method: str, out: Path) -> Path:
    """``qmo quantize`` as the Job runs it (a subprocess, its CLI flags), with a small calibration set."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qmo",
            "quantize",
            "--method",
            method,
            "--source",
            str(source),
            "--out",
            str(out),
            "--calibration-samples",
            "8",
            "--calibration-seq-len",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"qmo quantize --method {method} failed:\n{result.stderr[-3000:]}")
    return out


def build_tiny_llama_in_subprocess(directory: Path, *, seed: int = 0, vocab_size: int | None = None) -> Path:
    """``build_tiny_llama`` in a fresh interpreter, for tests whose own process must not import torch."""
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from tiny_models import build_tiny_llama;"
        "build_tiny_llama(Path(sys.argv[2]), seed=int(sys.argv[3]), vocab_size=int(sys.argv[4]) or None)"
    )
    arguments = [str(Path(__file__).parent), str(directory), str(seed), str(vocab_size or 0)]
    result = subprocess.run(
        [sys.executable, "-c", script, *arguments], capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"building a tiny Llama in {directory} failed:\n{result.stderr[-3000:]}")
    return directory
