"""The built-in GPU catalog: memory as CUDA reports it (not the marketing number), fp8 support, node shape.

The cluster's ``GPUClass`` resources override these; the catalog lets ``qmo plan`` work with no cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from qmo.planner.errors import PlanningError


@dataclass(frozen=True)
class GPUSpec:
    """One kind of GPU: what the planner needs to size a replica for it."""

    name: str
    memory_gib: float
    """Total memory of one GPU as ``torch.cuda.mem_get_info()`` reports it, in GiB (2**30 bytes)."""
    gpus_per_node: int
    """The largest tensor-parallel size one replica may use."""
    fp8: bool
    """Hardware fp8 (Hopper, Ada, Blackwell, MI300): allows an fp8 KV cache and fp8 weights."""
    interconnect: str = "nvlink"
    device: str = "gpu"
    """gpu, or cpu: vLLM's CPU backend, where memory_gib is the host memory one replica may use and the KV
    pool is passed as bytes (``--kv-cache-memory-bytes``), since vLLM reads utilization as a share of RAM."""

    def __post_init__(self) -> None:
        if self.device not in ("gpu", "cpu"):
            raise PlanningError(f"GPU {self.name!r}: device must be gpu or cpu, got {self.device!r}")
        if not self.memory_gib > 0:
            raise PlanningError(f"GPU {self.name!r}: memory_gib must be positive, got {self.memory_gib}")
        if self.gpus_per_node < 1:
            raise PlanningError(f"GPU {self.name!r}: gpus_per_node must be >= 1, got {self.gpus_per_node}")


# Memory figures are CUDA's total (what vLLM multiplies by gpu_memory_utilization), which is a little
# below the nameplate: e.g. H100 80GB HBM3 reports 79.18 GiB, A100 80GB 79.15, L4 22.03.
BUILTIN_GPUS: Mapping[str, GPUSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            GPUSpec("h100-80gb", 79.18, 8, True, "nvlink"),
            GPUSpec("h200", 139.81, 8, True, "nvlink"),
            GPUSpec("a100-40gb", 39.39, 8, False, "nvlink"),
            GPUSpec("a100-80gb", 79.15, 8, False, "nvlink"),
            GPUSpec("l40s", 44.40, 8, True, "pcie"),
            GPUSpec("l4", 22.03, 8, True, "pcie"),
            GPUSpec("a10g", 22.06, 8, False, "pcie"),
            GPUSpec("rtx-4090", 23.53, 8, True, "pcie"),
            GPUSpec("b200", 178.35, 8, True, "nvlink"),
            GPUSpec("mi300x", 191.98, 8, True, "xgmi"),
        )
    }
)


def gpu_by_name(name: str) -> GPUSpec:
    """The catalog entry for ``name`` (case-insensitive); a PlanningError lists the known names."""
    key = name.strip().lower()
    if key in BUILTIN_GPUS:
        return BUILTIN_GPUS[key]
    raise PlanningError(
        f"unknown GPU class {name!r}; known: {', '.join(sorted(BUILTIN_GPUS))}", field="gpu_class"
    )
