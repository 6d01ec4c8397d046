"""Quantization speed on a GPU: random Llama-shaped models (1B and 8B), GPTQ and AWQ, per backend.

Prints seconds per billion parameters (and, for llm-compressor, which runs in this process, peak GPU memory)
for each. Needs a CUDA GPU for real figures; ``--tiny`` runs the same path on a 2-layer model on CPU as a
smoke test. A legacy backend runs as the quantize Job runs it, ``qmo quantize --backend X`` in X's locked
environment (``make worker-envs``); AutoGPTQ only on a GPU.

    .venv/bin/python benchmarks/quantize_gpu.py                                   # on a GPU machine
    .venv/bin/python benchmarks/quantize_gpu.py --backends autogptq,gptqmodel,autoawq
    .venv/bin/python benchmarks/quantize_gpu.py --tiny --backends llm-compressor,gptqmodel   # anywhere
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    # name: (hidden, intermediate, layers, heads, kv heads, vocab) -- Llama 3.2 1B and Llama 3.1 8B shapes
    "0.1b": (768, 2048, 8, 12, 4, 32000),
    "1b": (2048, 8192, 16, 32, 8, 128256),
    "8b": (4096, 14336, 32, 32, 8, 128256),
    "tiny": (256, 512, 2, 4, 2, 128),
}


def make_model(directory: Path, shape: str) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, intermediate, layers, heads, kv_heads, vocab = SHAPES[shape]
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        tie_word_embeddings=False,
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    _save_tokenizer(directory, vocab)
    return sum(p.numel() for p in model.parameters())


def _save_tokenizer(directory: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    vocab.update({f"w{i}": i for i in range(4, min(vocab_size, 4096))})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>").save_pretrained(
        directory
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on CPU (smoke test)")
    parser.add_argument("--methods", default="gptq,awq")
    parser.add_argument(
        "--backends", default="llm-compressor", help="comma-separated: llm-compressor,autoawq,..."
    )
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()

    import torch

    from qmo.api.backends import backend_problem
    from qmo.quantizer.recipes import Recipe
    from qmo.quantizer.worker import Options, run

    shapes = ["tiny"] if args.tiny else ["1b", "8b"]
    samples, seq_len = (8, 32) if args.tiny else (args.samples, args.seq_len)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {device}; calibration {samples} samples x {seq_len} tokens")
    for shape in shapes:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "source"
            parameters = make_model(source, shape)
            for backend in args.backends.split(","):
                for method in args.methods.split(","):
                    if backend_problem(backend, method) is not None:
                        continue
                    out = Path(tmp) / f"{backend}-{method}"
                    if torch.cuda.is_available():
                        torch.cuda.reset_peak_memory_stats()
                    started = time.monotonic()
                    if backend == "llm-compressor":
                        recipe = Recipe(
                            method=method, calibration_samples=samples, calibration_seq_len=seq_len
                        )
                        run(Options(recipe=recipe, out=out, source=source))
                        peak = (
                            torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
                        )
                    else:
                        command = [sys.executable, "-m", "qmo", "quantize", "--backend", backend]
                        command += ["--method", method, "--source", str(source), "--out", str(out)]
                        command += [
                            "--calibration-samples",
                            str(samples),
                            "--calibration-seq-len",
                            str(seq_len),
                        ]
                        done = subprocess.run(command, capture_output=True, text=True, check=False)
                        if done.returncode != 0:
                            print(
                                f"{shape:>4} {backend} {method}: failed: {done.stderr.strip().splitlines()[-1]}"
                            )
                            continue
                        peak = None
                    seconds = time.monotonic() - started
                    memory = f", peak GPU memory {peak:.1f} GiB" if peak is not None else ""
                    print(
                        f"{shape:>4} {backend:>14} {method:>5}: {seconds:8.1f} s total,"
                        f" {seconds / (parameters / 1e9):8.1f} s per billion parameters{memory}"
                        f" ({parameters / 1e9:.2f} B params)"
                    )


if __name__ == "__main__":
    main()
