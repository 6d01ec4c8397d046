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
        (["--config", LLAMA, "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
        (["--config", LLAMA, "--calibration", "/no/such/records.json"], "--calibration"),
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


@pytest.mark.parametrize(
    ("args", "field", "message"),
    [
        (["--tensor-parallel-size", "3"], "tensor_parallel_size", "not divisible by tensor-parallel-size 3"),
        (["--tensor-parallel-size", "16"], "tensor_parallel_size", "exceeds the 8 GPUs per node"),
        (["--max-model-len", "999999999"], "max_model_len", "max_position_embeddings 131072"),
        (["--gpu-class", "tpu-v5"], "gpu_class", "unknown GPU class 'tpu-v5'"),
        (["--quantization", "int3"], "quantization", "quantization 'int3' is not supported"),
        (["--gpu-class", "a100-80gb", "--kv-cache-dtype", "fp8"], "kv_cache_dtype", "fp8 hardware"),
        (
            ["--max-num-seqs", "512", "--max-num-batched-tokens", "256"],
            "max_num_batched_tokens",
            "must be >=",
        ),
    ],
)
def test_every_refusal_is_json_on_stdout_with_exit_1(
    capsys: pytest.CaptureFixture[str], args: list[str], field: str, message: str
) -> None:
    code, out, err = run(capsys, "--config", LLAMA, *args, "--output", "json")
    data = json.loads(out)
    assert code == 1 and err == ""
    assert data["fits"] is False and data["field"] == field and message in data["reason"]
    code, out, _ = run(capsys, "--config", LLAMA, *args)
    assert code == 1 and out.startswith(f"qmo plan: REFUSED ({field})") and message in out


def test_uncalibrated_vllm_is_said_in_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    image = ["--vllm-image", "vllm/vllm-openai:v0.30.0"]
    code, out, _ = run(capsys, "--config", LLAMA, "--max-model-len", "8192", *image, "--output", "json")
    data = json.loads(out)
    assert code == 0 and data["calibration_warning"] == "uncalibrated for vLLM 0.30.0, using 0.25.1"
    assert data["vllm_version"] == "0.30.0" and data["calibration_version"] == "0.25.1"
    code, out, _ = run(capsys, "--config", LLAMA, "--max-model-len", "8192", *image)
    assert code == 0 and "warning: uncalibrated for vLLM 0.30.0, using 0.25.1" in out
    code, out, _ = run(capsys, "--config", LLAMA, "--max-model-len", "8192", "--output", "json")
    assert json.loads(out)["calibration_warning"] is None


def test_a_calibration_file_corrects_the_plan_and_shows_the_residual(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = ["--config", LLAMA, "--max-model-len", "8192", "--max-num-seqs", "256"]
    _, out, _ = run(capsys, *base, "--max-num-batched-tokens", "8192", "--output", "json")
    predicted = json.loads(out)["kv_cache_tokens"]
    record = {
        "gpu": "h100-80gb",
        "vllm_version": "0.25.1",
        "model": "meta-llama/Llama-3.1-8B",
        "kv_cache_tokens": predicted - 512 * 16,
        "tensor_parallel_size": 1,
        "max_num_seqs": 256,
        "max_num_batched_tokens": 8192,
        "gpu_memory_utilization": 0.9,
        "max_model_len": 8192,
    }
    path = tmp_path / "records.json"
    path.write_text(json.dumps({"records": [record]}))
    calibrated = [*base, "--max-num-batched-tokens", "8192", "--calibration", str(path)]
    name = ["--model-name", "meta-llama/Llama-3.1-8B"]
    _, out, _ = run(capsys, *calibrated, *name, "--output", "json")
    data = json.loads(out)
    assert data["kv_cache_tokens"] == predicted - 512 * 16
    assert data["calibration_residual_gib_per_gpu"] == pytest.approx(1.0, abs=1e-3)
    _, out, _ = run(capsys, *calibrated, *name)
    assert "calibration residual" in out and "1.00" in out
    _, out, _ = run(capsys, *calibrated, "--model-name", "another/model", "--output", "json")
    assert json.loads(out)["calibration_residual_gib_per_gpu"] is None
    path.write_text(json.dumps({"records": [{"gpu": "h100-80gb"}]}))
    code, _, err = run(capsys, *calibrated)
    assert code == 2 and "records[0].vllm_version is mandatory" in err


LLAMA_405B = str(Path(__file__).parent / "configs" / "llama-3.1-405b.json")


def test_max_nodes_plans_pipeline_stages_in_json_and_args(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", LLAMA_405B, "--max-nodes", "2", "--output", "json")
    data = json.loads(out)
    assert code == 0 and data["fits"] is True
    assert (data["tensor_parallel_size"], data["pipeline_parallel_size"], data["gpus"]) == (8, 2, 16)
    assert data["vllm_args"][:2] == ["--tensor-parallel-size=8", "--pipeline-parallel-size=2"]
    assert [(s["rank"], s["first_layer"], s["num_layers"]) for s in data["pipeline_stages"]] == [
        (0, 0, 63),
        (1, 63, 63),
    ]
    assert data["kv_cache_blocks"] == min(s["kv_cache_blocks_room"] for s in data["pipeline_stages"])


def test_single_node_json_says_one_stage_and_args_have_no_pipeline_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        capsys, "--config", LLAMA, "--max-model-len", "8192", "--max-nodes", "2", "--output", "json"
    )
    data = json.loads(out)
    assert code == 0 and (data["pipeline_parallel_size"], data["pipeline_stages"]) == (1, [])
    assert not any(arg.startswith("--pipeline-parallel-size") for arg in data["vllm_args"])


def test_table_shows_tp_by_pp_and_each_stage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", LLAMA_405B, "--max-nodes", "2")
    assert code == 0
    assert "x 16 (8 per node x 2 nodes)" in out
    assert "pipeline-parallel-size  2 (decoder layers per stage: 0-62, 63-125)" in out
    for word in ("stage 0", "stage 1", "KV blocks with room", "stage 1 activations = max(", "stage input"):
        assert word in out
    assert "--tensor-parallel-size=8 --pipeline-parallel-size=2" in out


def test_one_node_refusal_names_the_nodes_needed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", LLAMA_405B, "--output", "json")
    data = json.loads(out)
    assert code == 1 and data["fits"] is False
    assert "needs 2 nodes of 8x h100-80gb" in data["reason"] and "max_nodes allows 1" in data["reason"]


def test_a_pipeline_beyond_max_nodes_is_a_refusal_with_its_field(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", LLAMA_405B, "--pipeline-parallel-size", "2", "--output", "json")
    data = json.loads(out)
    assert code == 1 and data["field"] == "pipeline_parallel_size"
    assert data["reason"] == "pipeline_parallel_size 2 needs 2 nodes of 8x h100-80gb, max_nodes allows 1"
