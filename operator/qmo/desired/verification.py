"""Plan verification, pure: what vLLM really allocated against what the plan predicted, and what to do when
the plan's arguments do not even start.

The planner predicts the KV-cache tokens each replica gets; vLLM reports what it allocated in
``vllm:cache_config_info`` on ``/metrics``. Reading it back turns a wrong plan (a new GPU, model or vLLM
version) into a figure in status and an alert, instead of an OOM crash loop found by users. Which pods
report a replica's figures, and which of them run the current template, is ``MetricsPods``: every pod of a
single-node Deployment, the leader of each group of a multi-node model. When the
plan's arguments do not start (OOMKilled, or a crash loop before the first ready probe), the operator
re-plans once with more headroom; the rule and its limit live here so that they can be tested and
documented in one place.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from qmo.desired.common import Event, Manifest
from qmo.desired.multinode import LABEL_NODE_GROUP, MultiNodeShape, leader_labels
from qmo.desired.names import DESIRED_HASH_ANNOTATION
from qmo.desired.serving import selector_labels

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
# The container that runs vLLM in every serving pod qmo makes.
SERVING_CONTAINER = "vllm"

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


def desired_hash_of(manifest: Mapping[str, Any] | None) -> str:
    return str(
        ((manifest or {}).get("metadata", {}).get("annotations") or {}).get(DESIRED_HASH_ANNOTATION, "")
    )


def template_args(template: Mapping[str, Any] | None) -> list[str]:
    """The vLLM container's args in a pod template or a pod (both have ``spec.containers``)."""
    for container in ((template or {}).get("spec") or {}).get("containers", []):
        if container.get("name") == SERVING_CONTAINER:
            return list(container.get("args") or [])
    return []


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


@dataclass(frozen=True)
class MetricsPods:
    """Which pods report a model's KV cache on /metrics, and how to tell one that runs the current template.

    A replica's engine, and so its ``vllm:cache_config_info``, lives in one pod: any pod of a single-node
    Deployment; the leader (node rank 0) of each group of a multi-node model, which runs the engine and the
    OpenAI server for the whole pipeline. The other nodes of a group run ``--headless``: GPU workers only,
    no HTTP, so they are never read (their labels do not match ``labels``).
    """

    template: str
    """What the pods are made from: the Deployment's desired hash, or one digest of the hashes of a
    multi-node model's workload objects (a changed group, or a group more or fewer, is a new template)."""
    labels: Mapping[str, str]
    """Labels every pod to read carries."""
    args: Mapping[str, tuple[str, ...]]
    """The vLLM args a pod of the current template runs, by the value of its ``group_label`` ("" when one
    template makes every pod)."""
    group_label: str | None = None
    role: str = "serving pod"
    """What the pods read are, in messages."""
    startup_args: tuple[str, ...] | None = None
    """The args whose failed start leads to the one re-plan (single-node only; see startup_failure)."""

    def reads(self, pod: Mapping[str, Any]) -> bool:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        return all(labels.get(key) == value for key, value in self.labels.items())

    def runs_current_template(self, pod: Mapping[str, Any]) -> bool:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        group = labels.get(self.group_label, "") if self.group_label else ""
        expected = self.args.get(group)
        return expected is not None and template_args(pod) == list(expected)

    def running(self, pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The ready pods to read: leaders (or serving pods) that run the current template."""
        return [p for p in pods if pod_ready(p) and self.reads(p) and self.runs_current_template(p)]


def deployment_metrics_pods(model: str, deployment: Manifest | None) -> MetricsPods | None:
    """A single-node model's pods: every ready pod of its Deployment serves /metrics."""
    if deployment is None:
        return None
    args = tuple(template_args(deployment["spec"]["template"]))
    return MetricsPods(
        template=desired_hash_of(deployment),
        labels=selector_labels(model),
        args={"": args},
        startup_args=args,
    )


def node_groups_template(workloads: Iterable[Mapping[str, Any]]) -> str:
    """One key for the desired hashes of a multi-node model's workload objects: a single object's own hash
    (as a Deployment's), else a digest of them all, so the key stays short at any number of groups."""
    hashes = sorted(desired_hash_of(w) for w in workloads)
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256(",".join(hashes).encode()).hexdigest()[:16]


def node_groups_metrics_pods(
    model: str, shape: MultiNodeShape, node_groups: Sequence[Manifest]
) -> MetricsPods | None:
    """A multi-node model's leaders, one per group, and the args each must run.

    "Runs the current template" compares a leader's vLLM args with its own group's template, verbatim:
    args are what the plan is made of (the same test as a Deployment's pods), and the pods carry them
    unexpanded (``$(QMO_NODE_RANK)``, ``$(LWS_LEADER_ADDRESS)``), so they equal the template's exactly. The
    StatefulSet shape's args differ per group (``--master-addr`` names the group's pod 0), so each leader is
    matched with its own StatefulSet, found by the ``qmo.dev/node-group`` label the template gives its pods.
    Removing the per-node flags and comparing with one list instead would also hide a change to them (a new
    master port, another node count). The StatefulSet's controller-revision-hash would do for that shape
    only: a LeaderWorkerSet publishes no revision in its status to compare a pod's label with. A
    LeaderWorkerSet's leaders share one template, so one list serves every group.
    """
    workloads = [m for m in node_groups if m.get("kind") in ("StatefulSet", "LeaderWorkerSet")]
    if not workloads:
        return None
    if shape == "leaderworkerset":
        [lws] = workloads
        leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
        args = {"": tuple(template_args(leader))}
        group_label = None
    else:
        args = {s["metadata"]["name"]: tuple(template_args(s["spec"]["template"])) for s in workloads}
        group_label = LABEL_NODE_GROUP
    return MetricsPods(
        template=node_groups_template(workloads),
        labels={**selector_labels(model), **leader_labels(shape)},
        args=args,
        group_label=group_label,
        role="leader pod",
    )


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
