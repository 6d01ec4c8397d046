"""A tiny random Llama with its own word-level tokenizer, made locally with transformers (the hub is
unreachable): what the sandbox's demo quantizes and serves on its real node, and what the tests use.

``python -m qmo.sandbox.tiny_model DIR`` builds one in a fresh interpreter, so the caller never imports torch.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def tokenizer_vocab() -> dict[str, int]:
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    return vocab


def tiny_llama_config(*, vocab_size: int | None = None, initializer_range: float = 0.02) -> dict[str, Any]:
    """The tiny Llama's ``config.json`` fields (without torch): what the builder saves and what the planner
    reads for the sandbox's tiny-llama example. ``vocab_size=None`` is the tokenizer's size."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size or len(tokenizer_vocab()),
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "initializer_range": initializer_range,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,
        "dtype": "bfloat16",
    }


def build_tokenizer(directory: Path) -> int:
    """A word-level tokenizer over WORDS; returns its size (the model's vocab must match it exactly, or
    vLLM decodes the ids the tokenizer lacks to empty strings)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = tokenizer_vocab()
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast: Any = PreTrainedTokenizerFast  # transformers' classes are untyped to mypy
    fast(
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
    build_tokenizer(directory)
    torch.manual_seed(seed)
    fields = tiny_llama_config(vocab_size=vocab_size, initializer_range=initializer_range)
    fields = {key: value for key, value in fields.items() if key not in ("architectures", "model_type")}
    config = LlamaConfig(**fields)
    llama: Any = LlamaForCausalLM
    model = llama(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    return directory


def build_in_subprocess(
    directory: Path, *, seed: int = 0, vocab_size: int | None = None, initializer_range: float = 0.02
) -> Path:
    """``build_tiny_llama`` in a fresh interpreter (torch and the model stay out of the caller's memory)."""
    command = [sys.executable, "-m", "qmo.sandbox.tiny_model", str(directory), "--seed", str(seed)]
    command += ["--initializer-range", repr(initializer_range)]
    if vocab_size:
        command += ["--vocab-size", str(vocab_size)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"building a tiny Llama in {directory} failed:\n{result.stderr[-3000:]}")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m qmo.sandbox.tiny_model", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--initializer-range", type=float, default=0.02)
    args = parser.parse_args()
    build_tiny_llama(
        args.directory, seed=args.seed, vocab_size=args.vocab_size, initializer_range=args.initializer_range
    )


if __name__ == "__main__":
    main()
