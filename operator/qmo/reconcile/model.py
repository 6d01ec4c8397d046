"""Reconcile one QuantizedModel: resolve, plan, ensure its artifact, then serve it.

observe (the model, its GPU class, source, artifact and Deployment) -> decide -> apply what differs ->
write status once. Every step is idempotent and derived from the cluster, so a restarted operator picks
up exactly where the last one stopped, and an unchanged model causes no writes at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from qmo.api.artifact import ArtifactJobSpec, ModelArtifactSpec
from qmo.api.base import API_VERSION
from qmo.api.quantizedmodel import PlanStatus, QuantizedModelSpec
from qmo.desired.artifact import (
    artifact_recipe,
    build_cache_claim,
    build_model_artifact,
    cache_claim_size_bytes,
    content_key,
    source_slug,
)
from qmo.desired.common import Manifest, Owner
from qmo.desired.names import CACHE_CLAIM_NAME, DESIRED_HASH_ANNOTATION, artifact_name, serving_name
from qmo.desired.quality import gate_verdict, quality_thresholds
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
from qmo.planner import PlanningError, ServingPlan, plan, predict_checkpoint_bytes
from qmo.reconcile.gpus import NodeShapes, ResolvedGPU, UnknownGPUClass, resolve_gpu
from qmo.reconcile.jobs import unschedulable_message
from qmo.reconcile.kube import ApiError, Kube, label_selector
from qmo.reconcile.observe import PodMetricsScraper
from qmo.reconcile.outcome import Event, Outcome, PermanentFailure, RetryLater, Waiting
from qmo.reconcile.resolve import SourceResolver
from qmo.reconcile.source import HubClient
from qmo.reconcile.status import (
    condition,
    deployment_rollout,
    format_validation_error,
    merge_patch_for,
    now_rfc3339,
    status_write,
)
from qmo.reconcile.verify import PlanVerifier

log = logging.getLogger(__name__)

GIB = 2**30
HASH_ANNOTATION = DESIRED_HASH_ANNOTATION


def desired_hash(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[
        :16
    ]


def with_hash(manifest: Manifest) -> Manifest:
    """Stamp the manifest with a hash of itself, so an unchanged child is recognised without a write."""
    stamped: Manifest = json.loads(json.dumps(manifest))
    stamped["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = desired_hash(manifest)
    return stamped


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
    )


def serving_selector(model: str) -> str:
    """The label selector of a model's serving pods, as the API's labelSelector parameter spells it."""
    return label_selector(selector_labels(model))


class ModelReconciler:
    """Reconciles QuantizedModels. One instance per operator; no state a restart would lose."""

    def __init__(self, kube: Kube, hub: HubClient, scraper: PodMetricsScraper | None = None) -> None:
        self.kube = kube
        self.verifier = PlanVerifier(kube, scraper or PodMetricsScraper())
        self.sources = SourceResolver(kube, hub)
        self.node_shapes = NodeShapes(kube)

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        old_status: dict[str, Any] = dict(body.get("status") or {})
        generation = meta.get("generation")
        now = now_rfc3339()
        replanned = old_status
        decided: list[Event] = []
        try:
            status, events = await self._decide_and_apply(body, old_status, now)
            if status.get("replan") not in (None, old_status.get("replan")):
                # The plan's arguments did not start: plan again with the headroom and apply that now.
                replanned = {**old_status, "replan": status["replan"]}
                decided = [e for e in events if e.reason == "Replanned"]
                status, events = await self._decide_and_apply(body, replanned, now)
                events = [*decided, *events]
        except PermanentFailure as failure:
            # A re-plan that does not fit fails with it recorded, or the next reconcile would try again.
            status = self._failed_status(replanned, failure, generation, now)
            events = [*decided, Event("Warning", failure.reason, failure.message)]
        except Waiting as waiting:
            status = {k: v for k, v in old_status.items() if k not in ("conditions", "phase", "message")}
            status.update(
                phase="Planning",
                message=str(waiting),
                conditions=[
                    condition(
                        old_status.get("conditions", []),
                        type_="Planned",
                        status=None,
                        reason="ReadingSource",
                        message=str(waiting),
                        generation=generation,
                        now=now,
                    )
                ],
            )
            events = []
        status["observedGeneration"] = generation
        patch = merge_patch_for(old_status, status)
        if patch is not None:
            await self.kube.patch(
                "QuantizedModel", namespace, name, status_write(meta, patch), subresource="status"
            )
        if status.get("phase") == old_status.get("phase"):
            events = [e for e in events if e.type == "Warning" and patch is not None]
        return Outcome(phase=status["phase"], status_patch=patch, events=events)

    def _failed_status(
        self, old: dict[str, Any], failure: PermanentFailure, generation: int | None, now: str
    ) -> dict[str, Any]:
        """Failed keeps what is still true (what serves, what was resolved) and says which stage failed."""
        kept = (
            "resolvedRevision",
            "resolvedSource",
            "artifact",
            "plan",
            "replicas",
            "readyReplicas",
            "ready",
            "selector",
            "endpoint",
            "replan",
        )
        status = {k: v for k, v in old.items() if k in kept}
        failed_stage = "WeightsReady" if failure.reason == "QuantizationFailed" else "Planned"
        status.update(
            phase="Failed",
            message=failure.message,
            conditions=[
                condition(
                    old.get("conditions", []),
                    type_=failed_stage,
                    status=False,
                    reason=failure.reason,
                    message=failure.message,
                    generation=generation,
                    now=now,
                )
            ],
        )
        return status

    async def _decide_and_apply(
        self, body: Mapping[str, Any], old: dict[str, Any], now: str
    ) -> tuple[dict[str, Any], list[Event]]:
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        generation = meta.get("generation")
        previous_conditions = old.get("conditions", [])
        try:
            spec = QuantizedModelSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            raise PermanentFailure("InvalidSpec", format_validation_error(error)) from error
        owner = Owner(api_version=API_VERSION, kind="QuantizedModel", name=name, uid=uid)

        source, resolved_source, config = await self.sources.resolve(namespace, spec, old, owner)
        try:
            gpu = await resolve_gpu(self.kube, spec.serving.gpu_class, self.node_shapes)
        except UnknownGPUClass as error:
            raise PermanentFailure("UnknownGPUClass", str(error)) from error
        request = plan_request(spec)
        replan = old.get("replan") or {}
        if replan.get("generation") == generation:
            # The one re-plan after the plan's arguments failed to start (desired.verification).
            request = replace(request, gpu_memory_utilization=float(replan["gpuMemoryUtilization"]))
        try:
            serving_plan = plan(config, request, gpu.spec)
        except PlanningError as error:
            raise PermanentFailure("InvalidModelConfig", str(error)) from error
        except (ArithmeticError, LookupError, TypeError, ValueError) as error:
            # A config.json the planner did not anticipate: a bug to fix in the planner, but never a reason
            # to retry this model forever. Fail it with what went wrong; the traceback goes to the log.
            log.exception("planning %s/%s failed unexpectedly", namespace, name)
            raise PermanentFailure(
                "InvalidModelConfig", f"config.json could not be planned: {type(error).__name__}: {error}"
            ) from error
        if not serving_plan.fits:
            raise PermanentFailure(
                "DoesNotFit", serving_plan.reason or "the model does not fit the GPU class"
            )
        planned = plan_status(gpu, serving_plan, spec.quantization.method)

        recipe = artifact_recipe(spec.quantization)
        key = content_key(source, recipe)
        ma_name = artifact_name(source_slug(source), recipe.method, key)
        artifact = await self._ensure_artifact(
            namespace=namespace,
            ma_name=ma_name,
            owner=owner,
            # The cache claim matters only to a new artifact's Job: no read of it on every resync.
            before_create=lambda: self._ensure_cache_claim(
                namespace, spec, config, serving_plan.checkpoint_bytes
            ),
            spec=ModelArtifactSpec(
                key=key,
                source=source,
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
            ),
        )
        artifact_phase = (artifact.get("status") or {}).get("phase", "Pending")
        artifact_message = (artifact.get("status") or {}).get("message") or ""
        if artifact_phase == "Failed":
            if old.get("phase") == "Failed" and old.get("observedGeneration") not in (None, generation):
                # The user changed the spec after the failure (more memory, a longer deadline...): retry
                # the artifact from scratch with the new Job settings.
                await self.kube.delete("ModelArtifact", namespace, ma_name, uid=artifact["metadata"]["uid"])
                raise RetryLater(f"retrying ModelArtifact {ma_name} after the spec changed")
            raise PermanentFailure(
                "QuantizationFailed", f"ModelArtifact {ma_name} failed: {artifact_message}"
            )

        events: list[Event] = []
        status: dict[str, Any] = {
            "resolvedSource": resolved_source,
            "plan": planned.to_wire(),
            "artifact": {"name": ma_name, "key": key, "phase": artifact_phase},
            "selector": serving_selector(name),
        }
        if source.huggingface is not None:
            status["resolvedRevision"] = source.huggingface.revision
        weights_ready = artifact_phase == "Ready"
        verdict = gate_verdict(
            (artifact.get("status") or {}).get("quality"), quality_thresholds(spec.quantization)
        )
        # A failed gate holds the rollout: whatever serves now (a previous artifact) keeps serving untouched.
        gate_blocks = weights_ready and verdict.blocks
        servable = weights_ready and not gate_blocks
        deployment = await self.kube.get("Deployment", namespace, serving_name(name))
        if servable:
            # The policy first, so the pods never run open when it is asked for.
            policy = await self._apply_network_policy(namespace, name, owner, spec, old)
            if policy is not None:
                status["networkPolicy"] = policy
            deployment = await self._apply_serving(
                namespace, name, owner, spec, planned, key, gpu, deployment
            )
            if old.get("phase") != "Ready" or (old.get("artifact") or {}).get("key") != key:
                # Releasing happens on the way to Ready; a model already Ready on this key has none left.
                await self._release_old_artifacts(namespace, uid, key, deployment, spec.serving.replicas)
        elif old.get("networkPolicy"):
            status["networkPolicy"] = old["networkPolicy"]  # kept while new weights are being made
        rolled, ready, rollout_reason = deployment_rollout(deployment, spec.serving.replicas)
        serving_current = deployment is not None and servable
        replicas = int((deployment or {}).get("status", {}).get("replicas", 0))
        updated = int((deployment or {}).get("status", {}).get("updatedReplicas", 0))
        status.update(replicas=replicas, readyReplicas=ready, ready=f"{ready}/{spec.serving.replicas}")
        if deployment is not None:
            status["endpoint"] = endpoint_url(model=name, namespace=namespace)
        pods = None
        if servable and not rolled and deployment is not None:
            pods = await self.kube.list("Pod", namespace, label_selector=serving_selector(name))
        verification = await self.verifier.verify(
            namespace=namespace,
            model=name,
            old=old,
            planned=planned,
            deployment=deployment,
            rolled=rolled and servable,
            ready=ready,
            pods=pods,
            generation=generation,
            now=now,
        )
        if verification.observed is not None:
            status["plan"]["observed"] = verification.observed
        if verification.replan is not None:
            status["replan"] = verification.replan
        events.extend(verification.events)

        if not weights_ready:
            phase = "Quantizing"
            message = f"waiting for ModelArtifact {ma_name} ({artifact_phase})"
            if "Unschedulable" in artifact_message:
                message += f": {artifact_message}"  # no node for the quantize Job: the user's fix too
        elif gate_blocks:
            phase = "Degraded"
            keeps = (
                "the previous artifact keeps serving" if deployment is not None else "nothing was deployed"
            )
            message = f"quality gate: ModelArtifact {ma_name}: {verdict.message}; {keeps}"
        elif rolled:
            phase = "Ready"
            message = f"serving on {planned.tensor_parallel_size}x {gpu.spec.name} per replica"
        elif verification.degraded:
            phase = "Degraded"
            message = verification.message
        elif rollout_reason == "ProgressDeadlineExceeded" or (
            # Every replica runs the current template yet some are not ready: lost, not rolling.
            old.get("phase") in ("Ready", "Degraded") and updated >= spec.serving.replicas > ready
        ):
            phase = "Degraded"
            message = f"{ready}/{spec.serving.replicas} replicas ready ({rollout_reason})"
        else:
            phase = "Deploying"
            message = f"{ready}/{spec.serving.replicas} replicas ready ({rollout_reason})"
        if pods is not None and not verification.degraded:
            # A pod no node can take stays Pending without a word in the Deployment: say why, or an SRE
            # sees "RollingOut" forever. (Cluster autoscalers act on the same condition, so not Failed.)
            waiting = unschedulable_message(pods)
            if waiting is not None:
                message = f"{ready}/{spec.serving.replicas} replicas ready (Unschedulable: {waiting})"
        status["phase"] = phase
        status["message"] = message
        status["conditions"] = [
            condition(
                previous_conditions,
                type_="Planned",
                status=True,
                reason="Planned",
                message=planned_message(planned, spec.serving),
                generation=generation,
                now=now,
            ),
            condition(
                previous_conditions,
                type_="WeightsReady",
                status=weights_ready,
                reason="ArtifactReady" if weights_ready else f"Artifact{artifact_phase}",
                message=artifact_message,
                generation=generation,
                now=now,
            ),
            condition(
                previous_conditions,
                type_="Deployed",
                status=serving_current,
                reason="Applied"
                if serving_current
                else ("QualityGateFailed" if gate_blocks else "WaitingForWeights"),
                generation=generation,
                now=now,
            ),
            condition(
                previous_conditions,
                type_="QualityGate",
                status=verdict.passed if weights_ready else None,
                reason=verdict.reason if weights_ready else "WaitingForWeights",
                message=verdict.message if weights_ready else "",
                generation=generation,
                now=now,
            ),
            condition(
                previous_conditions,
                type_="Available",
                status=ready > 0 or (rolled and spec.serving.replicas == 0),
                reason=rollout_reason,
                message=f"{ready}/{spec.serving.replicas} replicas ready",
                generation=generation,
                now=now,
            ),
            condition(
                previous_conditions,
                type_="PlanVerified",
                status=verification.status,
                reason=verification.reason,
                message=verification.message,
                generation=generation,
                now=now,
            ),
        ]
        if phase != old.get("phase"):
            events.append(Event("Warning" if phase == "Degraded" else "Normal", phase, message))
        return status, events

    async def _ensure_cache_claim(
        self, namespace: str, spec: QuantizedModelSpec, config: Mapping[str, Any], checkpoint_bytes: int
    ) -> None:
        """Create the namespace's shared cache claim if it is missing (sized for this model when auto)."""
        if await self.kube.get("PersistentVolumeClaim", namespace, CACHE_CLAIM_NAME) is not None:
            return
        cache = spec.cache
        if cache.size == "auto":
            try:
                source_bytes = predict_checkpoint_bytes(config, quantization="none")
            except PlanningError:
                source_bytes = checkpoint_bytes * 4
            size = cache_claim_size_bytes(checkpoint_bytes, source_bytes)
            claim = build_cache_claim(
                namespace=namespace,
                size_bytes=size,
                storage_class=cache.storage_class_name,
                access_mode=cache.access_mode,
            )
        else:
            claim = build_cache_claim(
                namespace=namespace,
                size_bytes=GIB,
                storage_class=cache.storage_class_name,
                access_mode=cache.access_mode,
            )
            claim["spec"]["resources"]["requests"]["storage"] = str(cache.size)
        try:
            await self.kube.create(claim)
        except ApiError as error:
            if error.status != 409:
                raise

    async def _ensure_artifact(
        self,
        *,
        namespace: str,
        ma_name: str,
        owner: Owner,
        spec: ModelArtifactSpec,
        before_create: Callable[[], Awaitable[None]],
    ) -> Manifest:
        """Find or create the artifact for the key and make sure this model is among its owners.

        The first model creates it; later ones only add their ownerReference (a JSON patch guarded by
        the resourceVersion), so two models never fight over the artifact's spec.
        """
        existing = await self.kube.get("ModelArtifact", namespace, ma_name)
        if existing is None:
            await before_create()
            manifest = build_model_artifact(name=ma_name, namespace=namespace, spec=spec, users=[owner])
            try:
                return await self.kube.create(manifest)
            except ApiError as error:
                if error.status != 409:
                    raise
                existing = await self.kube.get("ModelArtifact", namespace, ma_name)
                if existing is None:
                    raise
        if existing["metadata"].get("deletionTimestamp"):
            raise RetryLater(f"ModelArtifact {ma_name} is being evicted; it is recreated once gone")
        refs = existing["metadata"].get("ownerReferences", [])
        if any(ref.get("uid") == owner.uid for ref in refs):
            return existing
        ops: list[dict[str, Any]] = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": existing["metadata"]["resourceVersion"],
            }
        ]
        if refs:
            ops.append(
                {
                    "op": "add",
                    "path": "/metadata/ownerReferences/-",
                    "value": owner.reference(controller=False),
                }
            )
        else:
            ops.append(
                {
                    "op": "add",
                    "path": "/metadata/ownerReferences",
                    "value": [owner.reference(controller=False)],
                }
            )
        return await self.kube.patch("ModelArtifact", namespace, ma_name, ops, json_patch=True)

    async def _apply_serving(
        self,
        namespace: str,
        name: str,
        owner: Owner,
        spec: QuantizedModelSpec,
        planned: PlanStatus,
        key: str,
        gpu: ResolvedGPU,
        observed_deployment: Manifest | None,
    ) -> Manifest:
        deployment = with_hash(
            build_serving_deployment(
                model=name,
                namespace=namespace,
                owner=owner,
                serving=spec.serving,
                plan=planned,
                artifact_key=key,
                artifact_path=key,
                placement=gpu.placement,
            )
        )
        if _hash_of(observed_deployment) != deployment["metadata"]["annotations"][HASH_ANNOTATION]:
            observed_deployment = await self.kube.apply(deployment)
        for child, kind in (
            (build_serving_service(model=name, namespace=namespace, owner=owner), "Service"),
            (
                build_pod_disruption_budget(model=name, namespace=namespace, owner=owner),
                "PodDisruptionBudget",
            ),
        ):
            stamped = with_hash(child)
            observed = await self.kube.get(kind, namespace, serving_name(name))
            if _hash_of(observed) != stamped["metadata"]["annotations"][HASH_ANNOTATION]:
                await self.kube.apply(stamped)
        assert observed_deployment is not None
        return observed_deployment

    async def _apply_network_policy(
        self, namespace: str, name: str, owner: Owner, spec: QuantizedModelSpec, old: Mapping[str, Any]
    ) -> str | None:
        """Create or update the serving pods' NetworkPolicy; delete the one qmo made once it is turned off.

        status.networkPolicy records that qmo made one, so a model without the feature costs no request.
        """
        wanted = spec.serving.network_policy
        if not wanted.enabled:
            if old.get("networkPolicy"):
                await self.kube.delete("NetworkPolicy", namespace, str(old["networkPolicy"]))
            return None
        policy = with_hash(build_network_policy(model=name, namespace=namespace, owner=owner, policy=wanted))
        observed = await self.kube.get("NetworkPolicy", namespace, serving_name(name))
        if _hash_of(observed) != policy["metadata"]["annotations"][HASH_ANNOTATION]:
            await self.kube.apply(policy)
        return serving_name(name)

    async def _release_old_artifacts(
        self, namespace: str, uid: str, key: str, deployment: Manifest | None, replicas: int
    ) -> None:
        """Once the Deployment serves the new weights, let go of the artifacts it used before."""
        rolled, _, _ = deployment_rollout(deployment, replicas)
        if not rolled:
            return
        for artifact in await self.kube.list("ModelArtifact", namespace):
            refs = artifact["metadata"].get("ownerReferences", [])
            if artifact.get("spec", {}).get("key") == key or not any(r.get("uid") == uid for r in refs):
                continue
            remaining = [r for r in refs if r.get("uid") != uid]
            artifact_name_ = artifact["metadata"]["name"]
            if not remaining:
                # Kubernetes GC never deletes an object whose ownerReferences became empty: delete it.
                await self.kube.delete(
                    "ModelArtifact", namespace, artifact_name_, uid=artifact["metadata"]["uid"]
                )
            else:
                ops = [
                    {
                        "op": "test",
                        "path": "/metadata/resourceVersion",
                        "value": artifact["metadata"]["resourceVersion"],
                    },
                    {"op": "replace", "path": "/metadata/ownerReferences", "value": remaining},
                ]
                await self.kube.patch("ModelArtifact", namespace, artifact_name_, ops, json_patch=True)


def _hash_of(observed: Mapping[str, Any] | None) -> str | None:
    if observed is None:
        return None
    return ((observed.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)
