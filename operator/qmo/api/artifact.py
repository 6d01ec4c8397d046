"""The ``ModelArtifact`` resource: one quantized checkpoint in the cache, shared by every model that needs it.

Created by the operator (never by hand): its name and ``spec.key`` are the content key of
(source@sha, recipe), so two models asking for the same thing find the same artifact.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from qmo.api.base import ApiModel, Condition, PassThroughObject
from qmo.api.quantizedmodel import EvaluationSpec, ModelSource, QuantizationSpec

ArtifactPhase = Literal["Pending", "Quantizing", "Ready", "Failed", "Evicting"]


class ArtifactJobSpec(ApiModel):
    """Where and how the quantize Job runs; taken from the first model that asked for the artifact."""

    image: str
    """Quantizer image."""
    gpus: int = Field(default=1, ge=0, le=64)
    """GPUs the quantize pod requests (0 for copy-only methods)."""
    gpu_resource_name: str = "nvidia.com/gpu"
    """Extended resource name of the GPUs."""
    device: Literal["gpu", "cpu"] = "gpu"
    """cpu: the model's GPUClass is a CPU class; the Job runs on its nodes without a GPU."""
    resources: PassThroughObject | None = None
    """CPU/memory for the quantize container."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels for the quantize pod."""
    tolerations: list[PassThroughObject] = Field(default_factory=list)
    """Tolerations for the quantize pod."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations on the quantize pod."""
    active_deadline_seconds: int = 21600
    """Hard time limit of the Job."""
    backoff_limit: int = 2
    """Retries of a failed quantize pod."""


class ModelArtifactSpec(ApiModel):
    """What the artifact holds. Immutable: a different recipe is a different artifact."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "self.key == oldSelf.key", "message": "spec.key is immutable"},
                {"rule": "self.source == oldSelf.source", "message": "spec.source is immutable"},
                {"rule": "self.recipe == oldSelf.recipe", "message": "spec.recipe is immutable"},
            ]
        }
    }

    key: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the canonical JSON of (source with resolved commit, recipe)."""
    source: ModelSource
    """The source, with the Hugging Face revision resolved to a commit sha."""
    recipe: QuantizationSpec
    """The quantization recipe."""
    cache_claim_name: str
    """PersistentVolumeClaim (same namespace) holding the cache."""
    path: str
    """Directory of the checkpoint inside the cache claim."""
    predicted_bytes: int = Field(default=0, ge=0)
    """The planner's size prediction for the checkpoint."""
    job: ArtifactJobSpec
    """The quantize Job's placement and limits."""
    evaluation: EvaluationSpec | None = None
    """What the quantize Job measures quality on; taken from the model that created the artifact, not part of
    the key (models sharing the artifact share its figures). Unset: the built-in text, 2,048 tokens."""


class ArtifactQuality(ApiModel):
    """The quantized checkpoint against its source on an evaluation text (the worker's quality.json)."""

    dataset: str
    """The evaluation text: qmo-builtin-english (public-domain English shipped with qmo) or the user's
    (hf:DATASET, dir:evaluation for a ConfigMap, jsonl:FILE)."""
    tokens: int = Field(ge=0)
    """Next-token predictions scored."""
    source_perplexity: float
    """Perplexity of the source over those tokens."""
    quantized_perplexity: float
    """Perplexity of the quantized checkpoint over the same tokens."""
    perplexity_increase_percent: float
    """(quantized / source - 1) x 100."""
    kl_mean: float
    """Mean per-token KL(source || quantized) over the whole vocabulary, in nats."""
    top1_agreement: float = Field(ge=0, le=1)
    """Share of tokens where both models rank the same next token first."""


class ModelArtifactStatus(ApiModel):
    """What the quantize Job produced."""

    phase: ArtifactPhase = "Pending"
    """Pending, Quantizing, Ready, Failed or Evicting."""
    message: str | None = None
    """Failure reason or progress note."""
    observed_generation: int | None = None
    """The .metadata.generation last reconciled."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready."""
    job_name: str | None = None
    """The quantize Job."""
    size_bytes: int | None = None
    """Bytes of the checkpoint on disk (the worker's qmo-manifest.json)."""
    size: str | None = None
    """The size for people (5.33Gi): sizeBytes, or ~ the planner's prediction (spec.predictedBytes) until
    the quantize Job reports, or where it ended without a summary."""
    manifest_digest: str | None = None
    """sha256 of qmo-manifest.json."""
    quantize_seconds: float | None = None
    """Wall time of the quantization."""
    validation: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Logit comparison against the source (error figures) from the worker's summary."""
    quality: ArtifactQuality | None = None
    """Perplexity, KL divergence and top-1 agreement against the source (absent with --no-eval)."""
    versions: dict[str, str] | None = None
    """Library versions the worker used."""
    users: int = 0
    """QuantizedModels using this artifact."""
