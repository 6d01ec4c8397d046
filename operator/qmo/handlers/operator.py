"""The kopf wiring: an explicit registry with every handler, its id, and the startup settings.

Nothing here decides anything; each handler hands the object to a reconciler and turns its outcome into
Events, metrics and kopf's retry signals. ``build_registry`` is called on purpose by ``qmo run`` and by
tests, so importing this module has no side effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from qmo.handlers import kopf_fixes
from qmo.reconcile.artifact import ArtifactReconciler
from qmo.reconcile.cache import WATCHED_KINDS, IndexKey, WatchCache, WatchedKind, index_entry, index_id
from qmo.reconcile.kube import ApiError, Kube, load_credentials
from qmo.reconcile.metrics import Metrics
from qmo.reconcile.model import ModelReconciler
from qmo.reconcile.outcome import Outcome, RetryLater
from qmo.reconcile.source import HubClient, SourceError

GROUP = "qmo.dev"
MANAGED = {"app.kubernetes.io/managed-by": "qmo"}
# A reconcile whose status write met a newer object is repeated on a fresh read this many times in all.
CONFLICT_ATTEMPTS = 3
# Each artifact quality figure, as the qmo_artifact_quality gauge labels it and status.quality spells it.
QUALITY_MEASURES = {
    "perplexity_increase_percent": "perplexityIncreasePercent",
    "kl_mean": "klMean",
    "top1_agreement": "top1Agreement",
}
GONE = "Gone"  # the outcome of a reconcile whose object went away meanwhile: nothing to report


@dataclass
class OperatorConfig:
    kubeconfig: str | None = None
    resync_seconds: float = float(os.environ.get("QMO_RESYNC_SECONDS", "60"))
    metrics: Metrics | None = None
    # Only used with peering (qmo run --peering): how long a silent peer is presumed alive.
    peering_lifetime: int = 15
    # Reads of watched kinds come from the watch streams (reconcile/cache.py); off, every read is a request
    # (QMO_WATCH_CACHE=off: for comparing request counts, or to rule the cache out when debugging).
    watch_cache: bool = os.environ.get("QMO_WATCH_CACHE", "on") != "off"
    # How a replica that spans nodes runs: auto (a LeaderWorkerSet where LWS is installed, else StatefulSets),
    # leaderworkerset or statefulset (desired/multinode.py; the chart's multiNode).
    multi_node: str = "auto"
    # Where KEDA's Prometheus triggers query vLLM's metrics (autoscaling models); unset, models autoscale
    # with a HorizontalPodAutoscaler even where KEDA is installed.
    prometheus_url: str | None = os.environ.get("QMO_PROMETHEUS_URL") or None
    # How long the answer to "is KEDA installed" is reused (a discovery request at most this often).
    discovery_seconds: float = float(os.environ.get("QMO_DISCOVERY_SECONDS", "60"))


@dataclass
class Runtime:
    """What handlers share, created at startup inside the operator's loop (no API client at import)."""

    kube: Kube
    models: ModelReconciler
    artifacts: ArtifactReconciler
    metrics: Metrics
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # What models last saw of each artifact (see artifact_event): uid -> the fields models act on.
    artifact_news: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def lock(self, uid: str) -> asyncio.Lock:
        # One reconcile per object at a time, whether kopf or a child's event started it.
        return self.locks.setdefault(uid, asyncio.Lock())


def _retry_signal(error: Exception) -> kopf.TemporaryError:
    if isinstance(error, ApiError) and error.not_served:
        # A kind the discovery cache still counted on is gone (KEDA's CRD removed mid-reconcile): the retry
        # discovers again, so it is soon.
        return kopf.TemporaryError(f"the API server no longer serves a kind qmo used: {error}", delay=5)
    if isinstance(error, ApiError) and not error.transient and error.status not in (409, 422):
        # Refused for a reason retrying quickly will not fix (RBAC, admission): retry slowly, loudly.
        return kopf.TemporaryError(f"the API server refused a request: {error}", delay=60)
    return kopf.TemporaryError(str(error), delay=5)


def build_registry(config: OperatorConfig | None = None) -> kopf.OperatorRegistry:
    kopf_fixes.install()  # before kopf starts: a namespace gone mid-listing must not stop every handler
    config = config or OperatorConfig()
    registry = kopf.OperatorRegistry()
    runtime_holder: dict[str, Runtime] = {}

    def runtime() -> Runtime:
        return runtime_holder["runtime"]

    def register_index(watched: WatchedKind) -> None:
        def index(body: kopf.Body, **_: Any) -> dict[IndexKey, dict[str, Any]]:
            return index_entry(body)

        kopf.index(
            # The core group is spelled "v1" alone ("pods" by name would also match metrics.k8s.io's).
            watched.group or watched.version,
            watched.version if watched.group else watched.plural,
            watched.plural if watched.group else None,
            id=index_id(watched.kind),
            labels=MANAGED if watched.managed_only else None,
            registry=registry,
        )(index)

    if config.watch_cache:
        for watched in WATCHED_KINDS:
            register_index(watched)

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(
        settings: kopf.OperatorSettings,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        **handler_kwargs: Any,
    ) -> None:
        settings.persistence.finalizer = f"{GROUP}/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        # Only warnings from handler logs become Events; transitions are posted explicitly.
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60
        settings.peering.lifetime = config.peering_lifetime
        metrics = config.metrics or Metrics()
        kube = Kube(
            await asyncio.to_thread(load_credentials, config.kubeconfig),
            on_request=lambda verb, resource: metrics.api_requests.labels(verb, resource).inc(),
        )
        if config.watch_cache:
            # kopf hands startup handlers the (still empty) indexes and runs no resource handler before
            # every index is filled: from the first reconcile on, reads of watched kinds need no request.
            cache = WatchCache()
            cache.bind(handler_kwargs)
            kube.cache = cache
        runtime_holder["runtime"] = Runtime(
            kube=kube,
            models=ModelReconciler(
                kube,
                HubClient(),
                multi_node=config.multi_node,
                prometheus_url=config.prometheus_url,
                discovery_seconds=config.discovery_seconds,
            ),
            artifacts=ArtifactReconciler(kube),
            metrics=metrics,
        )
        logger.info("qmo configured (resync every %.0f s)", config.resync_seconds)

    @kopf.on.login(id="login", registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # kopf's built-in login predates the current kubernetes client; use the same loader as qmo's client.
        credentials = await asyncio.to_thread(load_credentials, config.kubeconfig)
        return kopf.ConnectionInfo(
            server=credentials.server,
            ca_path=credentials.ca_file,
            certificate_path=credentials.cert_file,
            private_key_path=credentials.key_file,
            token=credentials.token,
            insecure=not credentials.verify,
        )

    @kopf.on.cleanup(id="close", registry=registry)
    async def close(**_: Any) -> None:
        if "runtime" in runtime_holder:
            await runtime().kube.close()

    async def current(kind: str, body: Mapping[str, Any], *, fresh: bool = True) -> Mapping[str, Any] | None:
        """The object as the API server has it now (``fresh``) or as the watch last delivered it; None when
        it is gone, replaced or being deleted."""
        meta = body["metadata"]
        found = await runtime().kube.get(kind, meta["namespace"], meta["name"], fresh=fresh)
        if found is None or found["metadata"].get("uid") != meta["uid"]:
            return None
        return None if found["metadata"].get("deletionTimestamp") else found

    async def run_reconcile(
        kind: str, body: Mapping[str, Any], reconcile: Callable[[Mapping[str, Any]], Awaitable[Outcome]]
    ) -> Outcome:
        rt = runtime()
        started = time.perf_counter()
        try:
            async with rt.lock(body["metadata"]["uid"]):
                if rt.kube.cache is not None:
                    body = rt.kube.cache.latest(kind, body)  # what the reconcile ahead of this one wrote
                    if body["metadata"].get("deletionTimestamp"):
                        return Outcome(phase=GONE)  # deleted while this reconcile waited: nothing to do
                for attempt in range(1, CONFLICT_ATTEMPTS + 1):
                    try:
                        outcome = await reconcile(body)
                        break
                    except RetryLater:
                        # A body from the watch cache (a child's event woke its owner) may predate the
                        # owner's deletion: a model being deleted has nothing to wait for, and its
                        # artifact being evicted is no error. Only this rare path pays a fresh read.
                        if await current(kind, body) is None:
                            return Outcome(phase=GONE)
                        raise
                    except ApiError as error:
                        # 409: the status was computed from an old body (see status_write); decide again
                        # from the object as it is now.
                        if error.status != 409 or attempt == CONFLICT_ATTEMPTS:
                            raise
                        rt.metrics.reconcile_conflicts.labels(kind).inc()
                        fresh = await current(kind, body)
                        if fresh is None:
                            return Outcome(phase=GONE)
                        body = fresh
        except (ApiError, SourceError, RetryLater) as error:
            rt.metrics.reconcile_errors.labels(kind, type(error).__name__).inc()
            raise _retry_signal(error) from error
        finally:
            rt.metrics.reconcile_seconds.labels(kind).observe(time.perf_counter() - started)
        for event in outcome.events:
            kopf.event(
                cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message[:1024]
            )
        return outcome

    async def reconcile_model(body: Mapping[str, Any]) -> None:
        rt = runtime()
        outcome = await run_reconcile("QuantizedModel", body, rt.models.reconcile)
        if outcome.phase == GONE:
            return
        meta = body["metadata"]
        rt.metrics.set_model_phase(meta["namespace"], meta["name"], outcome.phase)
        plan = ((outcome.status_patch or {}).get("plan")) or (body.get("status") or {}).get("plan")
        if plan:
            rt.metrics.plan_gpus.labels(meta["namespace"], meta["name"]).set(plan["tensorParallelSize"])
            rt.metrics.plan_kv_tokens.labels(meta["namespace"], meta["name"]).set(plan["kvCacheTokens"])
            observed = plan.get("observed") or {}
            for gauge, value in (
                (rt.metrics.observed_kv_tokens, observed.get("kvCacheTokens")),
                (rt.metrics.plan_kv_error, observed.get("errorPercent")),
            ):
                if value is not None:
                    gauge.labels(meta["namespace"], meta["name"]).set(value)
                else:
                    with contextlib.suppress(KeyError):
                        gauge.remove(meta["namespace"], meta["name"])
        for event in outcome.events:
            if event.reason == "Replanned":
                rt.metrics.replans.labels(
                    (outcome.status_patch or {}).get("replan", {}).get("reason", "")
                ).inc()
        conditions = ((outcome.status_patch or {}).get("conditions")) or (body.get("status") or {}).get(
            "conditions", []
        )
        gate = next((c for c in conditions if c.get("type") == "QualityGate"), None)
        if gate is not None:
            blocked = 1 if gate.get("status") == "False" else 0
            rt.metrics.quality_gate_blocked.labels(meta["namespace"], meta["name"]).set(blocked)
        if outcome.status_patch and "artifact" in outcome.status_patch and outcome.status_patch["artifact"]:
            reused = outcome.status_patch["artifact"].get("phase") == "Ready"
            rt.metrics.artifacts.labels("reused" if reused else "built").inc()

    async def reconcile_artifact(body: Mapping[str, Any]) -> None:
        rt = runtime()
        outcome = await run_reconcile("ModelArtifact", body, rt.artifacts.reconcile)
        if outcome.phase == GONE:
            return
        meta = body["metadata"]
        rt.metrics.set_artifact_phase(meta["namespace"], meta["name"], outcome.phase)
        patch = outcome.status_patch or {}
        if outcome.phase == "Ready" and patch.get("phase") == "Ready":
            method = ((body.get("spec") or {}).get("recipe") or {}).get("method", "unknown")
            if isinstance(patch.get("quantizeSeconds"), int | float):
                rt.metrics.quantize_seconds.labels(method).observe(patch["quantizeSeconds"])
            if isinstance(patch.get("sizeBytes"), int):
                rt.metrics.artifact_bytes.labels(meta["namespace"], meta["name"]).set(patch["sizeBytes"])
            quality = patch.get("quality") or {}
            for measure, key in QUALITY_MEASURES.items():
                if isinstance(quality.get(key), int | float):
                    rt.metrics.artifact_quality.labels(meta["namespace"], meta["name"], measure).set(
                        quality[key]
                    )

    # QuantizedModel: on every spec change, on operator start, and on a resync timer as a safety net.
    @kopf.on.resume(GROUP, "quantizedmodels", id="reconcile-model", registry=registry)
    @kopf.on.create(GROUP, "quantizedmodels", id="reconcile-model", registry=registry)
    @kopf.on.update(GROUP, "quantizedmodels", id="reconcile-model", field="spec", registry=registry)
    async def model_changed(body: kopf.Body, **_: Any) -> None:
        await reconcile_model(body)

    # The first tick waits one interval: a kopf timer without initial_delay fires the moment kopf first sees
    # the object, beside the create (or resume) handler, and that second reconcile of every new model raced
    # kopf's finalizer patch and had its first status write refused (about once per model in a fleet).
    @kopf.timer(
        GROUP,
        "quantizedmodels",
        id="resync-model",
        interval=config.resync_seconds,
        initial_delay=config.resync_seconds,
        registry=registry,
    )
    async def model_resync(body: kopf.Body, **_: Any) -> None:
        # The object from the watch cache (no request; a GET without it). It can lag behind the API server
        # when the operator is busy, like kopf's timer body: a status decided from a lagging body carries
        # its resourceVersion and is refused (409), then decided again on a fresh read (run_reconcile), so a
        # lag costs a retry, never a stale write.
        fresh = await current("QuantizedModel", body, fresh=False)
        if fresh is not None:
            await reconcile_model(fresh)

    @kopf.on.delete(GROUP, "quantizedmodels", id="forget-model", optional=True, registry=registry)
    async def model_deleted(body: kopf.Body, **_: Any) -> None:
        rt = runtime()
        rt.metrics.forget_model(body["metadata"]["namespace"], body["metadata"]["name"])
        rt.models.verifier.forget(body["metadata"]["namespace"], body["metadata"]["name"])
        rt.locks.pop(body["metadata"]["uid"], None)

    # ModelArtifact: the same, plus eviction of its files before it goes (the finalizer).
    @kopf.on.resume(GROUP, "modelartifacts", id="reconcile-artifact", registry=registry)
    @kopf.on.create(GROUP, "modelartifacts", id="reconcile-artifact", registry=registry)
    async def artifact_changed(body: kopf.Body, **_: Any) -> None:
        await reconcile_artifact(body)

    @kopf.timer(
        GROUP,
        "modelartifacts",
        id="resync-artifact",
        interval=config.resync_seconds,
        initial_delay=config.resync_seconds,  # as for models
        registry=registry,
    )
    async def artifact_resync(body: kopf.Body, **_: Any) -> None:
        fresh = await current("ModelArtifact", body, fresh=False)  # as for models
        if fresh is not None:
            await reconcile_artifact(fresh)

    @kopf.on.delete(GROUP, "modelartifacts", id="evict-artifact", registry=registry)
    async def artifact_deleted(body: kopf.Body, **_: Any) -> None:
        rt = runtime()
        if not await rt.artifacts.evict(body):
            raise kopf.TemporaryError("waiting for the evict Job to delete the files", delay=2)
        rt.locks.pop(body["metadata"]["uid"], None)

    # Children: a change in an artifact, Job or Deployment wakes its owner up at once (level-based: the
    # owner is re-read and reconciled as a whole; the event only says when).
    async def wake_owners(
        owner_kind: str, body: Mapping[str, Any], logger: logging.Logger | logging.LoggerAdapter[Any]
    ) -> None:
        rt = runtime()
        namespace = body["metadata"].get("namespace")
        for ref in body["metadata"].get("ownerReferences") or []:
            if ref.get("kind") != owner_kind or not str(ref.get("apiVersion", "")).startswith(GROUP):
                continue
            owner = await rt.kube.get(owner_kind, namespace, ref["name"])
            if owner is None or owner["metadata"].get("uid") != ref.get("uid"):
                continue
            if owner["metadata"].get("deletionTimestamp"):
                continue
            try:
                if owner_kind == "QuantizedModel":
                    await reconcile_model(owner)
                else:
                    await reconcile_artifact(owner)
            except kopf.TemporaryError as error:
                logger.info(
                    "owner %s/%s will be retried by its own handlers: %s", namespace, ref["name"], error
                )

    @kopf.on.event(GROUP, "modelartifacts", id="wake-models", registry=registry)
    async def artifact_event(
        body: kopf.Body, type: str, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
    ) -> None:
        rt = runtime()
        uid = body["metadata"]["uid"]
        if type == "DELETED":
            rt.artifact_news.pop(uid, None)
            return
        # Wake the users only when something they act on changed. Every model that joins adds an
        # ownerReference (and the artifact recounts its users): waking all users on each of those would
        # cost users^2 reconciles per artifact while a fleet converges.
        status = body.get("status") or {}
        news = (
            status.get("phase"),
            status.get("message"),
            status.get("manifestDigest"),
            body["metadata"].get("deletionTimestamp"),
        )
        if type in ("ADDED", "MODIFIED") and rt.artifact_news.get(uid) != news:
            await wake_owners("QuantizedModel", body, logger)
            rt.artifact_news[uid] = news

    @kopf.on.event("batch", "v1", "jobs", id="wake-artifacts", labels=MANAGED, registry=registry)
    async def job_event(
        body: kopf.Body, type: str, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
    ) -> None:
        if type == "MODIFIED":
            # Quantize and evict Jobs belong to artifacts; inspect Jobs (PVC sources) to models.
            await wake_owners("ModelArtifact", body, logger)
            await wake_owners("QuantizedModel", body, logger)

    @kopf.on.event(
        "apps", "v1", "deployments", id="wake-models-on-rollout", labels=MANAGED, registry=registry
    )
    async def deployment_event(
        body: kopf.Body, type: str, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
    ) -> None:
        if type == "MODIFIED":
            await wake_owners("QuantizedModel", body, logger)

    # A multi-node model's groups (desired/multinode.py), the same way. LeaderWorkerSets are not watched (the
    # CRD may be absent or come later): the resync timer notices their progress.
    @kopf.on.event(
        "apps", "v1", "statefulsets", id="wake-models-on-group-rollout", labels=MANAGED, registry=registry
    )
    async def statefulset_event(
        body: kopf.Body, type: str, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
    ) -> None:
        if type == "MODIFIED":
            await wake_owners("QuantizedModel", body, logger)

    return registry
