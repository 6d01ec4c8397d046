"""Autoscaling on vLLM's load, on the real control plane: kube-controller-manager's HPA controller reads a
Pods metric through kube-apiserver's aggregation layer from a custom-metrics stand-in
(qmo.sandbox.custom_metrics), and scales the Deployment qmo made; KEDA's real CRD validates the ScaledObject.

kwok's serving pods report no load themselves: the stand-in plays the adapter that would read vLLM's
``vllm:num_requests_running`` from Prometheus, with a total the test sets.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from qmo.sandbox.custom_metrics import CustomMetricsStandIn
from qmo.sandbox.harness import HubStandIn, OperatorProcess
from qmo.sandbox.harness import quantized_model as model
from qmo.sandbox.testing import Kube, SessionCluster, replica_owners
from qmo.sandbox.wait import holds, wait_for

RUNNING = "vllm:num_requests_running"
KEDA_CRD = Path(__file__).parent / "data" / "keda" / "keda.sh_scaledobjects.yaml"
STAND_IN_NAMESPACE = "qmo-custom-metrics"


@pytest.fixture(scope="module")
def custom_metrics(cluster: SessionCluster, admin_client: client.ApiClient) -> Iterator[CustomMetricsStandIn]:
    core = client.CoreV1Api(admin_client)

    def serving_pods(namespace: str, selector: str) -> list[str]:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        return [p.metadata.name for p in pods if p.metadata.deletion_timestamp is None]

    cluster.kubectl("create", "namespace", STAND_IN_NAMESPACE)
    with CustomMetricsStandIn(serving_pods, namespace=STAND_IN_NAMESPACE) as stand_in:
        for manifest in stand_in.manifests():
            cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

        def available() -> bool:
            found = cluster.kubectl("get", "apiservice", "v1beta2.custom.metrics.k8s.io", "-o", "json")
            conditions = json.loads(found.stdout).get("status", {}).get("conditions", [])
            return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

        wait_for(available, timeout=60, description="the custom metrics APIService to be Available")
        try:
            yield stand_in
        finally:
            cluster.kubectl("delete", "apiservice", "v1beta2.custom.metrics.k8s.io", "--wait=false")
            cluster.kubectl("delete", "namespace", STAND_IN_NAMESPACE, "--wait=false")


def replicas(k: Kube, name: str) -> int | None:
    deployment = k.get("deployment", f"{name}-vllm")
    return None if deployment is None else deployment["spec"].get("replicas")


def test_server_side_apply_drops_a_released_replica_count_unless_another_manager_holds_it(k: Kube) -> None:
    """Why qmo hands spec.replicas over (desired/autoscaling.replicas_handoff), shown on the real API
    server: an apply that leaves out a field only its manager owned removes it, and replicas defaults to 1."""
    base = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "ssa", "namespace": k.namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "ssa"}},
            "template": {
                "metadata": {"labels": {"app": "ssa"}},
                "spec": {"containers": [{"name": "c", "image": "x"}], "nodeSelector": {"none": "none"}},
            },
        },
    }

    def apply(manifest: dict[str, Any], manager: str) -> dict[str, Any]:
        result = k.cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", f"--field-manager={manager}", "-o", "json",
            "--show-managed-fields", "-f", "-", input=json.dumps(manifest),
        )  # fmt: skip
        return dict(json.loads(result.stdout))

    with_replicas = json.loads(json.dumps(base))
    with_replicas["spec"]["replicas"] = 3
    assert apply(with_replicas, "qmo")["spec"]["replicas"] == 3
    assert apply(base, "qmo")["spec"]["replicas"] == 1  # released and defaulted: the drop qmo avoids

    assert apply(with_replicas, "qmo")["spec"]["replicas"] == 3
    handoff = {**base, "spec": {"replicas": 3}}
    assert apply(handoff, "qmo-replicas-handoff")["spec"]["replicas"] == 3
    kept = apply(base, "qmo")
    assert kept["spec"]["replicas"] == 3
    assert replica_owners(kept) == {"qmo-replicas-handoff"}


def test_the_hpa_scales_on_vllm_load_and_qmo_never_fights_it(
    k: Kube, custom_metrics: CustomMetricsStandIn
) -> None:
    name = "scaled"
    k.apply(model(name, serving={"replicas": 2}))
    k.wait_phase(name, "Ready")
    before = k.get_with_managed_fields("deployment", f"{name}-vllm")
    assert replica_owners(before) == {"qmo"}

    # Turn autoscaling on with a load the 2 replicas already match (4 running / target 2): the count qmo
    # owned is handed over, never reset to 1 on the way (that would be a spec change: a new generation).
    custom_metrics.set_load(k.namespace, RUNNING, 4)
    autoscaling = {
        "minReplicas": 1,
        "maxReplicas": 4,
        "metric": "runningRequests",
        "target": 2,
        "idleSeconds": 20,
    }
    k.apply(model(name, serving={"replicas": 2, "autoscaling": autoscaling}))

    def handed_over() -> dict[str, Any] | None:
        found = k.get_with_managed_fields("deployment", f"{name}-vllm")
        return found if "qmo" not in replica_owners(found) else None

    handed = wait_for(handed_over, timeout=60, description="qmo to release spec.replicas")
    assert handed["spec"]["replicas"] == 2
    assert handed["spec"] == before["spec"]
    scaled_down = k.cluster.kubectl(
        "get", "events", "-n", k.namespace, "--field-selector", "reason=ScalingReplicaSet", "-o", "json"
    )
    assert not [e for e in json.loads(scaled_down.stdout)["items"] if "Scaled down" in e["message"]]
    hpa = wait_for(lambda: k.get("hpa", f"{name}-vllm"), timeout=30, description="the HPA")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == RUNNING

    # Load up: 12 running requests at 2 per replica want 6; maxReplicas caps it at 4.
    custom_metrics.set_load(k.namespace, RUNNING, 12)
    wait_for(lambda: replicas(k, name) == 4, timeout=60, description="the HPA to scale 2 -> 4")
    assert custom_metrics.asked(RUNNING)
    status = wait_for(
        lambda: (
            (s := (k.get("qm", name) or {}).get("status", {})).get("autoscaling", {}).get("desiredReplicas")
            == 4
            and s.get("ready") == "4/4"
            and s
        ),
        timeout=60,
        description="status to report the autoscaler's 4 replicas",
    )
    assert status["phase"] == "Ready"
    assert status["autoscaling"]["autoscaler"] == "HorizontalPodAutoscaler"
    assert status["autoscaling"]["metric"] == RUNNING and status["autoscaling"]["target"] == 2
    autoscaling_condition = next(c for c in status["conditions"] if c["type"] == "Autoscaling")
    assert autoscaling_condition["status"] == "True", autoscaling_condition

    # A change qmo applies to the Deployment (a pod annotation: a new template) keeps the autoscaler's 4.
    k.apply(model(name, serving={"replicas": 2, "autoscaling": autoscaling, "podAnnotations": {"a": "b"}}))

    def rolled_with_annotation() -> bool:
        found = k.get("deployment", f"{name}-vllm") or {}
        return (
            found.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {}).get("a")
            == "b"
        )

    wait_for(rolled_with_annotation, timeout=60, description="qmo to apply the new template")
    assert replicas(k, name) == 4
    holds(lambda: replicas(k, name) == 4, seconds=6, description="4 replicas under steady load")

    # Load gone: the count holds through the scale-down window (idleSeconds 20), then goes to minReplicas.
    custom_metrics.set_load(k.namespace, RUNNING, 0)
    dropped = time.monotonic()
    holds(lambda: replicas(k, name) == 4, seconds=12, description="4 replicas within the scale-down window")
    wait_for(lambda: replicas(k, name) == 1, timeout=90, description="the HPA to scale 4 -> 1")
    assert time.monotonic() - dropped >= 18  # the window (20 s), less the HPA's sync period

    # Autoscaling off: the HPA goes first, then qmo owns replicas again at spec.serving.replicas.
    k.apply(model(name, serving={"replicas": 2, "podAnnotations": {"a": "b"}}))
    wait_for(lambda: k.get("hpa", f"{name}-vllm") is None, timeout=60, description="the HPA to be deleted")
    wait_for(lambda: replicas(k, name) == 2, timeout=60, description="qmo's replicas (2) back")
    final = wait_for(
        lambda: (s := (k.get("qm", name) or {}).get("status", {})).get("ready") == "2/2" and s,
        timeout=60,
        description="the model Ready at 2/2",
    )
    assert "autoscaling" not in final
    assert "qmo" in replica_owners(k.get_with_managed_fields("deployment", f"{name}-vllm"))


@pytest.fixture
def keda_operator(
    cluster: SessionCluster,
    hub: HubStandIn,
    operator: OperatorProcess,
    admin_client: client.ApiClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Kube, OperatorProcess]]:
    """KEDA's CRD installed, and an operator of its own (with a Prometheus address and a 1 s discovery
    cache) for a namespace the session operator does not watch. Removes the CRD afterwards."""
    core = client.CoreV1Api(admin_client)
    namespace = core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(generate_name="qmo-keda-"))
    ).metadata.name
    cluster.kubectl("apply", "--server-side", "-f", str(KEDA_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s")
    monkeypatch.setenv("QMO_DISCOVERY_SECONDS", "1")
    process = OperatorProcess(
        cluster,
        hub.url,
        tmp_path,
        namespaces=[namespace],
        extra_args=["--prometheus-url", "http://prometheus.monitoring.svc:9090"],
    )
    process.start()
    kube = Kube(cluster, namespace)
    try:
        yield kube, process
    finally:
        print(f"--- namespace {namespace} ---\n{kube.snapshot()}\n--- operator ---\n{process.log_tail()}")
        process.stop()
        cluster.kubectl("delete", "crd", "scaledobjects.keda.sh", "--ignore-not-found", "--wait=true")
        core.delete_namespace(namespace, propagation_policy="Background")


def test_with_keda_a_scaled_object_the_api_server_accepts_and_without_it_an_hpa(
    keda_operator: tuple[Kube, OperatorProcess], cluster: SessionCluster
) -> None:
    k, _ = keda_operator
    name = "keda"
    autoscaling = {
        "maxReplicas": 3,
        "scaleToZero": True,
        "idleSeconds": 600,
        "wakeQuery": 'sum(gateway_pending_requests{backend="keda"})',
    }
    k.apply(model(name, serving={"autoscaling": autoscaling}))
    scaled = wait_for(
        lambda: k.get("scaledobject", f"{name}-vllm"), timeout=90, description="the ScaledObject"
    )
    # Stored by the real API server under KEDA's own schema (unknown fields would have been pruned).
    assert scaled["spec"]["idleReplicaCount"] == 0 and scaled["spec"]["cooldownPeriod"] == 600
    assert [t["name"] for t in scaled["spec"]["triggers"]] == ["load", "activity", "wake"]
    load = scaled["spec"]["triggers"][0]
    assert load["metadata"]["query"] == f'sum({RUNNING}{{namespace="{k.namespace}",model_name="{name}"}})'
    assert load["metricType"] == "AverageValue"
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] == {
        "stabilizationWindowSeconds": 600
    }
    status = wait_for(
        lambda: (s := (k.get("qm", name) or {}).get("status", {})).get("autoscaling") and s,
        timeout=60,
        description="status.autoscaling",
    )
    assert status["autoscaling"]["autoscaler"] == "ScaledObject" and status["autoscaling"]["minReplicas"] == 0
    assert "qmo" not in replica_owners(k.get_with_managed_fields("deployment", f"{name}-vllm"))

    # KEDA uninstalled: within the discovery cache's second the model moves to an HPA, without scale to zero.
    cluster.kubectl("delete", "crd", "scaledobjects.keda.sh", "--wait=true")
    hpa = wait_for(lambda: k.get("hpa", f"{name}-vllm"), timeout=60, description="the fallback HPA")
    assert hpa["spec"]["minReplicas"] == 1
    moved = wait_for(
        lambda: (
            (s := (k.get("qm", name) or {}).get("status", {})).get("autoscaling", {}).get("autoscaler")
            == "HorizontalPodAutoscaler"
            and s
        ),
        timeout=60,
        description="status to name the HPA",
    )
    assert "scaleToZero needs KEDA" in moved["autoscaling"]["message"]
