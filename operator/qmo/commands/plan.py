"""``qmo plan``: plan GPU memory for a model's config.json and print the vLLM arguments.

Exit status: 0 when it fits; 1 when it does not, or when the planner refuses the request (an illegal
tensor-parallel size, max_model_len above the model's maximum, an unknown GPU class or quantization):
``--output json`` then prints ``{"fits": false, "reason": ..., "field": ...}``; 2 for usage errors (bad
flags, an unreadable or malformed config.json or calibration file), as text on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from qmo.api.backends import BACKENDS
from qmo.planner import GPUSpec, PlanningError, PlanRequest, ServingPlan, gpu_by_name, plan
from qmo.planner.architecture import parse_architecture
from qmo.planner.calibration import CalibrationRecord, load_records, select_record
from qmo.planner.scheduler import max_num_seqs_for, max_num_seqs_reason

QUANTIZATIONS = ("none", "awq", "gptq", "w8a8", "fp8", "fp8-dynamic", "nvfp4", "bitsandbytes-nf4")


class _UsageError(Exception):
    """Bad input that argparse itself cannot see (files, combinations of flags)."""


def _auto_or_positive(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {value!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {value!r}")
    return size


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, type=Path, help="a config.json, or a directory holding one"
    )
    parser.add_argument(
        "--quantization",
        default="none",
        metavar="{" + ",".join(QUANTIZATIONS) + "}",
        help="quantization method (a quantization_config in the config wins: the model is pre-quantized)",
    )
    parser.add_argument(
        "--backend",
        default="llm-compressor",
        choices=tuple(BACKENDS),
        help="who quantizes: llm-compressor writes compressed-tensors, the others the native awq/gptq format",
    )
    parser.add_argument("--bits", type=_positive_int, help="weight bits for awq/gptq (default 4)")
    parser.add_argument(
        "--group-size", type=int, help="group size for awq/gptq (default 128; -1 = per channel)"
    )
    parser.add_argument("--kv-cache-dtype", choices=("auto", "fp8", "bfloat16", "float16"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float16"), default="auto")
    gpu = parser.add_mutually_exclusive_group()
    gpu.add_argument("--gpu-class", help="a built-in GPU class (default h100-80gb), e.g. l4, a100-80gb, h200")
    gpu.add_argument(
        "--gpu-memory-gib", type=_positive_float, help="memory of one GPU as CUDA reports it, in GiB"
    )
    parser.add_argument(
        "--gpus-per-node", type=_positive_int, help="the largest tensor-parallel size allowed"
    )
    parser.add_argument(
        "--fp8", action=argparse.BooleanOptionalAction, default=None, help="hardware fp8 support"
    )
    parser.add_argument("--gpu-memory-utilization", type=_positive_float, default=0.9)
    parser.add_argument(
        "--max-model-len", type=_positive_int, help="default: the model's max_position_embeddings"
    )
    parser.add_argument(
        "--max-num-seqs",
        type=_positive_int,
        help="vLLM's scheduler ceiling (default: vLLM's 256, raised to --concurrency, never lowered to it)",
    )
    parser.add_argument(
        "--max-num-batched-tokens", type=_positive_int, help="default: vLLM's rule for the GPU"
    )
    parser.add_argument(
        "--concurrency", type=_positive_int, help="concurrent sequences of max-model-len to hold"
    )
    parser.add_argument(
        "--tensor-parallel-size",
        type=_auto_or_positive,
        default=None,
        metavar="{auto,N}",
        help="auto searches the smallest size that fits; N reports that configuration",
    )
    parser.add_argument(
        "--max-nodes",
        type=_positive_int,
        default=1,
        help="nodes one replica may span (default 1); what no single node holds is planned as pipeline "
        "stages, one per node, each at the node's tensor-parallel size",
    )
    parser.add_argument(
        "--pipeline-parallel-size",
        type=_auto_or_positive,
        default=None,
        metavar="{auto,N}",
        help="auto takes one node if it fits, else the fewest nodes up to --max-nodes; N reports that many "
        "stages (needs --max-nodes >= N)",
    )
    parser.add_argument(
        "--vllm-image",
        help="the serving image; its tag selects the planner's calibration (default: the calibrated vLLM)",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        help="a JSON file of observed KV pools (docs/planner.md); the record for this GPU class, vLLM "
        "version and model corrects the plan",
    )
    parser.add_argument(
        "--model-name",
        help="the model a calibration record names (default: the config's _name_or_path, else its folder)",
    )
    parser.add_argument("--output", choices=("table", "json"), default="table")


def _load_config(path: Path) -> dict[str, Any]:
    file = path / "config.json" if path.is_dir() else path
    try:
        text = file.read_text()
    except OSError as error:
        raise _UsageError(f"--config: cannot read {file}: {error.strerror or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise _UsageError(f"--config: {file} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise _UsageError(f"--config: {file} must hold a JSON object")
    return data


def _gpu(args: argparse.Namespace) -> GPUSpec:
    if args.gpu_memory_gib is not None:
        return GPUSpec(
            name=f"{args.gpu_memory_gib:g}gib",
            memory_gib=args.gpu_memory_gib,
            gpus_per_node=args.gpus_per_node or 8,
            fp8=bool(args.fp8),
        )
    base = gpu_by_name(args.gpu_class or "h100-80gb")
    return GPUSpec(
        name=base.name,
        memory_gib=base.memory_gib,
        gpus_per_node=args.gpus_per_node or base.gpus_per_node,
        fp8=base.fp8 if args.fp8 is None else args.fp8,
        interconnect=base.interconnect,
    )


def _records(path: Path | None) -> tuple[CalibrationRecord, ...]:
    if path is None:
        return ()
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise _UsageError(f"--calibration: cannot read {path}: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise _UsageError(f"--calibration: {path} is not valid JSON: {error}") from None
    try:
        return load_records(data)
    except PlanningError as error:
        raise _UsageError(f"--calibration: {path}: {error}") from None


def _model_name(args: argparse.Namespace, config: dict[str, Any]) -> str:
    if args.model_name:
        return str(args.model_name)
    name = config.get("_name_or_path")
    if isinstance(name, str) and name:
        return name
    path: Path = args.config
    return (path if path.is_dir() else path.parent).resolve().name


def _refuse(args: argparse.Namespace, error: PlanningError) -> int:
    """A request the planner refuses: exit 1, as JSON for tools or as text for people."""
    if args.output == "json":
        print(json.dumps({"fits": False, "reason": str(error), "field": error.field}, sort_keys=True))
    else:
        where = f" ({error.field})" if error.field else ""
        print(f"qmo plan: REFUSED{where}\n  {error}")
    return 1


def run(args: argparse.Namespace) -> int:
    try:
        config = _load_config(args.config)
        records = _records(args.calibration)
        if args.gpu_memory_utilization > 1:
            raise _UsageError(
                f"--gpu-memory-utilization must be in (0, 1], got {args.gpu_memory_utilization}"
            )
        try:
            parse_architecture(config)
        except PlanningError as error:
            raise _UsageError(f"--config: {error}") from None
    except _UsageError as error:
        print(f"qmo plan: error: {error}", file=sys.stderr)
        return 2
    try:
        gpu = _gpu(args)
        request = PlanRequest(
            quantization=args.quantization,
            backend=args.backend,
            bits=args.bits,
            group_size=args.group_size,
            kv_cache_dtype=args.kv_cache_dtype,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            max_num_seqs=max_num_seqs_for(max_num_seqs=args.max_num_seqs, concurrency=args.concurrency),
            max_num_batched_tokens=args.max_num_batched_tokens,
            gpu_memory_utilization=args.gpu_memory_utilization,
            tensor_parallel_size=args.tensor_parallel_size,
            concurrency=args.concurrency,
            vllm_image=args.vllm_image,
            max_nodes=args.max_nodes,
            pipeline_parallel_size=args.pipeline_parallel_size,
        )
        record = select_record(
            records, gpu=gpu.name, vllm_version=request.vllm_version, model=_model_name(args, config)
        )
        result = plan(config, request, gpu, record=record)
    except PlanningError as error:
        return _refuse(args, error)
    if args.output == "json":
        print(json.dumps(result.to_dict(), sort_keys=True))
    else:
        reason = max_num_seqs_reason(max_num_seqs=args.max_num_seqs, concurrency=args.concurrency)
        print(render_table(result, max_num_seqs_reason=reason))
    return 0 if result.fits else 1


def render_table(result: ServingPlan, *, max_num_seqs_reason: str | None = None) -> str:
    """The plan for people: verdict, the per-GPU memory breakdown, and the vLLM arguments; the reason
    for --max-num-seqs (which concurrency does not set) where the caller knows it."""
    verdict = "FITS" if result.fits else "DOES NOT FIT"
    pp = result.pipeline_parallel_size
    gpus = f"{result.gpu} ({result.gpu_memory_gib:g} GiB) x {result.gpus}"
    rows = [
        ("GPU", gpus if pp == 1 else f"{gpus} ({result.tensor_parallel_size} per node x {pp} nodes)"),
        ("weights", result.weight_format),
        ("tensor-parallel-size", str(result.tensor_parallel_size)),
        *(
            [("pipeline-parallel-size", f"{pp} (decoder layers per stage: {_stage_layers(result)})")]
            if pp > 1
            else []
        ),
        ("dtype / KV cache dtype", f"{result.dtype} / {result.kv_cache_dtype}"),
        ("max-model-len", f"{result.max_model_len:,}"),
        ("KV cache tokens", f"{result.kv_cache_tokens:,} ({result.kv_cache_blocks:,} blocks)"),
        ("max concurrency", f"{result.max_concurrency:.2f} x {result.max_model_len:,} tokens"),
        (
            "max-num-seqs",
            f"{result.max_num_seqs}" + (f" ({max_num_seqs_reason})" if max_num_seqs_reason else ""),
        ),
        ("checkpoint size", f"{result.checkpoint_bytes / 2**30:.2f} GiB"),
    ]
    lines = [f"qmo plan: {verdict}"]
    if result.reason:
        lines.append(f"  {result.reason}")
    if result.calibration_warning:
        lines.append(f"  warning: {result.calibration_warning}")
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    lines += _per_gpu_lines(result) if pp == 1 else _per_stage_lines(result)
    lines.append(f"  calibration: vLLM {result.calibration_version} (planned for vLLM {result.vllm_version})")
    lines.append("")
    lines.append("  vllm serve <model> " + " ".join(result.vllm_args))
    return "\n".join(lines)


def _stage_layers(result: ServingPlan) -> str:
    return ", ".join(stage.layers for stage in result.pipeline_stages)


def _per_gpu_lines(result: ServingPlan) -> list[str]:
    lines: list[str] = []
    used = (
        result.weights_gib_per_gpu
        + result.activation_gib_per_gpu
        + result.non_torch_gib_per_gpu
        + result.cudagraph_gib_per_gpu
        + result.kv_cache_gib_per_gpu
    )
    lines.append("")
    lines.append(
        f"  per GPU (GiB)     budget {result.budget_gib_per_gpu:7.2f} = {result.gpu_memory_gib:g} x {result.gpu_memory_utilization:g}"
    )
    for name, value in (
        ("weights", result.weights_gib_per_gpu),
        ("activations", result.activation_gib_per_gpu),
        ("non-torch", result.non_torch_gib_per_gpu),
        ("CUDA graphs", result.cudagraph_gib_per_gpu),
        ("KV cache", result.kv_cache_gib_per_gpu),
    ):
        lines.append(f"    {name:<22} {value:7.2f}")
    residual = result.calibration_residual_gib_per_gpu
    if residual is not None:
        used += residual
        lines.append(f"    {'calibration residual':<22} {residual:7.2f}")
    lines.append(f"    {'total':<22} {used:7.2f}")
    terms = ", ".join(f"{name} {value:.2f}" for name, value in result.overhead_terms_gib.items())
    lines.append(f"  activations = the profile run's peak, max({terms})")
    return lines


def _per_stage_lines(result: ServingPlan) -> list[str]:
    """One column per pipeline stage: every GPU of a stage holds the same, the stages differ."""
    stages = result.pipeline_stages
    residual = result.calibration_residual_gib_per_gpu
    head = "".join(f"{f'stage {stage.rank}':>10}" for stage in stages)
    lines = [
        "",
        f"  per GPU (GiB)     budget {result.budget_gib_per_gpu:7.2f} = {result.gpu_memory_gib:g} x {result.gpu_memory_utilization:g}",
        f"    {'':<22}{head}",
        f"    {'decoder layers':<22}" + "".join(f"{stage.layers:>10}" for stage in stages),
    ]
    rows = [
        ("weights", [stage.weights_gib_per_gpu for stage in stages]),
        ("activations", [stage.activation_gib_per_gpu for stage in stages]),
        ("non-torch", [stage.non_torch_gib_per_gpu for stage in stages]),
        ("CUDA graphs", [stage.cudagraph_gib_per_gpu for stage in stages]),
        ("KV cache", [stage.kv_cache_gib_per_gpu for stage in stages]),
    ]
    if residual is not None:
        rows.append(("calibration residual", [residual for _ in stages]))
    totals = [sum(values[i] for _, values in rows) for i in range(len(stages))]
    for name, values in [*rows, ("total", totals)]:
        lines.append(f"    {name:<22}" + "".join(f"{value:10.2f}" for value in values))
    lines.append(
        f"    {'KV blocks with room':<22}" + "".join(f"{stage.kv_cache_blocks_room:>10,}" for stage in stages)
    )
    lines.append(
        "  KV cache: every stage holds the fewest blocks any stage has room for (vLLM's get_kv_cache_configs)"
    )
    for stage in stages:
        terms = dict(stage.overhead_terms_gib)
        stage_input = terms.pop("stage input", 0.0)
        peak = ", ".join(f"{name} {value:.2f}" for name, value in terms.items())
        lines.append(f"  stage {stage.rank} activations = max({peak}) + stage input {stage_input:.2f}")
    return lines
