"""The fitting search: from a config, a request and a GPU, the cheapest vLLM configuration that fits.

``budget = total * gpu_memory_utilization`` per GPU; what is left after weights, activations, non-torch
memory and CUDA graphs is KV cache, in whole blocks. The search takes the smallest tensor-parallel size the
GPU class allows (1, 2, 4, 8 ... up to gpus_per_node) whose shards are legal and whose KV cache holds the
requested max model length for the concurrency target; with ``kv_cache_dtype=auto`` it tries the model's
16-bit KV first and fp8 KV (only on fp8 hardware) before doubling the GPUs. When nothing inside one node
fits and the request allows more nodes (``max_nodes``), it takes the node's tensor-parallel size and adds
pipeline stages, one per node (planner/parallel.py), before it refuses.
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
from qmo.planner.kvcache import (
    BLOCK_SIZE,
    KV_CACHE_DTYPES,
    kv_capacity,
    kv_layout,
    stage_kv_layout,
)
from qmo.planner.overheads import GIB, default_max_num_batched_tokens, overheads
from qmo.planner.parallel import (
    MAX_PIPELINE_STAGES,
    PipelineStage,
    Setting,
    StageMemory,
    pipeline_layers,
    pipeline_stages,
    stage_architecture,
)
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
    backend: str = "llm-compressor"
    """Which backend quantizes: it decides the checkpoint's format (compressed-tensors or native awq/gptq)."""
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
    max_nodes: int = 1
    """Nodes one replica may span; above 1, what no single node holds is planned as pipeline stages."""
    pipeline_parallel_size: int | None = None
    """Pipeline stages (one per node); None: one node if anything there fits, else the fewest that fit."""

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
    pipeline_parallel_size: int = 1
    """Pipeline stages, one per node: 1 for a single node."""
    pipeline_stages: tuple[PipelineStage, ...] = ()
    """Each stage's layers and per-GPU figures when the plan spans nodes (empty on one node). The per-GPU
    figures above are then the most any stage's GPU holds of each term; KV blocks and tokens are the
    most constrained stage's, which vLLM's KV cache config applies to every stage."""

    @property
    def gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["gpus"] = self.gpus
        data["vllm_args"] = list(self.vllm_args)
        data["overhead_terms_gib"] = dict(self.overhead_terms_gib)
        data["pipeline_stages"] = [
            {**dataclasses.asdict(stage), "overhead_terms_gib": dict(stage.overhead_terms_gib)}
            for stage in self.pipeline_stages
        ]
        return data


def _gib(value: int) -> float:
    return round(value / GIB, 4)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


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
    if request.max_nodes < 1:
        raise PlanningError(f"max_nodes must be >= 1, got {request.max_nodes}", field="max_nodes")
    if request.pipeline_parallel_size is not None and request.pipeline_parallel_size < 1:
        raise PlanningError(
            f"pipeline_parallel_size must be >= 1, got {request.pipeline_parallel_size}",
            field="pipeline_parallel_size",
        )
    if request.pipeline_parallel_size is not None and request.pipeline_parallel_size > arch.num_layers:
        raise PlanningError(
            f"pipeline_parallel_size {request.pipeline_parallel_size} exceeds the model's "
            f"{arch.num_layers} decoder layers (every stage needs one)",
            field="pipeline_parallel_size",
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
    pp: int = 1,
) -> Setting:
    dtype = _serving_dtype(request, arch, fmt, kv)
    kv_dtype_bytes = 1 if kv == "fp8" else DTYPE_BYTES[dtype]
    budget = int(gpu.memory_gib * GIB * request.gpu_memory_utilization)
    stages: list[StageMemory] = []
    for rank, layers in enumerate(pipeline_layers(arch.num_layers, pp)):
        first, last = rank == 0, rank == pp - 1
        # Each stage's workers profile their own shard (Worker.determine_available_memory on every worker).
        weights = resident_bytes_per_gpu(stage_architecture(arch, layers, first=first, last=last), fmt, tp)
        over = overheads(
            arch,
            tp=tp,
            max_num_batched_tokens=batched_tokens,
            max_num_seqs=request.max_num_seqs,
            act_bytes=DTYPE_BYTES[dtype],
            calibration=calibration,
            device=gpu.device,
            pipeline_rank=rank,
            pipeline_size=pp,
        )
        kv_bytes = max(0, budget - weights - over.total - residual)
        layout = (
            kv_layout(arch, tp, kv_dtype_bytes)
            if pp == 1
            else stage_kv_layout(arch, tp, kv_dtype_bytes, layers)
        )
        terms = (("forward", over.forward), ("sampler", over.sampler), ("floor", over.floor))
        stages.append(
            StageMemory(
                rank=rank,
                layers=layers,
                weights=weights,
                activation=over.activation,
                non_torch=over.non_torch,
                cudagraph=over.cudagraph,
                residual=residual,
                terms=terms if pp == 1 else (*terms, ("stage input", over.stage_input)),
                budget=budget,
                capacity=kv_capacity(layout, kv_bytes, max_len, batched_tokens),
                kv_bytes_per_token=layout.kv_bytes_per_token,
                block_bytes=layout.block_bytes,
            )
        )
    return Setting(
        tp=tp,
        pp=pp,
        kv_cache_dtype=kv,
        dtype=dtype,
        stages=tuple(stages),
        # The model-wide KV groups decide what a request needs, whichever stage (kvcache.stage_kv_layout).
        blocks_per_request=kv_layout(arch, tp, kv_dtype_bytes).blocks_per_request(max_len, batched_tokens),
    )


def _vllm_args(
    s: Setting, fmt: WeightFormat, request: PlanRequest, gpu: GPUSpec, max_len: int, batched: int
) -> tuple[str, ...]:
    # On CPU vLLM reads the utilization as a share of all host RAM: the planned pool goes in as bytes.
    memory = (
        f"--kv-cache-memory-bytes={s.kv_bytes}"
        if gpu.device == "cpu"
        else f"--gpu-memory-utilization={request.gpu_memory_utilization:g}"
    )
    args = [
        f"--tensor-parallel-size={s.tp}",
        *([f"--pipeline-parallel-size={s.pp}"] if s.pp > 1 else []),
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
    s: Setting,
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
        pipeline_parallel_size=s.pp,
        pipeline_stages=pipeline_stages(s) if s.pp > 1 else (),
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
        backend=request.backend,
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

    # Across nodes: vLLM's guidance is tensor parallelism inside a node and pipeline stages across nodes, so
    # every stage takes the widest tensor-parallel size one node allows.
    node_tp = candidates[-1]
    stages = request.pipeline_parallel_size
    if stages is not None and stages > request.max_nodes:
        raise PlanningError(
            f"pipeline_parallel_size {stages} needs {stages} nodes of {node_tp}x {gpu.name}, "
            f"max_nodes allows {request.max_nodes}",
            field="pipeline_parallel_size",
        )
    if stages is None:
        single_node, stage_counts = candidates, list(range(2, min(request.max_nodes, arch.num_layers) + 1))
    else:
        single_node, stage_counts = (candidates, []) if stages == 1 else ([], [stages])

    residual = 0 if record is None else _record_residual(arch, fmt, request, gpu, record, calibration)

    def evaluate(tp: int, kv: str, length: int = max_len, pp: int = 1) -> Setting:
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
            pp=pp,
        )

    def emit(s: Setting, fits: bool, reason: str | None) -> ServingPlan:
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

    for tp in single_node:
        for kv in kv_options:
            setting = evaluate(tp, kv)
            if setting.usable_requests >= want:
                return emit(setting, True, None)
    for pp in stage_counts:
        for kv in kv_options:
            setting = evaluate(node_tp, kv, pp=pp)
            if setting.usable_requests >= want:
                return emit(setting, True, None)

    best = evaluate(node_tp, kv_options[-1], pp=stage_counts[-1] if stage_counts else 1)
    return emit(best, False, _refusal(best, want, gpu, request, max_len, kv_options, arch, fmt, evaluate))


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
    best: Setting,
    want: int,
    gpu: GPUSpec,
    request: PlanRequest,
    max_len: int,
    kv_options: list[str],
    arch: Architecture,
    fmt: WeightFormat,
    evaluate: Any,
) -> str:
    stage = best.neediest(want)
    needed = stage.needed_bytes(want, best.blocks_per_request)
    target = f"{want} sequences of {max_len} tokens" if want > 1 else f"one sequence of {max_len} tokens"
    at = f"tensor-parallel-size {best.tp}"
    if best.pp > 1:
        at += (
            f" x pipeline-parallel-size {best.pp} (stage {stage.rank}, "
            f"layers {stage.layers.start}-{stage.layers.stop - 1})"
        )
    parts = [
        f"needs {needed / GIB:.1f} GiB per GPU at {at} with {best.kv_cache_dtype} KV cache "
        f"(weights {stage.weights / GIB:.1f} + overheads {(stage.non_kv - stage.weights) / GIB:.1f} + KV for {target} "
        f"{(needed - stage.non_kv) / GIB:.1f}), GPU {gpu.name} has {best.budget / GIB:.1f} "
        f"({gpu.memory_gib:g} x {request.gpu_memory_utilization:g})"
    ]
    suggestions: list[str] = []
    larger = (
        [t for t in TP_CANDIDATES if t > best.tp and not tp_problems(arch, fmt, t)] if best.pp == 1 else []
    )
    for tp in larger:
        if any(evaluate(tp, kv).usable_requests >= want for kv in kv_options):
            where = "" if tp <= gpu.gpus_per_node else f" (more than the {gpu.gpus_per_node} GPUs per node)"
            suggestions.append(f"tensor-parallel-size {tp} would fit{where}")
            break
    if request.pipeline_parallel_size is None and gpu.device == "gpu":
        deepest = min(arch.num_layers, MAX_PIPELINE_STAGES)
        for pp in range(max(2, request.max_nodes + 1), deepest + 1):
            if any(evaluate(best.tp, kv, pp=pp).usable_requests >= want for kv in kv_options):
                suggestions.append(
                    f"needs {pp} nodes of {best.tp}x {gpu.name} (tensor-parallel-size {best.tp} x "
                    f"pipeline-parallel-size {pp}), max_nodes allows {request.max_nodes}"
                )
                break
    if want > 1 and best.usable_requests >= 1:
        suggestions.append(f"{best.usable_requests} concurrent sequences of {max_len} tokens fit")
    lo, hi = 0, max_len // BLOCK_SIZE
    while lo < hi:  # the largest multiple of the block size that fits the concurrency target
        mid = (lo + hi + 1) // 2
        if evaluate(best.tp, best.kv_cache_dtype, mid * BLOCK_SIZE, best.pp).usable_requests >= want:
            lo = mid
        else:
            hi = mid - 1
    if lo:
        stages = f" x pipeline-parallel-size {best.pp}" if best.pp > 1 else ""
        suggestions.append(
            f"max-model-len {lo * BLOCK_SIZE} would fit at tensor-parallel-size {best.tp}{stages}"
        )
    elif stage.non_kv >= best.budget:
        suggestions.append(f"weights and overheads alone need {stage.non_kv / GIB:.1f} GiB per GPU")
    return "; ".join(parts + suggestions)


def predict_checkpoint_bytes(
    config: Mapping[str, Any],
    *,
    quantization: str,
    bits: int | None = None,
    group_size: int | None = None,
    symmetric: bool | None = None,
    dtype: str = "auto",
    backend: str = "llm-compressor",
) -> int:
    """Tensor bytes of the safetensors files the given method and backend write."""
    arch = parse_architecture(config)
    fmt = resolve_format(
        arch,
        quantization=quantization,
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        backend=backend,
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
