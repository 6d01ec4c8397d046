"""Autoscaling on vLLM's load: the spec's validation, the pure renderers, and the model decision with and
without KEDA (desired/autoscaling.py, desired/decision.py)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from pydantic import ValidationError
from test_model_decision import GOOD_QUALITY, SPEC, artifact, decide, deployment_for, intent_of, snapshot

from qmo.api.quantizedmodel import AutoscalingSpec, QuantizedModelSpec
from qmo.desired.autoscaling import (
    ACTIVITY_THRESHOLD,
    AutoscalingEnvironment,
    autoscaler_report,
    default_target,
    load_query,
    quantity,
    replicas_handoff,
    wanted_replicas,
)
from qmo.desired.decision import ModelSnapshot, hash_of
from qmo.desired.names import serving_name
from qmo.desired.status import format_validation_error

KEDA = AutoscalingEnvironment(keda=True, prometheus_url="http://prometheus.monitoring.svc:9090")
NO_KEDA = AutoscalingEnvironment()


def autoscaled(**autoscaling: Any) -> dict[str, Any]:
    return {**SPEC, "serving": {**SPEC["serving"], "autoscaling": {"maxReplicas": 4, **autoscaling}}}


def ready_snapshot(
    spec: dict[str, Any],
    *,
    environment: AutoscalingEnvironment = NO_KEDA,
    **kwargs: Any,
) -> ModelSnapshot:
    """A model whose weights are ready and pass the gate: the serving side is decided."""
    base = snapshot(spec=spec)
    ready = artifact(base, "Ready", quality=GOOD_QUALITY)
    return dataclasses.replace(snapshot(spec=spec, artifacts=(ready,), **kwargs), autoscaling=environment)


def spec_error(**autoscaling: Any) -> str:
    with pytest.raises(ValidationError) as raised:
        QuantizedModelSpec.model_validate(autoscaled(**autoscaling))
    return format_validation_error(raised.value)


@pytest.mark.parametrize(
    ("autoscaling", "expected"),
    [
        ({"minReplicas": 5}, "minReplicas (5) must not exceed maxReplicas (4)"),
        ({"metric": "kvCacheUsage", "target": 80}, "kvCacheUsage is a fraction of the KV cache"),
        ({"scaleToZero": True}, "spec.serving.autoscaling.wakeQuery is required with scaleToZero"),
        ({"metric": "gpuUtilization"}, "spec.serving.autoscaling.metric: Input should be 'runningRequests'"),
        ({"target": 0}, "spec.serving.autoscaling.target: Input should be greater than 0"),
        (
            {"minReplicas": 0},
            "spec.serving.autoscaling.minReplicas: Input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_autoscaling_names_the_field_and_what_is_valid(
    autoscaling: dict[str, Any], expected: str
) -> None:
    assert expected in spec_error(**autoscaling)


def test_default_targets_come_from_the_plan() -> None:
    snap = snapshot(spec=autoscaled())
    plan = intent_of(snap).planned
    serving = snap.spec.serving
    planned = float(int(plan.max_concurrency))
    assert plan.max_concurrency >= 2  # the figure the defaults derive from is a real one
    running = AutoscalingSpec(max_replicas=4)
    assert default_target(running, serving, plan) == (planned, "plan maxConcurrency")
    queue = AutoscalingSpec(max_replicas=4, metric="queueDepth")
    assert default_target(queue, serving, plan) == (float(-(-planned // 4)), "plan maxConcurrency / 4")
    kv = AutoscalingSpec(max_replicas=4, metric="kvCacheUsage")
    assert default_target(kv, serving, plan)[0] == 0.8
    with_concurrency = serving.model_copy(update={"concurrency": 12})
    assert default_target(running, with_concurrency, plan) == (12.0, "spec.serving.concurrency")
    explicit = AutoscalingSpec(max_replicas=4, target=3.5)
    assert default_target(explicit, serving, plan) == (3.5, "spec")


@pytest.mark.parametrize(("value", "text"), [(12.0, "12"), (0.8, "800m"), (2.5, "2500m"), (1.0, "1")])
def test_targets_are_kubernetes_quantities(value: float, text: str) -> None:
    assert quantity(value) == text


def test_without_keda_a_horizontal_pod_autoscaler_on_the_vllm_pods_metric() -> None:
    spec = autoscaled(minReplicas=2, metric="queueDepth", target=3, idleSeconds=120)
    decision = decide(ready_snapshot(spec))
    [hpa] = [m for m in decision.apply if m["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["metadata"]["name"] == serving_name("m")
    assert hpa["metadata"]["ownerReferences"][0]["controller"] is True
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "m-vllm"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "vllm:num_requests_waiting"},
                "target": {"type": "AverageValue", "averageValue": "3"},
            },
        }
    ]
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 120}}
    status = decision.status["autoscaling"]
    assert status["autoscaler"] == "HorizontalPodAutoscaler" and status["target"] == 3
    autoscaling_condition = next(c for c in decision.status["conditions"] if c["type"] == "Autoscaling")
    assert autoscaling_condition["status"] == "Unknown"  # the HPA has not reported yet
    assert "on vllm:num_requests_waiting at 3 per replica (spec)" in autoscaling_condition["message"]


def test_the_autoscaled_deployment_leaves_replicas_to_the_autoscaler() -> None:
    intent = intent_of(snapshot(spec=autoscaled()))
    assert "replicas" not in intent.deployment["spec"]
    assert intent_of(snapshot()).deployment["spec"]["replicas"] == 2  # qmo owns it without autoscaling


def test_with_keda_a_scaled_object_queries_the_models_vllm_metric() -> None:
    decision = decide(ready_snapshot(autoscaled(target=8), environment=KEDA))
    [scaled] = [m for m in decision.apply if m["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 4)
    assert "idleReplicaCount" not in spec
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"] == {
        "serverAddress": KEDA.prometheus_url,
        "query": 'sum(vllm:num_requests_running{namespace="ns",model_name="m"})',
        "threshold": "8",
    }
    assert decision.status["autoscaling"]["autoscaler"] == "ScaledObject"
    assert not any(m["kind"] == "HorizontalPodAutoscaler" for m in decision.apply)


def test_scale_to_zero_with_keda_idles_to_zero_and_wakes_on_the_wake_query() -> None:
    wake = 'sum(gateway_pending_requests{backend="m"})'
    spec = autoscaled(scaleToZero=True, wakeQuery=wake, idleSeconds=600, minReplicas=2)
    decision = decide(ready_snapshot(spec, environment=KEDA))
    [scaled] = [m for m in decision.apply if m["kind"] == "ScaledObject"]
    spec_ = scaled["spec"]
    assert (spec_["idleReplicaCount"], spec_["minReplicaCount"], spec_["cooldownPeriod"]) == (0, 2, 600)
    load, activity, waking = spec_["triggers"]
    assert load["name"] == "load" and load["metadata"]["threshold"] == str(
        int(intent_of(snapshot()).planned.max_concurrency)
    )
    # Idle is nothing running and nothing waiting, whatever sizes the model; it never sizes it itself.
    assert activity["metadata"]["query"] == (
        'sum(vllm:num_requests_running{namespace="ns",model_name="m"}) + '
        'sum(vllm:num_requests_waiting{namespace="ns",model_name="m"})'
    )
    assert activity["metadata"]["threshold"] == str(ACTIVITY_THRESHOLD)
    assert waking["metadata"]["query"] == wake
    assert decision.status["autoscaling"]["minReplicas"] == 0


def test_scale_to_zero_without_keda_keeps_min_replicas_and_says_why() -> None:
    spec = autoscaled(scaleToZero=True, wakeQuery="sum(x)")
    decision = decide(ready_snapshot(spec))
    [hpa] = [m for m in decision.apply if m["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["minReplicas"] == 1
    message = decision.status["autoscaling"]["message"]
    assert "scaleToZero needs KEDA" in message and "KEDA is not installed" in message
    assert decision.status["phase"] not in ("Failed", "Degraded")  # a spec the cluster cannot honour fully


def test_keda_without_a_prometheus_address_falls_back_to_the_hpa() -> None:
    decision = decide(ready_snapshot(autoscaled(), environment=AutoscalingEnvironment(keda=True)))
    assert [
        m["kind"] for m in decision.apply if m["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
    ] == ["HorizontalPodAutoscaler"]
    assert "no Prometheus address" in decision.status["autoscaling"]["message"]


def scaled_deployment(snap: ModelSnapshot, replicas: int, *, owned_by_qmo: bool) -> dict[str, Any]:
    body = deployment_for(snap, ready=replicas)
    body["metadata"]["namespace"] = "ns"
    body["spec"]["replicas"] = replicas
    body["status"].update(replicas=replicas, updatedReplicas=replicas, availableReplicas=replicas)
    fields = (
        {"f:spec": {"f:replicas": {}, "f:template": {}}} if owned_by_qmo else {"f:spec": {"f:template": {}}}
    )
    body["metadata"]["managedFields"] = [
        {"manager": "qmo", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": fields},
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "scale"},
    ]
    return body


def test_the_operator_never_overwrites_the_autoscalers_replica_count() -> None:
    spec = autoscaled()
    base = ready_snapshot(spec)
    deployment = scaled_deployment(base, 3, owned_by_qmo=False)
    hpa = next(m for m in decide(base).apply if m["kind"] == "HorizontalPodAutoscaler")
    hpa = {
        **hpa,
        "status": {"conditions": [{"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"}]},
    }
    steady = dataclasses.replace(
        base, deployment=deployment, autoscaler=hpa, child_hashes=dict(children_of(base))
    )
    decision = decide(steady)
    # The autoscaler set 3: nothing to write, and Ready counts the 3, not spec.serving.replicas (2).
    assert decision.apply == [] and decision.replicas_handoff is None
    assert decision.status["ready"] == "3/3" and decision.status["phase"] == "Ready"
    assert decision.status["autoscaling"]["desiredReplicas"] == 3
    autoscaling_condition = next(c for c in decision.status["conditions"] if c["type"] == "Autoscaling")
    assert autoscaling_condition["status"] == "True"


def children_of(snap: ModelSnapshot) -> dict[str, str | None]:
    return {child["kind"]: hash_of(child) for child in intent_of(snap).children}


def test_turning_autoscaling_on_hands_the_replica_count_over_without_dropping_it() -> None:
    before = ready_snapshot(SPEC)
    deployment = scaled_deployment(before, 2, owned_by_qmo=True)
    on = dataclasses.replace(
        ready_snapshot(autoscaled()), deployment=deployment, child_hashes=children_of(before)
    )
    decision = decide(on)
    assert decision.replicas_handoff == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "m-vllm", "namespace": "ns"},
        "spec": {"replicas": 2},
    }
    assert [m["kind"] for m in decision.apply] == ["Deployment", "HorizontalPodAutoscaler"]
    assert "replicas" not in decision.apply[0]["spec"]
    assert decision.status["ready"].endswith("/2")  # the kept count, not min or the default of 1


def test_turning_autoscaling_off_deletes_the_autoscaler_and_qmo_owns_replicas_again() -> None:
    old = {"autoscaling": {"autoscaler": "HorizontalPodAutoscaler", "name": "m-vllm"}}
    deployment = scaled_deployment(ready_snapshot(autoscaled()), 4, owned_by_qmo=False)
    decision = decide(dataclasses.replace(ready_snapshot(SPEC, old=old), deployment=deployment))
    assert decision.release_autoscaler == ("HorizontalPodAutoscaler", "m-vllm")
    [applied] = [m for m in decision.apply if m["kind"] == "Deployment"]
    assert applied["spec"]["replicas"] == 2
    assert "autoscaling" not in decision.status
    assert not any(c["type"] == "Autoscaling" for c in decision.status["conditions"])


def test_keda_appearing_moves_the_model_from_the_hpa_to_a_scaled_object() -> None:
    old = {"autoscaling": {"autoscaler": "HorizontalPodAutoscaler", "name": "m-vllm"}}
    decision = decide(ready_snapshot(autoscaled(), environment=KEDA, old=old))
    assert decision.release_autoscaler == ("HorizontalPodAutoscaler", "m-vllm")
    assert "ScaledObject" in [m["kind"] for m in decision.apply]


def test_wanted_replicas_is_the_autoscalers_while_autoscaling() -> None:
    plain = QuantizedModelSpec.model_validate(SPEC).serving
    scaled = QuantizedModelSpec.model_validate(autoscaled(minReplicas=3)).serving
    deployment = {"spec": {"replicas": 5}}
    assert wanted_replicas(plain, deployment) == 2
    assert wanted_replicas(scaled, deployment) == 5
    assert wanted_replicas(scaled, None) == 3


def test_the_handoff_is_skipped_when_qmo_does_not_own_replicas() -> None:
    snap = ready_snapshot(SPEC)
    assert replicas_handoff(scaled_deployment(snap, 3, owned_by_qmo=False)) is None
    assert replicas_handoff(scaled_deployment(snap, 3, owned_by_qmo=True)) is not None
    assert replicas_handoff(None) is None


def test_the_autoscalers_own_words_reach_status() -> None:
    unavailable = {
        "kind": "HorizontalPodAutoscaler",
        "status": {
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "reason": "FailedGetPodsMetric",
                    "message": "unable to get metric vllm:num_requests_running",
                },
            ]
        },
    }
    healthy, reason, message = autoscaler_report(unavailable)
    assert (healthy, reason) == (False, "FailedGetPodsMetric")
    assert "unable to get metric vllm:num_requests_running" in message
    not_ready = {"kind": "ScaledObject", "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    assert autoscaler_report(not_ready)[0] is False
    assert autoscaler_report(None)[:2] == (None, "NotCreated")


def test_load_query_selects_one_model_in_one_namespace() -> None:
    query = load_query("vllm:kv_cache_usage_perc", namespace="prod", model="llama")
    assert query == 'sum(vllm:kv_cache_usage_perc{namespace="prod",model_name="llama"})'
    assert json.loads(json.dumps(query)) == query


class DiscoveryServer:
    """What AutoscalingDiscovery uses of Kube: the discovery answer, counted."""

    def __init__(self, resources: set[str] | None) -> None:
        self.resources = resources
        self.asked = 0

    async def served_resources(self, group_version: str) -> set[str] | None:
        assert group_version == "keda.sh/v1alpha1"
        self.asked += 1
        return self.resources


def test_keda_detection_asks_discovery_at_most_once_per_ttl() -> None:
    import asyncio

    from qmo.reconcile.autoscaling import AutoscalingDiscovery

    now = [0.0]
    server = DiscoveryServer(None)
    discovery = AutoscalingDiscovery(
        server,  # type: ignore[arg-type]
        prometheus_url="http://prom:9090",
        ttl=60,
        clock=lambda: now[0],
    )

    async def reconciles(count: int) -> AutoscalingEnvironment:
        return [await discovery.environment() for _ in range(count)][-1]

    assert asyncio.run(reconciles(50)) == AutoscalingEnvironment(
        keda=False, prometheus_url="http://prom:9090"
    )
    assert server.asked == 1
    server.resources = {"scaledobjects", "scaledjobs", "triggerauthentications"}  # KEDA installed
    now[0] = 61
    assert asyncio.run(reconciles(5)).keda is True
    assert server.asked == 2


def test_a_kind_found_gone_mid_reconcile_makes_the_next_one_discover_again() -> None:
    import asyncio

    from qmo.reconcile.autoscaling import AutoscalingDiscovery

    server = DiscoveryServer({"scaledobjects"})
    discovery = AutoscalingDiscovery(server, ttl=60, clock=lambda: 0.0)  # type: ignore[arg-type]
    assert asyncio.run(discovery.environment()).keda is True
    server.resources = None  # KEDA's CRD removed; a request to its API got a 404 for the path
    discovery.forget()
    assert asyncio.run(discovery.environment()).keda is False
    assert server.asked == 2


def test_a_kind_no_longer_served_is_retried_soon_and_a_refusal_slowly() -> None:
    from qmo.handlers.operator import _retry_signal
    from qmo.reconcile.kube import ApiError

    assert _retry_signal(ApiError(404, "Not Found", "404 page not found")).delay == 5
    assert _retry_signal(ApiError(403, "Forbidden", "no rights")).delay == 60
