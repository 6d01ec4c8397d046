"""Faults on purpose, and the invariants that must hold after them (used by cluster tests and benchmarks).

``audit`` reads everything qmo owns in one namespace and lists what is wrong: a model neither Ready nor
Failed-with-reason, a status without its plan, two artifacts for one key, two quantize Jobs for one artifact,
a child whose owner is gone. ``KillCampaign`` SIGKILLs the operator at random moments and restarts it,
counting the reconciles each incarnation finished, so a run can say how many reconciles the kills cut across.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qmo.sandbox.harness import OperatorProcess
from qmo.sandbox.testing import SessionCluster

MANAGED = "app.kubernetes.io/managed-by=qmo"
RECONCILES = "qmo_reconcile_duration_seconds_count"
# Children qmo creates for a model or an artifact, by the kind their controller ownerReference names.
CHILD_KINDS = ("deployments", "services", "poddisruptionbudgets", "networkpolicies", "jobs")


def _items(cluster: SessionCluster, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    args = ["get", kind, "-n", namespace, "-o", "json"]
    if selector:
        args += ["-l", selector]
    return list(json.loads(cluster.kubectl(*args).stdout)["items"])


def settled(model: dict[str, Any]) -> bool:
    """Ready, or Failed with a reason a person can act on: the two ends a model may come to rest in."""
    status = model.get("status") or {}
    if status.get("phase") == "Ready":
        return True
    return status.get("phase") == "Failed" and bool(str(status.get("message") or "").strip())


def audit(cluster: SessionCluster, namespace: str) -> list[str]:
    """Everything wrong with qmo's objects in ``namespace`` (empty when the invariants hold)."""
    problems: list[str] = []
    models = _items(cluster, "quantizedmodels", namespace)
    artifacts = _items(cluster, "modelartifacts", namespace)
    uids = {m["metadata"]["uid"]: m["metadata"]["name"] for m in models}
    artifact_uids = {a["metadata"]["uid"]: a["metadata"]["name"] for a in artifacts}

    for model in models:
        name, status = model["metadata"]["name"], model.get("status") or {}
        if not settled(model):
            problems.append(f"model {name} is {status.get('phase')!r}: {status.get('message')!r}")
        if status.get("phase") == "Ready":
            if not status.get("plan"):
                problems.append(f"model {name} is Ready without status.plan")
            if status.get("observedGeneration") != model["metadata"].get("generation"):
                problems.append(f"model {name} is Ready for generation {status.get('observedGeneration')}")

    for key, count in Counter(a.get("spec", {}).get("key") for a in artifacts).items():
        if count > 1:
            problems.append(f"{count} ModelArtifacts for key {key}")
    for artifact in artifacts:
        name = artifact["metadata"]["name"]
        owners = [
            r for r in artifact["metadata"].get("ownerReferences") or [] if r.get("kind") == "QuantizedModel"
        ]
        if not owners and not artifact["metadata"].get("deletionTimestamp"):
            problems.append(f"ModelArtifact {name} has no QuantizedModel owner")
        for ref in owners:
            if ref.get("uid") not in uids:
                problems.append(
                    f"ModelArtifact {name} names a QuantizedModel that is gone ({ref.get('name')})"
                )

    owner_uids = {**uids, **artifact_uids}
    per_owner: Counter[tuple[str, str]] = Counter()
    for kind in CHILD_KINDS:
        for child in _items(cluster, kind, namespace, MANAGED):
            meta = child["metadata"]
            controller = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
            if controller is None:
                problems.append(f"{kind}/{meta['name']} has no controller ownerReference")
                continue
            if controller.get("uid") not in owner_uids:
                problems.append(f"{kind}/{meta['name']} is orphaned (owner {controller.get('name')} is gone)")
            component = (meta.get("labels") or {}).get("app.kubernetes.io/component", "")
            per_owner[(f"{kind}:{component}", str(controller.get("uid")))] += 1
    for (what, uid), count in per_owner.items():
        if count > 1:
            problems.append(f"{count} {what} objects for {owner_uids.get(uid, uid)}")
    return problems


@dataclass
class KillCampaign:
    """SIGKILL ``operator`` at random moments, restart it at once, and count what each life got done."""

    operator: OperatorProcess
    seed: int
    min_interval: float = 1.0
    max_interval: float = 4.0
    kills: int = 0
    reconciles: float = 0.0
    intervals: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)

    def run(self, kills: int, after_restart: Callable[[int], None] | None = None) -> None:
        """``kills`` SIGKILLs; ``after_restart(n)`` runs after the n-th (1-based) to change the workload."""
        for _ in range(kills):
            interval = self.random.uniform(self.min_interval, self.max_interval)
            # The random moment itself is the fault being injected, not a wait for a condition.
            time.sleep(interval)
            self.intervals.append(interval)
            self.reconciles += self.operator.metric_value(RECONCILES)
            self.operator.kill()
            self.kills += 1
            self.operator.start()
            if after_restart is not None:
                after_restart(self.kills)

    def finish(self) -> float:
        """Add the reconciles of the life that is still running; the campaign's total."""
        self.reconciles += self.operator.metric_value(RECONCILES)
        return self.reconciles
