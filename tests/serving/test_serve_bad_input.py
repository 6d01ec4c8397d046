"""``qmo serve`` on input it cannot serve: a clear error and a non-zero exit, never a hang."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import snapshot


def run_qmo_serve(*args: str, tmp: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qmo", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp)},
    )


def test_an_artifact_vllm_cannot_load_fails_with_vllms_reason_and_the_method(
    engine_python: Path, artifacts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A half-copied artifact (the weights file cut short): vLLM's own error line, the method, exit 1."""
    tmp_path = tmp_path_factory.mktemp("broken")  # short enough to hold vLLM's private TMPDIR itself
    broken = tmp_path / "tiny-llama-gptq-truncated"
    shutil.copytree(artifacts["gptq"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = snapshot(broken)
    result = run_qmo_serve(
        str(broken),
        "--port",
        "0",
        "--memory-gib",
        "1",
        "--extra-arg=--enforce-eager",
        "--startup-timeout",
        "300",
        tmp=tmp_path,
        timeout=420,
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert "gptq (compressed-tensors pack-quantized)" in error, error
    assert "vLLM exited with status" in error and "Error" in error, error
    assert "SafetensorError" in error, f"the root cause, not a wrapper: {error}"
    assert snapshot(broken) == before
    assert not list(tmp_path.glob("qmo-vllm-*"))


def test_a_port_in_use_is_a_clear_error_before_vllm_starts(
    engine_python: Path, tiny_source: Path, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_qmo_serve(str(tiny_source), "--port", str(port), tmp=tmp_path, timeout=120)
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr


def test_a_model_without_a_tokenizer_is_refused_before_vllm_starts(tiny_source: Path, tmp_path: Path) -> None:
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_source, bare, ignore=shutil.ignore_patterns("tokenizer*"))
    result = run_qmo_serve(str(bare), "--port", "0", tmp=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "has no tokenizer" in result.stderr and "--tokenizer DIR" in result.stderr
