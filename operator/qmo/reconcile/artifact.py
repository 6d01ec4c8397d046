"""Reconcile one ModelArtifact: run its quantize Job, copy the worker's summary into status, evict on delete."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from qmo.api.artifact import ArtifactQuality, ModelArtifactSpec
from qmo.api.base import API_VERSION
from qmo.desired.artifact import artifact_size, build_evict_job, build_quantize_job
from qmo.desired.common import Owner
from qmo.desired.jobs import job_seconds, job_state, termination_message, unschedulable_message
from qmo.desired.names import evict_job_name, quantize_job_name
from qmo.desired.quality import gate_verdict, quality_thresholds
from qmo.desired.status import (
    condition,
    format_validation_error,
    merge_patch_for,
    now_rfc3339,
    status_write,
)
from qmo.reconcile.kube import ApiError, Kube, Manifest, label_selector
from qmo.reconcile.outcome import Event, Outcome

log = logging.getLogger(__name__)

# Kubernetes keeps at most 4096 bytes of termination message; status messages stay well below that.
MAX_MESSAGE = 1000


def summary_fields(message: str | None) -> dict[str, Any]:
    """ModelArtifact.status fields from the worker's JSON summary (unknown or malformed parts ignored)."""
    if not message:
        return {}
    try:
        summary = json.loads(message)
    except json.JSONDecodeError:
        return {}
    if not isinstance(summary, dict):
        return {}
    fields: dict[str, Any] = {}
    if isinstance(summary.get("size_bytes"), int):
        fields["sizeBytes"] = summary["size_bytes"]
    if isinstance(summary.get("manifest_sha256"), str):
        fields["manifestDigest"] = summary["manifest_sha256"]
    seconds = (
        (summary.get("durations") or {}).get("total") if isinstance(summary.get("durations"), dict) else None
    )
    if isinstance(seconds, int | float):
        fields["quantizeSeconds"] = round(float(seconds), 1)
    if isinstance(summary.get("validation"), dict):
        fields["validation"] = summary["validation"]
    if isinstance(summary.get("versions"), dict):
        fields["versions"] = {str(k): str(v) for k, v in summary["versions"].items()}
    if isinstance(summary.get("quality"), dict):
        # A worker of another version may spell it differently: the rest of the summary still counts.
        with contextlib.suppress(ValidationError):
            fields["quality"] = ArtifactQuality.model_validate(summary["quality"]).to_wire()
    return fields


class ArtifactReconciler:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        old: dict[str, Any] = dict(body.get("status") or {})
        generation = meta.get("generation")
        now = now_rfc3339()
        events: list[Event] = []
        status: dict[str, Any] = {k: v for k, v in old.items() if k != "conditions"}
        status["users"] = len(meta.get("ownerReferences") or [])
        status["observedGeneration"] = generation
        spec: ModelArtifactSpec | None = None
        try:
            spec = ModelArtifactSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            status.update(phase="Failed", message=format_validation_error(error))
        else:
            if old.get("phase") != "Ready":
                await self._quantize(namespace, name, meta["uid"], spec, status)
            status["size"] = artifact_size(status.get("sizeBytes"), spec.predicted_bytes)
        ready = status.get("phase") == "Ready"
        status["conditions"] = [
            condition(
                old.get("conditions", []),
                type_="Ready",
                status=ready,
                reason=str(status.get("phase")),
                message=str(status.get("message") or ""),
                generation=generation,
                now=now,
            )
        ]
        if ready and spec is not None:
            # Against the method's default thresholds; each model judges with its own (QualityGate there).
            verdict = gate_verdict(status.get("quality"), quality_thresholds(spec.recipe))
            status["conditions"].append(
                condition(
                    old.get("conditions", []),
                    type_="QualityPassed",
                    status=verdict.passed,
                    reason=verdict.reason,
                    message=verdict.message,
                    generation=generation,
                    now=now,
                )
            )
        patch = merge_patch_for(old, status)
        if patch is not None:
            await self.kube.patch(
                "ModelArtifact", namespace, name, status_write(meta, patch), subresource="status"
            )
        if status.get("phase") != old.get("phase"):
            kind = "Warning" if status["phase"] == "Failed" else "Normal"
            events.append(Event(kind, str(status["phase"]), str(status.get("message") or "")))
        return Outcome(phase=str(status.get("phase")), status_patch=patch, events=events)

    async def _quantize(
        self, namespace: str, name: str, uid: str, spec: ModelArtifactSpec, status: dict[str, Any]
    ) -> None:
        job_name = quantize_job_name(name)
        job = await self.kube.get("Job", namespace, job_name)
        if job is None:
            owner = Owner(api_version=API_VERSION, kind="ModelArtifact", name=name, uid=uid)
            job = await self.kube.create(build_quantize_job(artifact=owner, namespace=namespace, spec=spec))
            log.info("created quantize Job %s/%s for %s", namespace, job_name, spec.recipe.method)
        status["jobName"] = job_name
        state, job_message = job_state(job)
        if state == "Complete":
            pods = await self._job_pods(namespace, job_name)
            status.update(summary_fields(termination_message(pods, phase="Succeeded")))
            seconds = job_seconds(job)
            if seconds is not None and "quantizeSeconds" not in status:
                status["quantizeSeconds"] = seconds
            status.update(phase="Ready", message=f"{spec.recipe.method} checkpoint ready in the cache")
        elif state == "Failed":
            pods = await self._job_pods(namespace, job_name)
            detail = termination_message(pods, phase="Failed") or ""
            message = f"quantize Job {job_name} failed ({job_message})"
            if detail:
                message += f": {detail}"
            status.update(phase="Failed", message=message[:MAX_MESSAGE])
        else:
            active = int((job.get("status") or {}).get("active", 0))
            status.update(
                phase="Quantizing" if active else "Pending",
                message=f"quantize Job {job_name} {'running' if active else 'waiting for a pod'}",
            )
            if active:
                # An active Job's pod may still wait for a node (GPUs taken, a selector no node matches).
                pods = await self._job_pods(namespace, job_name)
                waiting = unschedulable_message(pods)
                if waiting is not None:
                    status.update(
                        phase="Pending",
                        message=f"quantize Job {job_name} waiting for a node (Unschedulable: {waiting})"[
                            :MAX_MESSAGE
                        ],
                    )

    async def _job_pods(self, namespace: str, job_name: str) -> list[Manifest]:
        return await self.kube.list("Pod", namespace, label_selector=label_selector({"job-name": job_name}))

    async def evict(self, body: Mapping[str, Any]) -> bool:
        """Delete the artifact's files with a Job; True once they are gone (then the finalizer may go)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            spec = ModelArtifactSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return True  # nothing valid was ever written for it
        await self.kube.delete("Job", namespace, quantize_job_name(name))
        job_name = evict_job_name(name)
        job = await self.kube.get("Job", namespace, job_name)
        if job is None:
            owner = Owner(api_version=API_VERSION, kind="ModelArtifact", name=name, uid=meta["uid"])
            try:
                await self.kube.create(build_evict_job(artifact=owner, namespace=namespace, spec=spec))
            except ApiError as error:
                if error.status == 403 and "being terminated" in error.message:
                    # The whole namespace is going, its cache claim with it: nothing left to evict, and
                    # holding the finalizer would keep the namespace Terminating forever.
                    return True
                raise
            return False
        state, message = job_state(job)
        if state == "Failed":
            log.warning(
                "evict Job %s/%s failed (%s); releasing the artifact anyway", namespace, job_name, message
            )
        return state in ("Complete", "Failed")
