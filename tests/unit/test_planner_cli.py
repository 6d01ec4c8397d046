"""``qmo plan``: the CLI contract other tools depend on (JSON keys, exit codes, messages)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qmo.cli import main

LLAMA = str(Path(__file__).parent / "configs" / "llama-3.1-8b.json")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["plan", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_has_the_contract_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", LLAMA, "--max-model-len", "8192", "--output", "json")
    assert code == 0
    data = json.loads(out)
    for key in (
        "fits",
        "tensor_parallel_size",
        "weights_gib_per_gpu",
        "kv_cache_gib_per_gpu",
        "kv_cache_tokens",
        "max_concurrency",
        "kv_cache_dtype",
        "dtype",
    ):
        assert key in data
    assert data["fits"] is True and all(isinstance(a, str) for a in data["vllm_args"])


def test_config_directory_and_explicit_tensor_parallel(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shutil.copy(LLAMA, tmp_path / "config.json")
    code, out, _ = run(
        capsys,
        "--config",
        str(tmp_path),
        "--max-model-len",
        "8192",
        "--tensor-parallel-size",
        "2",
        "--output",
        "json",
    )
    assert code == 0 and json.loads(out)["tensor_parallel_size"] == 2


def test_does_not_fit_exits_1_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "--config", LLAMA, "--gpu-memory-gib", "16", "--gpus-per-node", "1", "--output", "json"
    )
    data = json.loads(out)
    assert code == 1 and data["fits"] is False and "GiB per GPU" in data["reason"]


def test_table_shows_the_per_gpu_breakdown(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "--config", LLAMA, "--gpu-class", "l4", "--max-model-len", "8192", "--quantization", "awq"
    )
    assert code == 0
    for word in ("FITS", "weights", "activations", "non-torch", "CUDA graphs", "KV cache", "vllm serve"):
        assert word in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "/no/such/config.json"], "--config"),
        (["--config", LLAMA, "--gpu-class", "tpu-v5"], "--gpu-class"),
        (["--config", LLAMA, "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
        (["--config", LLAMA, "--max-model-len", "999999999"], "max_model_len"),
        (["--config", LLAMA, "--gpu-class", "a100-80gb", "--kv-cache-dtype", "fp8"], "fp8"),
    ],
)
def test_bad_input_exits_2_naming_the_flag(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "" and message in err


def test_bad_json_config_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    code, _, err = run(capsys, "--config", str(tmp_path))
    assert code == 2 and "not valid JSON" in err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code, _, err = run(capsys, "--config", str(tmp_path))
    assert code == 2 and "'hidden_size' is missing" in err


def test_argparse_rejects_bad_choices_with_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--config", LLAMA, "--tensor-parallel-size", "zero"])
    assert exit_info.value.code == 2
    assert "--tensor-parallel-size" in capsys.readouterr().err
