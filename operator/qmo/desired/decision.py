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
from qmo.desired.jobs import unschedulable_message
from qmo.desired.names import CACHE_CLAIM_NAME, DESIRED_HASH_ANNOTATION, artifact_name
from qmo.desired.quality import GateVerdict, gate_verdict, quality_thresholds
from qmo.desired.serving import (
    build_network_policy,
    build_pod_disruption_budget,
    build_serving_deployment,
    build_serving_service,
    endpoint_url,
    plan_request,
    planned_message,
    selector_labels,
    serving_args,
)
from qmo.desired.status import condition, deployment_rollout
from qmo.desired.verification import Verification
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


def multi_node_message(serving_plan: ServingPlan) -> str:
    """Why a model whose plan spans nodes is not served, with the plan a later version would roll out."""
    pp, tp = serving_plan.pipeline_parallel_size, serving_plan.tensor_parallel_size
    return (
        f"multi-node serving (PP={pp} across {pp} nodes) is planned but not rolled out by this version: "
        f"tensor-parallel-size {tp} x pipeline-parallel-size {pp} on {serving_plan.gpu}, "
        f"{serving_plan.kv_cache_tokens} KV tokens; set spec.serving.maxNodes to 1 to plan on one node only"
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
    deployment: Manifest
    children: tuple[Manifest, ...]
    """Service and PodDisruptionBudget, stamped with their hashes."""
    network_policy: Manifest | None
    autoscaler: AutoscalerIntent | None = None
    """The autoscaler (manifest stamped with its hash) while spec.serving.autoscaling is set."""


def plan_model(snapshot: ModelSnapshot) -> ModelIntent | Failure:
    """Plan the model on its GPU class and derive the artifact and the serving objects."""
    spec, gpu = snapshot.spec, snapshot.gpu
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
    if serving_plan.pipeline_parallel_size > 1:
        # The serving objects below are one Deployment of one pod per replica: a multi-node plan must not
        # silently become a single-node Deployment that cannot start.
        return Failure("MultiNodeNotRolledOut", multi_node_message(serving_plan))
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
            image=spec.quantize_job.image,
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
            with_hash(build_serving_service(model=model, namespace=namespace, owner=owner)),
            with_hash(build_pod_disruption_budget(model=model, namespace=namespace, owner=owner)),
        ),
        network_policy=with_hash(
            build_network_policy(model=model, namespace=namespace, owner=owner, policy=policy)
        )
        if policy.enabled
        else None,
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
    rolled: bool
    ready: int
    rollout_reason: str
    updated: int


def decide_serving(snapshot: ModelSnapshot, intent: ModelIntent, decision: ModelDecision) -> Serving:
    """Which serving objects to apply or delete, and how the Deployment will stand afterwards."""
    spec, old = snapshot.spec, snapshot.old
    artifact = find_artifact(snapshot.artifacts, intent.artifact_name)
    artifact_status = (artifact or {}).get("status") or {}
    weights_ready = artifact_status.get("phase", "Pending") == "Ready"
    verdict = gate_verdict(artifact_status.get("quality"), quality_thresholds(spec.quantization))
    # A failed gate holds the rollout: whatever serves now (a previous artifact) keeps serving untouched.
    gate_blocks = weights_ready and verdict.blocks
    deployment = snapshot.deployment
    if weights_ready and not gate_blocks:
        # The policy first, so the pods never run open when it is asked for.
        policy = intent.network_policy
        if policy is not None and snapshot.child_hashes.get("NetworkPolicy") != hash_of(policy):
            decision.apply.append(policy)
        if policy is None and old.get("networkPolicy"):
            decision.delete.append(("NetworkPolicy", str(old["networkPolicy"])))
        changing = hash_of(deployment) != hash_of(intent.deployment)
        if changing:
            if intent.autoscaler is not None:
                decision.replicas_handoff = replicas_handoff(deployment)
            decision.apply.append(intent.deployment)
        for child in intent.children:
            if snapshot.child_hashes.get(child["kind"]) != hash_of(child):
                decision.apply.append(child)
        decide_autoscaler(snapshot, intent, decision)
        deployment = effective_deployment(deployment, intent.deployment, changing)
    rolled, ready, reason = deployment_rollout(deployment, wanted_replicas(spec.serving, deployment))
    # Releasing happens on the way to Ready; a model already Ready on this key has none left.
    on_the_way = old.get("phase") != "Ready" or (old.get("artifact") or {}).get("key") != intent.key
    if weights_ready and not gate_blocks and rolled and on_the_way:
        decision.release.extend(releases(snapshot, intent.key))
    updated = int(((deployment or {}).get("status") or {}).get("updatedReplicas", 0))
    return Serving(weights_ready, gate_blocks, deployment, rolled, ready, reason, updated)


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
    replicas = int(((serving.deployment or {}).get("status") or {}).get("replicas", 0))
    wanted = wanted_replicas(spec.serving, serving.deployment)
    status.update(replicas=replicas, readyReplicas=serving.ready, ready=f"{serving.ready}/{wanted}")
    if serving.deployment is not None:
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


def choose_phase(
    snapshot: ModelSnapshot,
    intent: ModelIntent,
    serving: Serving,
    verification: Verification,
    verdict: GateVerdict,
    artifact_status: Mapping[str, Any],
) -> tuple[str, str]:
    """The model's phase and message once its plan fits and its artifact has not failed."""
    wanted = wanted_replicas(snapshot.spec.serving, serving.deployment)
    ready_text = f"{serving.ready}/{wanted} replicas ready"
    if not serving.weights_ready:
        artifact_message = artifact_status.get("message") or ""
        message = (
            f"waiting for ModelArtifact {intent.artifact_name} ({artifact_status.get('phase', 'Pending')})"
        )
        if "Unschedulable" in artifact_message:
            message += f": {artifact_message}"  # no node for the quantize Job: the user's fix too
        return "Quantizing", message
    if serving.gate_blocks:
        keeps = (
            "the previous artifact keeps serving"
            if serving.deployment is not None
            else "nothing was deployed"
        )
        return "Degraded", f"quality gate: ModelArtifact {intent.artifact_name}: {verdict.message}; {keeps}"
    if serving.rolled:
        return (
            "Ready",
            f"serving on {intent.planned.tensor_parallel_size}x {snapshot.gpu.spec.name} per replica",
        )
    if verification.degraded:
        return "Degraded", verification.message
    lost = snapshot.old.get("phase") in ("Ready", "Degraded") and serving.updated >= wanted > serving.ready
    # Every replica runs the current template yet some are not ready: lost, not rolling.
    phase = "Degraded" if serving.rollout_reason == "ProgressDeadlineExceeded" or lost else "Deploying"
    message = f"{ready_text} ({serving.rollout_reason})"
    if phase == "Deploying" and snapshot.pods is not None:
        # A pod no node can take stays Pending without a word in the Deployment: say why, or an SRE sees
        # "RollingOut" forever. (Cluster autoscalers act on the same condition, so not Failed.)
        waiting = unschedulable_message(list(snapshot.pods))
        if waiting is not None:
            message = f"{ready_text} (Unschedulable: {waiting})"
    return phase, message


def model_conditions(
    snapshot: ModelSnapshot,
    intent: ModelIntent,
    serving: Serving,
    verification: Verification,
    verdict: GateVerdict,
    artifact_status: Mapping[str, Any],
) -> list[dict[str, Any]]:
    previous = list(snapshot.old.get("conditions", []))
    generation, now = snapshot.generation, snapshot.now
    wanted = wanted_replicas(snapshot.spec.serving, serving.deployment)
    serving_current = serving.deployment is not None and serving.weights_ready and not serving.gate_blocks
    artifact_phase = artifact_status.get("phase", "Pending")
    ready = serving.weights_ready

    def made(type_: str, status: bool | None, reason: str, message: str = "") -> dict[str, Any]:
        return condition(
            previous,
            type_=type_,
            status=status,
            reason=reason,
            message=message,
            generation=generation,
            now=now,
        )

    return [
        made("Planned", True, "Planned", planned_message(intent.planned, snapshot.spec.serving)),
        made(
            "WeightsReady",
            ready,
            "ArtifactReady" if ready else f"Artifact{artifact_phase}",
            artifact_status.get("message") or "",
        ),
        made(
            "Deployed",
            serving_current,
            "Applied"
            if serving_current
            else ("QualityGateFailed" if serving.gate_blocks else "WaitingForWeights"),
        ),
        made(
            "QualityGate",
            verdict.passed if ready else None,
            verdict.reason if ready else "WaitingForWeights",
            verdict.message if ready else "",
        ),
        made(
            "Available",
            serving.ready > 0 or (serving.rolled and wanted == 0),
            serving.rollout_reason,
            f"{serving.ready}/{wanted} replicas ready",
        ),
        made("PlanVerified", verification.status, verification.reason, verification.message),
    ]
