"""Which GPU a model is planned for: a GPUClass object in the cluster, or the planner's built-in catalog."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from pydantic import ValidationError

from qmo.api.gpuclass import GPUClassSpec
from qmo.desired.common import Placement, ResolvedGPU
from qmo.planner import BUILTIN_GPUS, GPUSpec
from qmo.reconcile.kube import ApiError, Kube, Manifest, label_selector

log = logging.getLogger(__name__)

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


def from_gpu_class(name: str, spec: GPUClassSpec) -> ResolvedGPU:
    return ResolvedGPU(
        spec=GPUSpec(
            name=name,
            memory_gib=spec.memory_gib,
            # One replica is one CPU process: no tensor parallelism, no fp8 KV cache.
            gpus_per_node=1 if spec.device == "cpu" else spec.gpus_per_node,
            fp8=spec.fp8 and spec.device == "gpu",
            interconnect=spec.interconnect,
            device=spec.device,
        ),
        placement=Placement(
            device=spec.device,
            resource_name=spec.resource_name,
            node_selector=dict(spec.node_selector),
            tolerations=tuple(spec.tolerations),
        ),
        price_per_hour=spec.price_per_hour,
    )


def largest_node_gpus(nodes: Iterable[Manifest], resource_name: str) -> int | None:
    """The most GPUs any one of these nodes can give a pod (its allocatable count); None without such nodes."""
    counts = (
        str((node.get("status") or {}).get("allocatable", {}).get(resource_name, "0")) for node in nodes
    )
    return max((int(count) for count in counts if count.isdigit()), default=0) or None


class NodeShapes:
    """How many GPUs the cluster's nodes of a placement have, read from the Nodes at most every ``ttl`` s.

    A GPU class may not know the machine: the catalog (and the chart's classes) assume 8 per node, and a
    fleet of single-L4 nodes would get a tensor-parallel size no node can hold (a pod Pending forever).
    The nodes say how big a replica can be. Read once per ``ttl`` per selector, so a fleet of models costs
    one list: reconciles that arrive while that list is in flight wait for it rather than send their own.
    """

    def __init__(self, kube: Kube, *, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.ttl = ttl
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int | None]] = {}
        self._in_flight: dict[tuple[str, str], asyncio.Task[int | None]] = {}
        self._forbidden = False

    async def largest(self, placement: Placement) -> int | None:
        if self._forbidden:
            return None
        selector = label_selector(placement.node_selector)
        cache_key = (selector, placement.resource_name)
        seen = self._seen.get(cache_key)
        if seen is not None and self.clock() - seen[0] < self.ttl:
            return seen[1]
        listing = self._in_flight.get(cache_key)
        if listing is None:
            listing = asyncio.ensure_future(self._list(cache_key))
            self._in_flight[cache_key] = listing
            listing.add_done_callback(lambda done: self._finished(cache_key, done))
        # Shielded: one reconcile cancelled (the operator stopping, a handler timeout) must not cancel
        # the list the others are waiting on.
        return await asyncio.shield(listing)

    def _finished(self, cache_key: tuple[str, str], listing: asyncio.Task[int | None]) -> None:
        self._in_flight.pop(cache_key, None)
        if not listing.cancelled():
            listing.exception()  # marks a failure as seen: its waiters (if any are left) raise it

    async def _list(self, cache_key: tuple[str, str]) -> int | None:
        selector, resource_name = cache_key
        try:
            nodes = await self.kube.list("Node", None, label_selector=selector)
        except ApiError as error:
            if error.status != 403:
                raise  # transient: retry the reconcile rather than plan once without the nodes
            # Not granted: plan the classes as declared, and say so once, worded apart from permission
            # trouble, since it is a setting the chart offers (rbac.readNodes=false).
            log.info("nodes are not listable (rbac.readNodes=false): GPU classes are planned as declared")
            self._forbidden = True
            return None
        largest = largest_node_gpus(nodes, resource_name)
        self._seen[cache_key] = (self.clock(), largest)
        return largest


async def resolve_gpu(kube: Kube, name: str, node_shapes: NodeShapes | None = None) -> ResolvedGPU:
    """The cluster's GPUClass wins over the built-in catalog entry of the same name.

    Either way, GPUs per node are capped at what the cluster's matching nodes offer: a replica must fit on
    one node, and the nodes are the truth (the shipped classes, like the catalog, say 8). With no matching
    node at all the class stands as declared, since an autoscaler may be about to make one.
    """
    resolved = await _declared_gpu(kube, name)
    largest = await node_shapes.largest(resolved.placement) if node_shapes is not None else None
    if largest is not None and largest < resolved.spec.gpus_per_node:
        resolved = replace(resolved, spec=replace(resolved.spec, gpus_per_node=largest))
    return resolved


async def _declared_gpu(kube: Kube, name: str) -> ResolvedGPU:
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
