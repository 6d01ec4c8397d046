"""Cost of the quality evaluation (``qmo eval``, the quantize Job's quality.json) per billion parameters.

Random Llama shapes are evaluated against themselves: the cost is the same as against a quantized copy
(two loads and two forward passes over the token budget, one model in memory at a time) and needs no
quantization first. Prints wall seconds, seconds per billion parameters, and peak host RSS of this
process. On a GPU machine the same run shows GPU time and ``torch.cuda.max_memory_allocated``.

    .venv/bin/python benchmarks/evaluate_quality.py                 # tiny and 0.1B shapes
    .venv/bin/python benchmarks/evaluate_quality.py --shapes 1b     # needs ~10 GiB host memory
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from qmo.quantizer.evaluate import DEFAULT_TOKEN_BUDGET, evaluate
from tiny_models import build_tokenizer

SHAPES = {
    # name: (hidden, intermediate, layers, heads, kv heads, vocab)
    "tiny": (256, 512, 2, 4, 2, 128),
    "0.1b": (768, 2048, 8, 12, 4, 32000),
    "1b": (2048, 8192, 16, 32, 8, 128256),
}


def make_model(directory: Path, shape: str) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, intermediate, layers, heads, kv_heads, vocab = SHAPES[shape]
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    build_tokenizer(directory)
    return sum(p.numel() for p in model.parameters())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,0.1b")
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKEN_BUDGET)
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, budget {args.tokens} tokens (the tests' word-level tokenizer)")
    print("| shape | parameters | tokens scored | seconds | seconds per 1B params | peak host RSS (GiB) |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        with tempfile.TemporaryDirectory(prefix="qmo-bench-eval-") as tmp:
            params = make_model(Path(tmp), shape)
            started = time.monotonic()
            quality = evaluate(Path(tmp), Path(tmp), budget=args.tokens)
            seconds = time.monotonic() - started
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(
            f"| {shape} | {params / 1e9:.3f} B | {quality.tokens} | {seconds:.1f} | "
            f"{seconds / (params / 1e9):.0f} | {rss:.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
