"""The quantizer on CPU: real llm-compressor on a tiny random Llama, reloaded with transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qmo.api.quantizedmodel import QuantizationSpec
from qmo.desired.quality import gate_verdict, quality_thresholds
from qmo.planner import predict_checkpoint_bytes
from qmo.quantizer.recipes import Recipe
from qmo.quantizer.worker import MANIFEST, Options, run, sha256_of

METHODS: list[tuple[str, dict[str, Any], str]] = [
    ("gptq", {"bits": 4}, "pack-quantized"),
    ("awq", {}, "pack-quantized"),
    ("w8a8", {}, "int-quantized"),
    ("fp8-dynamic", {}, "float-quantized"),
]


def tensor_bytes(directory: Path) -> int:
    """Sum of tensor data in the safetensors files (what the planner predicts; headers excluded)."""
    from safetensors import safe_open

    total = 0
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                tensor = handle.get_tensor(name)
                total += tensor.numel() * tensor.element_size()
    return total


@pytest.fixture(scope="module")
def outputs(
    tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, dict[str, Any]]]:
    results = {}
    for method, extra, _ in METHODS:
        out = tmp_path_factory.mktemp(method) / "artifact"
        recipe = Recipe(method=method, calibration_samples=8, calibration_seq_len=32, **extra)
        log = out.parent / "termination-log"
        summary = run(Options(recipe=recipe, out=out, source=tiny_llama, key="k" * 64, termination_log=log))
        results[method] = (out, summary)
    return results


@pytest.mark.parametrize(("method", "extra", "format_"), METHODS)
def test_output_is_a_compressed_tensors_checkpoint(
    outputs: dict[str, tuple[Path, dict[str, Any]]], method: str, extra: dict[str, Any], format_: str
) -> None:
    """The checkpoint's shape; tests/serving has real vLLM load and serve each method's output."""
    out, _ = outputs[method]
    config = json.loads((out / "config.json").read_text())
    quantization = config["quantization_config"]
    assert quantization["quant_method"] == "compressed-tensors"
    assert quantization["format"] == format_
    assert quantization["config_groups"]
    assert "lm_head" in quantization["ignore"]
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize(("method", "extra", "format_"), METHODS)
def test_logits_stay_close_to_the_source(
    outputs: dict[str, tuple[Path, dict[str, Any]]], method: str, extra: dict[str, Any], format_: str
) -> None:
    _, summary = outputs[method]
    validation = summary["validation"]
    assert validation["prompts"] == 3
    # Random weights are the hardest case for 4 bits; still, the result must track the source closely.
    assert validation["relative_logit_error"] < (0.35 if method in ("gptq", "awq") else 0.1), validation
    assert validation["top1_agreement"] >= 0.5, validation


@pytest.mark.parametrize(("method", "extra", "format_"), METHODS)
def test_bytes_on_disk_match_the_planner_within_one_percent(
    tiny_llama: Path,
    outputs: dict[str, tuple[Path, dict[str, Any]]],
    method: str,
    extra: dict[str, Any],
    format_: str,
) -> None:
    out, _ = outputs[method]
    config = json.loads((tiny_llama / "config.json").read_text())
    predicted = predict_checkpoint_bytes(config, quantization=method, bits=extra.get("bits"))
    measured = tensor_bytes(out)
    assert abs(predicted - measured) / measured < 0.01, (method, predicted, measured)


def test_manifest_lists_every_file_with_its_digest(outputs: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    out, summary = outputs["gptq"]
    manifest = json.loads((out / MANIFEST).read_text())
    listed = {entry["path"]: entry for entry in manifest["files"]}
    on_disk = {p.name for p in out.iterdir() if p.name != MANIFEST}
    assert set(listed) == on_disk
    for name, entry in listed.items():
        assert entry["sha256"] == sha256_of(out / name)
        assert entry["size"] == (out / name).stat().st_size
    assert summary["manifest_sha256"] == sha256_of(out / MANIFEST)
    assert manifest["versions"]["llmcompressor"]
    termination = json.loads((out.parent / "termination-log").read_text())
    assert termination["size_bytes"] == manifest["size_bytes"]
    assert len((out.parent / "termination-log").read_bytes()) <= 4096


def test_a_finished_output_is_verified_and_reused(
    tiny_llama: Path, outputs: dict[str, tuple[Path, dict[str, Any]]]
) -> None:
    out, first = outputs["fp8-dynamic"]
    again = run(Options(recipe=Recipe(method="fp8-dynamic"), out=out, source=tiny_llama))
    assert again["reused"] is True
    assert again["manifest_sha256"] == first["manifest_sha256"]


def test_a_killed_run_leaves_no_output_and_a_rerun_starts_clean(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "import qmo.quantizer.worker as worker\n"
        "def die(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "worker.write_manifest = die\n"  # killed after the weights are written, before the rename
        "from qmo.quantizer.recipes import Recipe\n"
        f"worker.run(worker.Options(recipe=Recipe(method='none'), out=Path({str(out)!r}), source=Path({str(tiny_llama)!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert result.returncode == -9
    assert not out.exists()
    assert (tmp_path / "artifact.partial" / "config.json").is_file()
    summary = run(Options(recipe=Recipe(method="none"), out=out, source=tiny_llama))
    assert out.is_dir() and not (tmp_path / "artifact.partial").exists()
    assert summary["reused"] is False


def test_unsupported_combinations_fail_at_once_with_the_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qmo",
            "quantize",
            "--method",
            "awq",
            "--bits",
            "8",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--bits 8" in result.stderr and "awq" in result.stderr
    legacy = subprocess.run(
        [
            sys.executable,
            "-m",
            "qmo",
            "quantize",
            "--method",
            "gptq",
            "--backend",
            "autogptq",
            "--out",
            str(tmp_path / "y"),
            "--source",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # AutoGPTQ refuses to quantize without CUDA: said before any download or load, no traceback.
    assert legacy.returncode == 2, legacy.stderr[-2000:]
    assert "--backend autogptq quantizes only on a CUDA GPU" in legacy.stderr
    assert "--backend gptqmodel" in legacy.stderr
    assert "Traceback" not in legacy.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


QUALITY_KEYS = {
    "dataset",
    "tokens",
    "source_perplexity",
    "quantized_perplexity",
    "perplexity_increase_percent",
    "kl_mean",
    "top1_agreement",
}


@pytest.mark.parametrize(("method", "extra", "format_"), METHODS)
def test_quality_is_measured_against_the_source_and_reported(
    outputs: dict[str, tuple[Path, dict[str, Any]]], method: str, extra: dict[str, Any], format_: str
) -> None:
    out, summary = outputs[method]
    quality = json.loads((out / "quality.json").read_text())
    assert set(quality) == QUALITY_KEYS
    assert quality["dataset"] == "qmo-builtin-english"
    assert quality["tokens"] > 1000
    assert quality["source_perplexity"] > 1 and quality["quantized_perplexity"] > 1
    expected = (quality["quantized_perplexity"] / quality["source_perplexity"] - 1) * 100
    assert quality["perplexity_increase_percent"] == pytest.approx(expected, abs=0.01)
    assert quality["kl_mean"] >= 0 and 0 <= quality["top1_agreement"] <= 1
    assert summary["quality"] == quality
    assert "quality.json" in {entry["path"] for entry in json.loads((out / MANIFEST).read_text())["files"]}


def test_the_same_pair_gives_the_same_figures_from_qmo_eval(
    tiny_llama: Path, outputs: dict[str, tuple[Path, dict[str, Any]]]
) -> None:
    for method in ("gptq", "w8a8"):
        out, _ = outputs[method]
        result = subprocess.run(
            [sys.executable, "-m", "qmo", "eval", str(tiny_llama), str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        assert json.loads(result.stdout) == json.loads((out / "quality.json").read_text())


def test_the_figures_tell_an_unrelated_model_apart(
    tiny_llama: Path, outputs: dict[str, tuple[Path, dict[str, Any]]], tmp_path: Path
) -> None:
    """The measure can fail: a different model of the same shape is far from the source on every figure."""
    from qmo.quantizer.evaluate import evaluate
    from tiny_models import build_tiny_llama

    unrelated = evaluate(tiny_llama, build_tiny_llama(tmp_path / "other", seed=1, vocab_size=128))
    for method in ("gptq", "w8a8"):
        quality = json.loads((outputs[method][0] / "quality.json").read_text())
        assert unrelated.kl_mean > 10 * quality["kl_mean"]
        assert unrelated.top1_agreement < quality["top1_agreement"]
    # Served as if it were a 4-bit artifact of the source, the unrelated model is what a wrecked
    # quantization looks like: the default gate blocks it.
    verdict = gate_verdict(wire(unrelated.as_dict()), quality_thresholds(QuantizationSpec(method="gptq")))
    assert verdict.blocks, verdict


def wire(quality: dict[str, Any]) -> dict[str, Any]:
    """quality.json as the operator stores it in ModelArtifact.status.quality."""
    from qmo.api.artifact import ArtifactQuality

    return ArtifactQuality.model_validate(quality).to_wire()


@pytest.mark.parametrize("method", ["gptq", "w8a8"])
def test_gptq_and_w8a8_pass_their_default_gate(
    outputs: dict[str, tuple[Path, dict[str, Any]]], method: str
) -> None:
    quality = json.loads((outputs[method][0] / "quality.json").read_text())
    verdict = gate_verdict(wire(quality), quality_thresholds(QuantizationSpec(method=method)))
    assert verdict.passed is True, verdict


def test_no_eval_writes_no_quality(tiny_llama: Path, tmp_path: Path) -> None:
    recipe = Recipe(method="w8a8", calibration_samples=8, calibration_seq_len=32)
    summary = run(Options(recipe=recipe, out=tmp_path / "artifact", source=tiny_llama, evaluate=False))
    assert summary["quality"] is None
    assert not (tmp_path / "artifact" / "quality.json").exists()


def write_texts_dataset(directory: Path) -> Path:
    """A local dataset (a train.jsonl): `datasets` loads a directory as it loads a hub id, no network."""
    from qmo.quantizer.evaluate import builtin_texts

    directory.mkdir(parents=True)
    lines = [json.dumps({"text": text}) for text in reversed(builtin_texts())]
    (directory / "train.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def test_eval_dataset_reaches_quality_json_and_scores_what_eval_jsonl_scores(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """`--eval-dataset` (what spec.quantization.evaluation.dataset becomes) through `qmo quantize`."""
    dataset = write_texts_dataset(tmp_path / "held-out")
    out = tmp_path / "artifact"
    log = tmp_path / "termination-log"
    command = [
        sys.executable,
        "-m",
        "qmo",
        "quantize",
        "--method",
        "fp8-dynamic",
        "--source",
        str(tiny_llama),
    ]
    command += ["--out", str(out), "--termination-log", str(log)]
    command += ["--eval-dataset", str(dataset), "--eval-tokens", "256"]
    subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    quality = json.loads((out / "quality.json").read_text())
    assert quality["dataset"] == f"hf:{dataset}"
    assert quality["tokens"] == 255  # one chunk of 256 tokens: 255 next-token predictions
    assert json.loads(log.read_text())["quality"] == quality
    same_text_command = [sys.executable, "-m", "qmo", "eval", str(tiny_llama), str(out)]
    same_text_command += ["--eval-jsonl", str(dataset / "train.jsonl"), "--eval-tokens", "256"]
    result = subprocess.run(
        same_text_command,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    same_text = json.loads(result.stdout)
    assert same_text.pop("dataset") == "jsonl:train.jsonl"
    assert same_text == {k: v for k, v in quality.items() if k != "dataset"}


def test_an_unreadable_eval_dataset_fails_before_any_work(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    log = tmp_path / "termination-log"
    missing = tmp_path / "no-such-dataset"
    command = [sys.executable, "-m", "qmo", "quantize", "--method", "gptq", "--source", str(tiny_llama)]
    command += ["--out", str(out), "--termination-log", str(log), "--eval-dataset", str(missing)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert str(missing) in log.read_text() and str(missing) in result.stderr
    assert not out.exists() and not out.with_name("artifact.partial").exists()


def test_tiny_model_config_is_what_the_builder_saves(tiny_llama: Path) -> None:
    """The planner plans the sandbox's tiny-llama from ``tiny_llama_config`` (no torch needed): it must
    describe the checkpoint the builder really writes, or the demo's plan is for another model."""
    from qmo.sandbox.tiny_model import tiny_llama_config

    saved = json.loads((tiny_llama / "config.json").read_text())
    described = tiny_llama_config(vocab_size=128)
    assert {key: saved.get(key) for key in described} == described


def test_an_unreadable_calibration_dataset_is_reported_in_one_line(tiny_llama: Path, tmp_path: Path) -> None:
    """The Job's termination message (what the artifact's status shows) names the dataset, no traceback."""
    out = tmp_path / "artifact"
    log = tmp_path / "termination-log"
    missing = tmp_path / "no-such-calibration"
    command = [sys.executable, "-m", "qmo", "quantize", "--method", "w8a8", "--source", str(tiny_llama)]
    command += ["--out", str(out), "--termination-log", str(log), "--calibration-dataset", str(missing)]
    command += ["--calibration-samples", "4", "--no-eval"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    message = log.read_text()
    assert message.startswith(f"--calibration-dataset {str(missing)!r} could not be read:"), message
    assert "Traceback" not in message and "Traceback" not in result.stderr
    assert not out.exists()
