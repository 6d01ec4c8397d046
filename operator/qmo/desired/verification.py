"""Plan verification, pure: what vLLM really allocated against what the plan predicted, and what to do when
the plan's arguments do not even start.

The planner predicts the KV-cache tokens each replica gets; vLLM reports what it allocated in
``vllm:cache_config_info`` on ``/metrics``. Reading it back turns a wrong plan (a new GPU, model or vLLM
version) into a figure in status and an alert, instead of an OOM crash loop found by users. When the
plan's arguments do not start (OOMKilled, or a crash loop before the first ready probe), the operator
re-plans once with more headroom; the rule and its limit live here so that they can be tested and
documented in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from qmo.desired.common import Event

# |observed - predicted| / predicted above this is a plan mismatch (PlanVerified=False, and the
# QuantizedModelPlanMismatch alert when it lasts 15 minutes).
MISMATCH_PERCENT = 5.0
# A successful observation is repeated on this period even when nothing rolled (a node's driver or MIG
# layout can change under a Deployment); a failed scrape is retried sooner.
OBSERVE_PERIOD_SECONDS = 600.0
RETRY_FAILED_SCRAPE_SECONDS = 60.0
# The re-plan after a failed start lowers --gpu-memory-utilization by this much (4 GiB of an 80 GiB GPU),
# once per spec generation: memory outside vLLM's own accounting (CUDA graphs, NCCL buffers,
# fragmentation, a sidecar) is what a start under a checked plan runs out of, and the planner then
# re-chooses the tensor-parallel size and concurrency within the smaller budget.
REPLAN_UTILIZATION_STEP = 0.05
MIN_UTILIZATION = 0.05
# vLLM exits 2 on arguments it rejects (argparse): a usage error, which no amount of headroom fixes.
USAGE_ERROR_EXIT_CODE = 2
# Restarts before a container that never became ready counts as crash-looping at startup.
CRASH_LOOP_RESTARTS = 2

_CACHE_CONFIG = re.compile(r"^vllm:cache_config_info\{(?P<labels>.*)\}\s+\S+\s*$")
_LABEL = re.compile(r'(?P<name>[A-Za-z_][A-Za-z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


class MetricsFormatError(ValueError):
    """The text is not vLLM's /metrics, or lacks the cache configuration (an older or newer vLLM)."""


@dataclass(frozen=True)
class CacheObservation:
    """The KV cache one vLLM server allocated, as its ``vllm:cache_config_info`` reports it."""

    blocks: int
    block_size: int
    tokens: int


def parse_cache_config(metrics_text: str) -> CacheObservation:
    """The KV cache of the smallest engine in one ``/metrics`` text (a server with several data-parallel
    engines serves no more concurrency than its smallest)."""
    observations = []
    for line in metrics_text.splitlines():
        match = _CACHE_CONFIG.match(line)
        if match is None:
            continue
        labels = {m["name"]: m["value"] for m in _LABEL.finditer(match["labels"])}
        try:
            blocks = int(labels["num_gpu_blocks"])
            block_size = int(labels["block_size"])
        except (KeyError, ValueError) as error:
            raise MetricsFormatError(
                f"vllm:cache_config_info has no integer num_gpu_blocks/block_size: {line[:200]}"
            ) from error
        # kv_cache_size_tokens (vLLM >= 0.11) is exact for models whose layers share the pool differently
        # (sliding window, hybrid); blocks x block size is the same number for plain attention.
        tokens_label = labels.get("kv_cache_size_tokens", "")
        tokens = int(tokens_label) if tokens_label.isdigit() else blocks * block_size
        observations.append(CacheObservation(blocks=blocks, block_size=block_size, tokens=tokens))
    if not observations:
        raise MetricsFormatError("no vllm:cache_config_info sample in the metrics text")
    return min(observations, key=lambda o: o.tokens)


def kv_error_percent(*, predicted: int, observed: int) -> float:
    """(observed - predicted) / predicted in percent: negative means vLLM gave fewer tokens than planned,
    the dangerous direction (the planned concurrency does not exist)."""
    if predicted <= 0:
        return 0.0 if observed <= 0 else 100.0
    return round((observed - predicted) / predicted * 100, 2)


def plan_matches(error_percent: float) -> bool:
    return abs(error_percent) <= MISMATCH_PERCENT


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def observation_due(observed: Mapping[str, Any] | None, *, revision: str, now: str) -> bool:
    """Whether to scrape the serving pods now: on a new rollout (the revision names the template and the
    ready pods), then once per period; a failed scrape sooner. Never on every reconcile."""
    if not observed or observed.get("revision") != revision:
        return True
    last = observed.get("scrapedAt")
    if not last:
        return True
    period = OBSERVE_PERIOD_SECONDS if observed.get("kvCacheTokens") else RETRY_FAILED_SCRAPE_SECONDS
    return (_parse_time(now) - _parse_time(str(last))).total_seconds() >= period


def observation_revision(deployment_hash: str | None, pod_names: Iterable[str]) -> str:
    """What an observation was made of: the Deployment's desired hash and its ready pods."""
    return ",".join([deployment_hash or "", *sorted(pod_names)])


@dataclass(frozen=True)
class StartupFailure:
    """A serving pod that did not start under the plan's arguments."""

    pod: str
    reason: str  # OOMKilled | CrashLoopBackOff
    exit_code: int | None
    message: str

    def describe(self) -> str:
        code = "" if self.exit_code is None else f", exit code {self.exit_code}"
        detail = f": {self.message}" if self.message else ""
        return f"pod {self.pod} {self.reason}{code}{detail}"[:1000]


def _current_template(pod: Mapping[str, Any], container: str, args: Sequence[str]) -> bool:
    """Whether the pod runs the planned arguments (pods of a previous plan say nothing about this one)."""
    for spec in (pod.get("spec") or {}).get("containers", []):
        if spec.get("name") == container:
            return list(spec.get("args") or []) == list(args)
    return False


def startup_failure(
    pods: Iterable[Mapping[str, Any]], *, container: str, args: Sequence[str]
) -> StartupFailure | None:
    """The first pod running ``args`` whose ``container`` was OOMKilled, or crash-loops without ever
    having become ready. A usage error (exit code 2) is not a memory problem and is not counted."""
    for pod in pods:
        if pod.get("metadata", {}).get("deletionTimestamp") or not _current_template(pod, container, args):
            continue
        for status in (pod.get("status") or {}).get("containerStatuses", []):
            if status.get("name") != container:
                continue
            state = status.get("state") or {}
            last = (status.get("lastState") or {}).get("terminated") or {}
            terminated = state.get("terminated") or last
            exit_code = terminated.get("exitCode")
            message = str(terminated.get("message") or "").strip().splitlines()
            tail = message[-1] if message else ""
            name = pod["metadata"]["name"]
            if "OOMKilled" in (terminated.get("reason"), last.get("reason")):
                return StartupFailure(name, "OOMKilled", exit_code, tail)
            crash_looping = (state.get("waiting") or {}).get("reason") == "CrashLoopBackOff"
            if (
                crash_looping
                and not status.get("ready")
                and int(status.get("restartCount", 0)) >= CRASH_LOOP_RESTARTS
                and exit_code != USAGE_ERROR_EXIT_CODE
            ):
                return StartupFailure(name, "CrashLoopBackOff", exit_code, tail)
    return None


def replanned_utilization(utilization: float) -> float | None:
    """The --gpu-memory-utilization of the one re-plan after a failed start, or None when it cannot go
    lower."""
    lowered = round(utilization - REPLAN_UTILIZATION_STEP, 4)
    return lowered if lowered >= MIN_UTILIZATION else None


@dataclass
class Verification:
    status: bool | None
    reason: str
    message: str
    observed: dict[str, Any] | None = None
    """status.plan.observed (wire spelling), or None before any observation of this template."""
    replan: dict[str, Any] | None = None
    """status.replan while it applies to this generation."""
    replanned_now: bool = False
    """This reconcile decided the re-plan: plan again and apply before writing status."""
    degraded: bool = False
    """The plan's arguments do not start and nothing is left to try."""
    events: list[Event] = field(default_factory=list)
