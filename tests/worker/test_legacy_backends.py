"""The legacy backends for real on CPU: AutoAWQ 0.2.9 and GPTQModel 7.7.0 quantize the tiny Llama, each in its
own locked environment (``make worker-envs``), through ``qmo quantize --backend X`` exactly as the Job runs
it; AutoGPTQ (GPU only) is checked for its environment, its recipe mapping and its refusal without CUDA.

What each output is checked against: the native format vLLM reads, the planner's byte count for that
format, the source's weights through our own dequantisation (``qmo.quantizer.packing``), and the source's
logits. tests/serving has the local vLLM engine serve the same kinds of output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qmo.planner import predict_checkpoint_bytes
from qmo.quantizer.environments import WORKER_ENVIRONMENTS
from qmo.quantizer.worker import MANIFEST

REPO = Path(__file__).parents[2]
# (backend, method): what the local CPU runs for real.
RUNS = [("autoawq", "awq"), ("gptqmodel", "gptq"), ("gptqmodel", "awq")]
LIBRARY = {"autoawq": ("autoawq", "0.2.9"), "gptqmodel": ("gptqmodel", "7.7.0")}
# Uniform rounding to a 4-bit grid of a group's range costs step/sqrt(12) RMS, where the step is the range
# over 15. A Gaussian group of 128 spans about 5.4 sigma, so the error is about 0.36/sqrt(12) = 0.10 of
# the weights' RMS. AWQ's clipping and GPTQ's error feedback trade a little weight error for output error;
# 0.2 leaves room for that and still fails a wrong unpacking (nibble order, zero point: 0.5 to 1.5).
WEIGHT_ERROR_BOUND = 0.2
# AWQ folds a per-input-channel scale into the RMSNorm before these projections: the quantized weight is
# W * diag(s), with s = norm_source / norm_quantized.
AWQ_SCALED_BY_NORM = {
    "input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
}


def quantize(source: Path, out: Path, backend: str, method: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "qmo", "quantize", "--backend", backend, "--method", method]
    command += ["--source", str(source), "--out", str(out), "--termination-log", str(out.parent / "log")]
    command += ["--calibration-samples", "8", "--calibration-seq-len", "32"]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def outputs(
    tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, dict[str, Any]]]:
    results = {}
    for backend, method in RUNS:
        out = tmp_path_factory.mktemp(f"{backend}-{method}") / "artifact"
        done = quantize(tiny_llama, out, backend, method)
        assert done.returncode == 0, f"{backend} {method}:\n{done.stderr[-4000:]}"
        results[f"{backend}-{method}"] = (out, json.loads((out.parent / "log").read_text()))
    return results


def load(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for path in directory.glob("*.safetensors"):
        tensors.update(load_file(str(path)))
    return tensors


@pytest.mark.parametrize(("backend", "method"), RUNS)
def test_the_backend_ran_in_its_locked_environment_and_wrote_its_native_format(
    outputs: dict[str, tuple[Path, dict[str, Any]]], backend: str, method: str
) -> None:
    out, summary = outputs[f"{backend}-{method}"]
    quantization = json.loads((out / "config.json").read_text())["quantization_config"]
    assert quantization["quant_method"] == method
    assert (quantization["bits"], quantization["group_size"]) == (4, 128)
    if method == "awq":
        assert quantization["zero_point"] is True and str(quantization["version"]).lower() == "gemm"
    else:
        assert quantization["sym"] is True
    assert (out / "tokenizer.json").is_file()
    # The versions the worker recorded are its environment's, pinned by that environment's lock.
    library, version = LIBRARY[backend]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["versions"][library] == version
    lock = WORKER_ENVIRONMENTS[backend].lock.read_text()
    assert f"\ntorch=={manifest['versions']['torch']} " in lock
    assert f"\ntransformers=={manifest['versions']['transformers']} " in lock
    assert "llmcompressor" not in manifest["versions"]
    assert manifest["recipe"]["backend"] == backend
    assert summary["manifest_sha256"] and summary["quality"]


@pytest.mark.parametrize(("backend", "method"), RUNS)
def test_bytes_on_disk_match_the_planner_for_the_backends_format(
    tiny_llama: Path, outputs: dict[str, tuple[Path, dict[str, Any]]], backend: str, method: str
) -> None:
    out, _ = outputs[f"{backend}-{method}"]
    config = json.loads((tiny_llama / "config.json").read_text())
    predicted = predict_checkpoint_bytes(config, quantization=method, backend=backend)
    measured = sum(t.numel() * t.element_size() for t in load(out).values())
    assert abs(predicted - measured) / measured < 0.01, (backend, method, predicted, measured)


@pytest.mark.parametrize(("backend", "method"), RUNS)
def test_packed_weights_dequantize_to_the_source_within_the_rounding_bound(
    tiny_llama: Path, outputs: dict[str, tuple[Path, dict[str, Any]]], backend: str, method: str
) -> None:
    from qmo.quantizer.packing import dequantized_state_dict

    out, _ = outputs[f"{backend}-{method}"]
    source = {name: tensor.float() for name, tensor in load(tiny_llama).items()}
    written = dequantized_state_dict(out)
    checked = 0
    for layer in range(2):
        prefix = f"model.layers.{layer}"
        scaled = {
            projection: source[f"{prefix}.{norm}.weight"] / written[f"{prefix}.{norm}.weight"]
            for norm, projections in AWQ_SCALED_BY_NORM.items()
            for projection in projections
        }
        projections = (
            scaled if method == "awq" else {**scaled, "self_attn.o_proj": None, "mlp.down_proj": None}
        )
        for projection in projections:
            expected = source[f"{prefix}.{projection}.weight"]
            if method == "awq":
                expected = expected * scaled[projection][None, :]
            actual = written[f"{prefix}.{projection}.weight"]
            if method == "awq" and projection == "mlp.up_proj":
                # AWQ also moves down_proj's input scale into up_proj's output rows, and keeps it nowhere
                # exactly: take each row's best scalar first (a wrong unpacking is no row scaling).
                rows = (actual * expected).sum(1) / (actual * actual).sum(1)
                actual = actual * rows[:, None]
            error = float((actual - expected).norm() / expected.norm())
            assert error < WEIGHT_ERROR_BOUND, (backend, method, prefix, projection, error)
            checked += 1
    assert checked == (10 if method == "awq" else 14)


@pytest.mark.parametrize(("backend", "method"), RUNS)
def test_logits_and_quality_track_the_source(
    outputs: dict[str, tuple[Path, dict[str, Any]]], backend: str, method: str
) -> None:
    out, summary = outputs[f"{backend}-{method}"]
    validation = summary["validation"]
    # The bound llm-compressor's own gptq/awq outputs of this model are held to (tests/worker/test_quantize).
    assert validation["prompts"] == 3
    assert validation["relative_logit_error"] < 0.35, validation
    assert validation["top1_agreement"] >= 0.5, validation
    quality = json.loads((out / "quality.json").read_text())
    assert quality["tokens"] > 1000 and quality["kl_mean"] >= 0
    assert summary["quality"] == quality


def test_a_broken_unpacking_would_be_caught(outputs: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    """The bound above can fail: the AWQ weights read with the plain (not interleaved) nibble order."""
    import torch

    from qmo.quantizer.packing import dequantize_awq_gemm

    out, _ = outputs["autoawq-awq"]
    tensors = load(out)
    prefix = "model.layers.0.mlp.gate_proj"
    right = dequantize_awq_gemm(
        tensors[f"{prefix}.qweight"],
        tensors[f"{prefix}.qzeros"],
        tensors[f"{prefix}.scales"],
        bits=4,
        group_size=128,
    )
    # Swap the nibble order of every packed word (AWQ's 0,2,4,6,1,3,5,7 read as 0..7).
    words = tensors[f"{prefix}.qweight"]
    nibbles = torch.stack([(words >> (4 * i)) & 0xF for i in range(8)], dim=-1)
    order = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])
    shuffled = sum((nibbles[..., order[i]].to(torch.int64) << (4 * i)) for i in range(8))
    wrong = dequantize_awq_gemm(
        shuffled.to(torch.int32),
        tensors[f"{prefix}.qzeros"],
        tensors[f"{prefix}.scales"],
        bits=4,
        group_size=128,
    )
    assert float((wrong - right).norm() / right.norm()) > WEIGHT_ERROR_BOUND


def test_autogptq_resolves_imports_and_maps_the_recipe_in_its_environment() -> None:
    """AutoGPTQ quantizes only on CUDA; here its locked environment, its import and the recipe mapping."""
    environment = WORKER_ENVIRONMENTS["autogptq"]
    python = environment.paths().python
    assert python.exists(), "run `make worker-envs`"
    code = (
        "import json\n"
        "from pathlib import Path\n"
        "from qmo.quantizer.legacy import autogptq_quantize_config\n"
        "from qmo.quantizer.recipes import Recipe\n"
        "from qmo.quantizer.worker import Options\n"
        "recipe = Recipe(method='gptq', bits=8, group_size=64, act_order=True, dampening=0.05, backend='autogptq')\n"
        "print(json.dumps(autogptq_quantize_config(Options(recipe=recipe, out=Path('/x')), 8).to_dict()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    mapped = json.loads(done.stdout.strip().splitlines()[-1])
    assert (mapped["bits"], mapped["group_size"], mapped["desc_act"], mapped["sym"]) == (8, 64, True, True)
    assert mapped["damp_percent"] == 0.05
    version = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; print(m.version('auto-gptq'), m.version('peft'))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert version.stdout.split() == ["0.7.1", "0.13.2"]


def test_autogptq_without_a_gpu_fails_clearly_before_any_work(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    done = quantize(tiny_llama, out, "autogptq", "gptq")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "--backend autogptq quantizes only on a CUDA GPU" in done.stderr
    assert "Traceback" not in done.stderr
    # The operator copies the termination message into the artifact's status: the same words.
    assert "only on a CUDA GPU" in (tmp_path / "log").read_text()
    assert not out.exists() and not out.with_name("artifact.partial").exists()
