"""The ``GPUClass`` resource (cluster-scoped, like StorageClass): one kind of GPU node in the fleet."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from qmo.api.base import ApiModel, PassThroughObject


class GPUClassSpec(ApiModel):
    """A kind of GPU the planner can size for, and how to reach its nodes."""

    memory_gib: float = Field(gt=0, le=4096, alias="memoryGiB")
    """Memory of one GPU as CUDA reports it (torch.cuda.mem_get_info total), e.g. 79.18 for H100 80GB HBM3."""
    gpus_per_node: int = Field(default=8, ge=1, le=64)
    """GPUs on one node: the largest tensor-parallel size a replica may use."""
    resource_name: str = "nvidia.com/gpu"
    """Extended resource that pods request (not used by device cpu)."""
    device: Literal["gpu", "cpu"] = "gpu"
    """cpu: vLLM's CPU backend on the class's nodes. memoryGiB is then the host memory one replica may use
    (its pods request it as memory), one replica is one process (gpusPerNode and fp8 are ignored), the KV
    pool is passed to vLLM as --kv-cache-memory-bytes, the image defaults to vLLM's CPU image, and
    quantize Jobs run on these nodes without a GPU."""
    fp8: bool = False
    """Hardware fp8 support (Hopper, Ada, Blackwell, MI300): allows fp8 KV cache and fp8 weights."""
    interconnect: Literal["nvlink", "pcie", "xgmi"] = "pcie"
    """GPU-to-GPU link, which matters for tensor parallelism."""
    product: str | None = None
    """Product name as nvidia.com/gpu.product labels it, for humans and dashboards."""
    price_per_hour: float | None = Field(default=None, ge=0)
    """Price of one GPU-hour, to report the cost of a plan."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Labels of the nodes that have this GPU."""
    tolerations: list[PassThroughObject] = Field(default_factory=list)
    """Tolerations the pods need on those nodes."""
