"""GPUs per node come from the nodes when the cluster has any for the class; the scheduler's "why Pending"."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qmo.api.gpuclass import GPUClassSpec
from qmo.desired.common import Placement
from qmo.desired.jobs import unschedulable_message
from qmo.reconcile.gpus import NodeShapes, from_gpu_class, largest_node_gpus, resolve_gpu
from qmo.reconcile.kube import ApiError


def node(gpus: str | None, resource: str = "nvidia.com/gpu") -> dict[str, Any]:
    return {"status": {"allocatable": {"cpu": "8", **({resource: gpus} if gpus is not None else {})}}}


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        ([], None),  # no node of the class yet: the autoscaler may make one, the class stands
        ([node(None)], None),  # a CPU node matched the selector: it says nothing about GPUs
        ([node("1"), node("1")], 1),
        ([node("1"), node("4"), node("0")], 4),
        ([node("8", resource="amd.com/gpu")], None),  # another resource than the class asks for
    ],
)
def test_largest_node_gpus(nodes: list[dict[str, Any]], expected: int | None) -> None:
    assert largest_node_gpus(nodes, "nvidia.com/gpu") == expected


class NodeLister:
    """The one Kube call NodeShapes makes, answering from a list (or refusing) and counting the calls."""

    def __init__(self, nodes: list[dict[str, Any]], error: ApiError | None = None) -> None:
        self.nodes, self.error, self.selectors = nodes, error, []

    async def list(self, kind: str, namespace: str | None, *, label_selector: str = "") -> list[Any]:
        assert (kind, namespace) == ("Node", None)
        self.selectors.append(label_selector)
        if self.error is not None:
            raise self.error
        return self.nodes


L4 = Placement(node_selector={"nvidia.com/gpu.product": "NVIDIA-L4"})


def test_node_shapes_reads_each_selector_once_per_ttl() -> None:
    now = [0.0]
    lister = NodeLister([node("1")])
    shapes = NodeShapes(lister, ttl=30, clock=lambda: now[0])  # type: ignore[arg-type]

    async def read_twice_then_later() -> list[int | None]:
        first = await shapes.largest(L4)
        again = await shapes.largest(L4)
        now[0] = 31
        lister.nodes = [node("4")]
        return [first, again, await shapes.largest(L4)]

    assert asyncio.run(read_twice_then_later()) == [1, 1, 4]
    assert lister.selectors == ["nvidia.com/gpu.product=NVIDIA-L4"] * 2


class SlowNodeLister(NodeLister):
    """Answers only when released, as a real list of 200 nodes takes a while: reconciles pile up meanwhile."""

    def __init__(self, nodes: list[dict[str, Any]], error: ApiError | None = None) -> None:
        super().__init__(nodes, error)
        self.released = asyncio.Event()

    async def list(self, kind: str, namespace: str | None, *, label_selector: str = "") -> list[Any]:
        await self.released.wait()
        return await super().list(kind, namespace, label_selector=label_selector)


@pytest.mark.parametrize("error", [None, ApiError(503, "ServiceUnavailable", "etcd")])
def test_node_shapes_shares_one_list_among_concurrent_reconciles(error: ApiError | None) -> None:
    # A fleet applied at once starts hundreds of reconciles on a cold cache (and again at every expiry):
    # they must wait on the one list in flight, not each send their own.
    lister = SlowNodeLister([node("1")], error=error)
    shapes = NodeShapes(lister)  # type: ignore[arg-type]

    async def many_at_once() -> list[int | BaseException | None]:
        waiting = [asyncio.ensure_future(shapes.largest(L4)) for _ in range(50)]
        for _ in range(5):
            await asyncio.sleep(0)  # every reconcile has had its chance to send a list of its own
        lister.released.set()
        return await asyncio.gather(*waiting, return_exceptions=True)

    answers = asyncio.run(many_at_once())
    assert len(lister.selectors) == 1
    assert answers == ([1] * 50 if error is None else [error] * 50)
    if error is not None:  # a failed list is not remembered: the retries ask again
        lister.error, lister.released = None, asyncio.Event()
        lister.released.set()
        assert asyncio.run(shapes.largest(L4)) == 1
        assert len(lister.selectors) == 2


def test_node_shapes_without_the_grant_falls_back_to_the_class_for_good() -> None:
    lister = NodeLister([], error=ApiError(403, "Forbidden", "nodes is forbidden"))
    shapes = NodeShapes(lister)  # type: ignore[arg-type]
    assert asyncio.run(shapes.largest(L4)) is None
    assert asyncio.run(shapes.largest(L4)) is None
    assert len(lister.selectors) == 1  # refused once, never asked again


def test_node_shapes_lets_a_transient_error_retry_the_reconcile() -> None:
    # Planning once without the nodes would flip the plan (and roll the Deployment) for a 503.
    shapes = NodeShapes(NodeLister([], error=ApiError(503, "ServiceUnavailable", "etcd")))  # type: ignore[arg-type]
    with pytest.raises(ApiError):
        asyncio.run(shapes.largest(L4))


def pod(*conditions: dict[str, str]) -> dict[str, Any]:
    return {"status": {"conditions": list(conditions)}}


def test_unschedulable_message_is_the_schedulers() -> None:
    waiting = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/11 nodes are available: 4 Insufficient nvidia.com/gpu.",
    }
    running = {"type": "PodScheduled", "status": "True"}
    gated = {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}
    assert unschedulable_message([pod(running), pod(waiting)]) == waiting["message"]
    assert unschedulable_message([pod(running), pod(gated), {}]) is None


class ClassAndNodes(NodeLister):
    def __init__(self, gpu_class: dict[str, Any] | None, nodes: list[dict[str, Any]]) -> None:
        super().__init__(nodes)
        self.gpu_class = gpu_class

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        assert kind == "GPUClass"
        return self.gpu_class


@pytest.mark.parametrize(
    ("gpu_class", "nodes", "expected"),
    [
        (None, [node("1")], 1),  # built-in l4 (8 per node in the catalog) on single-L4 machines
        (None, [], 8),  # no L4 node yet: the catalog stands
        (None, [node("16")], 8),  # never more than the class says
        ({"memoryGiB": 22.03, "gpusPerNode": 4, "nodeSelector": {"pool": "l4"}}, [node("2")], 2),
    ],
)
def test_resolve_gpu_caps_gpus_per_node_at_the_nodes(
    gpu_class: dict[str, Any] | None, nodes: list[dict[str, Any]], expected: int
) -> None:

    kube = ClassAndNodes({"spec": gpu_class} if gpu_class else None, nodes)
    resolved = asyncio.run(resolve_gpu(kube, "l4", NodeShapes(kube)))  # type: ignore[arg-type]
    assert resolved.spec.gpus_per_node == expected
    assert kube.selectors == ["pool=l4" if gpu_class else "nvidia.com/gpu.product=NVIDIA-L4"]


def test_a_cpu_class_is_one_process_per_replica_on_host_memory() -> None:
    spec = GPUClassSpec.model_validate({"memoryGiB": 4, "gpusPerNode": 8, "fp8": True, "device": "cpu"})
    resolved = from_gpu_class("cpu", spec)
    assert (resolved.spec.device, resolved.spec.gpus_per_node, resolved.spec.fp8) == ("cpu", 1, False)
    assert resolved.placement.device == "cpu"
    assert resolved.placement.merged({"extra": "1"}, []).device == "cpu"
