"""Reconcile one QuantizedModel: observe, decide (pure, ``desired/decision.py``), apply, write status.

``observe`` reads what a decision needs into a ``ModelSnapshot`` (most of it from the watch cache, see
``reconcile/cache.py``); ``plan_model`` and ``decide_model`` decide; ``apply`` carries the decision out
idempotently; the status is written once, and only when it changed. Every step is derived from the
cluster, so a restarted operator picks up exactly where the last one stopped, and an unchanged model
causes no writes at all.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from qmo.api.base import API_VERSION
from qmo.api.quantizedmodel import QuantizedModelSpec
from qmo.desired.autoscaling import HANDOFF_FIELD_MANAGER, AutoscalingEnvironment, wanted_replicas
from qmo.desired.common import Manifest, Owner
from qmo.desired.decision import (
    Failure,
    ModelDecision,
    ModelSnapshot,
    decide_model,
    hash_of,
    plan_model,
    plan_status,
    serving_selector,
)
from qmo.desired.multinode import (
    LWS_API_VERSION,
    MULTI_NODE_SETTINGS,
    MultiNodeShape,
    leader_worker_set_name,
    nodes_service_name,
)
from qmo.desired.names import CACHE_CLAIM_NAME, serving_name
from qmo.desired.status import (
    condition,
    deployment_rollout,
    format_validation_error,
    guarded_status_write,
    merge_patch_for,
    now_rfc3339,
)
from qmo.reconcile.autoscaling import DISCOVERY_TTL_SECONDS, AutoscalingDiscovery
from qmo.reconcile.gpus import NodeShapes, UnknownGPUClass, resolve_gpu
from qmo.reconcile.kube import ApiError, Kube
from qmo.reconcile.observe import PodMetricsScraper
from qmo.reconcile.outcome import Event, Outcome, PermanentFailure, RetryLater, Waiting
from qmo.reconcile.resolve import SourceResolver
from qmo.reconcile.source import HubClient
from qmo.reconcile.verify import PlanVerifier

log = logging.getLogger(__name__)

__all__ = ["ModelReconciler", "plan_status", "serving_selector"]
# The children a decision compares by their desired-hash annotation (the Deployment is read whole).
HASHED_CHILDREN = ("Service", "PodDisruptionBudget", "NetworkPolicy")


def controlled_by(child: Mapping[str, Any], uid: str) -> bool:
    refs = child["metadata"].get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


class ModelReconciler:
    """Reconciles QuantizedModels. One instance per operator; no state a restart would lose."""

    def __init__(
        self,
        kube: Kube,
        hub: HubClient,
        scraper: PodMetricsScraper | None = None,
        *,
        multi_node: str = "auto",
        prometheus_url: str | None = None,
        discovery_seconds: float = DISCOVERY_TTL_SECONDS,
    ) -> None:
        if multi_node not in MULTI_NODE_SETTINGS:
            raise ValueError(
                f"multi-node setting {multi_node!r} is not one of {', '.join(MULTI_NODE_SETTINGS)}"
            )
        self.multi_node = multi_node
        """auto, leaderworkerset or statefulset (the chart's multiNode): how replicas that span nodes run."""
        self.kube = kube
        self.autoscaling = AutoscalingDiscovery(kube, prometheus_url=prometheus_url, ttl=discovery_seconds)
        self.verifier = PlanVerifier(kube, scraper or PodMetricsScraper())
        self.sources = SourceResolver(kube, hub)
        self.node_shapes = NodeShapes(kube)

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        old_status: dict[str, Any] = dict(body.get("status") or {})
        # The status as the server holds it, which the write tests: untouched by whatever decides below.
        decided_from: dict[str, Any] = copy.deepcopy(old_status)
        generation = meta.get("generation")
        now = now_rfc3339()
        replanned = old_status
        decided: list[Event] = []
        try:
            snapshot = await self.observe(body, old_status, now)
            decision = await self.decide(snapshot)
            if decision.status.get("replan") not in (None, old_status.get("replan")):
                # The plan's arguments did not start: plan again with the headroom and apply that now.
                replanned = {**old_status, "replan": decision.status["replan"]}
                decided = [e for e in decision.events if e.reason == "Replanned"]
                decision = await self.decide(snapshot.with_old(replanned))
                decision.events[:0] = decided
            await self.apply(snapshot, decision)
            status, events = decision.status, decision.events
        except ApiError as error:
            if error.not_served:
                # KEDA's API went away between discovery and use: its retry must not trust the cached answer.
                self.autoscaling.forget()
            raise
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
            write, json_patch = guarded_status_write(meta, decided_from, patch)
            await self.kube.patch(
                "QuantizedModel", namespace, name, write, json_patch=json_patch, subresource="status"
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

    async def observe(self, body: Mapping[str, Any], old: dict[str, Any], now: str) -> ModelSnapshot:
        """Everything the decision needs. Reads of watched kinds come from the watch cache (no request)."""
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
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
        deployment = await self.kube.get("Deployment", namespace, serving_name(name))
        hashes: dict[str, str | None] = {}
        for child_kind in HASHED_CHILDREN:
            unused = child_kind == "NetworkPolicy" and not (
                spec.serving.network_policy.enabled or old.get("networkPolicy")
            )
            if not unused:  # a model without a NetworkPolicy costs no read of one
                hashes[child_kind] = hash_of(await self.kube.get(child_kind, namespace, serving_name(name)))
        shape: MultiNodeShape = "statefulset"
        node_groups: tuple[Manifest, ...] = ()
        # Only a model that may span nodes, or did, costs the reads of multi-node objects.
        if spec.serving.max_nodes > 1 or (old.get("plan") or {}).get("pipelineParallelSize"):
            shape, node_groups = await self.observe_node_groups(namespace, name, uid)
        environment, autoscaler = await self._observe_autoscaler(namespace, name, spec, old)
        pods = None
        rolled, _, _ = deployment_rollout(deployment, wanted_replicas(spec.serving, deployment))
        if node_groups or (deployment is not None and (not rolled or self.kube.cache is not None)):
            pods = tuple(await self.kube.list("Pod", namespace, label_selector=serving_selector(name)))
        return ModelSnapshot(
            namespace=namespace,
            name=name,
            uid=uid,
            generation=meta.get("generation"),
            now=now,
            spec=spec,
            old=old,
            source=source,
            resolved_source=resolved_source,
            config=config,
            gpu=gpu,
            # Shared, not copied: the snapshot is immutable and the decision only reads the artifacts.
            artifacts=tuple(await self.kube.list("ModelArtifact", namespace, shared=True)),
            deployment=deployment,
            child_hashes=hashes,
            pods=pods,
            multi_node=shape,
            node_groups=node_groups,
            autoscaling=environment,
            autoscaler=autoscaler,
        )

    async def observe_node_groups(
        self, namespace: str, name: str, uid: str
    ) -> tuple[MultiNodeShape, tuple[Manifest, ...]]:
        """The shape multi-node replicas take now, and the model's multi-node objects of either shape.

        Whether LeaderWorkerSet is installed is asked on every such reconcile (one discovery request), so
        installing or removing its CRD takes effect without restarting the operator."""
        lws_served = await self.kube.serves(LWS_API_VERSION)
        if self.multi_node == "leaderworkerset" and not lws_served:
            raise PermanentFailure(
                "LeaderWorkerSetMissing",
                f"the operator is set to serve multi-node models as LeaderWorkerSets (multiNode: "
                f"leaderworkerset) but the API server does not serve {LWS_API_VERSION}: install LWS, or "
                "set multiNode to auto or statefulset",
            )
        shape: MultiNodeShape = (
            "statefulset" if self.multi_node == "statefulset" or not lws_served else "leaderworkerset"
        )
        found: list[Manifest | None] = [
            *await self.kube.list("StatefulSet", namespace, label_selector=serving_selector(name)),
            await self.kube.get("Service", namespace, nodes_service_name(name)),
        ]
        if lws_served:
            found.append(await self.kube.get("LeaderWorkerSet", namespace, leader_worker_set_name(name)))
        # Only what this model controls: LWS makes StatefulSets of its own, which are its to manage.
        return shape, tuple(m for m in found if m is not None and controlled_by(m, uid))

    async def _observe_autoscaler(
        self, namespace: str, name: str, spec: QuantizedModelSpec, old: Mapping[str, Any]
    ) -> tuple[AutoscalingEnvironment, Manifest | None]:
        """What the cluster offers (cached discovery) and the model's autoscaler; nothing for a model that
        does not autoscale."""
        if spec.serving.autoscaling is None:
            return AutoscalingEnvironment(), None
        environment = await self.autoscaling.environment()
        autoscaler_kind = (
            "ScaledObject" if environment.keda and environment.prometheus_url else "HorizontalPodAutoscaler"
        )
        # qmo's HPAs are in the watch cache (no request); a ScaledObject is read only where KEDA is served.
        return environment, await self.kube.get(autoscaler_kind, namespace, serving_name(name))

    async def decide(self, snapshot: ModelSnapshot) -> ModelDecision:
        """The pure decision, with the serving pods' /metrics read in between when a verification is due."""
        intent = plan_model(snapshot)
        if isinstance(intent, Failure):
            if intent.unexpected:
                log.error("planning %s/%s failed unexpectedly: %s", snapshot.namespace, snapshot.name, intent)
            raise PermanentFailure(intent.reason, intent.message)
        decision = decide_model(snapshot, intent)
        if decision.failure is not None:
            raise PermanentFailure(decision.failure.reason, decision.failure.message)
        serving = decision.serving
        if decision.retry is not None or serving is None:
            return decision
        servable = serving.weights_ready and not serving.gate_blocks
        verification = await self.verifier.verify(
            namespace=snapshot.namespace,
            model=snapshot.name,
            old=snapshot.old,
            planned=intent.planned,
            metrics_pods=serving.metrics_pods,
            rolled=serving.rolled and servable,
            ready=serving.ready,
            pods=snapshot.pods
            if servable and not serving.rolled and serving.deployment is not None
            else None,
            generation=snapshot.generation,
            now=snapshot.now,
        )
        return decide_model(snapshot, intent, verification)

    async def apply(self, snapshot: ModelSnapshot, decision: ModelDecision) -> None:
        """Carry the decision out, in order; each step is idempotent (a repeat finds it done)."""
        namespace = snapshot.namespace
        if decision.delete_artifact is not None:
            meta = decision.delete_artifact["metadata"]
            await self.kube.delete("ModelArtifact", namespace, meta["name"], uid=meta["uid"])
        if decision.retry is not None:
            raise RetryLater(decision.retry)
        if decision.create_artifact is not None:
            await self._create_artifact(snapshot, decision.create_artifact, decision.cache_claim)
        if decision.adopt_artifact is not None:
            await self._adopt_artifact(snapshot, decision.adopt_artifact["metadata"]["name"])
        if decision.release_autoscaler is not None:
            released_kind, released = decision.release_autoscaler
            await self.kube.delete(released_kind, namespace, released)
        if decision.replicas_handoff is not None:
            await self.kube.apply(decision.replicas_handoff, field_manager=HANDOFF_FIELD_MANAGER)
        for child in decision.apply:
            await self.kube.apply(child)
        for doomed_kind, doomed in decision.delete:
            await self.kube.delete(doomed_kind, namespace, doomed)
        for release in decision.release:
            if not release.remaining_owners:
                # Kubernetes GC never deletes an object whose ownerReferences became empty: delete it.
                await self.kube.delete("ModelArtifact", namespace, release.name, uid=release.uid)
                continue
            ops = [
                {"op": "test", "path": "/metadata/resourceVersion", "value": release.resource_version},
                {
                    "op": "replace",
                    "path": "/metadata/ownerReferences",
                    "value": list(release.remaining_owners),
                },
            ]
            await self.kube.patch("ModelArtifact", namespace, release.name, ops, json_patch=True)

    async def _create_artifact(
        self, snapshot: ModelSnapshot, artifact: Manifest, claim: Manifest | None
    ) -> None:
        """Create the artifact (and the namespace's cache claim first, when missing). The watch cache may not
        have shown one another model created a moment ago: then this model joins its users instead."""
        namespace, name = snapshot.namespace, artifact["metadata"]["name"]
        if await self.kube.get("ModelArtifact", namespace, name, fresh=True) is not None:
            await self._adopt_artifact(snapshot, name)
            return
        if (
            claim is not None
            and await self.kube.get("PersistentVolumeClaim", namespace, CACHE_CLAIM_NAME) is None
        ):
            try:
                await self.kube.create(claim)
            except ApiError as error:
                if error.status != 409:
                    raise
        try:
            await self.kube.create(artifact)
        except ApiError as error:
            if error.status != 409:
                raise
            await self._adopt_artifact(snapshot, name)

    async def _adopt_artifact(self, snapshot: ModelSnapshot, name: str) -> None:
        """Add this model to an existing artifact's users: a JSON patch guarded by the resourceVersion of a
        fresh read (the watch cache's may lag while a fleet joins), so two models never fight over the
        artifact's spec or each other's references."""
        artifact = await self.kube.get("ModelArtifact", snapshot.namespace, name, fresh=True)
        if artifact is None:
            raise RetryLater(f"ModelArtifact {name} went away while this model joined it")
        meta = artifact["metadata"]
        if any(ref.get("uid") == snapshot.uid for ref in meta.get("ownerReferences") or []):
            return
        reference = snapshot.owner.reference(controller=False)
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
        ]
        if meta.get("ownerReferences"):
            ops.append({"op": "add", "path": "/metadata/ownerReferences/-", "value": reference})
        else:
            ops.append({"op": "add", "path": "/metadata/ownerReferences", "value": [reference]})
        await self.kube.patch("ModelArtifact", snapshot.namespace, name, ops, json_patch=True)
