"""The overhead terms against vLLM 0.25.1's measured aggregates, versioned calibration and records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmo.api.versions import DEFAULT_VLLM_IMAGE, VLLM_VERSION
from qmo.planner import GPUSpec, PlanningError, PlanRequest, gpu_by_name, plan
from qmo.planner.calibration import (
    CALIBRATED_VERSION,
    CalibrationRecord,
    calibration_for,
    load_records,
    select_record,
    vllm_version_of_image,
)
from qmo.planner.overheads import cudagraph_capture_sizes

CONFIGS = Path(__file__).parent / "configs"
LLAMA = json.loads((CONFIGS / "llama-3.1-8b.json").read_text())
MIXTRAL = json.loads((CONFIGS / "mixtral-8x7b.json").read_text())
H100 = gpu_by_name("h100-80gb")


def llama(max_num_seqs: int, batched: int, utilization: float = 0.9, **extra: object) -> PlanRequest:
    return PlanRequest(
        max_model_len=8192,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=batched,
        gpu_memory_utilization=utilization,
        tensor_parallel_size=1,
        **extra,  # type: ignore[arg-type]
    )


def overhead_gib(max_num_seqs: int, batched: int, utilization: float = 0.9) -> float:
    result = plan(LLAMA, llama(max_num_seqs, batched, utilization), H100)
    return result.activation_gib_per_gpu + result.non_torch_gib_per_gpu + result.cudagraph_gib_per_gpu


@pytest.mark.parametrize(
    ("max_num_seqs", "batched", "utilization", "measured_gib"),
    [(64, 2048, 0.5, 1.24), (256, 8192, 0.9, 1.33), (1024, 16384, 0.9, 2.0)],
)
def test_llama_overhead_matches_the_issue_16_aggregates(
    max_num_seqs: int, batched: int, utilization: float, measured_gib: float
) -> None:
    """Issue 16: what vLLM 0.25.1 held besides weights and KV for Llama-3.1-8B bf16 on one H100."""
    assert overhead_gib(max_num_seqs, batched, utilization) == pytest.approx(measured_gib, abs=0.1)


def test_the_small_batch_case_is_no_longer_over_predicted() -> None:
    """64 seqs / 2048 tokens / utilization 0.5 was +3.25 % KV tokens: the profile floor was missing."""
    result = plan(LLAMA, llama(64, 2048, 0.5), H100)
    measured_kv_gib = 0.5 * 79.18 - 15.0 - 1.24
    assert result.kv_cache_gib_per_gpu <= measured_kv_gib * 1.01
    assert result.overhead_terms_gib["floor"] > result.overhead_terms_gib["forward"]


def test_activation_is_the_largest_phase_of_the_profile_run() -> None:
    small = plan(LLAMA, llama(1024, 16384), H100)
    terms = small.overhead_terms_gib
    assert small.activation_gib_per_gpu == pytest.approx(max(terms.values()), abs=1e-3)
    assert terms["sampler"] > terms["forward"]  # 1024 rows of 128k logits beat 16k tokens of MLP


def test_the_cpu_backend_pays_only_the_working_sets_it_allocates() -> None:
    """vLLM's CPU worker profiles nothing and captures no graphs: no floor, no CUDA workspaces, no graphs.

    A GPU-calibrated 0.95 GiB floor on a 1 GiB host budget refused every tiny model the serving tests run.
    """
    cpu = GPUSpec(name="cpu", memory_gib=1.0, gpus_per_node=1, fp8=False, interconnect="none", device="cpu")
    request = PlanRequest(max_model_len=512, max_num_seqs=256, max_num_batched_tokens=2048)
    on_cpu = plan(LLAMA | {"num_hidden_layers": 1, "vocab_size": 2048}, request, cpu)
    assert on_cpu.overhead_terms_gib["floor"] == 0
    assert on_cpu.non_torch_gib_per_gpu == 0 and on_cpu.cudagraph_gib_per_gpu == 0
    terms = on_cpu.overhead_terms_gib
    assert on_cpu.activation_gib_per_gpu == pytest.approx(max(terms["forward"], terms["sampler"]), abs=1e-3)


def test_cudagraph_capture_sizes_follow_vllm() -> None:
    assert cudagraph_capture_sizes(64, 2048) == [1, 2, 4, *range(8, 129, 8)]
    sizes = cudagraph_capture_sizes(256, 8192)
    assert len(sizes) == 51 and sizes[-1] == 512 and 248 in sizes and 272 in sizes
    assert cudagraph_capture_sizes(4, 6) == [1, 2, 4, 6]


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["llama", "mixtral"]),
    st.integers(min_value=1, max_value=1024),
    st.integers(min_value=1, max_value=1024),
    st.integers(min_value=1024, max_value=32768),
    st.integers(min_value=0, max_value=16384),
)
def test_more_seqs_or_batched_tokens_never_give_more_kv_tokens(
    name: str, seqs: int, more_seqs: int, batched: int, more_batched: int
) -> None:
    config = LLAMA if name == "llama" else MIXTRAL
    tp = 1 if name == "llama" else 2

    def tokens(s: int, t: int) -> int:
        request = PlanRequest(
            max_model_len=4096, max_num_seqs=s, max_num_batched_tokens=max(s, t), tensor_parallel_size=tp
        )
        return plan(config, request, H100).kv_cache_tokens

    base = tokens(seqs, batched)
    assert tokens(seqs + more_seqs, batched) <= base
    assert tokens(seqs, batched + more_batched) <= base


def test_calibration_follows_the_serving_image_tag() -> None:
    assert VLLM_VERSION == CALIBRATED_VERSION
    assert vllm_version_of_image(DEFAULT_VLLM_IMAGE) == CALIBRATED_VERSION
    assert vllm_version_of_image("registry:5000/vllm/vllm-openai:v0.26.0-cu129") == "0.26.0"
    assert vllm_version_of_image("vllm/vllm-openai@sha256:abc") is None
    assert calibration_for(DEFAULT_VLLM_IMAGE)[1] is None
    assert calibration_for("vllm/vllm-openai:latest")[1] == (
        "uncalibrated for image 'vllm/vllm-openai:latest' (no version in its tag), using 0.25.1"
    )


def test_a_plan_for_another_vllm_says_it_is_uncalibrated() -> None:
    same = plan(LLAMA, llama(256, 8192, vllm_image=DEFAULT_VLLM_IMAGE), H100)
    other = plan(LLAMA, llama(256, 8192, vllm_image="vllm/vllm-openai:v0.26.0"), H100)
    assert same.calibration_warning is None and same.vllm_version == "0.25.1"
    assert other.calibration_warning == "uncalibrated for vLLM 0.26.0, using 0.25.1"
    assert other.vllm_version == "0.26.0" and other.calibration_version == "0.25.1"
    assert other.kv_cache_tokens == same.kv_cache_tokens
    assert other.to_dict()["calibration_warning"] == other.calibration_warning


def record(tokens: int, **changes: object) -> CalibrationRecord:
    fields: dict[str, object] = {
        "gpu": "h100-80gb",
        "vllm_version": "0.25.1",
        "model": "meta-llama/Llama-3.1-8B",
        "kv_cache_tokens": tokens,
        "tensor_parallel_size": 1,
        "max_num_seqs": 256,
        "max_num_batched_tokens": 8192,
        "gpu_memory_utilization": 0.9,
        "max_model_len": 8192,
    }
    return CalibrationRecord.from_dict({**fields, **changes})


def test_a_calibration_record_removes_the_residual_it_observed() -> None:
    plain = plan(LLAMA, llama(256, 8192), H100)
    fewer = 1024 * 16  # vLLM gave 1024 blocks (2 GiB) less than predicted
    corrected = plan(LLAMA, llama(256, 8192), H100, record=record(plain.kv_cache_tokens - fewer))
    assert corrected.kv_cache_tokens == plain.kv_cache_tokens - fewer
    assert corrected.calibration_residual_gib_per_gpu == pytest.approx(2.0, abs=1e-3)
    # The same residual carries over to other settings of the same model, GPU class and version.
    other = plan(LLAMA, llama(64, 2048, 0.5), H100, record=record(plain.kv_cache_tokens - fewer))
    assert other.kv_cache_tokens == plan(LLAMA, llama(64, 2048, 0.5), H100).kv_cache_tokens - fewer
    assert plain.calibration_residual_gib_per_gpu is None


def test_records_are_parsed_with_paths_and_selected_by_gpu_version_and_model() -> None:
    first, second = load_records(
        {"records": [record(400_000).__dict__, {**record(410_000).__dict__, "kv_cache_dtype": "fp8"}]}
    )
    key = {"gpu": "h100-80gb", "vllm_version": "0.25.1", "model": "meta-llama/Llama-3.1-8B"}
    assert select_record([first, second], **key) is second
    assert select_record([first], **{**key, "gpu": "l4"}) is None
    with pytest.raises(PlanningError, match=r"records\[0\]\.kv_cache_tokens is mandatory"):
        load_records([{k: v for k, v in record(1).__dict__.items() if k != "kv_cache_tokens"}])
    with pytest.raises(PlanningError, match=r"records\[0\]\.max_num_seqs must be a int"):
        load_records([{**record(1).__dict__, "max_num_seqs": "many"}])
