"""Where a model's weights come from: a Hugging Face source pinned to a commit, or a PVC read by a Job.

Either way the result is the source as the artifact key records it and the model's config.json, which
the planner needs before anything else happens.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from qmo.api.backends import DEFAULT_BACKEND
from qmo.api.quantizedmodel import ModelSource, QuantizedModelSpec
from qmo.desired.artifact import build_inspect_job
from qmo.desired.common import Owner
from qmo.desired.jobs import job_state, termination_message
from qmo.desired.names import inspect_job_name
from qmo.reconcile.kube import Kube, label_selector
from qmo.reconcile.outcome import PermanentFailure, Waiting
from qmo.reconcile.source import HubClient, SourceError


class SourceResolver:
    """Resolves sources; config.json read from PVC sources is kept by the inspect Job's uid (a Job's
    result never changes), so a resync costs one GET."""

    def __init__(self, kube: Kube, hub: HubClient) -> None:
        self.kube = kube
        self.hub = hub
        self._pvc_configs: dict[str, dict[str, Any]] = {}

    async def resolve(
        self, namespace: str, spec: QuantizedModelSpec, old: Mapping[str, Any], owner: Owner
    ) -> tuple[ModelSource, str, dict[str, Any]]:
        """The source pinned to a commit (resolved once, then kept in status) and its config.json."""
        hf = spec.source.huggingface
        if hf is None:
            assert spec.source.pvc is not None
            pvc_config = await self._inspect_pvc(namespace, spec, owner)
            return spec.source, f"pvc:{spec.source.pvc.claim_name}:{spec.source.pvc.path}", pvc_config
        requested = f"{hf.repo}@{hf.revision}"
        token = await self._read_token(namespace, spec)
        try:
            if old.get("resolvedSource") == requested and old.get("resolvedRevision"):
                sha = str(old["resolvedRevision"])
            else:
                sha = await self.hub.resolve(hf.repo, hf.revision, token)
            config = await self.hub.config(hf.repo, sha, token)
        except SourceError as error:
            if error.permanent:
                raise PermanentFailure(error.reason, f"spec.source.huggingface: {error}") from error
            raise
        pinned = ModelSource.model_validate({"huggingface": {**hf.to_wire(), "revision": sha}})
        return pinned, requested, config

    async def _inspect_pvc(self, namespace: str, spec: QuantizedModelSpec, owner: Owner) -> dict[str, Any]:
        """config.json of a model on a PVC, read by a small CPU Job (the operator mounts no user volumes)."""
        pvc = spec.source.pvc
        assert pvc is not None
        job_name = inspect_job_name(owner.name, pvc.claim_name, pvc.path)
        job = await self.kube.get("Job", namespace, job_name)
        where = f"{pvc.path.rstrip('/')}/config.json on PersistentVolumeClaim {pvc.claim_name}"
        if job is None:
            if await self.kube.get("PersistentVolumeClaim", namespace, pvc.claim_name) is None:
                raise PermanentFailure(
                    "SourceNotFound",
                    f"spec.source.pvc.claimName: PersistentVolumeClaim {pvc.claim_name!r} not found in namespace"
                    f" {namespace} (a model can only read claims in its own namespace)",
                )
            await self.kube.create(
                build_inspect_job(
                    model=owner,
                    namespace=namespace,
                    name=job_name,
                    source=pvc,
                    image=spec.quantize_job.image_for(DEFAULT_BACKEND),
                    pod_annotations=dict(spec.quantize_job.pod_annotations),
                )
            )
            raise Waiting(f"reading {where}")
        cached = self._pvc_configs.get(job["metadata"]["uid"])
        if cached is not None:
            return cached
        state, job_message = job_state(job)
        if state == "Running" or state == "Missing":
            raise Waiting(f"reading {where}")
        pods = await self.kube.list("Pod", namespace, label_selector=label_selector({"job-name": job_name}))
        if state == "Failed":
            detail = termination_message(pods, phase="Failed") or job_message
            raise PermanentFailure(
                "SourceUnreadable", f"spec.source.pvc: cannot read {where}: {detail}"[:1000]
            )
        text = termination_message(pods, phase="Succeeded") or ""
        try:
            config = json.loads(text)
        except json.JSONDecodeError as error:
            raise PermanentFailure(
                "InvalidModelConfig",
                f"spec.source.pvc: {where} is not valid JSON or is larger than the 4096 bytes a termination"
                f" message holds ({error.msg})",
            ) from error
        if not isinstance(config, dict):
            raise PermanentFailure("InvalidModelConfig", f"spec.source.pvc: {where} is not a JSON object")
        self._pvc_configs[job["metadata"]["uid"]] = config
        return config

    async def _read_token(self, namespace: str, spec: QuantizedModelSpec) -> str | None:
        hf = spec.source.huggingface
        if hf is None or hf.token_secret_ref is None:
            return None
        ref = hf.token_secret_ref
        secret = await self.kube.get("Secret", namespace, ref.name)
        if secret is None:
            raise PermanentFailure(
                "TokenSecretNotFound",
                f"spec.source.huggingface.tokenSecretRef: Secret {ref.name!r} not found in namespace {namespace}",
            )
        value = (secret.get("data") or {}).get(ref.key)
        if not value:
            raise PermanentFailure(
                "TokenSecretNotFound",
                f"spec.source.huggingface.tokenSecretRef: Secret {ref.name!r} has no key {ref.key!r}",
            )
        return base64.b64decode(value).decode().strip()
