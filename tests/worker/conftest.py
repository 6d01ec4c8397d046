"""A tiny random Llama and its tokenizer, made here with transformers (no hub), saved once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_models import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A vocabulary larger than the tokenizer's is fine for quantizing (tests/serving sizes it to fit).
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), vocab_size=128)
