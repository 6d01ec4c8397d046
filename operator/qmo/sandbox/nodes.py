"""The fake GPU fleet: which nodes a sandbox has and what each one advertises.

Nodes look like the ones NVIDIA's device plugin and GPU feature discovery produce on a real cluster
(``nvidia.com/gpu`` capacity, ``nvidia.com/gpu.product`` / ``.count`` / ``.memory`` labels, the
``nvidia.com/gpu=present:NoSchedule`` taint), so GPUClass selectors and tolerations written for production
work unchanged. kwok manages only nodes carrying the ``kwok.x-k8s.io/node: fake`` annotation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_CLASS_LABEL = "qmo.dev/sandbox-gpu"
# One CPU-only node for system pods (an operator Deployment, webhooks), then the GPU pools.
DEFAULT_FLEET = "cpu:1,h100:4x8,l40s:2x4,l4:4x1"
CPU_NODE_CPUS = 16
CPU_NODE_MEMORY_GIB = 64
FLEET_ENV = "QMO_SANDBOX_NODES"


@dataclass(frozen=True)
class GpuType:
    """One GPU model as GPU feature discovery labels it, and a typical cloud machine that carries it."""

    key: str
    product: str  # nvidia.com/gpu.product
    memory_mib: int  # nvidia.com/gpu.memory, as GFD reports it
    family: str  # nvidia.com/gpu.family
    # Machine shape per GPU, scaled by the node's GPU count: vCPUs and memory of the cloud instance.
    cpus_per_gpu: int
    memory_gib_per_gpu: int
    instance_types: dict[int, str]  # GPUs per node -> instance type


GPU_TYPES: dict[str, GpuType] = {
    gpu.key: gpu
    for gpu in (
        GpuType(
            "h100", "NVIDIA-H100-80GB-HBM3", 81559, "hopper", 24, 256, {8: "p5.48xlarge", 1: "a3-highgpu-1g"}
        ),
        GpuType(
            "a100",
            "NVIDIA-A100-SXM4-80GB",
            81920,
            "ampere",
            12,
            144,
            {8: "p4de.24xlarge", 1: "a2-ultragpu-1g"},
        ),
        GpuType("l40s", "NVIDIA-L40S", 46068, "ada-lovelace", 12, 96, {4: "g6e.12xlarge", 8: "g6e.48xlarge"}),
        GpuType("l4", "NVIDIA-L4", 23034, "ada-lovelace", 4, 16, {1: "g6.xlarge", 4: "g6.12xlarge"}),
        GpuType("a10g", "NVIDIA-A10G", 23028, "ampere", 4, 16, {1: "g5.xlarge", 4: "g5.12xlarge"}),
    )
}


@dataclass(frozen=True)
class NodeGroup:
    gpu: GpuType | None  # None: a CPU-only node
    nodes: int
    gpus_per_node: int

    @property
    def spec(self) -> str:
        return f"{self.gpu.key}:{self.nodes}x{self.gpus_per_node}" if self.gpu else f"cpu:{self.nodes}"

    def node_names(self) -> list[str]:
        prefix = f"gpu-{self.gpu.key}" if self.gpu else "cpu"
        return [f"{prefix}-{index}" for index in range(self.nodes)]


class FleetSpecError(ValueError):
    """A fleet spec like ``h100:4x8,l4:2x1`` could not be parsed."""


def parse_fleet(spec: str) -> list[NodeGroup]:
    """Parse ``<gpu>:<nodes>x<gpus per node>,...`` and ``cpu:<nodes>`` (e.g. ``cpu:1,h100:4x8,l4:4x1``)."""
    groups: list[NodeGroup] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, _, shape = item.partition(":")
        if key.strip().lower() == "cpu":
            if not shape.strip().isdigit() or int(shape) < 1:
                raise FleetSpecError(f"{item!r}: expected cpu:<nodes>, e.g. cpu:1")
            groups.append(NodeGroup(None, int(shape), 0))
            continue
        gpu = GPU_TYPES.get(key.strip().lower())
        if gpu is None:
            known = ", ".join(sorted(GPU_TYPES))
            raise FleetSpecError(f"unknown GPU type {key!r} in {spec!r}; known: {known}")
        nodes_text, _, gpus_text = shape.partition("x")
        try:
            nodes, gpus_per_node = int(nodes_text), int(gpus_text)
        except ValueError:
            raise FleetSpecError(f"{item!r}: expected <gpu>:<nodes>x<gpus per node>, e.g. h100:4x8") from None
        if nodes < 1 or gpus_per_node < 1:
            raise FleetSpecError(f"{item!r}: node and GPU counts must be at least 1")
        groups.append(NodeGroup(gpu, nodes, gpus_per_node))
    if not groups:
        raise FleetSpecError("the fleet spec is empty; for example: " + DEFAULT_FLEET)
    return groups


def default_fleet() -> list[NodeGroup]:
    return parse_fleet(os.environ.get(FLEET_ENV, DEFAULT_FLEET))


def node_manifest(group: NodeGroup, name: str) -> dict[str, Any]:
    """A Node object with its status filled in: kwok keeps the capacity it finds."""
    gpu, count = group.gpu, group.gpus_per_node
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "type": "kwok",
    }
    taints: list[dict[str, str]] = []
    if gpu is None:
        cpus, memory_gib = CPU_NODE_CPUS, CPU_NODE_MEMORY_GIB
        labels.update({"node.kubernetes.io/instance-type": "m7i.4xlarge", GPU_CLASS_LABEL: "none"})
    else:
        cpus, memory_gib = gpu.cpus_per_gpu * count, gpu.memory_gib_per_gpu * count
        labels.update(
            {
                "node.kubernetes.io/instance-type": gpu.instance_types.get(
                    count, f"sandbox-{gpu.key}-x{count}"
                ),
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": gpu.product,
                "nvidia.com/gpu.count": str(count),
                "nvidia.com/gpu.memory": str(gpu.memory_mib),
                "nvidia.com/gpu.family": gpu.family,
                GPU_CLASS_LABEL: gpu.key,
            }
        )
        taints.append({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
    resources = {"cpu": str(cpus), "memory": f"{memory_gib}Gi", "ephemeral-storage": "1Ti", "pods": "110"}
    if gpu is not None:
        resources[GPU_RESOURCE] = str(count)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": labels,
        },
        "spec": {"taints": taints},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "qmo sandbox (kwok)",
            },
        },
    }


def fleet_manifests(groups: list[NodeGroup]) -> list[dict[str, Any]]:
    return [node_manifest(group, name) for group in groups for name in group.node_names()]
