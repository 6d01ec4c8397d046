"""A QuantizedModel's phase, message and conditions, chosen in one place from what the decision found.

``decide_model`` (desired/decision.py) calls these once it knows how serving stands; they are pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from qmo.desired.autoscaling import wanted_replicas
from qmo.desired.jobs import unschedulable_message
from qmo.desired.quality import GateVerdict
from qmo.desired.serving import planned_message
from qmo.desired.status import condition
from qmo.desired.verification import Verification

if TYPE_CHECKING:  # decision.py imports this module: its types only for annotations
    from qmo.desired.decision import ModelIntent, ModelSnapshot, Serving


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
        keeps = "the previous artifact keeps serving" if serving.present else "nothing was deployed"
        return "Degraded", f"quality gate: ModelArtifact {intent.artifact_name}: {verdict.message}; {keeps}"
    if serving.rolled:
        nodes = intent.planned.pipeline_parallel_size
        per_replica = f"{nodes} nodes of " if nodes else ""
        return (
            "Ready",
            f"serving on {per_replica}{intent.planned.tensor_parallel_size}x {snapshot.gpu.spec.name} per replica",
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
    serving_current = serving.present and serving.weights_ready and not serving.gate_blocks
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
