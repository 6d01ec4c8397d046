"""The fitting search: from a config, a request and a GPU, the cheapest vLLM configuration that fits.

``budget = total * gpu_memory_utilization`` per GPU; what is left after weights, activations, non-torch
memory and CUDA graphs is KV cache, in whole blocks. The search takes the smallest tensor-parallel size the
GPU class allows (1, 2, 4, 8 ... up to gpus_per_node) whose shards are legal and whose KV cache holds the
requested max model length for the concurrency target; with ``kv_cache_dtype=auto`` it tries the model's
16-bit KV first and fp8 KV (only on fp8 hardware) before doubling the GPUs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qmo.planner.architecture import Architecture, parse_architecture
from qmo.planner.calibration import (
    CALIBRATED_VERSION,
    Calibration,
    CalibrationRecord,
    calibration_for,
    vllm_version_of_image,
)
from qmo.planner.errors import PlanningError
from qmo.planner.gpus import GPUSpec
from qmo.planner.kvcache import BLOCK_SIZE, KV_CACHE_DTYPES, kv_capacity, kv_layout
from qmo.planner.overheads import GIB, default_max_num_batched_tokens, overheads
from qmo.planner.weights import (
    DTYPE_BYTES,
    METHODS,
    WeightFormat,
    checkpoint_bytes,
    resident_bytes_per_gpu,
    resolve_format,
    tp_problems,
)

DTYPES = ("auto", "bfloat16", "float16")
TP_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True, kw_only=True)
class PlanRequest:
    """What the user asks for; None means "let the planner (or vLLM's default) decide"."""

    quantization: str = "none"
    bits: int | None = None
    group_size: int | None = None
    symmetric: bool | None = None
    kv_cache_dtype: str = "auto"
    dtype: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int | None = None
    concurrency: int | None = None
    vllm_image: str | None = None
    """The serving image; its tag selects the calibration (None: the calibrated version)."""

    @property
    def vllm_version(self) -> str:
        """The vLLM version the plan is for: the image's tag, or the calibrated version."""
        if self.vllm_image is None:
            return CALIBRATED_VERSION
        return vllm_version_of_image(self.vllm_image) or self.vllm_image


@dataclass(frozen=True)
class ServingPlan:
    """A vLLM configuration and its per-GPU memory breakdown (GiB = 2**30 bytes)."""

    fits: bool
    reason: str | None
    tensor_parallel_size: int
    dtype: str
    kv_cache_dtype: str
    quantization: str | None
    """The vLLM ``--quantization`` value, or None where vLLM reads it from the checkpoint's config."""
    weight_format: str
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    gpu: str
    gpu_memory_gib: float
    budget_gib_per_gpu: float
    weights_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    kv_cache_bytes_per_gpu: int
    """The KV pool exactly (whole blocks): what ``--kv-cache-memory-bytes`` gives vLLM to allocate."""
    activation_gib_per_gpu: float
    non_torch_gib_per_gpu: float
    cudagraph_gib_per_gpu: float
    kv_cache_blocks: int
    kv_cache_tokens: int
    max_concurrency: float
    kv_bytes_per_token: int
    checkpoint_bytes: int
    param_count: int
    vllm_args: tuple[str, ...]
    vllm_version: str = CALIBRATED_VERSION
    """The vLLM version planned for (the serving image's tag)."""
    calibration_version: str = CALIBRATED_VERSION
    """The vLLM version whose measured constants the overheads use."""
    calibration_warning: str | None = None
    """Set when the two differ: ``uncalibrated for vLLM X, using 0.25.1``."""
    calibration_residual_gib_per_gpu: float | None = None
    """The residual a calibration record removed (observed minus predicted non-KV memory; None: no record)."""
    overhead_terms_gib: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Each overhead term before the profile peak's max(): forward, sampler, floor (see overheads.py)."""

    @property
    def gpus(self) -> int:
        return self.tensor_parallel_size

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["gpus"] = self.gpus
        data["vllm_args"] = list(self.vllm_args)
        data["overhead_terms_gib"] = dict(self.overhead_terms_gib)
        return data


def _gib(value: int) -> float:
    return round(value / GIB, 4)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class _Setting:
    """One candidate (tensor-parallel size, KV dtype) with everything computed for it."""

    tp: int
    kv_cache_dtype: str
    dtype: str
    weights: int
    activation: int
    non_torch: int
    cudagraph: int
    residual: int
    terms: tuple[tuple[str, int], ...]
    budget: int
    kv_bytes: int
    blocks: int
    tokens: int
    max_concurrency: float
    usable_requests: int
    kv_bytes_per_token: int
    block_bytes: int
    blocks_per_request: int

    @property
    def non_kv(self) -> int:
        return self.weights + self.activation + self.non_torch + self.cudagraph + self.residual

    def needed_bytes(self, requests: int) -> int:
        return self.non_kv + (requests * self.blocks_per_request + 1) * self.block_bytes


def _validate(request: PlanRequest, arch: Architecture) -> int:
    if request.quantization not in METHODS:
        raise PlanningError(
            f"quantization {request.quantization!r} is not supported; supported: {', '.join(METHODS)}",
            field="quantization",
        )
    if request.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise PlanningError(
            f"kv_cache_dtype {request.kv_cache_dtype!r} is not supported; supported: {', '.join(KV_CACHE_DTYPES)}",
            field="kv_cache_dtype",
        )
    if request.dtype not in DTYPES:
        raise PlanningError(
            f"dtype {request.dtype!r} is not supported; supported: {', '.join(DTYPES)}", field="dtype"
        )
    if not 0 < request.gpu_memory_utilization <= 1:
        raise PlanningError(
            f"gpu_memory_utilization must be in (0, 1], got {request.gpu_memory_utilization}",
            field="gpu_memory_utilization",
        )
    if request.max_num_seqs < 1:
        raise PlanningError(f"max_num_seqs must be >= 1, got {request.max_num_seqs}", field="max_num_seqs")
    if request.concurrency is not None and request.concurrency < 1:
        raise PlanningError(f"concurrency must be >= 1, got {request.concurrency}", field="concurrency")
    if request.tensor_parallel_size is not None and request.tensor_parallel_size < 1:
        raise PlanningError(
            f"tensor_parallel_size must be >= 1, got {request.tensor_parallel_size}",
            field="tensor_parallel_size",
        )
    max_len = arch.max_position_embeddings if request.max_model_len is None else request.max_model_len
    if max_len < 1:
        raise PlanningError(f"max_model_len must be >= 1, got {max_len}", field="max_model_len")
    if max_len > arch.max_position_embeddings:
        raise PlanningError(
            f"max_model_len {max_len} exceeds the model's max_position_embeddings {arch.max_position_embeddings}",
            field="max_model_len",
        )
    if request.max_num_batched_tokens is not None and request.max_num_batched_tokens < request.max_num_seqs:
        raise PlanningError(
            f"max_num_batched_tokens ({request.max_num_batched_tokens}) must be >= max_num_seqs ({request.max_num_seqs})",
            field="max_num_batched_tokens",
        )
    return max_len


def _serving_dtype(request: PlanRequest, arch: Architecture, fmt: WeightFormat, kv: str) -> str:
    if request.dtype != "auto":
        dtype = request.dtype
    elif kv == "float16":
        dtype = "float16"
    else:
        # vLLM's --dtype auto follows the checkpoint (float16 for AutoAWQ/AutoGPTQ) and serves float32
        # checkpoints in bfloat16.
        dtype = fmt.checkpoint_dtype or arch.torch_dtype
        dtype = "bfloat16" if dtype == "float32" else dtype
    if kv == "fp8" and dtype == "float16":
        if request.dtype == "float16":
            raise PlanningError(
                "kv_cache_dtype fp8 with dtype float16 crashes vLLM at warm-up on H100; use dtype bfloat16 or auto",
                field="dtype",
            )
        # Measured: an fp16 model with an fp8 KV cache crashes vLLM 0.25 on H100; bf16 works.
        dtype = "bfloat16"
    if kv == "float16" and dtype != "float16":
        raise PlanningError(
            "kv_cache_dtype float16 needs dtype float16 (vLLM stores 16-bit KV in the model dtype)",
            field="dtype",
        )
    return dtype


def _evaluate(
    arch: Architecture,
    fmt: WeightFormat,
    request: PlanRequest,
    gpu: GPUSpec,
    *,
    tp: int,
    kv: str,
    max_len: int,
    batched_tokens: int,
    calibration: Calibration,
    residual: int = 0,
) -> _Setting:
    dtype = _serving_dtype(request, arch, fmt, kv)
    kv_dtype_bytes = 1 if kv == "fp8" else DTYPE_BYTES[dtype]
    weights = resident_bytes_per_gpu(arch, fmt, tp)
    over = overheads(
        arch,
        tp=tp,
        max_num_batched_tokens=batched_tokens,
        max_num_seqs=request.max_num_seqs,
        act_bytes=DTYPE_BYTES[dtype],
        calibration=calibration,
        device=gpu.device,
    )
    budget = int(gpu.memory_gib * GIB * request.gpu_memory_utilization)
    kv_bytes = max(0, budget - weights - over.total - residual)
    layout = kv_layout(arch, tp, kv_dtype_bytes)
    capacity = kv_capacity(layout, kv_bytes, max_len, batched_tokens)
    return _Setting(
        tp=tp,
        kv_cache_dtype=kv,
        dtype=dtype,
        weights=weights,
        activation=over.activation,
        non_torch=over.non_torch,
        cudagraph=over.cudagraph,
        residual=residual,
        terms=(("forward", over.forward), ("sampler", over.sampler), ("floor", over.floor)),
        budget=budget,
        kv_bytes=capacity.num_blocks * layout.block_bytes,
        blocks=capacity.num_blocks,
        tokens=capacity.tokens,
        max_concurrency=capacity.max_concurrency,
        usable_requests=capacity.usable_requests,
        kv_bytes_per_token=layout.kv_bytes_per_token,
        block_bytes=layout.block_bytes,
        blocks_per_request=layout.blocks_per_request(max_len, batched_tokens),
    )


def _vllm_args(
    s: _Setting, fmt: WeightFormat, request: PlanRequest, gpu: GPUSpec, max_len: int, batched: int
) -> tuple[str, ...]:
    # On CPU vLLM reads the utilization as a share of all host RAM: the planned pool goes in as bytes.
    memory = (
        f"--kv-cache-memory-bytes={s.kv_bytes}"
        if gpu.device == "cpu"
        else f"--gpu-memory-utilization={request.gpu_memory_utilization:g}"
    )
    args = [
        f"--tensor-parallel-size={s.tp}",
        f"--dtype={s.dtype}",
        f"--kv-cache-dtype={'auto' if s.kv_cache_dtype == 'float16' else s.kv_cache_dtype}",
        f"--max-model-len={max_len}",
        f"--max-num-seqs={request.max_num_seqs}",
        f"--max-num-batched-tokens={batched}",
        memory,
        f"--block-size={BLOCK_SIZE}",
    ]
    if fmt.vllm_quantization:
        args.append(f"--quantization={fmt.vllm_quantization}")
    return tuple(args)


def _to_plan(
    s: _Setting,
    *,
    fits: bool,
    reason: str | None,
    arch: Architecture,
    fmt: WeightFormat,
    request: PlanRequest,
    gpu: GPUSpec,
    max_len: int,
    batched: int,
    calibration: Calibration,
    warning: str | None,
    recorded: bool,
) -> ServingPlan:
    return ServingPlan(
        fits=fits,
        reason=reason,
        tensor_parallel_size=s.tp,
        dtype=s.dtype,
        kv_cache_dtype=s.kv_cache_dtype,
        quantization=fmt.vllm_quantization,
        weight_format=fmt.method if fmt.method != "prequantized" else f"prequantized ({fmt.layout})",
        max_model_len=max_len,
        max_num_seqs=request.max_num_seqs,
        max_num_batched_tokens=batched,
        gpu_memory_utilization=request.gpu_memory_utilization,
        gpu=gpu.name,
        gpu_memory_gib=gpu.memory_gib,
        budget_gib_per_gpu=_gib(s.budget),
        weights_gib_per_gpu=_gib(s.weights),
        kv_cache_gib_per_gpu=_gib(s.kv_bytes),
        kv_cache_bytes_per_gpu=s.kv_bytes,
        activation_gib_per_gpu=_gib(s.activation),
        non_torch_gib_per_gpu=_gib(s.non_torch),
        cudagraph_gib_per_gpu=_gib(s.cudagraph),
        kv_cache_blocks=s.blocks,
        kv_cache_tokens=s.tokens,
        max_concurrency=round(s.max_concurrency, 2),
        kv_bytes_per_token=s.kv_bytes_per_token,
        checkpoint_bytes=checkpoint_bytes(arch, fmt),
        param_count=arch.param_count,
        vllm_args=_vllm_args(s, fmt, request, gpu, max_len, batched),
        vllm_version=request.vllm_version,
        calibration_version=calibration.vllm_version,
        calibration_warning=warning,
        calibration_residual_gib_per_gpu=_gib(s.residual) if recorded else None,
        overhead_terms_gib={name: _gib(value) for name, value in s.terms},
    )


def plan(
    config: Mapping[str, Any],
    request: PlanRequest,
    gpu: GPUSpec,
    *,
    record: CalibrationRecord | None = None,
) -> ServingPlan:
    """Plan vLLM for ``config`` on ``gpu``; PlanningError for bad input, ``fits=False`` when nothing fits.

    ``record``: what vLLM really allocated for this model on this GPU class and vLLM version (see
    planner/calibration.py); the residual between it and our prediction becomes one more per-GPU term."""
    arch = parse_architecture(config)
    max_len = _validate(request, arch)
    fmt = resolve_format(
        arch,
        quantization=request.quantization,
        bits=request.bits,
        group_size=request.group_size,
        symmetric=request.symmetric,
    )
    batched = request.max_num_batched_tokens or default_max_num_batched_tokens(
        gpu.memory_gib, gpu.name, request.max_num_seqs
    )
    want = request.concurrency or 1
    calibration, warning = calibration_for(request.vllm_image)

    if request.kv_cache_dtype == "fp8" and not gpu.fp8:
        raise PlanningError(
            f"kv_cache_dtype fp8 needs fp8 hardware; GPU {gpu.name} has none", field="kv_cache_dtype"
        )
    kv_options = [request.kv_cache_dtype]
    if request.kv_cache_dtype == "auto" and gpu.fp8 and request.dtype != "float16":
        kv_options.append("fp8")

    if request.tensor_parallel_size is not None:
        tp = request.tensor_parallel_size
        if tp > gpu.gpus_per_node:
            raise PlanningError(
                f"tensor_parallel_size {tp} exceeds the {gpu.gpus_per_node} GPUs per node of GPU {gpu.name}",
                field="tensor_parallel_size",
            )
        problems = tp_problems(arch, fmt, tp)
        if problems:
            raise PlanningError(
                f"tensor_parallel_size {tp} is not possible: {'; '.join(problems)}",
                field="tensor_parallel_size",
            )
        candidates = [tp]
    else:
        candidates = [t for t in TP_CANDIDATES if t <= gpu.gpus_per_node and not tp_problems(arch, fmt, t)]
        if not candidates:
            legal = [t for t in TP_CANDIDATES if t <= gpu.gpus_per_node]
            raise PlanningError(
                f"no tensor-parallel size up to {gpu.gpus_per_node} can shard this model: "
                + "; ".join(tp_problems(arch, fmt, legal[-1])),
                field="tensor_parallel_size",
            )

    residual = 0 if record is None else _record_residual(arch, fmt, request, gpu, record, calibration)

    def evaluate(tp: int, kv: str, length: int = max_len) -> _Setting:
        return _evaluate(
            arch,
            fmt,
            request,
            gpu,
            tp=tp,
            kv=kv,
            max_len=length,
            batched_tokens=batched,
            calibration=calibration,
            residual=residual,
        )

    def emit(s: _Setting, fits: bool, reason: str | None) -> ServingPlan:
        return _to_plan(
            s,
            fits=fits,
            reason=reason,
            arch=arch,
            fmt=fmt,
            request=request,
            gpu=gpu,
            max_len=max_len,
            batched=batched,
            calibration=calibration,
            warning=warning,
            recorded=record is not None,
        )

    for tp in candidates:
        for kv in kv_options:
            setting = evaluate(tp, kv)
            if setting.usable_requests >= want:
                return emit(setting, True, None)

    best = evaluate(candidates[-1], kv_options[-1])
    return emit(
        best, False, _refusal(best, want, gpu, request, max_len, candidates, kv_options, arch, fmt, evaluate)
    )


def _record_residual(
    arch: Architecture,
    fmt: WeightFormat,
    request: PlanRequest,
    gpu: GPUSpec,
    record: CalibrationRecord,
    calibration: Calibration,
) -> int:
    """Bytes per GPU vLLM kept out of the KV pool beyond our prediction at the record's own settings."""
    if record.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise PlanningError(
            f"calibration record kv_cache_dtype {record.kv_cache_dtype!r} is not one of {', '.join(KV_CACHE_DTYPES)}",
            field="calibration",
        )
    at_record = dataclasses.replace(
        request, max_num_seqs=record.max_num_seqs, gpu_memory_utilization=record.gpu_memory_utilization
    )
    predicted = _evaluate(
        arch,
        fmt,
        at_record,
        gpu,
        tp=record.tensor_parallel_size,
        kv=record.kv_cache_dtype,
        max_len=record.max_model_len,
        batched_tokens=record.max_num_batched_tokens,
        calibration=calibration,
    )
    groups = len(kv_layout(arch, record.tensor_parallel_size, 1).groups)
    observed_blocks = record.kv_cache_tokens // BLOCK_SIZE * groups
    return (predicted.blocks - observed_blocks) * predicted.block_bytes


def _refusal(
    best: _Setting,
    want: int,
    gpu: GPUSpec,
    request: PlanRequest,
    max_len: int,
    candidates: list[int],
    kv_options: list[str],
    arch: Architecture,
    fmt: WeightFormat,
    evaluate: Any,
) -> str:
    needed = best.needed_bytes(want)
    target = f"{want} sequences of {max_len} tokens" if want > 1 else f"one sequence of {max_len} tokens"
    parts = [
        f"needs {needed / GIB:.1f} GiB per GPU at tensor-parallel-size {best.tp} with {best.kv_cache_dtype} KV cache "
        f"(weights {best.weights / GIB:.1f} + overheads {(best.non_kv - best.weights) / GIB:.1f} + KV for {target} "
        f"{(needed - best.non_kv) / GIB:.1f}), GPU {gpu.name} has {best.budget / GIB:.1f} "
        f"({gpu.memory_gib:g} x {request.gpu_memory_utilization:g})"
    ]
    suggestions: list[str] = []
    larger = [t for t in TP_CANDIDATES if t > best.tp and not tp_problems(arch, fmt, t)]
    for tp in larger:
        if any(evaluate(tp, kv).usable_requests >= want for kv in kv_options):
            where = "" if tp <= gpu.gpus_per_node else f" (more than the {gpu.gpus_per_node} GPUs per node)"
            suggestions.append(f"tensor-parallel-size {tp} would fit{where}")
            break
    if want > 1 and best.usable_requests >= 1:
        suggestions.append(f"{best.usable_requests} concurrent sequences of {max_len} tokens fit")
    lo, hi = 0, max_len // BLOCK_SIZE
    while lo < hi:  # the largest multiple of the block size that fits the concurrency target
        mid = (lo + hi + 1) // 2
        if evaluate(best.tp, best.kv_cache_dtype, mid * BLOCK_SIZE).usable_requests >= want:
            lo = mid
        else:
            hi = mid - 1
    if lo:
        suggestions.append(f"max-model-len {lo * BLOCK_SIZE} would fit at tensor-parallel-size {best.tp}")
    elif best.non_kv >= best.budget:
        suggestions.append(f"weights and overheads alone need {best.non_kv / GIB:.1f} GiB per GPU")
    return "; ".join(parts + suggestions)


def predict_checkpoint_bytes(
    config: Mapping[str, Any],
    *,
    quantization: str,
    bits: int | None = None,
    group_size: int | None = None,
    symmetric: bool | None = None,
    dtype: str = "auto",
) -> int:
    """Tensor bytes of the safetensors files the given method writes (llm-compressor 0.14 layouts)."""
    arch = parse_architecture(config)
    fmt = resolve_format(
        arch, quantization=quantization, bits=bits, group_size=group_size, symmetric=symmetric
    )
    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise PlanningError(
            f"dtype {dtype!r} is not supported; supported: auto, bfloat16, float16, float32", field="dtype"
        )
    if dtype != "auto":
        fmt = dataclasses.replace(fmt, checkpoint_dtype_bytes=DTYPE_BYTES[dtype])
    if fmt.layout == "bnb-nf4":  # quantized by vLLM while loading: the checkpoint stays 16-bit
        fmt = dataclasses.replace(fmt, layout="dense")
    return checkpoint_bytes(arch, fmt)
