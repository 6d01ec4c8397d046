"""The serving side: the vLLM Deployment, its Service and PodDisruptionBudget (DESIGN §8)."""

from __future__ import annotations

from qmo.api.quantizedmodel import NetworkPolicySpec, PlanStatus, ServingSpec
from qmo.desired.common import (
    RESTRICTED_CONTAINER_SECURITY,
    RESTRICTED_POD_SECURITY,
    Manifest,
    Owner,
    Placement,
    gpu_resources,
)
from qmo.desired.names import (
    CACHE_CLAIM_NAME,
    CACHE_MOUNT_PATH,
    LABEL_ARTIFACT_KEY,
    LABEL_MODEL,
    common_labels,
    key_label,
    serving_name,
)

VLLM_PORT = 8000


def selector_labels(model: str) -> dict[str, str]:
    return {LABEL_MODEL: model, "app.kubernetes.io/component": "serving"}


def served_model_path(artifact_path: str) -> str:
    return f"{CACHE_MOUNT_PATH}/{artifact_path}"


def vllm_container_args(
    *, model: str, artifact_path: str, plan: PlanStatus, extra_args: list[str]
) -> list[str]:
    """`vllm serve <path>` with the planned arguments; the user's extras come last so they win."""
    return [
        served_model_path(artifact_path),
        "--served-model-name",
        model,
        "--host",
        "0.0.0.0",
        "--port",
        str(VLLM_PORT),
        *plan.vllm_args,
        *extra_args,
    ]


def build_serving_deployment(
    *,
    model: str,
    namespace: str,
    owner: Owner,
    serving: ServingSpec,
    plan: PlanStatus,
    artifact_key: str,
    artifact_path: str,
    placement: Placement,
) -> Manifest:
    name = serving_name(model)
    labels = {**common_labels(component="serving", instance=model), LABEL_MODEL: model}
    pod_labels = {**labels, LABEL_ARTIFACT_KEY: key_label(artifact_key)}
    placement = placement.merged(serving.node_selector, list(serving.tolerations))
    tp = plan.tensor_parallel_size
    volumes: list[Manifest] = [
        {"name": "cache", "persistentVolumeClaim": {"claimName": CACHE_CLAIM_NAME, "readOnly": True}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[Manifest] = [
        {"name": "cache", "mountPath": CACHE_MOUNT_PATH, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if tp > 1:
        # NCCL between tensor-parallel workers needs a large /dev/shm; the container default is 64 MiB.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    probe_http = {"httpGet": {"path": "/health", "port": "http"}}
    container: Manifest = {
        "name": "vllm",
        "image": serving.image,
        "command": ["vllm", "serve"],
        "args": vllm_container_args(
            model=model, artifact_path=artifact_path, plan=plan, extra_args=list(serving.extra_args)
        ),
        "env": [
            {"name": "HOME", "value": "/tmp"},
            # Weights are local: vLLM must never reach for the hub at start (and has no token to do so).
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        ],
        "ports": [{"name": "http", "containerPort": VLLM_PORT, "protocol": "TCP"}],
        "resources": gpu_resources(serving.resources, resource_name=placement.resource_name, gpus=tp),
        "volumeMounts": mounts,
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        # Loading weights and capturing CUDA graphs can take many minutes; liveness waits for startup.
        "startupProbe": {**probe_http, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**probe_http, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe_http, "periodSeconds": 15, "failureThreshold": 4},
    }
    pod_spec: Manifest = {
        "automountServiceAccountToken": False,
        "securityContext": RESTRICTED_POD_SECURITY,
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 60,
    }
    if placement.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(placement.node_selector.items()))
    if placement.tolerations:
        pod_spec["tolerations"] = list(placement.tolerations)
    if serving.affinity:
        pod_spec["affinity"] = serving.affinity
    # Without surge a rollout replaces one replica at a time on the GPUs it frees: never two full copies.
    strategy = (
        {"maxSurge": 1, "maxUnavailable": 0} if serving.allow_surge else {"maxSurge": 0, "maxUnavailable": 1}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner.reference(controller=True)],
        },
        "spec": {
            "replicas": serving.replicas,
            "selector": {"matchLabels": selector_labels(model)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": strategy},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(VLLM_PORT),
                        "prometheus.io/path": "/metrics",
                        **serving.pod_annotations,
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def serving_child_metadata(*, model: str, namespace: str, owner: Owner) -> Manifest:
    """Metadata of the objects beside the Deployment (Service, PDB, NetworkPolicy): one name, one owner."""
    return {
        "name": serving_name(model),
        "namespace": namespace,
        "labels": {**common_labels(component="serving", instance=model), LABEL_MODEL: model},
        "ownerReferences": [owner.reference(controller=True)],
    }


def build_serving_service(*, model: str, namespace: str, owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": serving_child_metadata(model=model, namespace=namespace, owner=owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(model),
            "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_pod_disruption_budget(*, model: str, namespace: str, owner: Owner) -> Manifest:
    """At most one replica voluntarily disrupted at a time (a node drain never takes the whole model)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": serving_child_metadata(model=model, namespace=namespace, owner=owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(model)}},
    }


def build_network_policy(*, model: str, namespace: str, owner: Owner, policy: NetworkPolicySpec) -> Manifest:
    """Ingress to the vLLM port of this model's pods only from ``policy.ingressFrom`` (default: the namespace).

    Ingress only: a serving pod reads its weights from the cache volume and needs no network of its own,
    and restricting egress would also cut DNS, which a cluster's own policies handle better.
    """
    peers = [peer.to_wire() for peer in policy.ingress_from] or [{"podSelector": {}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": serving_child_metadata(model=model, namespace=namespace, owner=owner),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(model)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": VLLM_PORT}]}],
        },
    }


def endpoint_url(*, model: str, namespace: str) -> str:
    return f"http://{serving_name(model)}.{namespace}.svc:{VLLM_PORT}/v1"
