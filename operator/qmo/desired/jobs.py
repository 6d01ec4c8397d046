"""Reading Jobs as their controller reports them: state, duration, and the pods' termination messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any


def job_state(job: Mapping[str, Any] | None) -> tuple[str, str]:
    """(Complete | Failed | Running | Missing, message) from the Job controller's conditions."""
    if job is None:
        return "Missing", ""
    for cond in (job.get("status") or {}).get("conditions", []):
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return "Complete", ""
        if cond.get("type") == "Failed":
            return "Failed", f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip(": ")
    return "Running", ""


def job_seconds(job: Mapping[str, Any]) -> float | None:
    status = job.get("status") or {}
    start, end = status.get("startTime"), status.get("completionTime")
    if not start or not end:
        return None
    return (_parse_time(end) - _parse_time(start)).total_seconds()


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def termination_message(pods: Sequence[Mapping[str, Any]], *, phase: str) -> str | None:
    """The newest termination message of the Job's pods in the given phase (Succeeded or Failed)."""
    candidates = [p for p in pods if (p.get("status") or {}).get("phase") == phase]
    candidates.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True)
    for pod in candidates:
        for container in (pod.get("status") or {}).get("containerStatuses", []):
            message = ((container.get("state") or {}).get("terminated") or {}).get("message")
            if message:
                return str(message)
    return None


def unschedulable_message(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """The scheduler's reason one of these pods waits for a node (e.g. "0/11 nodes are available: ...")."""
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions", []):
            scheduled = (cond.get("type"), cond.get("status"), cond.get("reason"))
            if scheduled == ("PodScheduled", "False", "Unschedulable"):
                return str(cond.get("message") or "no node fits the pod")
    return None
