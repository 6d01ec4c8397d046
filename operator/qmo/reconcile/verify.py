"""Check the plan against the running vLLM: observed KV tokens, and one re-plan after a failed start.

The decisions are pure (``desired.verification``); this module gathers what they need (the pods that
report a replica's figures: a Deployment's pods, a multi-node model's leaders; their ``/metrics``) only
when a decision is due, and shapes the result for status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qmo.api.quantizedmodel import PlanStatus
from qmo.desired.common import Event
from qmo.desired.verification import (
    MISMATCH_PERCENT,
    SERVING_CONTAINER,
    MetricsPods,
    Verification,
    kv_error_percent,
    observation_due,
    plan_matches,
    replanned_utilization,
    startup_failure,
)
from qmo.reconcile.kube import Kube, label_selector
from qmo.reconcile.observe import PodMetricsScraper


def observation(
    caches: Mapping[str, Any], errors: Mapping[str, str], *, predicted: int, revision: str, now: str
) -> dict[str, Any]:
    observed: dict[str, Any] = {"pods": len(caches), "scrapedAt": now, "revision": revision}
    if caches:
        smallest = min(caches.values(), key=lambda cache: cache.tokens)
        observed.update(
            kvCacheTokens=smallest.tokens,
            kvCacheBlocks=smallest.blocks,
            blockSize=smallest.block_size,
            errorPercent=kv_error_percent(predicted=predicted, observed=smallest.tokens),
        )
    if errors:
        observed["error"] = "; ".join(f"{pod}: {why}" for pod, why in sorted(errors.items()))[:1000]
    return observed


def same_figures(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether a new observation says what the recorded one says (everything but when it was read)."""
    if old is None:
        return False
    return {k: v for k, v in old.items() if k != "scrapedAt"} == {
        k: v for k, v in new.items() if k != "scrapedAt"
    }


class PlanVerifier:
    def __init__(self, kube: Kube, scraper: PodMetricsScraper) -> None:
        self.kube = kube
        self.scraper = scraper
        # Each model's last observation and when its pods were last read, in memory. A re-read that finds the
        # same figures keeps the status as it was (its scrapedAt is when these figures were first read), so a
        # fleet at rest writes nothing. And a reconcile of a body older than this process's last status write
        # (kopf's, while the watch lags; its write is then refused and decided again) must not take the
        # status's older observation for the current one and read the pods again. After a restart the
        # status decides, and the first re-read may come early.
        self.last: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}

    def forget(self, namespace: str, model: str) -> None:
        self.last.pop((namespace, model), None)

    async def verify(
        self,
        *,
        namespace: str,
        model: str,
        old: Mapping[str, Any],
        planned: PlanStatus,
        metrics_pods: MetricsPods | None,
        rolled: bool,
        ready: int,
        pods: Sequence[Mapping[str, Any]] | None,
        generation: int | None,
        now: str,
    ) -> Verification:
        """``metrics_pods``: which pods to read (None while nothing serves); ``ready``: ready replicas (a
        multi-node model's ready groups, one leader each); ``pods``: the serving pods when the caller listed
        them already (None: list them if needed)."""
        current = metrics_pods.template if metrics_pods is not None else ""
        last_read, remembered = self.last.get((namespace, model), ("", None))
        old_observed = remembered or (old.get("plan") or {}).get("observed")
        observed = (
            old_observed if old_observed and old_observed["revision"].split("/")[0] == current else None
        )
        replan = old.get("replan") if (old.get("replan") or {}).get("generation") == generation else None
        if metrics_pods is not None and rolled:
            revision = f"{current}/{ready}"
            seen = (
                {**observed, "scrapedAt": max(str(observed.get("scrapedAt") or ""), last_read)}
                if observed and last_read
                else observed
            )
            if observation_due(seen, revision=revision, now=now):
                last_read = now
                if observed is not None:
                    # Before the reads, as the resync timer and an event may verify the same model at once:
                    # the second finds this read already under way and does not read the pods again.
                    self.last[namespace, model] = (last_read, observed)
                selector = label_selector(metrics_pods.labels)
                if pods is None:
                    pods = await self.kube.list("Pod", namespace, label_selector=selector)
                running = metrics_pods.running(pods)
                if len(running) < ready:
                    # The workload's watch said Ready before the pods' watch did: read the pods themselves,
                    # or this revision would be recorded with fewer pods than it has and never read again.
                    pods = await self.kube.list("Pod", namespace, label_selector=selector, fresh=True)
                    running = metrics_pods.running(pods)
                scrape = await self.scraper.scrape(running)
                errors = (
                    scrape.errors
                    if running
                    else {"pods": f"no ready {metrics_pods.role} runs the current template"}
                )
                fresh = observation(
                    scrape.caches, errors, predicted=planned.kv_cache_tokens, revision=revision, now=now
                )
                if not same_figures(observed, fresh):
                    observed = fresh
                if observed is not None:
                    self.last[namespace, model] = (last_read, observed)
        result = self._judge(observed, planned)
        result.observed, result.replan = observed, replan
        previous: Mapping[str, Any] = next(
            (c for c in old.get("conditions", []) if c.get("type") == "PlanVerified"), {}
        )
        if result.reason == "KVCacheMismatch" and previous.get("reason") != result.reason:
            result.events.append(Event("Warning", "PlanMismatch", result.message))
        started = observed is not None and observed.get("kvCacheTokens") is not None
        startup_args = metrics_pods.startup_args if metrics_pods is not None else None
        if startup_args is None or rolled or started or pods is None:
            return result
        # Not rolled out and never seen running under this template: did it fail to start?
        failure = startup_failure(pods, container=SERVING_CONTAINER, args=startup_args)
        if failure is None:
            return result
        utilization = planned.gpu_memory_utilization or 0.9
        lowered = None if replan is not None else replanned_utilization(utilization)
        if lowered is not None:
            result.replan = {
                "generation": generation,
                "reason": failure.reason,
                "message": failure.describe(),
                "fromGpuMemoryUtilization": utilization,
                "gpuMemoryUtilization": lowered,
                "at": now,
            }
            result.replanned_now = True
            message = (
                f"{failure.describe()}; re-planned once with --gpu-memory-utilization {lowered:g}"
                f" (was {utilization:g})"
            )
            result.events.append(Event("Warning", "Replanned", message))
            result.status, result.reason, result.message = False, "StartupFailed", message
            return result
        tried = (
            f"even after the re-plan to --gpu-memory-utilization {utilization:g}"
            if replan is not None
            else f"at --gpu-memory-utilization {utilization:g}, which cannot go lower"
        )
        result.status, result.reason, result.degraded = False, "StartupFailed", True
        result.message = (
            f"{failure.describe()}; the plan's arguments do not start {tried}: lower"
            " spec.serving.gpuMemoryUtilization, raise the container's memory limit, or choose a GPU class"
            " with more memory"
        )[:1000]
        return result

    @staticmethod
    def _judge(observed: Mapping[str, Any] | None, planned: PlanStatus) -> Verification:
        if observed is None:
            return Verification(None, "NotObserved", "waiting for the serving pods to be ready")
        tokens = observed.get("kvCacheTokens")
        if tokens is None:
            return Verification(
                None, "ScrapeFailed", f"could not read vLLM's /metrics: {observed.get('error')}"
            )
        error = float(observed["errorPercent"])
        figures = (
            f"vLLM allocated {tokens} KV-cache tokens per replica, the plan predicted {planned.kv_cache_tokens}"
            f" ({error:+g}%)"
        )
        if plan_matches(error):
            return Verification(True, "Verified", figures)
        return Verification(
            False, "KVCacheMismatch", f"{figures}: more than the {MISMATCH_PERCENT:g}% a plan may be off"
        )
