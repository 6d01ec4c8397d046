"""Tiny random Llama checkpoints for the tests: the sandbox's builder (qmo.sandbox.tiny_model), and qmo quantize."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from qmo.sandbox.tiny_model import WORDS, build_in_subprocess, build_tiny_llama, build_tokenizer

__all__ = [
    "WORDS",
    "build_tiny_llama",
    "build_tiny_llama_in_subprocess",
    "build_tokenizer",
    "quantize_with_qmo",
]


def quantize_with_qmo(
    source: Path, method: str, out: Path, *, backend: str = "llm-compressor", evaluate: bool = True
) -> Path:
    """``qmo quantize`` as the Job runs it (a subprocess, its CLI flags), with a small calibration set; a
    legacy backend runs in its locked environment (``make worker-envs``)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qmo",
            "quantize",
            "--method",
            method,
            "--backend",
            backend,
            "--source",
            str(source),
            "--out",
            str(out),
            "--calibration-samples",
            "8",
            "--calibration-seq-len",
            "32",
            *([] if evaluate else ["--no-eval"]),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"qmo quantize --method {method} --backend {backend} failed:\n{result.stderr[-3000:]}"
        )
    return out


def build_tiny_llama_in_subprocess(directory: Path, *, seed: int = 0, vocab_size: int | None = None) -> Path:
    """``build_tiny_llama`` in a fresh interpreter, for tests whose own process must not import torch."""
    return build_in_subprocess(directory, seed=seed, vocab_size=vocab_size)
