"""The artifact side: the content key, the ModelArtifact, the cache claim, the quantize and evict Jobs.

An artifact is identified by what it contains: the source pinned to a commit and the normalised recipe.
Normalising first (defaults made explicit, knobs a method ignores dropped) means two specs that would
produce the same bytes get the same key, and therefore share one Job and one copy in the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from qmo.api.artifact import ArtifactJobSpec, ModelArtifactSpec
from qmo.api.base import API_VERSION, LocalObjectReference
from qmo.api.quantizedmodel import (
    CalibrationSpec,
    EvaluationSpec,
    ModelSource,
    PvcSource,
    QuantizationSpec,
)
from qmo.desired.common import (
    RESTRICTED_CONTAINER_SECURITY,
    RESTRICTED_POD_SECURITY,
    Manifest,
    Owner,
    gpu_resources,
    human_bytes,
)
from qmo.desired.names import (
    CACHE_CLAIM_NAME,
    CACHE_MOUNT_PATH,
    LABEL_ARTIFACT,
    LABEL_ARTIFACT_KEY,
    LABEL_MODEL,
    common_labels,
    evict_job_name,
    key_label,
    quantize_job_name,
)

GIB = 2**30
_CALIBRATED = frozenset({"awq", "gptq", "w8a8", "nvfp4"})
_DEFAULT_SYMMETRIC = {"awq": False, "gptq": True, "w8a8": True}
SOURCE_MOUNT_PATH = "/source"
CALIBRATION_MOUNT_PATH = "/calibration"
EVALUATION_MOUNT_PATH = "/evaluation"
TERMINATION_LOG = "/dev/termination-log"


def artifact_recipe(quantization: QuantizationSpec) -> QuantizationSpec:
    """The recipe as the artifact stores it: explicit defaults, irrelevant knobs at their defaults.

    Only what changes the bytes: the quality gate and the evaluation stay out (unset here), so neither
    enters the content key; the evaluation travels on ModelArtifactSpec.evaluation instead.
    """
    method = quantization.method
    if method in ("none", "prequantized", "bitsandbytes-nf4"):
        # bitsandbytes quantizes while vLLM loads: the cache holds the 16-bit source, like `none`.
        return QuantizationSpec(method="prequantized" if method == "prequantized" else "none", ignore=[])
    calibration = quantization.calibration if method in _CALIBRATED else CalibrationSpec()
    return QuantizationSpec(
        method=method,
        bits=quantization.effective_bits,
        group_size=quantization.group_size if method in ("awq", "gptq", "w8a8") else 128,
        symmetric=(
            quantization.symmetric if quantization.symmetric is not None else _DEFAULT_SYMMETRIC.get(method)
        ),
        act_order=quantization.act_order if method in ("gptq", "w8a8") else False,
        dampening=quantization.dampening if method in ("gptq", "w8a8") else 0.01,
        backend=quantization.backend,
        calibration=calibration,
        ignore=sorted(set(quantization.ignore)),
    )


def key_source(source: ModelSource) -> dict[str, Any]:
    """The part of the source that determines the bytes: never the token (same bytes whoever reads them)."""
    if source.huggingface is not None:
        return {"huggingface": {"repo": source.huggingface.repo, "revision": source.huggingface.revision}}
    assert source.pvc is not None
    return {"pvc": source.pvc.to_wire()}


def content_key(source: ModelSource, recipe: QuantizationSpec) -> str:
    """sha256 of the canonical JSON of (pinned source, normalised recipe)."""
    canonical = json.dumps(
        {"source": key_source(source), "recipe": recipe.to_wire()}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def source_slug(source: ModelSource) -> str:
    if source.huggingface is not None:
        return source.huggingface.repo.rsplit("/", 1)[-1]
    assert source.pvc is not None
    return source.pvc.claim_name


def cache_claim_size_bytes(checkpoint_bytes: int, source_bytes: int) -> int:
    """Room for the source download and the result, with 20% headroom, in whole GiB, at least 10 GiB."""
    return max(10, math.ceil((checkpoint_bytes + source_bytes) * 1.2 / GIB)) * GIB


def artifact_size(size_bytes: int | None, predicted_bytes: int) -> str | None:
    """The ModelArtifact's SIZE column: the checkpoint's bytes on disk as the worker's manifest counts them,
    or, until a summary reports them (and where a Job ends without one), the planner's prediction marked
    ``~``; None when there is neither."""
    if size_bytes is not None:
        return human_bytes(size_bytes)
    return f"~{human_bytes(predicted_bytes)}" if predicted_bytes > 0 else None


def build_cache_claim(
    *, namespace: str, size_bytes: int, storage_class: str | None, access_mode: str
) -> Manifest:
    spec: Manifest = {
        "accessModes": [access_mode],
        "resources": {"requests": {"storage": f"{size_bytes // GIB}Gi"}},
    }
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": CACHE_CLAIM_NAME,
            "namespace": namespace,
            "labels": common_labels(component="cache", instance=CACHE_CLAIM_NAME),
        },
        "spec": spec,
    }


def build_model_artifact(
    *, name: str, namespace: str, spec: ModelArtifactSpec, users: list[Owner]
) -> Manifest:
    """The ModelArtifact; every model using it holds a non-controller ownerReference (GC on last user)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelArtifact",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                **common_labels(component="artifact", instance=name),
                LABEL_ARTIFACT_KEY: key_label(spec.key),
            },
            "ownerReferences": [user.reference(controller=False) for user in users],
        },
        "spec": spec.to_wire(),
    }


def quantize_args(spec: ModelArtifactSpec) -> list[str]:
    """The worker's command line (DESIGN §7); the flags are the `qmo quantize` contract."""
    recipe = spec.recipe
    out = f"{CACHE_MOUNT_PATH}/{spec.path}"
    args = ["--method", recipe.method, "--out", out, "--key", spec.key, "--termination-log", TERMINATION_LOG]
    if spec.source.huggingface is not None:
        args += ["--hf-repo", spec.source.huggingface.repo, "--revision", spec.source.huggingface.revision]
    else:
        assert spec.source.pvc is not None
        args += ["--source", f"{SOURCE_MOUNT_PATH}/{spec.source.pvc.path.strip('/')}".rstrip("/")]
    if recipe.method in ("none", "prequantized"):
        return args
    args += ["--backend", recipe.backend]
    if recipe.bits is not None:
        args += ["--bits", str(recipe.bits)]
    if recipe.method in ("awq", "gptq", "w8a8"):
        args += ["--group-size", str(recipe.group_size)]
        args += ["--symmetric" if recipe.symmetric else "--asymmetric"]
    if recipe.method in ("gptq", "w8a8"):
        args += ["--dampening", repr(recipe.dampening)]
        if recipe.act_order:
            args.append("--act-order")
    if recipe.method in _CALIBRATED:
        calibration = recipe.calibration
        if calibration.config_map_ref is not None:
            args += ["--calibration-dir", CALIBRATION_MOUNT_PATH]
        elif calibration.pvc is not None:
            args += ["--calibration-jsonl", f"{CALIBRATION_MOUNT_PATH}/{calibration.pvc.path.strip('/')}"]
        elif calibration.dataset is not None:
            args += ["--calibration-dataset", calibration.dataset]
        args += [
            "--calibration-samples",
            str(calibration.samples),
            "--calibration-seq-len",
            str(calibration.sequence_length),
        ]
    for pattern in recipe.ignore:
        args += ["--ignore", pattern]
    return args + evaluation_args(spec.evaluation or EvaluationSpec())


def evaluation_args(evaluation: EvaluationSpec) -> list[str]:
    """The worker's evaluation flags (only for methods that quantize: none/prequantized measure nothing)."""
    if not evaluation.enabled:
        return ["--no-eval"]
    args: list[str] = []
    if evaluation.config_map_ref is not None:
        args += ["--eval-dir", EVALUATION_MOUNT_PATH]
    elif evaluation.pvc is not None:
        args += ["--eval-jsonl", f"{EVALUATION_MOUNT_PATH}/{evaluation.pvc.path.strip('/')}"]
    elif evaluation.dataset is not None:
        args += ["--eval-dataset", evaluation.dataset]
    return [*args, "--eval-tokens", str(evaluation.tokens)]


def _artifact_labels(artifact: Owner, key: str, component: str) -> dict[str, str]:
    return {
        **common_labels(component=component, instance=artifact.name),
        LABEL_ARTIFACT: artifact.name,
        LABEL_ARTIFACT_KEY: key_label(key),
    }


def _job(
    *,
    name: str,
    namespace: str,
    owner: Owner,
    labels: dict[str, str],
    container: Manifest,
    volumes: list[Manifest],
    backoff_limit: int,
    deadline: int,
    pod_annotations: dict[str, str],
    gpu_placement: ArtifactJobSpec | None = None,
) -> Manifest:
    """Every Job qmo runs: restricted, no ServiceAccount token, owned by ``owner``; GPU placement only for
    Jobs that request GPUs (CPU Jobs may land anywhere)."""
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": RESTRICTED_POD_SECURITY,
        "containers": [container],
        "volumes": volumes,
    }
    if gpu_placement is not None:
        if gpu_placement.node_selector:
            pod_spec["nodeSelector"] = dict(sorted(gpu_placement.node_selector.items()))
        if gpu_placement.tolerations:
            pod_spec["tolerations"] = list(gpu_placement.tolerations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner.reference(controller=True)],
        },
        "spec": {
            "backoffLimit": backoff_limit,
            "activeDeadlineSeconds": deadline,
            "template": {"metadata": _pod_metadata(labels, pod_annotations), "spec": pod_spec},
        },
    }


def _pod_metadata(labels: dict[str, str], annotations: dict[str, str]) -> Manifest:
    metadata: Manifest = {"labels": dict(labels)}
    if annotations:
        metadata["annotations"] = dict(sorted(annotations.items()))
    return metadata


def _mount_texts(
    volumes: list[Manifest],
    mounts: list[Manifest],
    *,
    name: str,
    mount_path: str,
    config_map: LocalObjectReference | None,
    claim_name: str | None,
) -> None:
    """A user's texts (a ConfigMap, or the claim holding a JSONL file) mounted read-only at ``mount_path``."""
    if config_map is not None:
        volumes.append({"name": name, "configMap": {"name": config_map.name}})
    elif claim_name is not None:
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim_name, "readOnly": True}})
    else:
        return
    mounts.append({"name": name, "mountPath": mount_path, "readOnly": True})


def build_quantize_job(*, artifact: Owner, namespace: str, spec: ModelArtifactSpec) -> Manifest:
    """The Job that fills /cache/<key> (quantizing, or only copying for none/prequantized)."""
    job = spec.job
    volumes: list[Manifest] = [
        {"name": "cache", "persistentVolumeClaim": {"claimName": spec.cache_claim_name}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[Manifest] = [
        {"name": "cache", "mountPath": CACHE_MOUNT_PATH},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    env: list[Manifest] = [
        {"name": "HOME", "value": "/tmp"},
        # Downloads land in the cache volume, so a retried Job does not download twice.
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT_PATH}/.hf-home"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    source = spec.source
    if source.huggingface is not None and source.huggingface.token_secret_ref is not None:
        secret = source.huggingface.token_secret_ref
        # The token reaches only this container, as an env var from the Secret: never in args or status.
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}}
        )
    if source.pvc is not None:
        volumes.append(
            {
                "name": "source",
                "persistentVolumeClaim": {"claimName": source.pvc.claim_name, "readOnly": True},
            }
        )
        mounts.append({"name": "source", "mountPath": SOURCE_MOUNT_PATH, "readOnly": True})
    calibration = spec.recipe.calibration
    if spec.recipe.method in _CALIBRATED:
        _mount_texts(
            volumes,
            mounts,
            name="calibration",
            mount_path=CALIBRATION_MOUNT_PATH,
            config_map=calibration.config_map_ref,
            claim_name=calibration.pvc.claim_name if calibration.pvc is not None else None,
        )
    evaluation = spec.evaluation or EvaluationSpec()
    if spec.recipe.method not in ("none", "prequantized") and evaluation.enabled:
        _mount_texts(
            volumes,
            mounts,
            name="evaluation",
            mount_path=EVALUATION_MOUNT_PATH,
            config_map=evaluation.config_map_ref,
            claim_name=evaluation.pvc.claim_name if evaluation.pvc is not None else None,
        )
    container: Manifest = {
        "name": "quantize",
        "image": job.image,
        "command": ["qmo", "quantize"],
        "args": quantize_args(spec),
        "env": env,
        "volumeMounts": mounts,
        "resources": gpu_resources(job.resources, resource_name=job.gpu_resource_name, gpus=job.gpus),
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return _job(
        name=quantize_job_name(artifact.name),
        namespace=namespace,
        owner=artifact,
        labels=_artifact_labels(artifact, spec.key, "quantizer"),
        container=container,
        volumes=volumes,
        backoff_limit=job.backoff_limit,
        deadline=job.active_deadline_seconds,
        pod_annotations=job.pod_annotations,
        gpu_placement=job if job.gpus > 0 or job.device == "cpu" else None,
    )


def build_inspect_job(
    *, model: Owner, namespace: str, name: str, source: PvcSource, image: str, pod_annotations: dict[str, str]
) -> Manifest:
    """A CPU-only Job that copies the PVC model's config.json into its termination message, so the
    operator can plan before any GPU is spent without mounting user volumes itself (4096 bytes at most)."""
    config_path = f"{SOURCE_MOUNT_PATH}/{source.path.strip('/')}/config.json".replace("//", "/")
    labels = {**common_labels(component="inspector", instance=model.name), LABEL_MODEL: model.name}
    container: Manifest = {
        "name": "inspect",
        "image": image,
        "command": ["cp", "--", config_path, TERMINATION_LOG],
        "volumeMounts": [{"name": "source", "mountPath": SOURCE_MOUNT_PATH, "readOnly": True}],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    return _job(
        name=name,
        namespace=namespace,
        owner=model,
        labels=labels,
        container=container,
        volumes=[
            {"name": "source", "persistentVolumeClaim": {"claimName": source.claim_name, "readOnly": True}}
        ],
        backoff_limit=1,
        deadline=600,
        pod_annotations=pod_annotations,
    )


def build_evict_job(*, artifact: Owner, namespace: str, spec: ModelArtifactSpec) -> Manifest:
    """The Job the artifact's finalizer runs to delete its files (no shell: the paths are hex keys)."""
    out = f"{CACHE_MOUNT_PATH}/{spec.path}"
    container: Manifest = {
        "name": "evict",
        "image": spec.job.image,
        "command": ["rm", "-rf", "--", out, f"{out}.partial"],
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_MOUNT_PATH}],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
    }
    return _job(
        name=evict_job_name(artifact.name),
        namespace=namespace,
        owner=artifact,
        labels=_artifact_labels(artifact, spec.key, "evictor"),
        container=container,
        volumes=[{"name": "cache", "persistentVolumeClaim": {"claimName": spec.cache_claim_name}}],
        backoff_limit=3,
        deadline=600,
        pod_annotations={},
    )
