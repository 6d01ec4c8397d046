"""Planner accuracy against vLLM measurements: predicted vs measured weights, KV-cache GiB and tokens.

The points are DESIGN §6 (vLLM 0.25.1, one H100 80GB HBM3, CUDA total 79.18 GiB, block 16, CUDA graphs
on). Targets: KV tokens within 1 %, weights within 0.1 GiB. Run: ``.venv/bin/python benchmarks/planner_accuracy.py``
(exit 1 when a target is missed).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmo.planner import PlanRequest, gpu_by_name, plan

CONFIGS = Path(__file__).resolve().parent.parent / "tests" / "unit" / "configs"
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


@dataclass(frozen=True)
class Measurement:
    name: str
    config: str
    quantization_config: dict[str, Any] | None
    request: PlanRequest
    weights_gib: float
    kv_gib: float
    blocks: int
    kv_tokens: int


def _request(max_model_len: int) -> PlanRequest:
    return PlanRequest(
        max_model_len=max_model_len,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        gpu_memory_utilization=0.9,
        tensor_parallel_size=1,
    )


MEASUREMENTS = (
    Measurement("Llama-3.1-8B bf16", "llama-3.1-8b.json", None, _request(8192), 15.00, 54.93, 28123, 449_968),
    Measurement(
        "Llama-3.1-8B AWQ g128 (fp16)", "llama-3.1-8b.json", AWQ, _request(8192), 5.49, 64.44, 32995, 527_920
    ),
    Measurement(
        "Mixtral-8x7B AWQ g128 (fp16)",
        "mixtral-8x7b.json",
        AWQ,
        _request(32768),
        23.04,
        45.73,
        23415,
        374_640,
    ),
)


def main() -> int:
    gpu = gpu_by_name("h100-80gb")
    ok = True
    header = f"{'model':32} {'weights GiB':>19} {'KV GiB':>15} {'KV tokens':>21} {'error':>8}"
    print(header)
    print(f"{'':32} {'pred':>9} {'meas':>9} {'pred':>7} {'meas':>7} {'pred':>10} {'meas':>10} {'tokens':>8}")
    for m in MEASUREMENTS:
        config = json.loads((CONFIGS / m.config).read_text())
        if m.quantization_config is not None:
            config = {**config, "quantization_config": m.quantization_config, "torch_dtype": "float16"}
        result = plan(config, m.request, gpu)
        error = (result.kv_cache_tokens - m.kv_tokens) / m.kv_tokens
        weights_miss = abs(result.weights_gib_per_gpu - m.weights_gib)
        ok = ok and abs(error) <= 0.01 and weights_miss <= 0.1
        print(
            f"{m.name:32} {result.weights_gib_per_gpu:9.2f} {m.weights_gib:9.2f} {result.kv_cache_gib_per_gpu:7.2f} "
            f"{m.kv_gib:7.2f} {result.kv_cache_tokens:10,} {m.kv_tokens:10,} {error:+8.2%}"
        )
        print(
            f"{'':32} overheads: activation {result.activation_gib_per_gpu:.3f}, non-torch "
            f"{result.non_torch_gib_per_gpu:.3f}, CUDA graphs {result.cudagraph_gib_per_gpu:.3f} GiB"
        )
    print("targets met" if ok else "TARGETS MISSED (KV tokens within 1 %, weights within 0.1 GiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
