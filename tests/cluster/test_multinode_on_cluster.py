"""Multi-node serving on the real control plane: Llama-3.1-405B bf16 on two kwok nodes of 8x H100.

The planner splits the model into TP 8 x PP 2 (it fits no single node); the operator rolls out one
StatefulSet per replica group whose pods the real scheduler places one per node, kwok readies them, and the
model goes Ready. Then LeaderWorkerSet's CRD (a hand-written stand-in, tests/cluster/data) is installed:
the operator notices on its next reconcile, and the API server accepts the LeaderWorkerSet it applies (no
LWS controller runs here, so the object is asserted, not its pods). The CRD is removed at the end, whatever
happens, so the session's other tests see a cluster without LWS.

Plan verification reads the leaders: every pod of the model is annotated with one loopback address (the
sandbox's stage makes it the pod's IP), where a stand-in answers /metrics as vLLM 0.25.1 does
(tests/vllm_metrics.py, as in test_plan_verification_on_cluster.py). The headless nodes have the same
address, so the stand-in's request count shows that only leaders are read.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qmo.desired.multinode import MASTER_PORT, NODE_RANK_ENV, POD_INDEX_LABEL
from qmo.sandbox import stages
from qmo.sandbox.harness import HubStandIn, example_config
from qmo.sandbox.harness import quantized_model as model
from qmo.sandbox.testing import Kube, SessionCluster
from qmo.sandbox.wait import wait_for

sys.path.insert(0, str(Path(__file__).parents[1]))
from vllm_metrics import REAL_METRICS, MetricsStandIn, loopback_address, with_pool

REPO_405B = "meta-llama/Llama-3.1-405B"
SHA_405B = "c" * 40
LWS_CRD = Path(__file__).parent / "data" / "leaderworkerset-crd.yaml"
LWS_CRD_NAME = "leaderworkersets.leaderworkerset.x-k8s.io"
CONFIGS = Path(__file__).parents[1] / "unit" / "configs"


@pytest.fixture
def hub_405b(hub: HubStandIn) -> HubStandIn:
    config: dict[str, Any] = json.loads((CONFIGS / "llama-3.1-405b.json").read_text())
    assert config["num_hidden_layers"] == 126 and config != example_config()
    hub.add(REPO_405B, config, sha=SHA_405B)
    return hub


@pytest.fixture
def lws_crd(cluster: SessionCluster) -> Iterator[None]:
    """LeaderWorkerSet's API, for this test only."""
    try:
        yield None
    finally:
        cluster.kubectl("delete", "crd", LWS_CRD_NAME, "--ignore-not-found", "--wait=true", check=False)


def arg_value(args: list[str], flag: str) -> str:
    [value] = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"{flag}=")]
    return value


def leader_endpoints(k: Kube, service: str) -> list[str] | None:
    """The pods behind a Service's EndpointSlices (None until the slice controller has written one)."""
    slices = k.list("endpointslices", f"kubernetes.io/service-name={service}")
    names = [
        endpoint["targetRef"]["name"]
        for endpoint_slice in slices
        for endpoint in endpoint_slice.get("endpoints") or []
        if (endpoint.get("conditions") or {}).get("ready")
    ]
    return sorted(names) or None


def test_a_model_no_node_holds_serves_from_two_nodes(
    k: Kube, cluster: SessionCluster, hub_405b: HubStandIn, lws_crd: None
) -> None:
    k.apply(model("big", repo=REPO_405B, method="none", serving={"maxNodes": 2}))
    ready = k.wait_phase("big", "Ready", timeout=120)
    plan = ready["status"]["plan"]
    assert (plan["tensorParallelSize"], plan["pipelineParallelSize"]) == (8, 2)
    assert ready["status"]["ready"] == "1/1"
    assert ready["status"]["message"] == "serving on 2 nodes of 8x h100-80gb per replica"
    assert k.get("deployment", "big-vllm") is None

    stateful_set = k.get("statefulset", "big-vllm-0")
    assert stateful_set is not None and stateful_set["spec"]["replicas"] == 2
    pods = sorted(k.list("pods", "qmo.dev/node-group=big-vllm-0"), key=lambda p: p["metadata"]["name"])
    assert [p["metadata"]["name"] for p in pods] == ["big-vllm-0-0", "big-vllm-0-1"]
    nodes = [p["spec"]["nodeName"] for p in pods]
    assert len(set(nodes)) == 2 and all(n.startswith("gpu-h100") for n in nodes), nodes
    for rank, pod in enumerate(pods):
        assert pod["metadata"]["labels"][POD_INDEX_LABEL] == str(rank)  # what the node rank is read from
        assert all(c["status"] == "True" for c in pod["status"]["conditions"] if c["type"] == "Ready")
        container = pod["spec"]["containers"][0]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"
        args = container["args"]
        assert arg_value(args, "--node-rank") == f"$({NODE_RANK_ENV})"
        assert arg_value(args, "--nnodes") == "2"
        assert arg_value(args, "--master-addr") == f"big-vllm-0-0.big-vllm-nodes.{k.namespace}.svc"
        assert arg_value(args, "--master-port") == str(MASTER_PORT)
        assert arg_value(args, "--tensor-parallel-size") == "8"
        assert arg_value(args, "--pipeline-parallel-size") == "2"
    headless = k.get("service", "big-vllm-nodes")
    assert headless is not None and headless["spec"]["clusterIP"] == "None"
    # The model's endpoint sends requests to the leader only: the other node runs headless.
    assert wait_for(
        lambda: leader_endpoints(k, "big-vllm"), timeout=30, description="the model Service's endpoints"
    ) == ["big-vllm-0-0"]

    cluster.kubectl("apply", "--server-side", "-f", str(LWS_CRD))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{LWS_CRD_NAME}", "--timeout=60s")
    lws = wait_for(
        lambda: k.get("leaderworkerset", "big-vllm"),
        timeout=60,
        description="the operator to find LWS installed and apply a LeaderWorkerSet",
    )
    template = lws["spec"]["leaderWorkerTemplate"]
    assert lws["spec"]["replicas"] == 1 and template["size"] == 2
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    worker = template["workerTemplate"]["spec"]["containers"][0]
    assert arg_value(worker["args"], "--node-rank") == "$(LWS_WORKER_INDEX)"
    assert worker["args"][-1] == "--headless"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert lws["metadata"]["ownerReferences"][0]["uid"] == ready["metadata"]["uid"]
    # Nothing runs the LWS here: the StatefulSet groups, and the Service selecting their leader, keep
    # serving until LWS groups would be ready.
    assert k.get("statefulset", "big-vllm-0") is not None
    assert leader_endpoints(k, "big-vllm") == ["big-vllm-0-0"]
    assert k.get("qm", "big")["status"]["plan"]["pipelineParallelSize"] == 2  # type: ignore[index]

    k.delete("qm", "big")
    wait_for(
        lambda: not k.list("statefulsets") and k.get("leaderworkerset", "big-vllm") is None,
        timeout=60,
        description="the model's groups to be garbage-collected with it",
    )
    assert k.get("service", "big-vllm-nodes") is None


def plan_verified(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "PlanVerified")


def test_plan_verification_reads_each_groups_leader(k: Kube, hub_405b: HubStandIn) -> None:
    address = loopback_address()
    pods_at = {"podAnnotations": {stages.POD_IP_ANNOTATION: address}}

    def observed_with(tokens: int) -> dict[str, Any] | None:
        qm = k.get("qm", "bigv")
        observed = (((qm or {}).get("status") or {}).get("plan") or {}).get("observed") or {}
        return qm if observed.get("kvCacheTokens") == tokens else None

    # 512 blocks of 16: far below the plan, so the first observation is a mismatch.
    with MetricsStandIn(with_pool(REAL_METRICS, 512), host=address, port=8000) as vllm:
        k.apply(model("bigv", repo=REPO_405B, method="none", serving={"maxNodes": 2, **pods_at}))
        k.wait_phase("bigv", "Ready", timeout=120)
        status = wait_for(lambda: observed_with(8192), timeout=60, description="the leader's KV tokens")[
            "status"
        ]
        assert status["plan"]["pipelineParallelSize"] == 2
        observed = status["plan"]["observed"]
        assert observed["pods"] == 1 and observed["revision"].endswith("/1")
        assert (plan_verified(status)["status"], plan_verified(status)["reason"]) == (
            "False",
            "KVCacheMismatch",
        )
        # One group, two pods at the stand-in's address: only the leader was read.
        assert vllm.requests == 1
        first_template = observed["revision"].split("/")[0]

        # vLLM's leader reports the pool of the whole pipeline, per replica: the plan's kvCacheTokens. A
        # second group is a new StatefulSet (another template key) and one more ready group: read again.
        predicted = status["plan"]["kvCacheTokens"]
        vllm.text = with_pool(REAL_METRICS, predicted // 16)
        k.apply(
            model("bigv", repo=REPO_405B, method="none", serving={"maxNodes": 2, "replicas": 2, **pods_at})
        )
        status = wait_for(
            lambda: observed_with(predicted // 16 * 16), timeout=120, description="both leaders read"
        )["status"]
        observed = status["plan"]["observed"]
        assert status["ready"] == "2/2" and observed["pods"] == 2
        template, ready = observed["revision"].split("/")
        assert template != first_template and ready == "2"
        assert abs(observed["errorPercent"]) < 0.1
        condition = plan_verified(status)
        assert (condition["status"], condition["reason"]) == ("True", "Verified")
        assert f"the plan predicted {predicted}" in condition["message"]
        # The two leaders, whose --master-addr differ, each read once; their headless nodes never.
        assert vllm.requests == 3
    k.delete("qm", "bigv")
    wait_for(lambda: not k.list("statefulsets"), timeout=60, description="the groups to go with the model")
