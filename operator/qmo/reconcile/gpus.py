"""Which GPU a model is planned for: a GPUClass object in the cluster, or the planner's built-in catalog."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from qmo.api.gpuclass import GPUClassSpec
from qmo.desired.common import Placement
from qmo.planner import BUILTIN_GPUS, GPUSpec
from qmo.reconcile.kube import Kube

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

# What NVIDIA's GPU feature discovery labels nodes with, so built-in classes still land on the right GPU.
BUILTIN_PRODUCT_LABELS: dict[str, str] = {
    "h100-80gb": "NVIDIA-H100-80GB-HBM3",
    "h200": "NVIDIA-H200",
    "a100-40gb": "NVIDIA-A100-SXM4-40GB",
    "a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "l40s": "NVIDIA-L40S",
    "l4": "NVIDIA-L4",
    "a10g": "NVIDIA-A10G",
    "rtx-4090": "NVIDIA-GeForce-RTX-4090",
    "b200": "NVIDIA-B200",
}


class UnknownGPUClass(Exception):
    pass


@dataclass(frozen=True)
class ResolvedGPU:
    spec: GPUSpec
    placement: Placement
    price_per_hour: float | None = None


def from_gpu_class(name: str, spec: GPUClassSpec) -> ResolvedGPU:
    return ResolvedGPU(
        spec=GPUSpec(
            name=name,
            memory_gib=spec.memory_gib,
            gpus_per_node=spec.gpus_per_node,
            fp8=spec.fp8,
            interconnect=spec.interconnect,
        ),
        placement=Placement(
            resource_name=spec.resource_name,
            node_selector=dict(spec.node_selector),
            tolerations=tuple(spec.tolerations),
        ),
        price_per_hour=spec.price_per_hour,
    )


async def resolve_gpu(kube: Kube, name: str) -> ResolvedGPU:
    """The cluster's GPUClass wins over the built-in catalog entry of the same name."""
    body = await kube.get("GPUClass", None, name)
    if body is not None:
        try:
            return from_gpu_class(name, GPUClassSpec.model_validate(body.get("spec", {})))
        except ValidationError as error:
            raise UnknownGPUClass(f"GPUClass {name} is invalid: {error.errors()[0]['msg']}") from error
    builtin = BUILTIN_GPUS.get(name)
    if builtin is None:
        raise UnknownGPUClass(
            f"spec.serving.gpuClass {name!r} is neither a GPUClass in the cluster nor a built-in GPU"
            f" ({', '.join(sorted(BUILTIN_GPUS))})"
        )
    product = BUILTIN_PRODUCT_LABELS.get(name)
    return ResolvedGPU(
        spec=builtin,
        placement=Placement(
            node_selector={"nvidia.com/gpu.product": product} if product else {},
            tolerations=(GPU_TOLERATION,),
        ),
    )
