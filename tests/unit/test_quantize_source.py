"""``qmo quantize`` refuses a source without a tokenizer at once, naming the files and how to add them.

The check runs before the worker loads anything: these tests need no torch, only directories holding a
config.json and stand-in weight bytes (never read), and the hub stand-in for the download path.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qmo.cli import main
from qmo.quantizer.worker import TOKENIZER_FILE_SETS, has_tokenizer
from qmo.sandbox.harness import HubStandIn

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}


def model_without_tokenizer(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))
    (directory / "model.safetensors").write_bytes(b"\0" * 1024)
    (directory / "tokenizer_config.json").write_text("{}")  # settings only: no vocabulary to build from
    return directory


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        *[(names, True) for names in TOKENIZER_FILE_SETS],
        (("o200k_base.tiktoken",), True),
        (("vocab.json",), False),  # byte-level BPE needs its merges too
        (("tokenizer_config.json", "special_tokens_map.json"), False),
        ((), False),
    ],
)
def test_a_tokenizer_is_any_one_set_of_files_autotokenizer_builds_from(
    tmp_path: Path, files: tuple[str, ...], expected: bool
) -> None:
    for name in ("config.json", *files):
        (tmp_path / name).write_text("{}")
    assert has_tokenizer(tmp_path) is expected


def quantize_in_a_fresh_interpreter(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, bool]:
    """(exit status, stderr, whether transformers was imported): the refusal must come before any of it."""
    code = (
        "import sys; from qmo.cli import main; status = main(sys.argv[1:]); "
        "print('transformers' in sys.modules or 'torch' in sys.modules); sys.exit(status)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "quantize", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    return result.returncode, result.stderr, result.stdout.strip().endswith("True")


def test_a_local_source_without_a_tokenizer_is_refused_before_any_work(tmp_path: Path) -> None:
    source = model_without_tokenizer(tmp_path / "model")
    out, log = tmp_path / "artifact", tmp_path / "termination-log"
    status, stderr, heavy = quantize_in_a_fresh_interpreter(
        "--method", "gptq", "--source", str(source), "--out", str(out), "--termination-log", str(log)
    )
    assert status == 2, stderr
    assert not heavy
    message = log.read_text()
    assert message in stderr
    assert f"--source {source} has no tokenizer" in message
    assert "tokenizer.json" in message and "tokenizer.model" in message  # what it looked for
    assert "config.json, model.safetensors, tokenizer_config.json" in message  # what it found
    assert f"save_pretrained('{source}')" in message  # how to provide them
    assert "Traceback" not in stderr
    assert not out.exists() and not out.with_name("artifact.partial").exists()


def test_a_copy_only_method_warns_and_copies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """``none`` loads nothing itself, and vLLM may take its tokenizer from ``--tokenizer`` in extraArgs."""
    source = model_without_tokenizer(tmp_path / "model")
    out = tmp_path / "artifact"
    with caplog.at_level(logging.WARNING, logger="qmo.quantizer"):
        assert main(["quantize", "--method", "none", "--source", str(source), "--out", str(out)]) == 0
    capsys.readouterr()
    assert (out / "model.safetensors").is_file()
    assert any("has no tokenizer" in record.getMessage() for record in caplog.records)


def test_a_hub_source_without_a_tokenizer_is_refused_before_its_weights_download(tmp_path: Path) -> None:
    source = model_without_tokenizer(tmp_path / "model")
    repo, sha = "qmo-test/no-tokenizer", "3" * 40
    out = tmp_path / "artifact"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    with HubStandIn() as hub:
        hub.add_directory(repo, source, sha=sha)
        env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}
        status, stderr, heavy = quantize_in_a_fresh_interpreter(
            "--method", "w8a8", "--hf-repo", repo, "--revision", sha, "--out", str(out), env=env
        )
        fetched = [request.path for request in hub.requests]
    assert status == 2, stderr
    assert not heavy
    assert f"--hf-repo {repo}@{sha} has no tokenizer" in stderr
    assert "tokenizer files (tokenizer.json, tokenizer_config.json) to the repository" in stderr
    assert any(path.endswith("/config.json") for path in fetched)
    assert not any("safetensors" in path or path.startswith("/cdn/") for path in fetched), fetched
    assert not out.exists()
