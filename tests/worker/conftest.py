"""A tiny random Llama and its tokenizer, made here with transformers (no hub), saved once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def build_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hidden 256 and intermediate 512: every Linear's input is a multiple of the 128 group size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama")
    build_tokenizer(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    return directory
