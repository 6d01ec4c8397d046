"""Multi-node serving, pure: the objects of a model whose replica spans nodes, and its decisions.

Llama-3.1-405B in bf16 does not fit one node of 8x H100 80GB; with maxNodes 2 the planner splits it into
two pipeline stages of tensor-parallel 8 (planner/parallel.py). These tests render what the operator
applies for it in both shapes (StatefulSet per group, LeaderWorkerSet) and walk its decisions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qmo.api.quantizedmodel import QuantizedModelSpec
from qmo.desired.common import Placement, ResolvedGPU
from qmo.desired.decision import Failure, ModelIntent, ModelSnapshot, decide_model, hash_of, plan_model
from qmo.desired.multinode import (
    LABEL_NODE_GROUP,
    LABEL_ROLE,
    LEADER_HEALTH_SCRIPT,
    LWS_API_VERSION,
    MASTER_PORT,
    NODE_LAUNCH_SCRIPT,
    NODE_RANK_ENV,
    POD_INDEX_LABEL,
    leader_address,
    leader_worker_set_rollout,
    node_group_name,
    nodes_service_name,
    statefulset_rollout,
)
from qmo.desired.names import serving_name
from qmo.desired.verification import MetricsPods, node_groups_metrics_pods
from qmo.planner import BUILTIN_GPUS
from qmo.reconcile.model import ModelReconciler
from qmo.reconcile.observe import PodMetricsScraper
from qmo.reconcile.outcome import PermanentFailure
from qmo.reconcile.verify import PlanVerifier

sys.path.insert(0, str(Path(__file__).parents[1]))
from vllm_metrics import REAL_METRICS, MetricsStandIn, with_pool

CONFIGS = Path(__file__).parent / "configs"
LLAMA_405B = json.loads((CONFIGS / "llama-3.1-405b.json").read_text())
LLAMA_8B = json.loads((CONFIGS / "llama-3.1-8b.json").read_text())
UID = "model-uid"
SPEC: dict[str, Any] = {
    "source": {"huggingface": {"repo": "meta-llama/Llama-3.1-405B", "revision": "a" * 40}},
    "quantization": {"method": "none"},
    "serving": {"gpuClass": "h100-80gb", "maxModelLen": 8192, "maxNodes": 2, "replicas": 2},
}


def snapshot(
    *,
    spec: dict[str, Any] | None = None,
    shape: str = "statefulset",
    config: dict[str, Any] | None = None,
    node_groups: tuple[dict[str, Any], ...] = (),
    deployment: dict[str, Any] | None = None,
    artifact_phase: str | None = "Ready",
    old: dict[str, Any] | None = None,
) -> ModelSnapshot:
    parsed = QuantizedModelSpec.model_validate(spec or SPEC)
    snap = ModelSnapshot(
        namespace="ns",
        name="big",
        uid=UID,
        generation=1,
        now="2026-12-07T00:00:00Z",
        spec=parsed,
        old=old or {},
        source=parsed.source,
        resolved_source="meta-llama/Llama-3.1-405B@main",
        config=config or LLAMA_405B,
        gpu=ResolvedGPU(spec=BUILTIN_GPUS["h100-80gb"], placement=Placement()),
        artifacts=(),
        deployment=deployment,
        multi_node=shape,  # type: ignore[arg-type]
        node_groups=node_groups,
    )
    if artifact_phase is None:
        return snap
    intent = intent_of(snap)
    body = json.loads(json.dumps(intent.artifact))
    body["metadata"].update(
        uid="artifact-uid",
        resourceVersion="7",
        ownerReferences=[{"uid": UID, "kind": "QuantizedModel", "name": "big"}],
    )
    body["status"] = {"phase": artifact_phase}
    return dataclasses.replace(snap, artifacts=(body,))


def intent_of(snap: ModelSnapshot) -> ModelIntent:
    intent = plan_model(snap)
    assert not isinstance(intent, Failure), intent
    return intent


def by_kind(intent: ModelIntent, kind: str) -> list[dict[str, Any]]:
    return [m for m in intent.node_groups if m["kind"] == kind]


def container(template: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = template["spec"]["containers"][0]
    return result


def flag(args: list[str], name: str) -> str:
    [value] = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"{name}=")]
    return value


def test_a_model_no_node_holds_becomes_one_statefulset_per_replica_group() -> None:
    intent = intent_of(snapshot(artifact_phase=None))
    assert intent.deployment is None
    assert intent.planned.tensor_parallel_size == 8 and intent.planned.pipeline_parallel_size == 2
    assert "--pipeline-parallel-size=2" in intent.planned.vllm_args
    sets = by_kind(intent, "StatefulSet")
    assert [s["metadata"]["name"] for s in sets] == ["big-vllm-0", "big-vllm-1"]
    for group, stateful_set in enumerate(sets):
        spec = stateful_set["spec"]
        assert spec["replicas"] == 2  # = PP: one pod per pipeline stage
        assert spec["podManagementPolicy"] == "Parallel"
        assert spec["serviceName"] == nodes_service_name("big")
        template = spec["template"]
        vllm = container(template)
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "8"  # = TP
        assert vllm["resources"]["requests"]["nvidia.com/gpu"] == "8"
        args = vllm["args"]
        assert flag(args, "--nnodes") == "2"
        assert flag(args, "--node-rank") == f"$({NODE_RANK_ENV})"
        assert flag(args, "--master-addr") == leader_address("big", "ns", group)
        assert flag(args, "--master-addr") == f"big-vllm-{group}-0.big-vllm-nodes.ns.svc"
        assert flag(args, "--master-port") == str(MASTER_PORT)
        assert flag(args, "--distributed-executor-backend") == "mp"
        rank_env = next(e for e in vllm["env"] if e["name"] == NODE_RANK_ENV)
        assert rank_env["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{POD_INDEX_LABEL}']"
        assert vllm["command"][:3] == ["/bin/sh", "-c", NODE_LAUNCH_SCRIPT]
        [term] = template["spec"]["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term == {
            "labelSelector": {"matchLabels": {LABEL_NODE_GROUP: node_group_name("big", group)}},
            "topologyKey": "kubernetes.io/hostname",
        }
        assert template["metadata"]["labels"][LABEL_NODE_GROUP] == stateful_set["metadata"]["name"]
        assert set(spec["selector"]["matchLabels"].items()) <= set(template["metadata"]["labels"].items())


def test_the_leader_has_a_name_before_it_is_ready_and_only_leaders_get_requests() -> None:
    intent = intent_of(snapshot(artifact_phase=None))
    [nodes] = by_kind(intent, "Service")
    assert nodes["metadata"]["name"] == "big-vllm-nodes"
    assert nodes["spec"]["clusterIP"] == "None" and nodes["spec"]["publishNotReadyAddresses"] is True
    service = next(c for c in intent.children if c["kind"] == "Service")
    assert service["metadata"]["name"] == serving_name("big")
    assert service["spec"]["selector"][POD_INDEX_LABEL] == "0"
    pdb = next(c for c in intent.children if c["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert POD_INDEX_LABEL not in pdb["spec"]["selector"]["matchLabels"]  # every node of every group


def run_launch_script(tmp_path: Path, script: str, rank: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The container's command as a shell runs it, with a ``vllm`` (and ``python3``) that print their argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("vllm", "python3"):
        fake = bin_dir / tool
        fake.write_text(f'#!/bin/sh\necho {tool} "$@"\n')
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", NODE_RANK_ENV: rank}
    return subprocess.run(
        ["/bin/sh", "-c", script, "vllm-node", *args], env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(("rank", "headless"), [("0", False), ("1", True), ("3", True)])
def test_pod_zero_serves_http_and_the_other_ranks_run_headless(
    tmp_path: Path, rank: str, headless: bool
) -> None:
    [stateful_set, *_] = by_kind(intent_of(snapshot(artifact_phase=None)), "StatefulSet")
    vllm = container(stateful_set["spec"]["template"])
    args = [a.replace(f"$({NODE_RANK_ENV})", rank) for a in vllm["args"]]  # what the kubelet expands
    result = run_launch_script(tmp_path, vllm["command"][2], rank, *args)
    assert result.returncode == 0, result.stderr
    printed = result.stdout.split()
    assert printed[:3] == ["vllm", "serve", "/cache/" + intent_of(snapshot(artifact_phase=None)).key]
    assert f"--node-rank={rank}" in printed
    assert (printed[-1] == "--headless") is headless and printed.count("--headless") == int(headless)
    assert os.environ.get(NODE_RANK_ENV) is None  # the test's own environment was not touched


@pytest.mark.parametrize(("rank", "asks_health"), [("0", True), ("1", False)])
def test_only_the_leader_probes_http_health(tmp_path: Path, rank: str, asks_health: bool) -> None:
    [stateful_set, *_] = by_kind(intent_of(snapshot(artifact_phase=None)), "StatefulSet")
    vllm = container(stateful_set["spec"]["template"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["exec"]["command"] == ["/bin/sh", "-c", LEADER_HEALTH_SCRIPT]
        assert "httpGet" not in vllm[probe]
    result = run_launch_script(tmp_path, LEADER_HEALTH_SCRIPT, rank)
    assert result.returncode == 0
    assert ("127.0.0.1:8000/health" in result.stdout) is asks_health


def test_leader_worker_set_shape() -> None:
    intent = intent_of(snapshot(shape="leaderworkerset", artifact_phase=None))
    [lws] = intent.node_groups
    assert lws["apiVersion"] == LWS_API_VERSION and lws["kind"] == "LeaderWorkerSet"
    assert lws["metadata"]["name"] == "big-vllm"
    assert lws["spec"]["replicas"] == 2
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2 and template["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader, worker = container(template["leaderTemplate"]), container(template["workerTemplate"])
    assert flag(leader["args"], "--node-rank") == "0" and "--headless" not in leader["args"]
    assert flag(leader["args"], "--master-addr") == "$(LWS_LEADER_ADDRESS)"
    assert leader["readinessProbe"]["httpGet"]["path"] == "/health"
    assert flag(worker["args"], "--node-rank") == "$(LWS_WORKER_INDEX)"
    assert flag(worker["args"], "--master-addr") == "$(LWS_LEADER_ADDRESS)"
    assert worker["args"][-1] == "--headless" and "readinessProbe" not in worker
    for part in (leader, worker):
        assert part["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert flag(part["args"], "--nnodes") == "2"
    assert template["leaderTemplate"]["metadata"]["labels"][LABEL_ROLE] == "leader"
    [term] = template["workerTemplate"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["matchLabelKeys"] == ["leaderworkerset.sigs.k8s.io/group-key"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    service = next(c for c in intent.children if c["kind"] == "Service")
    assert service["spec"]["selector"][LABEL_ROLE] == "leader"
    assert not by_kind(intent, "StatefulSet") and not by_kind(intent, "Service")


def test_the_users_extra_args_and_affinity_are_kept() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    spec = {**SPEC, "serving": {**SPEC["serving"], "extraArgs": ["--enforce-eager"], "affinity": affinity}}
    [stateful_set, *_] = by_kind(intent_of(snapshot(spec=spec, artifact_phase=None)), "StatefulSet")
    template = stateful_set["spec"]["template"]
    assert container(template)["args"][-1] == "--enforce-eager"
    assert template["spec"]["affinity"]["nodeAffinity"] == affinity["nodeAffinity"]
    assert "podAntiAffinity" in template["spec"]["affinity"]


def test_a_network_policy_lets_the_nodes_of_a_model_reach_each_other() -> None:
    spec = {**SPEC, "serving": {**SPEC["serving"], "networkPolicy": {"enabled": True}}}
    policy = intent_of(snapshot(spec=spec, artifact_phase=None)).network_policy
    assert policy is not None
    [public, between_nodes] = policy["spec"]["ingress"]
    assert public["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert "ports" not in between_nodes
    assert between_nodes["from"][0]["podSelector"]["matchLabels"]["qmo.dev/model"] == "big"


def reported(manifest: dict[str, Any], **status: Any) -> dict[str, Any]:
    """A node-group object as its controller reports it, at generation 2."""
    body = json.loads(json.dumps(manifest))
    body["metadata"]["generation"] = 2
    body["status"] = status
    return body


def statefulsets_reporting(intent: ModelIntent, ready: int) -> tuple[dict[str, Any], ...]:
    return tuple(
        reported(
            m,
            observedGeneration=2,
            replicas=2,
            readyReplicas=ready,
            updatedReplicas=2,
            currentRevision="r1",
            updateRevision="r1",
        )
        if m["kind"] == "StatefulSet"
        else m
        for m in intent.node_groups
    )


def test_weights_first_then_the_groups_then_ready_when_every_group_is() -> None:
    waiting = snapshot(artifact_phase="Quantizing")
    decision = decide_model(waiting, intent_of(waiting))
    assert decision.status["phase"] == "Quantizing" and decision.apply == []  # build, then roll

    first = snapshot()
    intent = intent_of(first)
    decision = decide_model(first, intent)
    kinds = [m["kind"] for m in decision.apply]
    assert kinds == ["Service", "StatefulSet", "StatefulSet", "Service", "PodDisruptionBudget"]
    assert "Deployment" not in kinds
    assert decision.status["phase"] == "Deploying"
    assert decision.status["plan"]["pipelineParallelSize"] == 2

    half = snapshot(node_groups=statefulsets_reporting(intent, ready=1))
    decision = decide_model(half, intent_of(half))
    assert decision.status["phase"] == "Deploying" and decision.status["ready"] == "0/2"
    assert not [m for m in decision.apply if m["kind"] == "StatefulSet"]  # unchanged: no writes

    ready = snapshot(node_groups=statefulsets_reporting(intent, ready=2))
    decision = decide_model(ready, intent_of(ready))
    assert decision.status["phase"] == "Ready" and decision.status["ready"] == "2/2"
    assert "2 nodes of 8x h100-80gb" in decision.status["message"]
    assert decision.status["endpoint"] == "http://big-vllm.ns.svc:8000/v1"


def test_a_single_node_deployment_goes_only_once_the_groups_serve() -> None:
    small = snapshot(spec={**SPEC, "serving": {**SPEC["serving"], "maxNodes": 1}}, config=LLAMA_8B)
    old_deployment = json.loads(json.dumps(intent_of(small).deployment))
    intent = intent_of(snapshot())
    rolling = snapshot(deployment=old_deployment)
    assert ("Deployment", serving_name("big")) not in decide_model(rolling, intent_of(rolling)).delete
    assert "Service" not in [m["kind"] for m in decide_model(rolling, intent_of(rolling)).apply[1:]]
    served = snapshot(deployment=old_deployment, node_groups=statefulsets_reporting(intent, ready=2))
    decision = decide_model(served, intent_of(served))
    assert ("Deployment", serving_name("big")) in decision.delete
    # The model's Service turns to the leaders only once they serve (the Deployment's pods until then).
    service = next(m for m in decision.apply if m["metadata"]["name"] == serving_name("big"))
    assert service["spec"]["selector"][POD_INDEX_LABEL] == "0"


def test_back_to_one_node_deletes_the_groups_once_the_deployment_serves() -> None:
    groups = statefulsets_reporting(intent_of(snapshot()), ready=2)
    spec = {**SPEC, "serving": {**SPEC["serving"], "maxNodes": 1}}
    pending = snapshot(spec=spec, config=LLAMA_8B, node_groups=groups)
    decision = decide_model(pending, intent_of(pending))
    assert decision.apply[0]["kind"] == "Deployment" and decision.delete == []
    deployment = json.loads(json.dumps(intent_of(pending).deployment))
    deployment["metadata"]["generation"] = 1
    deployment["status"] = {
        "observedGeneration": 1,
        "replicas": 2,
        "updatedReplicas": 2,
        "readyReplicas": 2,
        "availableReplicas": 2,
    }
    served = snapshot(spec=spec, config=LLAMA_8B, node_groups=groups, deployment=deployment)
    assert sorted(decide_model(served, intent_of(served)).delete) == [
        ("Service", "big-vllm-nodes"),
        ("StatefulSet", "big-vllm-0"),
        ("StatefulSet", "big-vllm-1"),
    ]


def test_fewer_replicas_delete_the_groups_beyond_them() -> None:
    groups = statefulsets_reporting(intent_of(snapshot()), ready=2)
    spec = {**SPEC, "serving": {**SPEC["serving"], "replicas": 1}}
    one = snapshot(spec=spec, node_groups=groups)
    decision = decide_model(one, intent_of(one))
    assert decision.delete == [("StatefulSet", "big-vllm-1")]
    assert decision.status["phase"] == "Ready"


def test_statefulset_rollout_counts_groups_not_pods() -> None:
    intent = intent_of(snapshot())
    sets = [m for m in statefulsets_reporting(intent, ready=2) if m["kind"] == "StatefulSet"]
    assert statefulset_rollout(sets, groups=2, nodes=2).rolled
    assert statefulset_rollout(sets[:1], groups=2, nodes=2).rolled is False
    behind = [{**sets[0], "status": {**sets[0]["status"], "observedGeneration": 1}}, sets[1]]
    assert statefulset_rollout(behind, groups=2, nodes=2).reason == "RolloutPending"
    mid = [{**sets[0], "status": {**sets[0]["status"], "updateRevision": "r2"}}, sets[1]]
    rollout = statefulset_rollout(mid, groups=2, nodes=2)
    assert not rollout.rolled and rollout.updated == 1 and rollout.ready == 2
    assert statefulset_rollout([], groups=2, nodes=2).reason == "NotCreated"


def test_leader_worker_set_readiness_comes_from_its_group_counts() -> None:
    [lws] = intent_of(snapshot(shape="leaderworkerset")).node_groups
    ready = reported(lws, replicas=2, readyReplicas=2, updatedReplicas=2)
    assert leader_worker_set_rollout(ready, groups=2, changing=False).rolled
    assert not leader_worker_set_rollout(ready, groups=2, changing=True).rolled
    half = reported(lws, replicas=2, readyReplicas=1, updatedReplicas=2)
    assert leader_worker_set_rollout(half, groups=2, changing=False).ready == 1
    snap = snapshot(shape="leaderworkerset", node_groups=(ready,))
    decision = decide_model(snap, intent_of(snap))
    assert decision.status["phase"] == "Ready"
    assert hash_of(ready) == hash_of(lws) and not [
        m for m in decision.apply if m["kind"] == "LeaderWorkerSet"
    ]


def test_switching_shape_replaces_the_statefulsets_with_a_leader_worker_set() -> None:
    groups = statefulsets_reporting(intent_of(snapshot()), ready=2)
    snap = snapshot(shape="leaderworkerset", node_groups=groups)
    decision = decide_model(snap, intent_of(snap))
    assert [m["kind"] for m in decision.apply] == ["LeaderWorkerSet", "PodDisruptionBudget"]
    assert decision.delete == []  # the StatefulSets, and the Service selecting them, serve until LWS does


class MultiNodeObjects:
    """What observe_node_groups reads, from memory: whether LWS is served, and the objects by kind."""

    def __init__(self, *, lws_served: bool, objects: list[dict[str, Any]]) -> None:
        self.lws_served = lws_served
        self.objects = objects
        self.asked: list[str] = []

    async def serves(self, api_version: str) -> bool:
        self.asked.append(api_version)
        return self.lws_served

    async def list(
        self, kind: str, namespace: str | None, *, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        assert label_selector == "app.kubernetes.io/component=serving,qmo.dev/model=big"
        return [o for o in self.objects if o["kind"] == kind]

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        if kind == "LeaderWorkerSet":
            assert self.lws_served, "an LWS is never read where the API is not served"
        return next((o for o in self.objects if (o["kind"], o["metadata"]["name"]) == (kind, name)), None)


def observed_shape(setting: str, kube: MultiNodeObjects) -> tuple[str, list[str]]:
    reconciler = ModelReconciler(kube, hub=None, multi_node=setting)  # type: ignore[arg-type]
    shape, found = asyncio.run(reconciler.observe_node_groups("ns", "big", UID))
    return shape, sorted(f"{m['kind']}/{m['metadata']['name']}" for m in found)


def test_the_shape_follows_the_setting_and_whether_lws_is_served() -> None:
    lws = intent_of(snapshot(shape="leaderworkerset", artifact_phase=None)).node_groups[0]
    groups = list(intent_of(snapshot(artifact_phase=None)).node_groups)
    # LWS makes StatefulSets of its own with the model's labels: they are its, never qmo's to delete.
    lws_made = {
        "kind": "StatefulSet",
        "metadata": {"name": "big-vllm-0", "ownerReferences": [{"uid": "lws"}]},
    }
    everything = [*groups, lws, lws_made]
    ours = [
        "LeaderWorkerSet/big-vllm",
        "Service/big-vllm-nodes",
        "StatefulSet/big-vllm-0",
        "StatefulSet/big-vllm-1",
    ]
    assert observed_shape("auto", MultiNodeObjects(lws_served=True, objects=everything)) == (
        "leaderworkerset",
        ours,
    )
    assert (
        observed_shape("statefulset", MultiNodeObjects(lws_served=True, objects=everything))[0]
        == "statefulset"
    )
    without_lws = MultiNodeObjects(lws_served=False, objects=groups)
    assert observed_shape("auto", without_lws) == ("statefulset", ours[1:])
    assert without_lws.asked == [LWS_API_VERSION]


def test_lws_asked_for_but_not_installed_fails_the_model_naming_the_setting() -> None:
    with pytest.raises(PermanentFailure) as failure:
        observed_shape("leaderworkerset", MultiNodeObjects(lws_served=False, objects=[]))
    assert failure.value.reason == "LeaderWorkerSetMissing"
    assert "multiNode: leaderworkerset" in failure.value.message and LWS_API_VERSION in failure.value.message
    with pytest.raises(ValueError, match="multi-node setting 'lws' is not one of auto, leaderworkerset"):
        ModelReconciler(MultiNodeObjects(lws_served=True, objects=[]), hub=None, multi_node="lws")  # type: ignore[arg-type]


# Plan verification of a multi-node model: only the leaders serve /metrics.


def node_pod(
    template: dict[str, Any], name: str, *, labels: dict[str, str] | None = None, ready: bool = True
) -> dict[str, Any]:
    """A pod made from ``template`` as its controller makes it (args verbatim, unexpanded), at 127.0.0.1."""
    return {
        "metadata": {"name": name, "labels": {**template["metadata"]["labels"], **(labels or {})}},
        "spec": json.loads(json.dumps(template["spec"])),
        "status": {
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def statefulset_pods(intent: ModelIntent) -> list[dict[str, Any]]:
    """Every node of every group: PP pods per StatefulSet, the ordinal in the pod-index label."""
    return [
        node_pod(
            s["spec"]["template"], f"{s['metadata']['name']}-{rank}", labels={POD_INDEX_LABEL: str(rank)}
        )
        for s in by_kind(intent, "StatefulSet")
        for rank in range(s["spec"]["replicas"])
    ]


def read_by(metrics_pods: MetricsPods | None, pods: list[dict[str, Any]]) -> list[str]:
    assert metrics_pods is not None
    return [p["metadata"]["name"] for p in metrics_pods.running(pods)]


def test_only_each_groups_leader_is_read_and_against_its_own_groups_args() -> None:
    intent = intent_of(snapshot())
    metrics_pods = node_groups_metrics_pods("big", "statefulset", intent.node_groups)
    pods = statefulset_pods(intent)
    assert read_by(metrics_pods, pods) == ["big-vllm-0-0", "big-vllm-1-0"]  # rank 1 runs headless: no HTTP
    assert metrics_pods is not None and metrics_pods.labels[POD_INDEX_LABEL] == "0"
    assert metrics_pods.role == "leader pod" and metrics_pods.startup_args is None

    # The groups' args differ (--master-addr names the group's pod 0): each leader is held to its own.
    leader_0, leader_1 = pods[0], pods[2]
    assert container(leader_0)["args"] != container(leader_1)["args"]
    swapped = json.loads(json.dumps(leader_1))
    container(swapped)["args"] = container(leader_0)["args"]
    assert read_by(metrics_pods, [leader_0, swapped]) == ["big-vllm-0-0"]

    # A leader of a previous plan, or not ready yet, says nothing about this one.
    older = json.loads(json.dumps(leader_1))
    container(older)["args"] = [
        a.replace("--max-model-len=8192", "--max-model-len=4096") for a in container(older)["args"]
    ]
    assert older != leader_1
    assert read_by(metrics_pods, [leader_0, older]) == ["big-vllm-0-0"]
    assert read_by(metrics_pods, [leader_0, {**leader_1, "status": {"conditions": []}}]) == ["big-vllm-0-0"]


def test_a_leader_worker_sets_leaders_are_read_and_its_workers_never() -> None:
    intent = intent_of(snapshot(shape="leaderworkerset"))
    [lws] = intent.node_groups
    templates = lws["spec"]["leaderWorkerTemplate"]
    pods = [
        pod
        for group in range(2)
        for pod in (
            node_pod(templates["leaderTemplate"], f"big-vllm-{group}"),
            node_pod(templates["workerTemplate"], f"big-vllm-{group}-1"),
        )
    ]
    metrics_pods = node_groups_metrics_pods("big", "leaderworkerset", intent.node_groups)
    assert read_by(metrics_pods, pods) == ["big-vllm-0", "big-vllm-1"]
    assert metrics_pods is not None and metrics_pods.labels[LABEL_ROLE] == "leader"
    # The StatefulSets' leaders, still serving while the shape switches, are not the LWS's template.
    assert read_by(metrics_pods, statefulset_pods(intent_of(snapshot()))) == []


def template_key(spec: dict[str, Any], shape: str = "statefulset") -> str:
    intent = intent_of(snapshot(spec=spec, shape=shape, artifact_phase=None))
    metrics_pods = node_groups_metrics_pods("big", shape, intent.node_groups)  # type: ignore[arg-type]
    assert metrics_pods is not None
    return metrics_pods.template


def test_the_observed_template_changes_with_any_group_object() -> None:
    key = template_key(SPEC)
    assert key == template_key(SPEC) and len(key) == 16
    assert template_key({**SPEC, "serving": {**SPEC["serving"], "replicas": 3}}) != key  # a group more
    assert template_key({**SPEC, "serving": {**SPEC["serving"], "maxModelLen": 4096}}) != key
    # One LeaderWorkerSet is keyed by its own hash, as a Deployment is.
    [lws] = intent_of(snapshot(shape="leaderworkerset", artifact_phase=None)).node_groups
    assert template_key(SPEC, "leaderworkerset") == hash_of(lws)
    assert node_groups_metrics_pods("big", "statefulset", ()) is None


def test_while_new_weights_are_made_the_groups_that_serve_are_the_ones_observed() -> None:
    serving_groups = statefulsets_reporting(intent_of(snapshot()), ready=2)
    # Another commit of the source: a new artifact, being made, and new groups (their args name its path).
    spec = {**SPEC, "source": {"huggingface": {"repo": "meta-llama/Llama-3.1-405B", "revision": "b" * 40}}}
    quantizing = snapshot(spec=spec, node_groups=serving_groups, artifact_phase="Quantizing")
    serving = decide_model(quantizing, intent_of(quantizing)).serving
    assert serving is not None and serving.metrics_pods is not None
    served = node_groups_metrics_pods("big", "statefulset", serving_groups)
    assert served is not None and serving.metrics_pods.template == served.template
    rolling = snapshot(spec=spec, node_groups=serving_groups)
    serving = decide_model(rolling, intent_of(rolling)).serving
    assert serving is not None and serving.metrics_pods is not None
    assert serving.metrics_pods.template != served.template  # the new groups are applied: a new template


class PodsOfEveryRank:
    """The pod list as the API answers it, the selector it was asked with recorded; headless nodes are in
    it too, as a list by the model's labels alone would have them."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.selectors: list[str] = []

    async def list(self, kind: str, namespace: str, *, label_selector: str = "", fresh: bool = False) -> Any:
        self.selectors.append(label_selector)
        return self.pods


def test_a_multi_node_model_is_verified_from_its_leaders_against_the_plans_tokens_per_replica() -> None:
    """vLLM's leader reports the engine's pool for the whole pipeline: every stage gets the fewest blocks any
    stage has room for (get_kv_cache_configs), which is what the plan's kvCacheTokens per replica is."""
    ready = snapshot(node_groups=statefulsets_reporting(intent_of(snapshot()), ready=2))
    intent = intent_of(ready)
    serving = decide_model(ready, intent).serving
    assert serving is not None and serving.rolled and serving.ready == 2
    predicted = intent.planned.kv_cache_tokens
    kube = PodsOfEveryRank(statefulset_pods(intent))
    with MetricsStandIn(with_pool(REAL_METRICS, predicted // 16)) as vllm:
        verifier = PlanVerifier(kube, PodMetricsScraper(timeout=2.0, attempts=1, port=vllm.port))  # type: ignore[arg-type]
        verification = asyncio.run(
            verifier.verify(
                namespace="ns",
                model="big",
                old={},
                planned=intent.planned,
                metrics_pods=serving.metrics_pods,
                rolled=True,
                ready=serving.ready,
                pods=None,
                generation=1,
                now="2026-12-07T00:00:00Z",
            )
        )
        assert vllm.requests == 2  # the two leaders; their headless nodes answer at the same address
    assert kube.selectors == [f"app.kubernetes.io/component=serving,{POD_INDEX_LABEL}=0,qmo.dev/model=big"]
    observed = verification.observed
    assert observed is not None and observed["pods"] == 2
    assert observed["revision"] == f"{serving.metrics_pods.template}/2"  # type: ignore[union-attr]
    assert observed["kvCacheTokens"] == predicted // 16 * 16
    assert (verification.status, verification.reason) == (True, "Verified")
    status = decide_model(ready, intent, verification).status
    assert status["plan"]["observed"]["pods"] == 2
    verified = next(c for c in status["conditions"] if c["type"] == "PlanVerified")
    assert verified["status"] == "True" and f"the plan predicted {predicted}" in verified["message"]
