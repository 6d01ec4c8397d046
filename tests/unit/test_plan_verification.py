"""Plan verification: reading vLLM's cache figures, judging them, and the one re-plan after a failed start.

The metrics text is what vLLM 0.25.1 (the pinned CPU engine) really served for a tiny Llama; the serving
tier checks the same parser against a live server.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qmo.api.quantizedmodel import PlanStatus
from qmo.desired.verification import (
    CRASH_LOOP_RESTARTS,
    MISMATCH_PERCENT,
    OBSERVE_PERIOD_SECONDS,
    RETRY_FAILED_SCRAPE_SECONDS,
    CacheObservation,
    MetricsFormatError,
    deployment_metrics_pods,
    kv_error_percent,
    observation_due,
    parse_cache_config,
    replanned_utilization,
    startup_failure,
)
from qmo.reconcile.observe import PodMetricsScraper, metrics_url
from qmo.reconcile.verify import PlanVerifier, observation

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_desired import PLAN

from vllm_metrics import REAL_METRICS, MetricsStandIn, with_pool

ARGS = ["/cache/k/model", "--served-model-name", "m", "--gpu-memory-utilization=0.9"]
SERVING_LABELS = {"qmo.dev/model": "m", "app.kubernetes.io/component": "serving"}


def test_the_real_cache_config_is_read() -> None:
    cache = parse_cache_config(REAL_METRICS)
    assert cache.block_size == 16
    assert cache.blocks > 0
    assert cache.tokens == cache.blocks * cache.block_size  # plain attention: the same number both ways


def test_several_engines_report_the_smallest_pool() -> None:
    line = next(line for line in REAL_METRICS.splitlines() if line.startswith("vllm:cache_config_info{"))
    second = with_pool(line, 100).replace('engine="0"', 'engine="1"')
    assert parse_cache_config(REAL_METRICS + "\n" + second).tokens == 1600


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# HELP vllm:num_requests_running x\nvllm:num_requests_running 0.0\n",
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1.0\n',
    ],
)
def test_metrics_without_a_cache_config_are_refused(text: str) -> None:
    with pytest.raises(MetricsFormatError):
        parse_cache_config(text)


def test_the_error_is_negative_when_vllm_gave_fewer_tokens() -> None:
    assert kv_error_percent(predicted=1000, observed=900) == -10.0
    assert kv_error_percent(predicted=1000, observed=1040) == 4.0
    assert kv_error_percent(predicted=0, observed=0) == 0.0


def test_observations_are_due_on_a_rollout_then_on_a_period() -> None:
    done = {"revision": "h/1", "scrapedAt": "2026-01-01T00:00:00Z", "kvCacheTokens": 10}
    assert observation_due(None, revision="h/1", now="2026-01-01T00:00:01Z")
    assert observation_due(done, revision="h2/1", now="2026-01-01T00:00:01Z")  # a new template
    assert observation_due(done, revision="h/2", now="2026-01-01T00:00:01Z")  # a replica more
    assert not observation_due(done, revision="h/1", now="2026-01-01T00:05:00Z")
    later = f"2026-01-01T00:{int(OBSERVE_PERIOD_SECONDS // 60):02d}:00Z"
    assert observation_due(done, revision="h/1", now=later)
    failed = {"revision": "h/1", "scrapedAt": "2026-01-01T00:00:00Z", "error": "refused"}
    soon = f"2026-01-01T00:{int(RETRY_FAILED_SCRAPE_SECONDS // 60):02d}:00Z"
    assert not observation_due(failed, revision="h/1", now="2026-01-01T00:00:30Z")
    assert observation_due(failed, revision="h/1", now=soon)


def pod(name: str, *, args: list[str] = ARGS, **container_status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "vllm", "args": args}]},
        "status": {"containerStatuses": [{"name": "vllm", "ready": False, **container_status}]},
    }


def test_an_oom_killed_start_is_a_startup_failure() -> None:
    oom = pod(
        "p",
        restartCount=1,
        lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137, "message": "a\nloading weights"}},
        state={"running": {}},
    )
    failure = startup_failure([oom], container="vllm", args=ARGS)
    assert failure is not None
    assert (failure.reason, failure.exit_code, failure.message) == ("OOMKilled", 137, "loading weights")
    assert "pod p OOMKilled, exit code 137" in failure.describe()


def crash_loop(restarts: int, exit_code: int, **extra: Any) -> dict[str, Any]:
    return pod(
        "c",
        restartCount=restarts,
        lastState={"terminated": {"reason": "Error", "exitCode": exit_code}},
        state={"waiting": {"reason": "CrashLoopBackOff"}},
        **extra,
    )


def test_a_crash_loop_counts_after_repeated_restarts_but_not_a_usage_error() -> None:
    assert startup_failure([crash_loop(CRASH_LOOP_RESTARTS, 1)], container="vllm", args=ARGS) is not None
    assert startup_failure([crash_loop(CRASH_LOOP_RESTARTS - 1, 1)], container="vllm", args=ARGS) is None
    assert startup_failure([crash_loop(5, 2)], container="vllm", args=ARGS) is None  # argparse refused


def test_pods_of_another_plan_or_on_their_way_out_say_nothing_about_this_plan() -> None:
    old_plan = crash_loop(5, 1)
    old_plan["spec"]["containers"][0]["args"] = [*ARGS[:-1], "--gpu-memory-utilization=0.95"]
    leaving = crash_loop(5, 1)
    leaving["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert startup_failure([old_plan, leaving], container="vllm", args=ARGS) is None


def test_the_replan_lowers_utilization_once_to_a_floor() -> None:
    assert replanned_utilization(0.9) == 0.85
    assert replanned_utilization(0.07) is None


def planned(tokens: int) -> PlanStatus:
    return PLAN.model_copy(update={"kv_cache_tokens": tokens})


@pytest.mark.parametrize(
    ("observed_tokens", "status", "reason"),
    [(1000, True, "Verified"), (1040, True, "Verified"), (900, False, "KVCacheMismatch")],
)
def test_the_verdict_compares_observed_and_predicted_tokens(
    observed_tokens: int, status: bool, reason: str
) -> None:
    caches = {"p": CacheObservation(blocks=observed_tokens // 8, block_size=8, tokens=observed_tokens)}
    observed = observation(caches, {}, predicted=1000, revision="h/1", now="T")
    verdict = PlanVerifier._judge(observed, planned(1000))
    assert (verdict.status, verdict.reason) == (status, reason)
    assert str(observed_tokens) in verdict.message and "1000" in verdict.message
    if not status:
        assert f"{MISMATCH_PERCENT:g}%" in verdict.message


def test_a_failed_scrape_is_unknown_with_the_reason() -> None:
    observed = observation({}, {"p": "connection refused"}, predicted=1000, revision="h/1", now="T")
    assert "kvCacheTokens" not in observed
    verdict = PlanVerifier._judge(observed, planned(1000))
    assert (verdict.status, verdict.reason) == (None, "ScrapeFailed")
    assert "connection refused" in verdict.message


@pytest.fixture
def metrics_server() -> Iterator[MetricsStandIn]:
    with MetricsStandIn(with_pool(REAL_METRICS, 500), failures=1) as server:
        yield server


def scrape(pods: list[dict[str, Any]], port: int) -> Any:
    # The pods "listen" on the test server's port.
    return asyncio.run(PodMetricsScraper(timeout=2.0, attempts=3, port=port).scrape(pods))


def test_scrapes_retry_a_failing_pod_and_report_an_unreachable_one(metrics_server: MetricsStandIn) -> None:
    reachable = {"metadata": {"name": "a"}, "status": {"podIP": "127.0.0.1"}}
    unscheduled = {"metadata": {"name": "b"}, "status": {}}
    result = scrape([reachable, unscheduled], metrics_server.port)
    assert result.caches == {"a": CacheObservation(blocks=500, block_size=16, tokens=8000)}
    assert metrics_server.requests == 2  # one 503, then the answer
    assert result.errors == {"b": "the pod has no IP yet"}


def test_a_body_that_arrives_in_pieces_is_read_to_its_end() -> None:
    """vLLM's cache line is near the end of its ~45 kB /metrics: a first piece alone lacks it."""
    with MetricsStandIn(with_pool(REAL_METRICS, 500), pieces=4) as server:
        reachable = {"metadata": {"name": "a"}, "status": {"podIP": "127.0.0.1"}}
        result = scrape([reachable], server.port)
    assert result.errors == {}
    assert result.caches == {"a": CacheObservation(blocks=500, block_size=16, tokens=8000)}


def test_metrics_urls_bracket_ipv6() -> None:
    assert metrics_url({"status": {"podIP": "fd00::5"}}, 8000) == "http://[fd00::5]:8000/metrics"


def test_a_reread_with_the_same_figures_keeps_status_so_a_fleet_at_rest_writes_nothing(
    metrics_server: MetricsStandIn,
) -> None:
    """The pods are read again once the period is over; the status (and so the write) changes only when
    vLLM reports something different."""
    metrics_server.failures = 0
    pod = {
        "metadata": {"name": "a", "labels": SERVING_LABELS},
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        "spec": {"containers": [{"name": "vllm", "args": ARGS}]},
    }
    deployment = {
        "metadata": {"annotations": {"qmo.dev/desired-hash": "h"}},
        "spec": {"template": {"spec": {"containers": [{"name": "vllm", "args": ARGS}]}}},
    }
    verifier = PlanVerifier(None, PodMetricsScraper(timeout=2.0, attempts=1, port=metrics_server.port))  # type: ignore[arg-type]

    def verify(old: dict[str, Any], now: str) -> Any:
        return asyncio.run(
            verifier.verify(
                namespace="ns",
                model="m",
                old=old,
                planned=planned(8000),
                metrics_pods=deployment_metrics_pods("m", deployment),
                rolled=True,
                ready=1,
                pods=[pod],
                generation=1,
                now=now,
            )
        )

    first = verify({}, "2026-12-07T00:00:00Z").observed
    assert first["kvCacheTokens"] == 8000 and metrics_server.requests == 1
    old = {"plan": {"observed": first}}
    assert verify(old, "2026-12-07T00:05:00Z").observed == first and metrics_server.requests == 1  # not due
    assert (
        verify(old, "2026-12-07T00:11:00Z").observed == first and metrics_server.requests == 2
    )  # same figures
    assert (
        verify(old, "2026-12-07T00:15:00Z").observed == first and metrics_server.requests == 2
    )  # read 4 min ago
    assert verify({}, "2026-12-07T00:16:00Z").observed == first and metrics_server.requests == 2  # stale body
    metrics_server.text = with_pool(REAL_METRICS, 400)
    changed = verify(old, "2026-12-07T00:22:00Z").observed
    assert metrics_server.requests == 3
    assert changed["kvCacheTokens"] == 6400 and changed["scrapedAt"] == "2026-12-07T00:22:00Z"


class LaggingPods:
    """The pods as a lagging watch cache shows them (one Ready) and as the API server does (two)."""

    def __init__(self, cached: list[dict[str, Any]], current: list[dict[str, Any]]) -> None:
        self.cached, self.current, self.fresh_reads = cached, current, 0

    async def list(self, kind: str, namespace: str, *, label_selector: str = "", fresh: bool = False) -> Any:
        self.fresh_reads += fresh
        return self.current if fresh else self.cached


def test_pods_the_watch_has_not_shown_ready_yet_are_read_from_the_api_server(
    metrics_server: MetricsStandIn,
) -> None:
    """The Deployment says two ready replicas before the Pod watch does: the observation still has both."""
    metrics_server.failures = 0

    def pod(name: str, ready: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "labels": SERVING_LABELS},
            "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": ready}]},
            "spec": {"containers": [{"name": "vllm", "args": ARGS}]},
        }

    kube = LaggingPods([pod("a", "True"), pod("b", "False")], [pod("a", "True"), pod("b", "True")])
    deployment = {
        "metadata": {"annotations": {"qmo.dev/desired-hash": "h"}},
        "spec": {"template": {"spec": {"containers": [{"name": "vllm", "args": ARGS}]}}},
    }
    verifier = PlanVerifier(kube, PodMetricsScraper(timeout=2.0, attempts=1, port=metrics_server.port))  # type: ignore[arg-type]
    result = asyncio.run(
        verifier.verify(
            namespace="ns",
            model="m",
            old={},
            planned=planned(8000),
            metrics_pods=deployment_metrics_pods("m", deployment),
            rolled=True,
            ready=2,
            pods=None,
            generation=1,
            now="2026-12-07T00:00:00Z",
        )
    )
    assert result.observed["pods"] == 2 and result.observed["revision"] == "h/2"
    assert kube.fresh_reads == 1 and metrics_server.requests == 2
