"""The planner against DESIGN §6's measurements, and its rules: TP search, fp8 KV, refusals, formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qmo.planner import (
    BUILTIN_GPUS,
    GPUSpec,
    PlanningError,
    PlanRequest,
    gpu_by_name,
    plan,
    predict_checkpoint_bytes,
)
from qmo.planner.architecture import parse_architecture
from qmo.planner.kvcache import kv_bytes_per_token, kv_layout
from qmo.planner.weights import resolve_format

CONFIGS = Path(__file__).parent / "configs"
GIB = 2**30
H100 = gpu_by_name("h100-80gb")
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


def load(name: str) -> dict[str, Any]:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def awq(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "quantization_config": AWQ, "torch_dtype": "float16"}


CALIBRATION = [
    # (config, max_model_len, measured weights GiB, measured KV tokens) — vLLM 0.25.1, H100, util 0.9.
    (load("llama-3.1-8b"), 8192, 15.00, 449_968),
    (awq(load("llama-3.1-8b")), 8192, 5.49, 527_920),
    (awq(load("mixtral-8x7b")), 32768, 23.04, 374_640),
]


@pytest.mark.parametrize(("config", "max_len", "weights_gib", "kv_tokens"), CALIBRATION)
def test_design_calibration_points(
    config: dict[str, Any], max_len: int, weights_gib: float, kv_tokens: int
) -> None:
    request = PlanRequest(max_model_len=max_len, max_num_batched_tokens=8192, tensor_parallel_size=1)
    result = plan(config, request, H100)
    assert result.fits
    assert abs(result.weights_gib_per_gpu - weights_gib) <= 0.1
    assert abs(result.kv_cache_tokens - kv_tokens) / kv_tokens <= 0.01
    assert result.kv_cache_tokens <= kv_tokens * 1.001  # the safe side: never promise more than vLLM gives


def test_known_parameter_counts_of_public_configs() -> None:
    assert parse_architecture(load("llama-3.1-8b")).param_count == 8_030_261_248
    assert parse_architecture(load("mixtral-8x7b")).param_count == 46_702_792_704
    assert parse_architecture(load("qwen2.5-7b-instruct")).param_count == 7_615_616_512
    assert parse_architecture(load("gemma-2-9b")).param_count == 9_241_705_984


def test_checkpoint_bytes_of_a_16_bit_model_is_two_bytes_per_parameter() -> None:
    assert predict_checkpoint_bytes(load("llama-3.1-8b"), quantization="none") == 2 * 8_030_261_248
    # Gemma 2's config says float32: the checkpoint is 4 bytes per parameter unless saved in another dtype.
    gemma = load("gemma-2-9b")
    assert predict_checkpoint_bytes(gemma, quantization="none") == 4 * 9_241_705_984
    assert predict_checkpoint_bytes(gemma, quantization="none", dtype="bfloat16") == 2 * 9_241_705_984


def test_w4a16_checkpoint_layout_by_hand() -> None:
    config = {
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 1000,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    }
    linears = [(256, 256)] * 4 + [(256, 512)] * 2 + [(512, 256)]  # (in, out): q k v o gate up down
    float_params = 1000 * 256 + 3 * 256  # tied embedding stored once + 3 norms
    sym = sum(o * i // 2 + o * (i // 128) * 2 + 16 for i, o in linears)
    zero_points = sum((o // 8) * (i // 128) * 4 for i, o in linears)
    assert predict_checkpoint_bytes(config, quantization="gptq") == 2 * float_params + sym
    assert predict_checkpoint_bytes(config, quantization="awq") == 2 * float_params + sym + zero_points
    fp8_dynamic = sum(o * i + o * 2 for i, o in linears)
    assert predict_checkpoint_bytes(config, quantization="fp8-dynamic") == 2 * float_params + fp8_dynamic
    nvfp4 = sum(o * i // 2 + o * i // 16 + 8 for i, o in linears)
    assert predict_checkpoint_bytes(config, quantization="nvfp4") == 2 * float_params + nvfp4


def test_quantized_formats_shrink_weights_in_the_expected_order() -> None:
    config = load("llama-3.1-8b")
    sizes = {
        q: predict_checkpoint_bytes(config, quantization=q)
        for q in ("none", "w8a8", "fp8", "awq", "gptq", "nvfp4")
    }
    assert sizes["none"] > sizes["w8a8"] >= sizes["fp8"] > sizes["nvfp4"] > sizes["awq"] > sizes["gptq"]
    # Embeddings and lm_head stay 16-bit: 4-bit is well above a quarter of the 16-bit size.
    assert sizes["gptq"] > sizes["none"] / 4


def test_quantization_config_in_the_model_wins_over_the_request() -> None:
    config = awq(load("llama-3.1-8b"))
    assert plan(config, PlanRequest(quantization="fp8", max_model_len=8192), H100).weight_format.startswith(
        "prequantized"
    )
    fmt = resolve_format(parse_architecture(config), quantization="none")
    assert (fmt.layout, fmt.bits, fmt.group_size, fmt.symmetric) == ("autoawq", 4, 128, False)


@pytest.mark.parametrize(
    ("backend", "method", "layout"),
    [
        ("llm-compressor", "awq", "ct-pack"),
        ("llm-compressor", "gptq", "ct-pack"),
        ("autoawq", "awq", "autoawq"),
        ("gptqmodel", "awq", "autoawq"),
        ("gptqmodel", "gptq", "autogptq"),
        ("autogptq", "gptq", "autogptq"),
    ],
)
def test_the_backend_decides_the_layout_the_planner_sizes(backend: str, method: str, layout: str) -> None:
    config = load("llama-3.1-8b")
    fmt = resolve_format(parse_architecture(config), quantization=method, backend=backend)
    assert fmt.layout == layout
    planned = plan(config, PlanRequest(quantization=method, backend=backend, max_model_len=8192), H100)
    # The same plan as the checkpoint the backend writes would get, once it exists (its config wins then).
    if layout != "ct-pack":
        gptq_config = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False}
        written = {
            **config,
            "quantization_config": AWQ if method == "awq" else gptq_config,
            "torch_dtype": "float16",
        }
        served = plan(written, PlanRequest(max_model_len=8192), H100)
        assert (planned.weights_gib_per_gpu, planned.kv_cache_tokens) == (
            served.weights_gib_per_gpu,
            served.kv_cache_tokens,
        )


def test_compressed_tensors_and_fp8_block_configs_are_parsed() -> None:
    w4a16 = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "ignore": ["lm_head"],
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {
                    "num_bits": 4,
                    "type": "int",
                    "strategy": "group",
                    "group_size": 128,
                    "symmetric": True,
                },
                "input_activations": None,
            }
        },
    }
    arch = parse_architecture({**load("llama-3.1-8b"), "quantization_config": w4a16})
    fmt = resolve_format(arch, quantization="none")
    assert (fmt.layout, fmt.bits, fmt.group_size) == ("ct-pack", 4, 128)
    block = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "weight_block_size": [128, 128],
    }
    arch = parse_architecture({**load("deepseek-v2-lite"), "quantization_config": block})
    assert resolve_format(arch, quantization="none").layout == "fp8-block"
    with pytest.raises(PlanningError, match="quant_method 'hqq' is not supported"):
        plan({**load("llama-3.1-8b"), "quantization_config": {"quant_method": "hqq"}}, PlanRequest(), H100)


def test_kv_bytes_per_token_gqa_mla_and_replication() -> None:
    llama = parse_architecture(load("llama-3.1-8b"))
    assert kv_bytes_per_token(llama, 1, 2) == 32 * 2 * 8 * 128 * 2
    assert kv_bytes_per_token(llama, 2, 2) == kv_bytes_per_token(llama, 1, 2) // 2
    assert kv_bytes_per_token(llama, 8, 1) == 32 * 2 * 1 * 128
    # tp 16 > 8 KV heads: each head is replicated, one per GPU.
    assert kv_bytes_per_token(llama, 16, 2) == kv_bytes_per_token(llama, 8, 2)
    mla = parse_architecture(load("deepseek-v2-lite"))
    assert kv_bytes_per_token(mla, 1, 2) == 27 * (512 + 64) * 2
    assert kv_bytes_per_token(mla, 4, 2) == kv_bytes_per_token(mla, 1, 2)  # the latent is not sharded


def test_sliding_window_layers_use_the_hybrid_allocator() -> None:
    gemma = parse_architecture(load("gemma-2-9b"))
    layout = kv_layout(gemma, 1, 2)
    assert (layout.group_size, len(layout.groups)) == (21, 2)
    # A full-attention group needs the whole context, the sliding one only window + one batch.
    assert layout.blocks_per_request(8192, 2048) == 512 + (4095 + 2048 + 15) // 16 + 1
    result = plan(load("gemma-2-9b"), PlanRequest(max_model_len=8192, max_num_batched_tokens=2048), H100)
    assert result.kv_cache_tokens == result.kv_cache_blocks // 2 * 16
    assert result.max_concurrency > result.kv_cache_tokens / 8192  # sliding layers need less per request


def test_search_picks_the_smallest_tensor_parallel_size_that_fits() -> None:
    mixtral = load("mixtral-8x7b")
    result = plan(mixtral, PlanRequest(max_model_len=32768), H100)
    assert result.fits and result.tensor_parallel_size == 2  # 87 GiB of bf16 weights
    assert "--tensor-parallel-size=2" in result.vllm_args
    bigger = plan(mixtral, PlanRequest(max_model_len=32768, concurrency=200), H100)
    assert bigger.fits and bigger.tensor_parallel_size > 2 and bigger.max_concurrency >= 200


def test_fp8_kv_only_on_fp8_hardware_and_then_bfloat16() -> None:
    config = awq(load("llama-3.1-8b"))
    result = plan(config, PlanRequest(max_model_len=8192, kv_cache_dtype="fp8"), H100)
    assert (result.kv_cache_dtype, result.dtype) == ("fp8", "bfloat16")
    assert "--dtype=bfloat16" in result.vllm_args and "--kv-cache-dtype=fp8" in result.vllm_args
    with pytest.raises(PlanningError, match="fp8 needs fp8 hardware; GPU a100-80gb"):
        plan(config, PlanRequest(kv_cache_dtype="fp8"), gpu_by_name("a100-80gb"))
    with pytest.raises(PlanningError, match="crashes vLLM"):
        plan(config, PlanRequest(kv_cache_dtype="fp8", dtype="float16"), H100)


def test_auto_kv_prefers_fp8_before_more_gpus_on_fp8_hardware() -> None:
    l4 = gpu_by_name("l4")
    result = plan(load("llama-3.1-8b"), PlanRequest(max_model_len=32768), l4)
    assert (result.fits, result.tensor_parallel_size, result.kv_cache_dtype) == (True, 1, "fp8")
    a10g = gpu_by_name("a10g")
    result = plan(load("llama-3.1-8b"), PlanRequest(max_model_len=32768), a10g)
    assert result.kv_cache_dtype == "auto" and result.tensor_parallel_size == 2


def test_refusal_says_what_is_needed_and_what_would_fit() -> None:
    small = GPUSpec(name="small", memory_gib=16.0, gpus_per_node=1, fp8=False)
    result = plan(load("llama-3.1-8b"), PlanRequest(max_model_len=8192), small)
    assert not result.fits
    assert result.reason is not None
    assert "GPU small has 14.4" in result.reason and "tensor-parallel-size 2 would fit" in result.reason
    long = plan(load("llama-3.1-8b"), PlanRequest(tensor_parallel_size=1), gpu_by_name("l4"))
    assert not long.fits and long.reason is not None and "max-model-len" in long.reason


def test_explicit_tensor_parallel_size_is_reported_not_searched() -> None:
    result = plan(load("llama-3.1-8b"), PlanRequest(max_model_len=8192, tensor_parallel_size=4), H100)
    assert result.tensor_parallel_size == 4 and result.gpus == 4
    with pytest.raises(PlanningError, match="28 attention heads are not divisible by tensor-parallel-size 8"):
        plan(load("qwen2.5-7b-instruct"), PlanRequest(tensor_parallel_size=8), H100)


def test_group_quantized_row_shards_must_hold_whole_groups() -> None:
    config = {**load("llama-3.1-8b"), "intermediate_size": 113 * 128}
    with pytest.raises(PlanningError, match="group size 128"):
        plan(config, PlanRequest(quantization="gptq", tensor_parallel_size=2, max_model_len=8192), H100)
    assert plan(config, PlanRequest(quantization="gptq", max_model_len=8192), H100).tensor_parallel_size == 1


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (PlanRequest(quantization="int3"), "quantization 'int3' is not supported"),
        (PlanRequest(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
        (PlanRequest(max_model_len=10**7), "exceeds the model's max_position_embeddings"),
        (PlanRequest(kv_cache_dtype="int8"), "kv_cache_dtype 'int8'"),
        (PlanRequest(max_num_seqs=512, max_num_batched_tokens=256), "max_num_batched_tokens"),
        (PlanRequest(quantization="prequantized"), "needs a quantization_config"),
        (PlanRequest(quantization="gptq", bits=3), "bits must be 4 or 8"),
    ],
)
def test_bad_requests_are_planning_errors(request_: PlanRequest, message: str) -> None:
    with pytest.raises(PlanningError, match=message):
        plan(load("llama-3.1-8b"), request_, H100)


def test_gpu_catalog() -> None:
    assert set(BUILTIN_GPUS) >= {
        "h100-80gb",
        "h200",
        "a100-40gb",
        "a100-80gb",
        "l40s",
        "l4",
        "a10g",
        "rtx-4090",
        "b200",
        "mi300x",
    }
    assert gpu_by_name("H100-80GB").memory_gib == 79.18
    with pytest.raises(PlanningError, match="known: a100-40gb"):
        gpu_by_name("tpu")


def test_plan_to_dict_is_json_ready() -> None:
    data = plan(load("llama-3.1-8b"), PlanRequest(max_model_len=8192), H100).to_dict()
    json.dumps(data)
    for key in (
        "fits",
        "tensor_parallel_size",
        "weights_gib_per_gpu",
        "kv_cache_gib_per_gpu",
        "kv_cache_tokens",
        "max_concurrency",
        "kv_cache_dtype",
        "dtype",
        "vllm_args",
        "reason",
        "gpus",
        "checkpoint_bytes",
    ):
        assert key in data
    assert isinstance(data["vllm_args"], list)


@pytest.mark.parametrize(
    ("name", "billions"),
    [
        ("qwen3-8b", 8.19),
        ("qwen3-30b-a3b", 30.53),
        ("phi-3-mini-4k-instruct", 3.82),
        ("gemma-3-27b-it", 27.43),  # incl. the SigLIP vision tower
        ("deepseek-v2-lite", 15.71),
        ("deepseek-v3", 671.03),  # without the multi-token-prediction layer, which vLLM does not load
    ],
)
def test_public_configs_have_their_published_sizes(name: str, billions: float) -> None:
    assert round(parse_architecture(load(name)).param_count / 1e9, 2) == billions


def test_deepseek_v3_fp8_needs_h200_class_memory_on_one_node() -> None:
    config = load("deepseek-v3")
    on_h100 = plan(config, PlanRequest(max_model_len=4096), H100)
    assert (
        not on_h100.fits
        and on_h100.reason is not None
        and "tensor-parallel-size 16 would fit" in on_h100.reason
    )
    on_h200 = plan(config, PlanRequest(max_model_len=4096), gpu_by_name("h200"))
    assert on_h200.fits and on_h200.tensor_parallel_size == 8 and on_h200.quantization is None


def test_gemma3_hybrid_groups() -> None:
    layout = kv_layout(parse_architecture(load("gemma-3-27b-it")), 1, 2)
    # 52 sliding + 10 full layers: groups of 10 layers, 6 sliding groups (8 padding layers) + 1 full group.
    assert (layout.group_size, len(layout.groups)) == (10, 7)


def test_explicit_tensor_parallel_beyond_the_node_is_refused() -> None:
    with pytest.raises(PlanningError, match="exceeds the 8 GPUs per node"):
        plan(load("llama-3.1-8b"), PlanRequest(tensor_parallel_size=16), H100)
