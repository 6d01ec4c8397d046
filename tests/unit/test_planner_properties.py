"""Properties of the planner that must hold for any memory, model shape and request (hypothesis)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from qmo.planner import GPUSpec, PlanningError, PlanRequest, plan

CONFIGS = Path(__file__).parent / "configs"
MODELS = {
    name: json.loads((CONFIGS / f"{name}.json").read_text())
    for name in ("llama-3.1-8b", "mixtral-8x7b", "qwen2.5-7b-instruct", "gemma-2-9b", "deepseek-v2-lite")
}

models = st.sampled_from(sorted(MODELS))
memory = st.floats(min_value=8.0, max_value=200.0, allow_nan=False)
lengths = st.sampled_from([512, 2048, 4096, 8192])
quantizations = st.sampled_from(["none", "awq", "gptq", "fp8-dynamic", "w8a8"])
FAST = settings(max_examples=40, deadline=None)


def gpu(mem: float, *, fp8: bool = True, per_node: int = 8) -> GPUSpec:
    return GPUSpec(name="test", memory_gib=mem, gpus_per_node=per_node, fp8=fp8)


def try_plan(config: dict[str, Any], request: PlanRequest, spec: GPUSpec) -> Any:
    try:
        return plan(config, request, spec)
    except PlanningError:
        return None


@FAST
@given(
    models,
    memory,
    st.floats(min_value=0.5, max_value=60.0),
    lengths,
    st.sampled_from([1, 2, 4]),
    quantizations,
)
def test_more_memory_never_reduces_kv_tokens(
    name: str, mem: float, extra: float, length: int, tp: int, q: str
) -> None:
    request = PlanRequest(
        quantization=q, max_model_len=length, tensor_parallel_size=tp, max_num_batched_tokens=4096
    )
    small, large = (
        try_plan(MODELS[name], request, gpu(mem)),
        try_plan(MODELS[name], request, gpu(mem + extra)),
    )
    if small is not None and large is not None:
        # The pool never shrinks. Tokens grow too at one KV dtype; across dtypes they may not: with
        # kv_cache_dtype auto the planner keeps 16-bit KV where it fits (better quality) and uses fp8 only
        # where the smaller GPU needs the capacity, which holds up to twice the tokens in less memory.
        assert large.kv_cache_gib_per_gpu >= small.kv_cache_gib_per_gpu
        if large.kv_cache_dtype == small.kv_cache_dtype:
            assert large.kv_cache_tokens >= small.kv_cache_tokens


@FAST
@given(models, memory, lengths, st.sampled_from([1, 2, 4]))
def test_fp8_kv_never_gives_fewer_tokens_than_bf16(name: str, mem: float, length: int, tp: int) -> None:
    base = {
        "max_model_len": length,
        "tensor_parallel_size": tp,
        "dtype": "bfloat16",
        "max_num_batched_tokens": 4096,
    }
    bf16 = try_plan(MODELS[name], PlanRequest(kv_cache_dtype="bfloat16", **base), gpu(mem))
    fp8 = try_plan(MODELS[name], PlanRequest(kv_cache_dtype="fp8", **base), gpu(mem))
    if bf16 is not None and fp8 is not None:
        assert fp8.kv_cache_tokens >= bf16.kv_cache_tokens


@FAST
@given(models, memory, lengths, quantizations, st.integers(min_value=1, max_value=64), st.booleans())
def test_chosen_tp_divides_heads_and_a_fitting_plan_holds_the_context(
    name: str, mem: float, length: int, q: str, concurrency: int, fp8: bool
) -> None:
    config = MODELS[name]
    result = try_plan(
        config, PlanRequest(quantization=q, max_model_len=length, concurrency=concurrency), gpu(mem, fp8=fp8)
    )
    if result is None:
        return
    assert config["num_attention_heads"] % result.tensor_parallel_size == 0
    if result.fits:
        assert result.max_concurrency >= concurrency
        if name != "gemma-2-9b":  # hybrid models report tokens per KV group, not per sequence
            assert result.kv_cache_tokens >= length * concurrency
    else:
        assert result.reason


json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=10**6),
    st.integers(min_value=10**6, max_value=2**80),  # absurd sizes must fail fast, not exhaust memory
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(min_value=-1, max_value=64), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None)
@given(models, st.data(), json_values)
def test_a_damaged_config_is_a_planning_error_never_a_crash(
    name: str, data: st.DataObject, value: Any
) -> None:
    config = dict(MODELS[name])
    if name == "llama-3.1-8b":
        config["quantization_config"] = {
            "quant_method": "awq",
            "bits": 4,
            "group_size": 128,
            "zero_point": True,
        }
    key = data.draw(st.sampled_from(sorted(config)))
    if isinstance(config[key], dict) and data.draw(st.booleans()):
        inner = dict(config[key])
        inner[data.draw(st.sampled_from(sorted(inner)))] = value
        config[key] = inner
    else:
        config[key] = value
    with contextlib.suppress(PlanningError):
        plan(config, PlanRequest(max_model_len=1024), gpu(80.0))
