"""Autoscaling on vLLM's load (spec.serving.autoscaling): which autoscaler, on what, and who owns replicas.

While a model autoscales, its replica count belongs to the autoscaler: the Deployment qmo applies leaves
``spec.replicas`` out, so qmo's server-side apply never writes over what the autoscaler set. Two
autoscalers are rendered, chosen per cluster:

- KEDA installed (its ``scaledobjects.keda.sh`` served) and a Prometheus address configured: a
  ``ScaledObject`` with Prometheus triggers that query the model's vLLM metric directly; it can scale to
  zero (``idleReplicaCount: 0``).
- otherwise: an ``autoscaling/v2`` HorizontalPodAutoscaler on a Pods metric named like vLLM's, which a
  custom-metrics adapter (prometheus-adapter) serves from the same series (docs/concepts.md).

Nothing here reads the cluster: what is installed arrives as an ``AutoscalingEnvironment``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qmo.api.quantizedmodel import AutoscalingSpec, PlanStatus, ServingSpec
from qmo.desired.common import Manifest, Owner
from qmo.desired.names import serving_name
from qmo.desired.serving import serving_child_metadata

VLLM_METRICS: dict[str, str] = {
    "runningRequests": "vllm:num_requests_running",
    "queueDepth": "vllm:num_requests_waiting",
    "kvCacheUsage": "vllm:kv_cache_usage_perc",
}
KEDA_API_VERSION = "keda.sh/v1alpha1"
HPA_API_VERSION = "autoscaling/v2"
# Field manager of the one apply that hands spec.replicas over to the autoscaler (see replicas_handoff).
HANDOFF_FIELD_MANAGER = "qmo-replicas-handoff"
# A trigger that only says "this model is busy" must never size the model: with this per-replica threshold
# its replica count is 1 whenever anything runs (ceil(value / threshold)), and the model's metric decides.
ACTIVITY_THRESHOLD = 1_000_000
KV_CACHE_USAGE_TARGET = 0.8
# A queue of a quarter of a replica's concurrency: a new request waits about a quarter of a request's time.
QUEUE_SHARE_OF_CONCURRENCY = 0.25
# How often KEDA queries Prometheus (seconds); the HPA it drives syncs on the controller's own period.
KEDA_POLLING_SECONDS = 15


@dataclass(frozen=True)
class AutoscalingEnvironment:
    """What the cluster offers an autoscaling model (observed by the shell, cached)."""

    keda: bool = False
    """KEDA's ScaledObject API is served."""
    prometheus_url: str | None = None
    """Where KEDA's Prometheus triggers query (the chart's autoscaling.prometheus.serverAddress)."""


@dataclass(frozen=True)
class AutoscalerIntent:
    """The autoscaler a model gets, and the facts its status reports."""

    manifest: Manifest
    kind: str
    metric: str
    target: float
    target_source: str
    min_replicas: int
    max_replicas: int
    note: str = ""
    """Why the autoscaler is not the one the spec would get with KEDA (a fallback), or empty."""


def default_target(autoscaling: AutoscalingSpec, serving: ServingSpec, plan: PlanStatus) -> tuple[float, str]:
    """The per-replica target and where it came from: the spec, or the plan's concurrency."""
    if autoscaling.target is not None:
        return autoscaling.target, "spec"
    if autoscaling.metric == "kvCacheUsage":
        return KV_CACHE_USAGE_TARGET, "default (headroom before vLLM preempts)"
    if serving.concurrency is not None:
        concurrency, source = float(serving.concurrency), "spec.serving.concurrency"
    else:
        # Sequences at full context the planned KV cache holds: shorter requests fit more, so a floor.
        concurrency, source = float(max(1, math.floor(plan.max_concurrency))), "plan maxConcurrency"
    if autoscaling.metric == "runningRequests":
        return concurrency, source
    return float(max(1, math.ceil(concurrency * QUEUE_SHARE_OF_CONCURRENCY))), f"{source} / 4"


def quantity(value: float) -> str:
    """A target as a Kubernetes quantity: whole numbers plain, fractions in milli-units (0.8 -> 800m)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def threshold(value: float) -> str:
    """A KEDA threshold (a decimal string)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def model_series(metric: str, *, namespace: str, model: str) -> str:
    """One model's series of a vLLM metric: vLLM labels each with the served model name (qmo serves a model
    under its QuantizedModel's name), the scrape adds the pod's namespace."""
    return f'{metric}{{namespace="{namespace}",model_name="{model}"}}'


def load_query(metric: str, *, namespace: str, model: str) -> str:
    """The model's load summed over its replicas; KEDA divides by the replica count (AverageValue)."""
    return f"sum({model_series(metric, namespace=namespace, model=model)})"


def activity_query(*, namespace: str, model: str) -> str:
    """Requests running or waiting anywhere in the model: zero means idle."""
    running = load_query(VLLM_METRICS["runningRequests"], namespace=namespace, model=model)
    waiting = load_query(VLLM_METRICS["queueDepth"], namespace=namespace, model=model)
    return f"{running} + {waiting}"


def scale_down_behavior(idle_seconds: int) -> Manifest:
    """Replicas go only after the load stayed low for idleSeconds: a GPU replica takes minutes to come
    back, so a dip must not cost one (and the count does not flap)."""
    return {"scaleDown": {"stabilizationWindowSeconds": idle_seconds}}


def scale_target(model: str) -> Manifest:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": serving_name(model)}


def build_horizontal_pod_autoscaler(
    *, model: str, namespace: str, owner: Owner, autoscaling: AutoscalingSpec, target: float
) -> Manifest:
    """An autoscaling/v2 HPA on the Pods metric named like vLLM's (a custom-metrics adapter serves it)."""
    metric = VLLM_METRICS[autoscaling.metric]
    return {
        "apiVersion": HPA_API_VERSION,
        "kind": "HorizontalPodAutoscaler",
        "metadata": serving_child_metadata(model=model, namespace=namespace, owner=owner),
        "spec": {
            "scaleTargetRef": scale_target(model),
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": metric},
                        "target": {"type": "AverageValue", "averageValue": quantity(target)},
                    },
                }
            ],
            "behavior": scale_down_behavior(autoscaling.idle_seconds),
        },
    }


def prometheus_trigger(name: str, *, server: str, query: str, threshold_value: float) -> Manifest:
    return {
        "type": "prometheus",
        "name": name,
        "metricType": "AverageValue",
        "metadata": {"serverAddress": server, "query": query, "threshold": threshold(threshold_value)},
    }


def build_scaled_object(
    *,
    model: str,
    namespace: str,
    owner: Owner,
    autoscaling: AutoscalingSpec,
    target: float,
    prometheus_url: str,
) -> Manifest:
    """A KEDA ScaledObject: the model's vLLM metric from Prometheus; with scaleToZero, idle goes to zero."""
    metric = VLLM_METRICS[autoscaling.metric]
    triggers = [
        prometheus_trigger(
            "load",
            server=prometheus_url,
            query=load_query(metric, namespace=namespace, model=model),
            threshold_value=target,
        )
    ]
    spec: Manifest = {
        "scaleTargetRef": scale_target(model),
        "minReplicaCount": autoscaling.min_replicas,
        "maxReplicaCount": autoscaling.max_replicas,
        "pollingInterval": KEDA_POLLING_SECONDS,
        "advanced": {
            "horizontalPodAutoscalerConfig": {"behavior": scale_down_behavior(autoscaling.idle_seconds)}
        },
    }
    if autoscaling.scale_to_zero:
        assert autoscaling.wake_query is not None  # AutoscalingSpec requires it with scaleToZero
        # Idle means no request running or waiting, whatever metric sizes the model (a model scaled on its
        # queue is busy while it runs requests with an empty queue).
        triggers.append(
            prometheus_trigger(
                "activity",
                server=prometheus_url,
                query=activity_query(namespace=namespace, model=model),
                threshold_value=ACTIVITY_THRESHOLD,
            )
        )
        # With no replica there is no vLLM to report load: what wakes the model comes from in front of it.
        triggers.append(
            prometheus_trigger(
                "wake", server=prometheus_url, query=autoscaling.wake_query, threshold_value=target
            )
        )
        spec["idleReplicaCount"] = 0
        spec["cooldownPeriod"] = autoscaling.idle_seconds
    spec["triggers"] = triggers
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": serving_child_metadata(model=model, namespace=namespace, owner=owner),
        "spec": spec,
    }


def plan_autoscaler(
    *,
    model: str,
    namespace: str,
    owner: Owner,
    serving: ServingSpec,
    plan: PlanStatus,
    environment: AutoscalingEnvironment,
) -> AutoscalerIntent | None:
    """The autoscaler for a model (None when it does not autoscale): KEDA where it can work, else an HPA."""
    autoscaling = serving.autoscaling
    if autoscaling is None:
        return None
    target, source = default_target(autoscaling, serving, plan)
    metric = VLLM_METRICS[autoscaling.metric]
    if environment.keda and environment.prometheus_url:
        manifest = build_scaled_object(
            model=model,
            namespace=namespace,
            owner=owner,
            autoscaling=autoscaling,
            target=target,
            prometheus_url=environment.prometheus_url,
        )
        low = 0 if autoscaling.scale_to_zero else autoscaling.min_replicas
        return AutoscalerIntent(
            manifest, "ScaledObject", metric, target, source, low, autoscaling.max_replicas
        )
    if environment.keda:
        note = (
            "KEDA is installed but the operator has no Prometheus address (chart value "
            "autoscaling.prometheus.serverAddress, qmo run --prometheus-url): using a HorizontalPodAutoscaler"
        )
    else:
        note = ""
    if autoscaling.scale_to_zero:
        missing = "KEDA is not installed" if not environment.keda else "KEDA has no Prometheus address"
        note = f"scaleToZero needs KEDA with a Prometheus address ({missing}): keeping at least minReplicas"
    manifest = build_horizontal_pod_autoscaler(
        model=model, namespace=namespace, owner=owner, autoscaling=autoscaling, target=target
    )
    return AutoscalerIntent(
        manifest,
        "HorizontalPodAutoscaler",
        metric,
        target,
        source,
        autoscaling.min_replicas,
        autoscaling.max_replicas,
        note,
    )


def wanted_replicas(serving: ServingSpec, deployment: Mapping[str, Any] | None) -> int:
    """The replica count the model should have: the spec's, or while autoscaling what the autoscaler set
    on the Deployment (its minReplicas before the Deployment exists)."""
    if serving.autoscaling is None:
        return serving.replicas
    replicas = ((deployment or {}).get("spec") or {}).get("replicas")
    return int(replicas) if replicas is not None else serving.autoscaling.min_replicas


def owns_replicas(deployment: Mapping[str, Any], manager: str) -> bool:
    """Whether ``manager``'s server-side apply owns the Deployment's spec.replicas. Without managedFields
    (a body that lost them) it is assumed to, so the handoff is never skipped for want of knowing."""
    entries = (deployment.get("metadata") or {}).get("managedFields")
    if entries is None:
        return True
    return any(
        entry.get("manager") == manager
        and entry.get("operation") == "Apply"
        and "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
        for entry in entries
    )


def replicas_handoff(deployment: Mapping[str, Any] | None, *, manager: str = "qmo") -> Manifest | None:
    """The apply (by HANDOFF_FIELD_MANAGER) that keeps the Deployment's replica count when qmo lets go of it.

    A server-side apply that leaves out a field its manager alone owned removes the field, and the API
    server then defaults spec.replicas to 1: turning autoscaling on would drop a model from 4 replicas to
    1 before the autoscaler acts. Applying the current count under a second manager first makes that
    manager a co-owner, so the value stays when qmo's own apply releases it; the autoscaler's next scale
    takes the field over from it.
    """
    if deployment is None or not owns_replicas(deployment, manager):
        return None
    replicas = (deployment.get("spec") or {}).get("replicas")
    if replicas is None:
        return None
    meta = deployment["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": int(replicas)},
    }


def autoscaler_report(observed: Mapping[str, Any] | None) -> tuple[bool | None, str, str]:
    """(healthy, reason, message) from the autoscaler's own conditions: an HPA's AbleToScale and
    ScalingActive (a metric it cannot read says so there), a ScaledObject's Ready."""
    if observed is None:
        return None, "NotCreated", "the autoscaler has not been created yet"
    conditions = list((observed.get("status") or {}).get("conditions") or [])
    wanted = ("Ready",) if observed.get("kind") == "ScaledObject" else ("AbleToScale", "ScalingActive")
    for cond in conditions:
        if cond.get("type") in wanted and cond.get("status") == "False":
            reason = str(cond.get("reason") or cond["type"])
            return False, reason, f"{cond['type']}: {reason}: {cond.get('message') or ''}".strip()
    if not any(cond.get("type") in wanted for cond in conditions):
        return None, "NotObserved", "the autoscaler has not reported yet"
    limited = next(
        (c for c in conditions if c.get("type") == "ScalingLimited" and c.get("status") == "True"), None
    )
    if limited is not None:
        return True, "Scaling", f"ScalingLimited: {limited.get('reason')}: {limited.get('message') or ''}"
    return True, "Scaling", ""


def autoscaling_status(
    intent: AutoscalerIntent, deployment: Mapping[str, Any] | None, observed: Mapping[str, Any] | None
) -> tuple[dict[str, Any], bool | None, str]:
    """status.autoscaling, and the Autoscaling condition's (status, reason)."""
    healthy, reason, message = autoscaler_report(observed)
    desired = ((deployment or {}).get("spec") or {}).get("replicas")
    status: dict[str, Any] = {
        "autoscaler": intent.kind,
        "name": intent.manifest["metadata"]["name"],
        "metric": intent.metric,
        "target": intent.target,
        "targetSource": intent.target_source,
        "minReplicas": intent.min_replicas,
        "maxReplicas": intent.max_replicas,
        "currentReplicas": int(((deployment or {}).get("status") or {}).get("replicas", 0)),
        "message": "; ".join(part for part in (intent.note, message) if part),
    }
    if desired is not None:
        status["desiredReplicas"] = int(desired)
    return status, healthy, reason


def autoscaling_message(status: Mapping[str, Any]) -> str:
    """The Autoscaling condition's message: who scales, on what, to where."""
    text = (
        f"{status['autoscaler']} {status['name']} scales {status['minReplicas']}-{status['maxReplicas']} "
        f"replicas on {status['metric']} at {status['target']:g} per replica ({status['targetSource']}); "
        f"desired {status.get('desiredReplicas', '?')}, current {status['currentReplicas']}"
    )
    return f"{text}; {status['message']}" if status.get("message") else text
