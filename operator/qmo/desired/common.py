"""Pieces every builder shares: the restricted pod security context, placement, owner references."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qmo.planner.gpus import GPUSpec

Manifest = dict[str, Any]

# Non-root, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp: the `restricted`
# Pod Security level, so qmo's pods run in namespaces that enforce it.
RESTRICTED_POD_SECURITY: Manifest = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER_SECURITY: Manifest = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
}


@dataclass
class Event:
    """A Kubernetes Event a decision asks for on the object it decided about."""

    type: str  # Normal | Warning
    reason: str
    message: str


def label_selector(labels: Mapping[str, str]) -> str:
    """Labels as the API's labelSelector parameter spells an equality match (sorted: one spelling)."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


@dataclass(frozen=True)
class Placement:
    """Where GPU pods go: the GPUClass's nodes, plus what the user added on the resource."""

    resource_name: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Manifest, ...] = ()
    device: str = "gpu"
    """gpu, or cpu (the GPUClass's device): no GPU is requested."""

    def merged(self, node_selector: dict[str, str], tolerations: list[Manifest]) -> Placement:
        extra = tuple(t for t in tolerations if t not in self.tolerations)
        return Placement(
            device=self.device,
            resource_name=self.resource_name,
            node_selector={**self.node_selector, **node_selector},
            tolerations=self.tolerations + extra,
        )


@dataclass(frozen=True)
class ResolvedGPU:
    """A model's GPU class as planning and placement use it (built-in catalog entry or GPUClass)."""

    spec: GPUSpec
    placement: Placement
    price_per_hour: float | None = None


@dataclass(frozen=True)
class Owner:
    """The object that owns a child, for its ownerReference."""

    api_version: str
    kind: str
    name: str
    uid: str

    def reference(self, *, controller: bool) -> Manifest:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": controller,
            "blockOwnerDeletion": controller,
        }


def gpu_resources(base: Manifest | None, *, resource_name: str, gpus: int) -> Manifest:
    """Container resources: the user's CPU/memory with the planned GPU count as request and limit."""
    requests = dict((base or {}).get("requests", {}))
    limits = dict((base or {}).get("limits", {}))
    if gpus > 0:
        requests[resource_name] = str(gpus)
        limits[resource_name] = str(gpus)
    resources: Manifest = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def human_bytes(size: int) -> str:
    """Bytes as a person reads them, in Kubernetes' binary units: 5.33Gi, 812Mi, 96Ki, 512."""
    value, unit = float(size), ""
    for next_unit in ("Ki", "Mi", "Gi", "Ti", "Pi"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    if not unit:
        return str(size)
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{digits}f}{unit}"
