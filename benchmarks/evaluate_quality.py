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

from qmo.quantizer.evaluate import DEFAULT_TOKEN_BUDGET, evaluate
from quantize_gpu import make_model  # the same random Llama shapes as the quantization benchmark


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="tiny,0.1b")
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKEN_BUDGET)
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"device {device}, budget {args.tokens} tokens (a word-level tokenizer: mostly unknown-word tokens)"
    )
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
