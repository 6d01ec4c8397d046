"""Every QuantizedModel decision, pure: from what the operator observed to what it should do.

``reconcile/model.py`` observes (a ``ModelSnapshot``: the model, its GPU class, source, the namespace's
artifacts, its serving objects and pods), reads the serving pods' ``/metrics`` when a verification is due
(``reconcile/verify.py``), and applies the ``ModelDecision`` this module returns. Nothing here reads the
cluster or the clock: the same snapshot gives the same decision, which the unit tests drive table by table.

Where things are chosen:
- the plan and the artifact the model needs: ``plan_model``;
- which children to create, apply, delete and which old artifacts to let go: ``decide_model``;
- the phase and its message: ``choose_phase``; the conditions: ``model_conditions``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from qmo.api.artifact import ArtifactJobSpec, ModelArtifactSpec
from qmo.api.backends import BACKENDS
from qmo.api.base import API_VERSION
from qmo.api.quantizedmodel import ModelSource, PlanStatus, QuantizationSpec, QuantizedModelSpec
from qmo.desired.artifact import (
    artifact_recipe,
    build_cache_claim,
    build_model_artifact,
    cache_claim_size_bytes,
    content_key,
    source_slug,
)
from qmo.desired.autoscaling import (
    AutoscalerIntent,
    AutoscalingEnvironment,
    autoscaling_message,
    autoscaling_status,
    plan_autoscaler,
    replicas_handoff,
    wanted_replicas,
)
from qmo.desired.common import Event, Manifest, Owner, ResolvedGPU, label_selector
from qmo.desired.multinode import (
    MultiNodeShape,
    NodePod,
    build_node_groups,
    leader_labels,
    leader_worker_set_rollout,
    statefulset_rollout,
)
from qmo.desired.names import CACHE_CLAIM_NAME, DESIRED_HASH_ANNOTATION, artifact_name
from qmo.desired.phase import choose_phase, model_conditions
from qmo.desired.quality import gate_verdict, quality_thresholds
from qmo.desired.serving import (
    build_network_policy,
    build_pod_disruption_budget,
    build_serving_deployment,
    build_serving_service,
    endpoint_url,
    plan_request,
    selector_labels,
    serving_args,
)
from qmo.desired.status import condition, deployment_rollout
from qmo.desired.verification import (
    MetricsPods,
    Verification,
    deployment_metrics_pods,
    node_groups_metrics_pods,
)
from qmo.planner import PlanningError, ServingPlan, plan, predict_checkpoint_bytes

GIB = 2**30


def desired_hash(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[
        :16
    ]


def with_hash(manifest: Manifest) -> Manifest:
    """Stamp the manifest with a hash of itself, so an unchanged child is recognised without a write."""
    stamped: Manifest = json.loads(json.dumps(manifest))
    stamped["metadata"].setdefault("annotations", {})[DESIRED_HASH_ANNOTATION] = desired_hash(manifest)
    return stamped


def hash_of(observed: Mapping[str, Any] | None) -> str | None:
    if observed is None:
        return None
    return ((observed.get("metadata") or {}).get("annotations") or {}).get(DESIRED_HASH_ANNOTATION)


def plan_status(gpu: ResolvedGPU, serving_plan: ServingPlan, method: str) -> PlanStatus:
    overhead = (
        serving_plan.activation_gib_per_gpu
        + serving_plan.non_torch_gib_per_gpu
        + serving_plan.cudagraph_gib_per_gpu
    )
    return PlanStatus(
        gpu_class=gpu.spec.name,
        gpu_memory_gib=gpu.spec.memory_gib,
        tensor_parallel_size=serving_plan.tensor_parallel_size,
        pipeline_parallel_size=serving_plan.pipeline_parallel_size
        if serving_plan.pipeline_parallel_size > 1
        else None,
        dtype=serving_plan.dtype,
        kv_cache_dtype=serving_plan.kv_cache_dtype,
        max_model_len=serving_plan.max_model_len,
        max_num_seqs=serving_plan.max_num_seqs,
        weights_gib_per_gpu=round(serving_plan.weights_gib_per_gpu, 2),
        kv_cache_gib_per_gpu=round(serving_plan.kv_cache_gib_per_gpu, 2),
        overhead_gib_per_gpu=round(overhead, 2),
        kv_cache_tokens=serving_plan.kv_cache_tokens,
        max_concurrency=round(serving_plan.max_concurrency, 2),
        checkpoint_bytes=serving_plan.checkpoint_bytes,
        vllm_args=serving_args(serving_plan.vllm_args, method),
        gpu_memory_utilization=serving_plan.gpu_memory_utilization,
        calibration=serving_plan.calibration_version,
        calibration_warning=serving_plan.calibration_warning,
    )


def serving_selector(model: str) -> str:
    """The label selector of a model's serving pods, as the API's labelSelector parameter spells it."""
    return label_selector(selector_labels(model))


@dataclass(frozen=True)
class Failure:
    """The spec (or something it names) is wrong: the model is Failed with this reason until it changes."""

    reason: str
    message: str
    unexpected: bool = False
    """A planner bug rather than the user's mistake: the shell logs it with its traceback."""


@dataclass(frozen=True)
class ModelSnapshot:
    """Everything one QuantizedModel decision needs, as observed; immutable."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    now: str
    spec: QuantizedModelSpec
    old: Mapping[str, Any]
    """The status the object carries (what the last reconcile wrote)."""
    source: ModelSource
    """The source pinned to a commit."""
    resolved_source: str
    """What the spec asked for (repo@revision, or the PVC and path): status.resolvedSource."""
    config: Mapping[str, Any]
    """The source's config.json."""
    gpu: ResolvedGPU
    artifacts: tuple[Manifest, ...]
    """The namespace's ModelArtifacts."""
    deployment: Manifest | None
    child_hashes: Mapping[str, str | None] = field(default_factory=dict)
    """Kind -> the desired-hash annotation of the model's Service, PodDisruptionBudget, NetworkPolicy."""
    pods: tuple[Manifest, ...] | None = None
    """The serving pods, when they were read (a rollout in progress)."""
    multi_node: MultiNodeShape = "statefulset"
    """How this operator serves a replica that spans nodes (desired/multinode.py): a LeaderWorkerSet where
    the operator was told so or found LWS installed, else a StatefulSet per replica group."""
    node_groups: tuple[Manifest, ...] = ()
    """The model's multi-node objects as observed (StatefulSets and their headless Service, or its LWS)."""
    autoscaling: AutoscalingEnvironment = field(default_factory=AutoscalingEnvironment)
    """What the cluster offers an autoscaling model (KEDA, a Prometheus address)."""
    autoscaler: Manifest | None = None
    """The model's HorizontalPodAutoscaler or ScaledObject as observed (spec.serving.autoscaling)."""

    @property
    def owner(self) -> Owner:
        return Owner(api_version=API_VERSION, kind="QuantizedModel", name=self.name, uid=self.uid)

    def with_old(self, old: Mapping[str, Any]) -> ModelSnapshot:
        return replace(self, old=old)


@dataclass(frozen=True)
class ModelIntent:
    """What the spec asks for, planned: the plan, the artifact that serves it, the serving objects."""

    serving_plan: ServingPlan
    planned: PlanStatus
    recipe: QuantizationSpec
    key: str
    artifact_name: str
    artifact: Manifest
    """The ModelArtifact to create when none exists for the key."""
    cache_claim: Manifest
    """The namespace's cache claim to create (if missing) before the artifact."""
    deployment: Manifest | None
    """The single-node Deployment; None when a replica spans nodes (then ``node_groups``)."""
    children: tuple[Manifest, ...]
    """Service and PodDisruptionBudget, stamped with their hashes."""
    network_policy: Manifest | None
    node_groups: tuple[Manifest, ...] = ()
    """A multi-node model's workload objects (desired/multinode.py), stamped with their hashes."""
    autoscaler: AutoscalerIntent | None = None
    """The autoscaler (manifest stamped with its hash) while spec.serving.autoscaling is set."""


def plan_model(snapshot: ModelSnapshot) -> ModelIntent | Failure:
    """Plan the model on its GPU class and derive the artifact and the serving objects."""
    spec, gpu = snapshot.spec, snapshot.gpu
    backend = BACKENDS[spec.quantization.backend]
    if backend.needs_gpu and gpu.spec.device == "cpu" and spec.quantization.method in backend.methods:
        return Failure(
            "BackendNeedsGPU",
            f"spec.quantization.backend: {backend.name} quantizes only on a GPU and GPU class"
            f" {gpu.spec.name!r} is a CPU class; choose a GPU class, or backend gptqmodel (the same gptq"
            " format, quantized on CPU)",
        )
    request = plan_request(spec)
    replan = snapshot.old.get("replan") or {}
    if replan.get("generation") == snapshot.generation:
        # The one re-plan after the plan's arguments failed to start (desired.verification).
        request = replace(request, gpu_memory_utilization=float(replan["gpuMemoryUtilization"]))
    try:
        serving_plan = plan(snapshot.config, request, gpu.spec)
    except PlanningError as error:
        return Failure("InvalidModelConfig", str(error))
    except (ArithmeticError, LookupError, TypeError, ValueError) as error:
        # A config.json the planner did not anticipate: a bug to fix in the planner, but never a reason to
        # retry this model forever.
        message = f"config.json could not be planned: {type(error).__name__}: {error}"
        return Failure("InvalidModelConfig", message, unexpected=True)
    if not serving_plan.fits:
        return Failure("DoesNotFit", serving_plan.reason or "the model does not fit the GPU class")
    planned = plan_status(gpu, serving_plan, spec.quantization.method)
    recipe = artifact_recipe(spec.quantization)
    key = content_key(snapshot.source, recipe)
    name = artifact_name(source_slug(snapshot.source), recipe.method, key)
    owner, namespace, model = snapshot.owner, snapshot.namespace, snapshot.name
    artifact_spec = ModelArtifactSpec(
        key=key,
        source=snapshot.source,
        recipe=recipe,
        cache_claim_name=CACHE_CLAIM_NAME,
        path=key,
        predicted_bytes=serving_plan.checkpoint_bytes,
        evaluation=spec.quantization.evaluation,
        job=ArtifactJobSpec(
            image=spec.quantize_job.image_for(recipe.backend),
            gpus=0 if recipe.method in ("none", "prequantized") or gpu.spec.device == "cpu" else 1,
            gpu_resource_name=gpu.placement.resource_name,
            device="cpu" if gpu.spec.device == "cpu" else "gpu",
            resources=spec.quantize_job.resources,
            node_selector={**gpu.placement.node_selector, **spec.quantize_job.node_selector},
            tolerations=[*gpu.placement.tolerations, *spec.quantize_job.tolerations],
            pod_annotations=dict(spec.quantize_job.pod_annotations),
            active_deadline_seconds=spec.quantize_job.active_deadline_seconds,
            backoff_limit=spec.quantize_job.backoff_limit,
        ),
    )
    multi_node = serving_plan.pipeline_parallel_size > 1
    if multi_node and spec.serving.autoscaling is not None:
        # The autoscalers qmo renders scale a Deployment; a replica group of several nodes is not one.
        return Failure(
            "AutoscalingUnsupported",
            f"spec.serving.autoscaling: a model whose plan spans {serving_plan.pipeline_parallel_size} nodes"
            " (pipeline-parallel) cannot autoscale in this version; remove spec.serving.autoscaling and set"
            " spec.serving.replicas, or set spec.serving.maxNodes to 1 with a GPU class one node of which holds"
            " the model",
        )
    deployment: Manifest | None = None
    node_groups: tuple[Manifest, ...] = ()
    leaders: dict[str, str] | None = None
    if multi_node:
        pod = NodePod(model, namespace, spec.serving, planned, key, key, gpu.placement)
        node_groups = tuple(
            with_hash(m) for m in build_node_groups(shape=snapshot.multi_node, pod=pod, owner=owner)
        )
        leaders = leader_labels(snapshot.multi_node)
    else:
        deployment = with_hash(
            build_serving_deployment(
                model=model,
                namespace=namespace,
                owner=owner,
                serving=spec.serving,
                plan=planned,
                artifact_key=key,
                artifact_path=key,
                placement=gpu.placement,
            )
        )
    policy = spec.serving.network_policy
    autoscaler = plan_autoscaler(
        model=model,
        namespace=namespace,
        owner=owner,
        serving=spec.serving,
        plan=planned,
        environment=snapshot.autoscaling,
    )
    if autoscaler is not None:
        autoscaler = replace(autoscaler, manifest=with_hash(autoscaler.manifest))
    return ModelIntent(
        serving_plan=serving_plan,
        planned=planned,
        recipe=recipe,
        key=key,
        artifact_name=name,
        artifact=build_model_artifact(name=name, namespace=namespace, spec=artifact_spec, users=[owner]),
        cache_claim=cache_claim(snapshot, serving_plan.checkpoint_bytes),
        deployment=deployment,
        children=(
            with_hash(
                build_serving_service(model=model, namespace=namespace, owner=owner, leader_labels=leaders)
            ),
            # One budget over every pod of every group: a drain takes at most one node, so at most one group.
            with_hash(build_pod_disruption_budget(model=model, namespace=namespace, owner=owner)),
        ),
        network_policy=with_hash(
            build_network_policy(
                model=model, namespace=namespace, owner=owner, policy=policy, multi_node=multi_node
            )
        )
        if policy.enabled
        else None,
        node_groups=node_groups,
        autoscaler=autoscaler,
    )


def cache_claim(snapshot: ModelSnapshot, checkpoint_bytes: int) -> Manifest:
    """The namespace's shared cache claim, sized for this model when its size is auto."""
    cache = snapshot.spec.cache
    if cache.size != "auto":
        claim = build_cache_claim(
            namespace=snapshot.namespace,
            size_bytes=GIB,
            storage_class=cache.storage_class_name,
            access_mode=cache.access_mode,
        )
        claim["spec"]["resources"]["requests"]["storage"] = str(cache.size)
        return claim
    try:
        source_bytes = predict_checkpoint_bytes(snapshot.config, quantization="none")
    except PlanningError:
        source_bytes = checkpoint_bytes * 4
    return build_cache_claim(
        namespace=snapshot.namespace,
        size_bytes=cache_claim_size_bytes(checkpoint_bytes, source_bytes),
        storage_class=cache.storage_class_name,
        access_mode=cache.access_mode,
    )


@dataclass(frozen=True)
class ArtifactRelease:
    """Let go of an artifact the model no longer serves: delete it (last user) or drop this model's
    ownerReference (guarded by the resourceVersion it was read at)."""

    name: str
    uid: str
    resource_version: str
    remaining_owners: tuple[Manifest, ...]


@dataclass
class ModelDecision:
    """What to do, in order: the claim and artifact, the serving objects, the releases; then the status."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    failure: Failure | None = None
    """Fail the model (status is then decided by the shell from the previous one)."""
    retry: str | None = None
    """Reconcile again soon, after applying (a retried artifact is on its way)."""
    create_artifact: Manifest | None = None
    cache_claim: Manifest | None = None
    adopt_artifact: Manifest | None = None
    """The artifact (as observed) this model must add its ownerReference to."""
    delete_artifact: Manifest | None = None
    apply: list[Manifest] = field(default_factory=list)
    """Server-side applies, in order (the NetworkPolicy before the Deployment it guards)."""
    delete: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) of children to delete."""
    replicas_handoff: Manifest | None = None
    """Applied first, by its own field manager: keeps the replica count when qmo hands it to an autoscaler."""
    release_autoscaler: tuple[str, str] | None = None
    """(kind, name) of the autoscaler the model no longer has: deleted before the Deployment is applied, so
    it cannot scale once qmo has taken the replica count back."""
    release: list[ArtifactRelease] = field(default_factory=list)
    serving: Serving | None = None
    """How the serving side will stand (None when the decision ended at the artifact)."""


def owned_by(artifact: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in artifact["metadata"].get("ownerReferences") or [])


def find_artifact(artifacts: tuple[Manifest, ...], name: str) -> Manifest | None:
    return next((a for a in artifacts if a["metadata"]["name"] == name), None)


def effective_deployment(observed: Manifest | None, desired: Manifest, changing: bool) -> Manifest | None:
    """The Deployment as the API server will have it once the decision is applied: a changed template is a
    new generation its controller has not observed yet (so never rolled out), with the status it had."""
    if not changing:
        return observed
    generation = int(((observed or {}).get("metadata") or {}).get("generation", 0)) + 1
    applied: Manifest = json.loads(json.dumps(desired))
    applied["metadata"]["generation"] = generation
    kept = ((observed or {}).get("spec") or {}).get("replicas")
    if "replicas" not in applied["spec"] and kept is not None:
        applied["spec"]["replicas"] = kept  # an autoscaler's count outlives qmo's apply (replicas_handoff)
    applied["status"] = dict((observed or {}).get("status") or {})
    return applied


def releases(snapshot: ModelSnapshot, key: str) -> list[ArtifactRelease]:
    """The artifacts this model used before and no longer serves (its current key stays)."""
    found = []
    for artifact in snapshot.artifacts:
        meta = artifact["metadata"]
        if (artifact.get("spec") or {}).get("key") == key or not owned_by(artifact, snapshot.uid):
            continue
        remaining = tuple(r for r in meta.get("ownerReferences") or [] if r.get("uid") != snapshot.uid)
        found.append(ArtifactRelease(meta["name"], meta["uid"], meta["resourceVersion"], remaining))
    return found


@dataclass(frozen=True)
class Serving:
    """The serving side as it will be after the decision: what the phase and conditions are chosen from."""

    weights_ready: bool
    gate_blocks: bool
    deployment: Manifest | None
    """The single-node Deployment (None for a multi-node model, whose groups ``present`` counts)."""
    rolled: bool
    ready: int
    rollout_reason: str
    updated: int
    replicas: int
    present: bool
    """Something serves or is being rolled out (the Deployment, or the multi-node groups)."""
    metrics_pods: MetricsPods | None = None
    """The pods plan verification reads (a Deployment's, a multi-node model's leaders), of the template
    the decision applies."""


def object_key(manifest: Mapping[str, Any]) -> tuple[str, str]:
    return str(manifest["kind"]), str(manifest["metadata"]["name"])


def apply_node_groups(snapshot: ModelSnapshot, intent: ModelIntent, decision: ModelDecision) -> set[str]:
    """Apply the multi-node objects whose hash changed; the names of those applied."""
    observed = {object_key(m): m for m in snapshot.node_groups}
    changed = set()
    for wanted in intent.node_groups:
        if hash_of(observed.get(object_key(wanted))) != hash_of(wanted):
            decision.apply.append(wanted)
            changed.add(wanted["metadata"]["name"])
    return changed


def node_groups_serving(
    snapshot: ModelSnapshot, intent: ModelIntent, changed: set[str] | None
) -> tuple[bool, int, str, int, int]:
    """(rolled, ready groups, reason, updated groups, existing groups) of a multi-node model once the
    decision is applied (``changed``: the objects it applies; None when it applies nothing)."""
    groups, nodes = snapshot.spec.serving.replicas, intent.serving_plan.pipeline_parallel_size
    observed = {object_key(m): m for m in snapshot.node_groups}
    effective = [
        effective_deployment(observed.get(object_key(w)), w, w["metadata"]["name"] in (changed or set()))
        for w in intent.node_groups
    ]
    if snapshot.multi_node == "leaderworkerset":
        [lws] = intent.node_groups
        rollout = leader_worker_set_rollout(
            observed.get(object_key(lws)),
            groups=groups,
            changing=lws["metadata"]["name"] in (changed or set()),
        )
    else:
        rollout = statefulset_rollout([m for m in effective if m is not None], groups=groups, nodes=nodes)
    return rollout.rolled, rollout.ready, rollout.reason, rollout.updated, rollout.replicas


def decide_serving(snapshot: ModelSnapshot, intent: ModelIntent, decision: ModelDecision) -> Serving:
    """Which serving objects to apply or delete, and how the Deployment (or the groups) will stand."""
    spec, old = snapshot.spec, snapshot.old
    artifact = find_artifact(snapshot.artifacts, intent.artifact_name)
    artifact_status = (artifact or {}).get("status") or {}
    weights_ready = artifact_status.get("phase", "Pending") == "Ready"
    verdict = gate_verdict(artifact_status.get("quality"), quality_thresholds(spec.quantization))
    # A failed gate holds the rollout: whatever serves now (a previous artifact) keeps serving untouched.
    gate_blocks = weights_ready and verdict.blocks
    servable = weights_ready and not gate_blocks
    deployment = snapshot.deployment
    changed: set[str] | None = None
    if servable:
        # The policy first, so the pods never run open when it is asked for.
        policy = intent.network_policy
        if policy is not None and snapshot.child_hashes.get("NetworkPolicy") != hash_of(policy):
            decision.apply.append(policy)
        if policy is None and old.get("networkPolicy"):
            decision.delete.append(("NetworkPolicy", str(old["networkPolicy"])))
        if intent.deployment is not None:
            changing = hash_of(deployment) != hash_of(intent.deployment)
            if changing:
                if intent.autoscaler is not None:
                    decision.replicas_handoff = replicas_handoff(deployment)
                decision.apply.append(intent.deployment)
            deployment = effective_deployment(deployment, intent.deployment, changing)
        else:
            changed = apply_node_groups(snapshot, intent, decision)
        decide_autoscaler(snapshot, intent, decision)
    workload_kinds = {m["kind"] for m in intent.node_groups if m["kind"] != "Service"}
    metrics_pods: MetricsPods | None
    if intent.deployment is not None:
        rolled, ready, reason = deployment_rollout(deployment, wanted_replicas(spec.serving, deployment))
        status = (deployment or {}).get("status") or {}
        updated, replicas = int(status.get("updatedReplicas", 0)), int(status.get("replicas", 0))
        present = deployment is not None
        # What served while the model spanned nodes goes once the Deployment serves in its place.
        leftovers = [object_key(m) for m in snapshot.node_groups]
        switching = bool(leftovers)
        metrics_pods = deployment_metrics_pods(snapshot.name, deployment)
    else:
        rolled, ready, reason, updated, replicas = node_groups_serving(snapshot, intent, changed)
        present = bool(snapshot.node_groups) or changed is not None
        wanted = {object_key(m) for m in intent.node_groups}
        # The groups as they will be: the intent's once applied; while new weights are being made, the ones
        # that serve (as for a Deployment, their observation stays in status until the new template rolls).
        groups = (
            intent.node_groups
            if changed is not None
            else tuple(m for m in snapshot.node_groups if object_key(m) in wanted)
        )
        metrics_pods = node_groups_metrics_pods(snapshot.name, snapshot.multi_node, groups)
        leftovers = [object_key(m) for m in snapshot.node_groups if object_key(m) not in wanted]
        switching = any(kind not in workload_kinds | {"Service"} for kind, _ in leftovers)
        if snapshot.deployment is not None:
            leftovers.append(("Deployment", str(snapshot.deployment["metadata"]["name"])))
            switching = True
    if servable:
        for child in intent.children:
            # Between shapes (one node <-> several, StatefulSets <-> LWS) the Service keeps selecting the
            # pods that serve now until the new ones are rolled out: its selector differs per shape.
            held = child["kind"] == "Service" and switching and not rolled
            if not held and snapshot.child_hashes.get(child["kind"]) != hash_of(child):
                decision.apply.append(child)
    if rolled and servable:
        decision.delete.extend(leftovers)
    # Releasing happens on the way to Ready; a model already Ready on this key has none left.
    on_the_way = old.get("phase") != "Ready" or (old.get("artifact") or {}).get("key") != intent.key
    if servable and rolled and on_the_way:
        decision.release.extend(releases(snapshot, intent.key))
    return Serving(
        weights_ready,
        gate_blocks,
        deployment if intent.deployment is not None else None,
        rolled,
        ready,
        reason,
        updated,
        replicas,
        present,
        metrics_pods,
    )


def decide_autoscaler(snapshot: ModelSnapshot, intent: ModelIntent, decision: ModelDecision) -> None:
    """Apply the model's autoscaler when it changed; delete the one it had when it no longer autoscales
    (or changes kind, e.g. KEDA was installed). qmo's Deployment then carries spec.replicas again."""
    wanted = intent.autoscaler
    if wanted is not None and hash_of(snapshot.autoscaler) != hash_of(wanted.manifest):
        decision.apply.append(wanted.manifest)
    previous = snapshot.old.get("autoscaling") or {}
    if previous.get("autoscaler") and (wanted is None or wanted.kind != previous["autoscaler"]):
        decision.release_autoscaler = (str(previous["autoscaler"]), str(previous["name"]))


def decide_artifact(snapshot: ModelSnapshot, intent: ModelIntent, decision: ModelDecision) -> bool:
    """Create, adopt or retry the model's artifact; False when the decision ends here (failed/retry)."""
    artifact = find_artifact(snapshot.artifacts, intent.artifact_name)
    if artifact is None:
        decision.cache_claim, decision.create_artifact = intent.cache_claim, intent.artifact
        return True
    if artifact["metadata"].get("deletionTimestamp"):
        decision.retry = f"ModelArtifact {intent.artifact_name} is being evicted; it is recreated once gone"
        return False
    if not owned_by(artifact, snapshot.uid):
        decision.adopt_artifact = artifact
    status = artifact.get("status") or {}
    if status.get("phase") != "Failed":
        return True
    old = snapshot.old
    if old.get("phase") == "Failed" and old.get("observedGeneration") not in (None, snapshot.generation):
        # The user changed the spec after the failure (more memory, a longer deadline...): retry the
        # artifact from scratch with the new Job settings.
        decision.delete_artifact = artifact
        decision.retry = f"retrying ModelArtifact {intent.artifact_name} after the spec changed"
        return False
    message = f"ModelArtifact {intent.artifact_name} failed: {status.get('message') or ''}"
    decision.failure = Failure("QuantizationFailed", message)
    return False


NOT_VERIFIED = Verification(None, "NotObserved", "waiting for the serving pods to be ready")


def decide_model(
    snapshot: ModelSnapshot, intent: ModelIntent, verification: Verification = NOT_VERIFIED
) -> ModelDecision:
    """The whole decision for one model whose plan fits (``plan_model`` gave an intent).

    ``verification``: what reading the serving pods' /metrics concluded (``reconcile/verify.py``), which
    needs ``decision.serving`` from a first call without it.
    """
    spec, old, name = snapshot.spec, snapshot.old, snapshot.name
    decision = ModelDecision(status={})
    if not decide_artifact(snapshot, intent, decision):
        return decision
    artifact = find_artifact(snapshot.artifacts, intent.artifact_name) or intent.artifact
    artifact_status = artifact.get("status") or {}
    artifact_phase = artifact_status.get("phase", "Pending")
    serving = decision.serving = decide_serving(snapshot, intent, decision)
    status: dict[str, Any] = {
        "resolvedSource": snapshot.resolved_source,
        "plan": intent.planned.to_wire(),
        "artifact": {"name": intent.artifact_name, "key": intent.key, "phase": artifact_phase},
        "selector": serving_selector(name),
    }
    if snapshot.source.huggingface is not None:
        status["resolvedRevision"] = snapshot.source.huggingface.revision
    if intent.network_policy is not None and serving.weights_ready and not serving.gate_blocks:
        status["networkPolicy"] = intent.network_policy["metadata"]["name"]
    elif old.get("networkPolicy") and not (serving.weights_ready and not serving.gate_blocks):
        status["networkPolicy"] = old["networkPolicy"]  # kept while new weights are being made
    wanted = wanted_replicas(spec.serving, serving.deployment)
    status.update(replicas=serving.replicas, readyReplicas=serving.ready, ready=f"{serving.ready}/{wanted}")
    if serving.present:
        status["endpoint"] = endpoint_url(model=name, namespace=snapshot.namespace)
    if verification.observed is not None:
        status["plan"]["observed"] = verification.observed
    if verification.replan is not None:
        status["replan"] = verification.replan
    verdict = gate_verdict(artifact_status.get("quality"), quality_thresholds(spec.quantization))
    phase, message = choose_phase(snapshot, intent, serving, verification, verdict, artifact_status)
    status["phase"], status["message"] = phase, message
    status["conditions"] = model_conditions(snapshot, intent, serving, verification, verdict, artifact_status)
    if intent.autoscaler is not None:
        autoscaling, healthy, reason = autoscaling_status(
            intent.autoscaler, serving.deployment, snapshot.autoscaler
        )
        status["autoscaling"] = autoscaling
        status["conditions"].append(
            condition(
                list(old.get("conditions", [])),
                type_="Autoscaling",
                status=healthy,
                reason=reason,
                message=autoscaling_message(autoscaling),
                generation=snapshot.generation,
                now=snapshot.now,
            )
        )
    decision.status = status
    decision.events.extend(verification.events)
    if phase != old.get("phase"):
        decision.events.append(Event("Warning" if phase == "Degraded" else "Normal", phase, message))
    return decision
