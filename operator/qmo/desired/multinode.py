"""Multi-node serving: each replica is a group of pods, one per node, with one pipeline stage each.

A plan with ``pipeline_parallel_size`` PP > 1 (planner/parallel.py) serves a replica on PP nodes with TP GPUs
each. vLLM 0.25.1 runs that without Ray: its multiprocessing executor spans nodes when every node is started
with ``--nnodes``, ``--node-rank``, ``--master-addr`` and ``--master-port`` (vllm/config/parallel.py). Node
0, the leader, runs the OpenAI server and the engine; the others run ``vllm serve ... --headless``, which in
0.25.1 starts only the node's workers and joins the leader's torch.distributed group
(vllm/entrypoints/cli/serve.py ``run_headless``: "headless workers (for multi-node PP/TP)"). Every node
reads the whole checkpoint path from the cache and loads its own stage.

Two shapes of the same group, chosen by the operator (``multiNode`` in the chart: auto, leaderworkerset,
statefulset):

- a LeaderWorkerSet (leaderworkerset.x-k8s.io/v1; when its CRD is installed): one object for all groups,
  ``size`` = PP; LWS injects ``LWS_LEADER_ADDRESS`` and ``LWS_WORKER_INDEX`` into every pod, restarts a
  whole group when one of its pods fails and rolls groups one at a time;
- core objects only: one StatefulSet per group with PP pods (the ordinal, read from the pod-index label, is
  the node rank) and one headless Service, so pod 0 of each group has a DNS name before it is ready (the
  leader's address the other nodes join).

Either way the model's Service selects only the leaders, a pod never shares a node with another of its
group, and each requests TP GPUs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qmo.api.quantizedmodel import PlanStatus, ServingSpec
from qmo.desired.common import Manifest, Owner, Placement
from qmo.desired.names import LABEL_PREFIX, dns_label
from qmo.desired.serving import (
    VLLM_PORT,
    selector_labels,
    served_model_path,
    serving_labels,
    serving_pod_template,
    vllm_serve_args,
)

MultiNodeShape = Literal["leaderworkerset", "statefulset"]
MULTI_NODE_SETTINGS = ("auto", "leaderworkerset", "statefulset")
"""What an operator may be told (QMO_MULTI_NODE, the chart's multiNode); auto asks the cluster for LWS."""

LWS_GROUP = "leaderworkerset.x-k8s.io"
LWS_VERSION = "v1"
LWS_API_VERSION = f"{LWS_GROUP}/{LWS_VERSION}"
# What LWS labels each group's pods with (a hash per group): the anti-affinity keeps them on distinct nodes.
# LWS's labels use the sigs.k8s.io domain, its API group x-k8s.io.
LWS_GROUP_KEY_LABEL = "leaderworkerset.sigs.k8s.io/group-key"

# vLLM's own default for --master-port, written out so the port is part of the contract, not a default.
MASTER_PORT = 29501
LABEL_NODE_GROUP = f"{LABEL_PREFIX}/node-group"
LABEL_ROLE = f"{LABEL_PREFIX}/role"
# The StatefulSet controller labels each pod with its ordinal (Kubernetes >= 1.28).
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
NODE_RANK_ENV = "QMO_NODE_RANK"
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
# A StatefulSet's pods share one template: the rank decides whether this pod is the leader (the OpenAI
# server) or a headless node. ``$@`` is the container's args, with the rank already in them.
NODE_LAUNCH_SCRIPT = (
    f'if [ "${NODE_RANK_ENV}" = 0 ]; then exec vllm serve "$@"; fi; exec vllm serve "$@" --headless'
)
# Headless nodes serve no HTTP: only the leader's /health says whether the group (all its nodes) is up.
LEADER_HEALTH_SCRIPT = (
    f'[ "${NODE_RANK_ENV}" != 0 ] || exec python3 -c "import urllib.request; '
    f"urllib.request.urlopen('http://127.0.0.1:{VLLM_PORT}/health', timeout=4)\""
)
# StatefulSet and LWS pods carry labels made of their owner's name and a 10-character revision hash: the
# names stay short enough for those labels (63 characters).
GROUP_NAME_LIMIT = 50


def node_group_name(model: str, group: int) -> str:
    """The StatefulSet of one replica group (core-object shape)."""
    return dns_label(model, "vllm", str(group), limit=GROUP_NAME_LIMIT)


def nodes_service_name(model: str) -> str:
    """The headless Service that names every node pod (``<group>-<rank>.<service>``)."""
    return dns_label(model, "vllm-nodes")


def leader_worker_set_name(model: str) -> str:
    return dns_label(model, "vllm", limit=GROUP_NAME_LIMIT)


def leader_address(model: str, namespace: str, group: int) -> str:
    """The DNS name of a group's pod 0 (core-object shape), published before the pod is ready."""
    return f"{node_group_name(model, group)}-0.{nodes_service_name(model)}.{namespace}.svc"


def multi_node_flags(*, nnodes: int, node_rank: str, master_addr: str) -> list[str]:
    """vLLM 0.25.1's flags for one node of a multi-node replica (multiprocessing executor, no Ray)."""
    return [
        "--distributed-executor-backend=mp",
        f"--nnodes={nnodes}",
        f"--node-rank={node_rank}",
        f"--master-addr={master_addr}",
        f"--master-port={MASTER_PORT}",
    ]


def node_serve_args(
    *, model: str, artifact_path: str, plan: PlanStatus, extra_args: Sequence[str], node_flags: list[str]
) -> list[str]:
    """``vllm serve`` args of one node: the planned flags, the node's, then the user's extras (they win)."""
    return vllm_serve_args(
        model_path=served_model_path(artifact_path),
        served_model_name=model,
        host="0.0.0.0",
        port=VLLM_PORT,
        plan_args=[*plan.vllm_args, *node_flags],
        extra_args=extra_args,
    )


def nodes_of(plan: PlanStatus) -> int:
    nodes = plan.pipeline_parallel_size or 1
    if nodes < 2:
        raise ValueError("a multi-node serving object needs a plan with pipeline_parallel_size > 1")
    return nodes


def one_pod_per_node(affinity: Mapping[str, Any] | None, term: Manifest) -> Manifest:
    """The user's affinity, plus a required anti-affinity term: no two pods of a group on one node."""
    merged: Manifest = copy.deepcopy(dict(affinity or {}))
    anti = merged.setdefault("podAntiAffinity", {})
    required = anti.setdefault("requiredDuringSchedulingIgnoredDuringExecution", [])
    required.append(term)
    return merged


@dataclass(frozen=True)
class NodePod:
    """What a node's pod template is built from (one model's serving inputs)."""

    model: str
    namespace: str
    serving: ServingSpec
    plan: PlanStatus
    artifact_key: str
    artifact_path: str
    placement: Placement

    def template(self) -> Manifest:
        return serving_pod_template(
            model=self.model,
            serving=self.serving,
            plan=self.plan,
            artifact_key=self.artifact_key,
            artifact_path=self.artifact_path,
            placement=self.placement,
        )

    def args(self, node_flags: list[str]) -> list[str]:
        return node_serve_args(
            model=self.model,
            artifact_path=self.artifact_path,
            plan=self.plan,
            extra_args=list(self.serving.extra_args),
            node_flags=node_flags,
        )


def metadata(name: str, pod: NodePod, owner: Owner) -> Manifest:
    return {
        "name": name,
        "namespace": pod.namespace,
        "labels": serving_labels(pod.model),
        "ownerReferences": [owner.reference(controller=True)],
    }


def build_node_group_statefulset(*, pod: NodePod, owner: Owner, group: int) -> Manifest:
    """One replica group as a StatefulSet of PP pods; ordinal = node rank, pod 0 the leader."""
    nodes = nodes_of(pod.plan)
    name = node_group_name(pod.model, group)
    template = pod.template()
    template["metadata"]["labels"][LABEL_NODE_GROUP] = name
    spec = template["spec"]
    spec["affinity"] = one_pod_per_node(
        spec.get("affinity"),
        {"labelSelector": {"matchLabels": {LABEL_NODE_GROUP: name}}, "topologyKey": HOSTNAME_TOPOLOGY},
    )
    container = spec["containers"][0]
    container["command"] = ["/bin/sh", "-c", NODE_LAUNCH_SCRIPT, "vllm-node"]
    container["args"] = pod.args(
        multi_node_flags(
            nnodes=nodes,
            node_rank=f"$({NODE_RANK_ENV})",
            master_addr=leader_address(pod.model, pod.namespace, group),
        )
    )
    container["env"].append(
        {
            "name": NODE_RANK_ENV,
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}},
        }
    )
    container["ports"].append({"name": "dist", "containerPort": MASTER_PORT, "protocol": "TCP"})
    health = {"exec": {"command": ["/bin/sh", "-c", LEADER_HEALTH_SCRIPT]}, "timeoutSeconds": 5}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        container[probe] = {**health, **{k: v for k, v in container[probe].items() if k != "httpGet"}}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(name, pod, owner),
        "spec": {
            "replicas": nodes,
            "serviceName": nodes_service_name(pod.model),
            # All nodes at once: the leader is ready only once every other node has joined it, so
            # OrderedReady (pod 1 after pod 0 is ready) would never start the group.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {**selector_labels(pod.model), LABEL_NODE_GROUP: name}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": template,
        },
    }


def build_nodes_service(*, pod: NodePod, owner: Owner) -> Manifest:
    """Headless, and publishing pods before they are ready: the other nodes resolve the leader while it
    waits for them (its readiness depends on theirs)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(nodes_service_name(pod.model), pod, owner),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(pod.model),
            "ports": [{"name": "dist", "port": MASTER_PORT, "targetPort": "dist", "protocol": "TCP"}],
        },
    }


def build_leader_worker_set(*, pod: NodePod, owner: Owner) -> Manifest:
    """All replica groups as one LeaderWorkerSet: ``size`` = PP, the leader (rank 0) serves HTTP."""
    nodes = nodes_of(pod.plan)
    anti_affinity = {
        "labelSelector": {"matchLabels": selector_labels(pod.model)},
        "matchLabelKeys": [LWS_GROUP_KEY_LABEL],
        "topologyKey": HOSTNAME_TOPOLOGY,
    }
    leader = pod.template()
    leader["metadata"]["labels"][LABEL_ROLE] = "leader"
    leader["spec"]["affinity"] = one_pod_per_node(leader["spec"].get("affinity"), anti_affinity)
    leader_container = leader["spec"]["containers"][0]
    leader_container["args"] = pod.args(
        multi_node_flags(nnodes=nodes, node_rank="0", master_addr="$(LWS_LEADER_ADDRESS)")
    )
    leader_container["ports"].append({"name": "dist", "containerPort": MASTER_PORT, "protocol": "TCP"})
    worker = pod.template()
    worker["metadata"]["labels"][LABEL_ROLE] = "worker"
    worker["spec"]["affinity"] = one_pod_per_node(worker["spec"].get("affinity"), anti_affinity)
    worker_container = worker["spec"]["containers"][0]
    worker_container["args"] = [
        *pod.args(
            multi_node_flags(
                nnodes=nodes, node_rank="$(LWS_WORKER_INDEX)", master_addr="$(LWS_LEADER_ADDRESS)"
            )
        ),
        "--headless",
    ]
    # A headless node serves no HTTP; LWS restarts its whole group when it fails.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        worker_container.pop(probe)
    worker_container["ports"] = [{"name": "dist", "containerPort": MASTER_PORT, "protocol": "TCP"}]
    surge = 1 if pod.serving.allow_surge else 0
    return {
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": metadata(leader_worker_set_name(pod.model), pod, owner),
        "spec": {
            "replicas": pod.serving.replicas,
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": surge},
            },
            "leaderWorkerTemplate": {
                "size": nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }


def leader_labels(shape: MultiNodeShape) -> dict[str, str]:
    """What marks a leader pod, for the model's Service (headless nodes must get no request)."""
    return {LABEL_ROLE: "leader"} if shape == "leaderworkerset" else {POD_INDEX_LABEL: "0"}


def build_node_groups(*, shape: MultiNodeShape, pod: NodePod, owner: Owner) -> tuple[Manifest, ...]:
    """The workload objects of a multi-node model: an LWS, or a headless Service and a StatefulSet per group."""
    if shape == "leaderworkerset":
        return (build_leader_worker_set(pod=pod, owner=owner),)
    return (
        build_nodes_service(pod=pod, owner=owner),
        *(
            build_node_group_statefulset(pod=pod, owner=owner, group=group)
            for group in range(pod.serving.replicas)
        ),
    )


@dataclass(frozen=True)
class GroupRollout:
    """How a multi-node model's groups stand, as their controllers last reported them."""

    rolled: bool
    ready: int
    """Groups whose every pod is ready (the leader's /health covers the whole group)."""
    reason: str
    updated: int
    """Groups running the current template."""
    replicas: int
    """Groups that exist."""


def statefulset_rollout(observed: Sequence[Manifest], *, groups: int, nodes: int) -> GroupRollout:
    """The groups' StatefulSets, as their controller reports them (one per group, PP pods each)."""
    sets = [s for s in observed if s.get("kind") == "StatefulSet"]
    if not sets:
        return GroupRollout(False, 0, "NotCreated", 0, 0)
    ready = updated = existing = 0
    pending = False
    for stateful_set in sets:
        status = stateful_set.get("status") or {}
        if int(status.get("observedGeneration", 0)) < int(stateful_set["metadata"].get("generation", 0)):
            pending = True
            continue
        existing += 1 if int(status.get("replicas", 0)) > 0 else 0
        current = status.get("updateRevision") in (None, status.get("currentRevision"))
        if int(status.get("updatedReplicas", 0)) >= nodes and current:
            updated += 1
        if int(status.get("readyReplicas", 0)) >= nodes:
            ready += 1
    if pending:
        return GroupRollout(False, ready, "RolloutPending", updated, existing)
    rolled = len(sets) == groups and updated >= groups and ready >= groups
    return GroupRollout(rolled, ready, "RolledOut" if rolled else "RollingOut", updated, existing)


def leader_worker_set_rollout(observed: Manifest | None, *, groups: int, changing: bool) -> GroupRollout:
    """A LeaderWorkerSet as the LWS controller reports it (its status counts groups, not pods). Its status
    has no observedGeneration: a template applied in this very decision is not rolled out yet."""
    if observed is None:
        return GroupRollout(False, 0, "NotCreated", 0, 0)
    status = observed.get("status") or {}
    ready = int(status.get("readyReplicas", 0))
    updated = 0 if changing else int(status.get("updatedReplicas", 0))
    replicas = int(status.get("replicas", 0))
    if changing:
        return GroupRollout(False, ready, "RolloutPending", updated, replicas)
    rolled = updated >= groups and ready >= groups and replicas == groups
    return GroupRollout(rolled, ready, "RolledOut" if rolled else "RollingOut", updated, replicas)
