"""The ``QuantizedModel`` resource: what a user asks for (spec) and what qmo reports back (status)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from qmo.api.backends import PER_CHANNEL_RULE, admission_rule, backend_problem, valid_pairs, worker_image
from qmo.api.base import (
    DNS_SUBDOMAIN,
    ApiModel,
    Condition,
    LocalObjectReference,
    PassThroughObject,
    SecretKeyReference,
    is_quantity,
)
from qmo.api.versions import DEFAULT_VLLM_IMAGE

QuantizationMethod = Literal[
    "awq", "gptq", "w8a8", "fp8", "fp8-dynamic", "nvfp4", "bitsandbytes-nf4", "none", "prequantized"
]
QuantizationBackend = Literal["llm-compressor", "autoawq", "autogptq", "gptqmodel"]
KvCacheDtype = Literal["auto", "fp8", "bfloat16", "float16"]
Phase = Literal["Pending", "Planning", "Quantizing", "Deploying", "Ready", "Degraded", "Failed"]


class HuggingFaceSource(ApiModel):
    """A model on the Hugging Face hub (or a mirror the operator's HF_ENDPOINT points to)."""

    repo: str = Field(
        min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?$"
    )
    """Repository id, e.g. meta-llama/Llama-3.1-8B-Instruct."""
    revision: str = Field(default="main", min_length=1, max_length=200)
    """Branch, tag or commit. Resolved once to a commit sha, recorded in status.resolvedRevision."""
    token_secret_ref: SecretKeyReference | None = None
    """Secret in this namespace holding an access token for gated models. Mounted only into the quantize Job."""


class PvcSource(ApiModel):
    """A model already on a PersistentVolumeClaim in this namespace."""

    claim_name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the PersistentVolumeClaim, in the QuantizedModel's namespace."""
    path: str = Field(default="/", max_length=1024, pattern=r"^/([^.]|\.[^.]|\.$)*$")
    """Directory inside the claim holding config.json and the weights (no '..')."""


class ModelSource(ApiModel):
    """Where the unquantized (or pre-quantized) model comes from. Exactly one of the fields is set."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.huggingface) ? 1 : 0) + (has(self.pvc) ? 1 : 0) == 1",
                    "message": "exactly one of spec.source.huggingface or spec.source.pvc must be set",
                }
            ]
        }
    }

    huggingface: HuggingFaceSource | None = None
    """Download from the Hugging Face hub."""
    pvc: PvcSource | None = None
    """Read from a PersistentVolumeClaim in this namespace."""

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.huggingface is None) == (self.pvc is None):
            raise ValueError("exactly one of spec.source.huggingface or spec.source.pvc must be set")
        return self


# Calibration and evaluation texts come from one place: a dataset, a ConfigMap or a file on a claim.
ONE_TEXT_SOURCE: ConfigDict = ApiModel.model_config | {
    "json_schema_extra": {
        "x-kubernetes-validations": [
            {
                "rule": "(has(self.dataset) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0)"
                " + (has(self.pvc) ? 1 : 0) <= 1",
                "message": "set at most one of dataset, configMapRef or pvc",
            }
        ]
    }
}


class CalibrationSpec(ApiModel):
    """Calibration data for methods that need it (AWQ, GPTQ, W8A8). At most one data source is set."""

    model_config = ONE_TEXT_SOURCE

    dataset: str | None = Field(default=None, max_length=200)
    """A Hugging Face dataset id (default when nothing is set: the quantizer's built-in choice)."""
    config_map_ref: LocalObjectReference | None = None
    """A ConfigMap in this namespace whose values are calibration texts."""
    pvc: PvcSource | None = None
    """A JSONL file (one {"text": ...} per line) on a PersistentVolumeClaim in this namespace."""
    samples: int = Field(default=256, ge=1, le=65536)
    """Number of calibration samples."""
    sequence_length: int = Field(default=2048, ge=16, le=131072)
    """Tokens per calibration sample."""


class PvcFile(ApiModel):
    """A file on a PersistentVolumeClaim in this namespace, mounted read-only."""

    claim_name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the PersistentVolumeClaim, in the QuantizedModel's namespace."""
    path: str = Field(max_length=1024, pattern=r"^/([^.]|\.[^.]|\.$)*[^/]$")
    """Path of the file inside the claim, e.g. /eval/texts.jsonl (no '..', not a directory)."""


class EvaluationSpec(ApiModel):
    """The text the quantize Job measures the artifact against its source on (ModelArtifact status.quality).

    At most one source is set; none is the built-in public-domain English. Not part of the artifact's key
    (it does not change the weights): the model that creates the artifact decides it, so models sharing an
    artifact share its figures. Use a text other than the calibration data, or the figures flatter.
    """

    model_config = ONE_TEXT_SOURCE

    enabled: bool = True
    """false skips the evaluation: the artifact has no figures, so a quality gate cannot judge it and
    reports NotMeasured (it does not block)."""
    dataset: str | None = Field(default=None, min_length=1, max_length=200)
    """A Hugging Face dataset id: the 'text' column of its train split, streamed by the Job as far as the
    token budget needs (with the source's tokenSecretRef token, like calibration.dataset)."""
    config_map_ref: LocalObjectReference | None = None
    """A ConfigMap in this namespace whose values are evaluation texts (mounted as files, read in key order)."""
    pvc: PvcFile | None = None
    """A JSONL file (one {"text": ...} per line) on a PersistentVolumeClaim in this namespace."""
    tokens: int = Field(default=2048, ge=128, le=32768)
    """Tokens of text to score. Costs host memory in the Job: tokens x vocabulary x 2 bytes (0.5 GiB for
    2,048 tokens of a 128k vocabulary)."""

    @model_validator(mode="after")
    def _at_most_one(self) -> EvaluationSpec:
        if sum(x is not None for x in (self.dataset, self.config_map_ref, self.pvc)) > 1:
            raise ValueError("set at most one of dataset, configMapRef or pvc")
        return self


class QualityGateSpec(ApiModel):
    """What an artifact must measure against its source before it serves (ModelArtifact status.quality).

    Unset thresholds take the method's defaults: 4-bit (awq, gptq 4-bit, nvfp4) at most +10% perplexity and
    at least 0.85 top-1 agreement; 8-bit (gptq 8-bit, w8a8, fp8, fp8-dynamic) +3% and 0.93. Not part of the
    artifact's key: changing a threshold re-decides from the recorded figures, nothing is re-quantized.
    """

    enabled: bool = True
    """false lets any artifact serve, whatever it measured."""
    max_perplexity_increase_percent: float | None = Field(default=None, ge=0, le=100000)
    """Largest perplexity increase over the source, in percent."""
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)
    """Smallest share of tokens whose top-ranked next token matches the source's."""


class QuantizationSpec(ApiModel):
    """How to quantize the weights. Together with the resolved source it makes the artifact's content key."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.bits) || self.method in ['awq', 'gptq', 'w8a8', 'prequantized']",
                    "message": "bits applies only to methods awq, gptq and w8a8",
                },
                {
                    "rule": "self.method != 'awq' || !has(self.bits) || self.bits == 4",
                    "message": "awq supports bits 4 only",
                },
                {
                    "rule": "self.method != 'w8a8' || !has(self.bits) || self.bits == 8",
                    "message": "w8a8 supports bits 8 only",
                },
                {
                    "rule": admission_rule(),
                    "message": f"backend and method are not a valid pair: {valid_pairs()}",
                    "fieldPath": ".backend",
                },
                {
                    "rule": PER_CHANNEL_RULE,
                    "message": "groupSize -1 (per channel) is llm-compressor's only; legacy backends use 32, 64 or 128",
                    "fieldPath": ".groupSize",
                },
            ]
        }
    }

    method: QuantizationMethod
    """awq, gptq, w8a8 (SmoothQuant+GPTQ int8), fp8 / fp8-dynamic, nvfp4, bitsandbytes-nf4 (in-flight in
    vLLM, no Job), none (serve 16-bit), prequantized (the source already carries a quantization_config)."""
    bits: Literal[4, 8] | None = None
    """Weight bits: 4 (awq, gptq) or 8 (gptq, w8a8). Default: 4 for awq/gptq, 8 for w8a8."""
    group_size: Literal[-1, 32, 64, 128] = 128
    """Quantization group size along the input dimension; -1 means per-channel."""
    symmetric: bool | None = None
    """Symmetric quantization (no zero points). Default: method's own (awq asymmetric, gptq symmetric)."""
    act_order: bool = False
    """GPTQ activation ordering (better accuracy, g_idx stored)."""
    dampening: float = Field(default=0.01, gt=0, le=1)
    """GPTQ Hessian dampening fraction."""
    backend: QuantizationBackend = "llm-compressor"
    """llm-compressor (maintained, every method, compressed-tensors output); autoawq (awq) and autogptq (gptq,
    needs a GPU), archived upstream; gptqmodel (gptq, awq), AutoGPTQ's maintained successor. The legacy
    three write the native awq/gptq formats, each from its own worker image."""
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    """Calibration data for awq, gptq and w8a8."""
    ignore: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=lambda: ["lm_head"], max_length=64
    )
    """Module names or re: patterns kept in full precision."""
    quality_gate: QualityGateSpec | None = None
    """Thresholds the artifact's measured quality must meet before it serves (default: on, per method)."""
    evaluation: EvaluationSpec | None = None
    """What the quantize Job measures quality on (default: on, the built-in English text, 2,048 tokens)."""

    @model_validator(mode="after")
    def _compatible(self) -> QuantizationSpec:
        if self.bits is not None and self.method not in ("awq", "gptq", "w8a8", "prequantized"):
            raise ValueError("spec.quantization.bits applies only to methods awq, gptq and w8a8")
        if self.method == "awq" and self.bits not in (None, 4):
            raise ValueError("spec.quantization.bits: awq supports 4 only")
        if self.method == "w8a8" and self.bits not in (None, 8):
            raise ValueError("spec.quantization.bits: w8a8 supports 8 only")
        if (problem := backend_problem(self.backend, self.method, self.group_size)) is not None:
            field = "groupSize" if "group size" in problem else "backend"
            raise ValueError(f"spec.quantization.{field}: {problem}")
        return self

    @property
    def effective_bits(self) -> Literal[4, 8] | None:
        if self.bits is not None:
            return self.bits
        if self.method in ("awq", "gptq"):
            return 4
        return 8 if self.method == "w8a8" else None


def _tensor_parallel_size(value: Literal["auto"] | int) -> Literal["auto"] | int:
    # The same range as the CEL rule below: the CRD's int-or-string schema cannot carry min/max itself.
    if isinstance(value, int) and not 1 <= value <= 64:
        raise ValueError("must be 'auto' or an integer from 1 to 64")
    return value


def _cache_size(value: int | str) -> int | str:
    if value != "auto" and not is_quantity(value):
        raise ValueError("must be 'auto' or a quantity such as 200Gi")
    return value


TensorParallelSize = Annotated[
    Literal["auto"] | int,
    AfterValidator(_tensor_parallel_size),
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == string ? self == 'auto' : (self >= 1 && self <= 64)",
                    "message": "must be 'auto' or an integer from 1 to 64",
                }
            ],
        }
    ),
]


class LabelSelectorRequirement(ApiModel):
    """One requirement of a label selector, as in metav1.LabelSelectorRequirement."""

    key: str = Field(min_length=1, max_length=317)
    """The label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to values."""
    values: list[Annotated[str, Field(max_length=63)]] = Field(default_factory=list, max_length=64)
    """Values for In and NotIn; empty for Exists and DoesNotExist."""


class LabelSelector(ApiModel):
    """A label selector as in metav1.LabelSelector; empty selects everything."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    """Labels that must all match."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)
    """Requirements that must all hold."""


class IPBlock(ApiModel):
    """A CIDR and the ranges inside it that are excluded, as in networking.k8s.io/v1 IPBlock."""

    cidr: str = Field(min_length=1, max_length=64)
    """e.g. 10.0.0.0/8 or 2001:db8::/32."""
    except_: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, alias="except", max_length=32
    )
    """CIDRs inside cidr that may not connect."""


class IngressPeer(ApiModel):
    """Who may connect, as in networking.k8s.io/v1 NetworkPolicyPeer (pods, namespaces, or an IP block)."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.ipBlock) != (has(self.podSelector) || has(self.namespaceSelector))",
                    "message": "set ipBlock, or podSelector and/or namespaceSelector",
                }
            ]
        }
    }

    pod_selector: LabelSelector | None = None
    """Pods (in this namespace, or in the namespaces namespaceSelector picks) that may connect."""
    namespace_selector: LabelSelector | None = None
    """Namespaces whose pods (all, or those podSelector picks) may connect; {} is every namespace."""
    ip_block: IPBlock | None = None
    """Addresses outside the cluster that may connect, e.g. a gateway's."""

    @model_validator(mode="after")
    def _one_kind(self) -> IngressPeer:
        if (self.ip_block is not None) == (
            self.pod_selector is not None or self.namespace_selector is not None
        ):
            raise ValueError("set ipBlock, or podSelector and/or namespaceSelector")
        return self


class NetworkPolicySpec(ApiModel):
    """An optional NetworkPolicy that admits traffic to the vLLM pods only from the listed peers."""

    enabled: bool = False
    """Create the policy (qmo deletes the one it made when this turns false). Needs a CNI that enforces it."""
    ingress_from: list[IngressPeer] = Field(default_factory=list, max_length=32)
    """Who may reach the vLLM port. Empty: only pods in the model's own namespace."""


AutoscalingMetric = Literal["runningRequests", "queueDepth", "kvCacheUsage"]


class AutoscalingSpec(ApiModel):
    """Scale the vLLM replicas on vLLM's own load (docs/concepts.md, "Autoscaling").

    qmo renders a KEDA ScaledObject when KEDA is installed, otherwise an autoscaling/v2
    HorizontalPodAutoscaler on a Pods metric (needs a custom-metrics adapter such as prometheus-adapter).
    While it is set, the autoscaler owns the replica count and spec.serving.replicas is not used.
    """

    model_config = ApiModel.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must not exceed maxReplicas",
                },
                {
                    "rule": "self.metric != 'kvCacheUsage' || !has(self.target) || self.target <= 1.0",
                    "message": "target of kvCacheUsage is a fraction of the KV cache, from 0 (excl.) to 1",
                },
                {
                    "rule": "!self.scaleToZero || has(self.wakeQuery)",
                    "message": "scaleToZero needs wakeQuery: with no replica, no vLLM reports load to wake it",
                },
            ]
        }
    }

    min_replicas: int = Field(default=1, ge=1, le=1000)
    """Fewest replicas while the model has load (with scaleToZero it goes to 0 when idle)."""
    max_replicas: int = Field(ge=1, le=1000)
    """Most replicas: the GPUs the model may take at peak are maxReplicas x the plan's tensorParallelSize."""
    metric: AutoscalingMetric = "runningRequests"
    """runningRequests (vllm:num_requests_running), queueDepth (vllm:num_requests_waiting) or kvCacheUsage
    (vllm:kv_cache_usage_perc), averaged over the replicas."""
    target: float | None = Field(default=None, gt=0, le=100_000)
    """Per-replica value the autoscaler holds the metric at. Default from the plan: runningRequests the
    concurrency one replica was planned for (spec.serving.concurrency, else the plan's maxConcurrency);
    queueDepth a quarter of it (a new request waits about a quarter of a request's time); kvCacheUsage 0.8."""
    scale_to_zero: bool = False
    """Remove the last replica after idleSeconds without a running or waiting request (needs KEDA)."""
    idle_seconds: int = Field(default=300, ge=0, le=86_400)
    """How long the load must stay low before replicas are removed (the scale-down stabilization window),
    and with scaleToZero how long the model must be idle before its last replica goes."""
    wake_query: str | None = Field(default=None, min_length=1, max_length=4096)
    """PromQL whose value above 0 brings a model scaled to zero back (for example the requests a gateway
    holds for it). Required with scaleToZero: with no replica there is no vLLM to report load."""

    @model_validator(mode="after")
    def _consistent(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"spec.serving.autoscaling.minReplicas ({self.min_replicas}) must not exceed "
                f"maxReplicas ({self.max_replicas})"
            )
        if self.metric == "kvCacheUsage" and self.target is not None and self.target > 1:
            raise ValueError(
                "spec.serving.autoscaling.target: kvCacheUsage is a fraction of the KV cache, "
                f"from 0 (excluded) to 1, not {self.target}"
            )
        if self.scale_to_zero and self.wake_query is None:
            raise ValueError(
                "spec.serving.autoscaling.wakeQuery is required with scaleToZero: with no replica, no vLLM "
                "reports load to wake the model; give a PromQL query (e.g. a gateway's pending requests)"
            )
        return self


class ServingSpec(ApiModel):
    """How to serve the model with vLLM. The planner fills what is left on auto."""

    gpu_class: str = Field(max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of a GPUClass (cluster-scoped), or of a built-in catalog entry such as h100-80gb."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Number of vLLM replicas (scale subresource). Unused while autoscaling is set."""
    max_model_len: int | None = Field(default=None, ge=16, le=10_485_760)
    """Context length to serve. Default: the model's max_position_embeddings."""
    concurrency: int | None = Field(default=None, ge=1, le=4096)
    """Target concurrent sequences at full context; the planner picks a size where the KV cache holds them.
    A capacity target, not a cap: vLLM's --max-num-seqs defaults to at least 256 (see maxNumSeqs)."""
    kv_cache_dtype: KvCacheDtype = "auto"
    """auto lets the planner choose fp8 where the GPU supports it and more capacity is needed."""
    tensor_parallel_size: TensorParallelSize = "auto"
    """auto (smallest that fits) or a fixed number of GPUs per replica."""
    max_nodes: int = Field(default=1, ge=1, le=64)
    """Nodes one replica may span. Above 1, a model no single node of the GPU class holds is planned with
    tensor parallelism inside each node and pipeline parallelism across nodes, and served by one group of
    pods per replica, one pod per node (a LeaderWorkerSet, or a StatefulSet, see docs/concepts.md)."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0.05, le=0.99)
    """Fraction of each GPU's total memory vLLM may use."""
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096)
    """vLLM --max-num-seqs, the most sequences it runs at once. Default: vLLM's 256, raised to concurrency, never
    lowered to it (shorter sequences than maxModelLen fit more than concurrency in the same KV cache)."""
    max_num_batched_tokens: int | None = Field(default=None, ge=16, le=1_048_576)
    """vLLM --max-num-batched-tokens. Default: vLLM's own rule."""
    image: str = Field(default=DEFAULT_VLLM_IMAGE, max_length=512)
    """vLLM OpenAI server image."""
    extra_args: list[Annotated[str, Field(max_length=1024)]] = Field(default_factory=list, max_length=64)
    """Arguments appended to the planned vLLM arguments (they override planned ones vLLM parses later)."""
    resources: PassThroughObject | None = None
    """CPU/memory requests and limits for the vLLM container; GPUs are set from the plan."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Extra node labels, merged over the GPUClass's."""
    tolerations: list[PassThroughObject] = Field(default_factory=list)
    """Extra tolerations, added to the GPUClass's."""
    affinity: PassThroughObject | None = None
    """Pod affinity/anti-affinity for the vLLM pods."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations on the vLLM pods, merged over qmo's own Prometheus scrape annotations."""
    allow_surge: bool = False
    """Allow one extra replica during a rollout (needs spare GPUs); otherwise roll one down, then up."""
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    """Restrict who may connect to the vLLM pods (ingress on the serving port only; egress untouched)."""
    autoscaling: AutoscalingSpec | None = None
    """Scale the replicas on vLLM's load (KEDA or a HorizontalPodAutoscaler); replicas is then unused."""


CacheSize = Annotated[
    int | str,
    AfterValidator(_cache_size),
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == int || self == 'auto' || isQuantity(self)",
                    "message": "must be 'auto' or a quantity such as 200Gi",
                }
            ],
        }
    ),
]


class CacheSpec(ApiModel):
    """The PersistentVolumeClaim that caches quantized weights, shared by every model in the namespace."""

    storage_class_name: str | None = Field(default=None, max_length=253)
    """StorageClass of the cache claim. Default: the cluster default."""
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"] = "ReadWriteMany"
    """ReadWriteMany lets every replica on every node mount the same weights."""
    size: CacheSize = "auto"
    """Claim size; auto = the planner's checkpoint size plus the source download, with headroom."""


class QuantizeJobSpec(ApiModel):
    """Settings of the quantize Job (only for methods that need one)."""

    image: str | None = Field(default=None, max_length=512)
    """Quantizer image. Default: the backend's own, ghcr.io/qmo-dev/quantizer (llm-compressor) or
    ghcr.io/qmo-dev/quantizer-<backend> (autoawq, autogptq, gptqmodel), each built from its lock."""
    resources: PassThroughObject | None = None
    """CPU/memory for the quantizer; GPUs come from the plan."""
    active_deadline_seconds: int = Field(default=21600, ge=60, le=7 * 24 * 3600)
    """Hard time limit of the Job."""

    def image_for(self, backend: str) -> str:
        return self.image or worker_image(backend)

    backoff_limit: int = Field(default=2, ge=0, le=20)
    """Retries of a failed quantize pod."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Extra node labels for the quantize pod."""
    tolerations: list[PassThroughObject] = Field(default_factory=list)
    """Extra tolerations for the quantize pod."""
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations on the quantize pod (service mesh opt-outs, cost tags). Not part of the content key."""


class QuantizedModelSpec(ApiModel):
    """A model to quantize and serve."""

    source: ModelSource
    """Where the model comes from."""
    quantization: QuantizationSpec
    """How to quantize it."""
    serving: ServingSpec
    """How to serve it."""
    cache: CacheSpec = Field(default_factory=CacheSpec)
    """Where quantized weights are cached."""
    quantize_job: QuantizeJobSpec = Field(default_factory=QuantizeJobSpec)
    """The quantize Job's settings."""


class ObservedPlan(ApiModel):
    """What vLLM really allocated, read from the serving pods' /metrics (vllm:cache_config_info)."""

    kv_cache_tokens: int | None = None
    """KV-cache tokens per replica vLLM allocated (the smallest over the pods read). A multi-node replica's
    leader reports its engine's pool, which every pipeline stage holds for its own layers."""
    kv_cache_blocks: int | None = None
    """KV-cache blocks per replica (num_gpu_blocks)."""
    block_size: int | None = None
    """Tokens per KV-cache block."""
    error_percent: float | None = None
    """(observed - predicted) / predicted KV tokens in percent; negative: fewer than planned."""
    pods: int = 0
    """Serving pods whose /metrics were read (a multi-node model's leaders, one per group)."""
    error: str | None = None
    """Why some or all pods could not be read."""
    scraped_at: str
    """When the pods first reported these figures (RFC 3339); a re-read with the same figures keeps it."""
    revision: str
    """What this observation was made of: the Deployment's desired hash (a multi-node model's: one digest of
    its StatefulSets' or its LeaderWorkerSet's) and the ready replicas (groups)."""


class PlanStatus(ApiModel):
    """The serving plan the planner chose, with its numbers (per GPU, GiB = 2^30 bytes)."""

    gpu_class: str
    """GPUClass the plan was made for."""
    gpu_memory_gib: float
    """Total memory of one GPU as CUDA reports it."""
    tensor_parallel_size: int
    """GPUs per node of a replica (per replica, when it runs on one node)."""
    pipeline_parallel_size: int | None = None
    """Nodes per replica (pipeline stages, one per node); unset when a replica runs on one node."""
    dtype: str
    """vLLM --dtype."""
    kv_cache_dtype: str
    """vLLM --kv-cache-dtype."""
    max_model_len: int
    """vLLM --max-model-len."""
    max_num_seqs: int
    """vLLM --max-num-seqs."""
    weights_gib_per_gpu: float
    """Weight memory per GPU."""
    kv_cache_gib_per_gpu: float
    """KV-cache memory per GPU."""
    overhead_gib_per_gpu: float
    """Activations, CUDA graphs and non-torch memory per GPU."""
    kv_cache_tokens: int
    """Tokens the KV cache of one replica holds (across pipeline stages: each holds them for its layers)."""
    max_concurrency: float
    """Sequences at max_model_len the KV cache holds at once."""
    checkpoint_bytes: int
    """Size of the quantized checkpoint on disk."""
    vllm_args: list[str]
    """The arguments the vLLM container runs with."""
    gpu_memory_utilization: float | None = None
    """The --gpu-memory-utilization planned with (lower than the spec's after a re-plan, see status.replan)."""
    calibration: str | None = None
    """The vLLM version whose measured overheads the plan used (the serving image's when calibrated)."""
    calibration_warning: str | None = None
    """Set when the serving image's vLLM version has no calibration of its own: which one was used."""
    observed: ObservedPlan | None = None
    """What vLLM really allocated, beside the prediction (kvCacheTokens)."""


class ReplanStatus(ApiModel):
    """The one re-plan with more headroom after the plan's arguments failed to start (per generation)."""

    generation: int | None = None
    """The .metadata.generation it applies to: a spec change plans from the spec again."""
    reason: str
    """OOMKilled or CrashLoopBackOff."""
    message: str
    """The pod that failed and its last words."""
    from_gpu_memory_utilization: float
    """--gpu-memory-utilization of the plan that failed."""
    gpu_memory_utilization: float
    """--gpu-memory-utilization planned with since."""
    at: str
    """When it was decided (RFC 3339)."""


class ArtifactStatusRef(ApiModel):
    """The ModelArtifact this model uses."""

    name: str
    """ModelArtifact name (namespace-local)."""
    key: str
    """Content key: sha256 of the canonical (source@sha, recipe)."""
    phase: str | None = None
    """The artifact's phase, mirrored for kubectl."""


class AutoscalingStatus(ApiModel):
    """Who owns the replica count while spec.serving.autoscaling is set, on what, and where it stands."""

    autoscaler: Literal["ScaledObject", "HorizontalPodAutoscaler"]
    """The object qmo made: a KEDA ScaledObject or an autoscaling/v2 HorizontalPodAutoscaler."""
    name: str
    """Its name, in the model's namespace."""
    metric: str
    """The vLLM metric it scales on, e.g. vllm:num_requests_running."""
    target: float
    """The per-replica value it holds the metric at."""
    target_source: str
    """Where the target came from: spec, or the plan figure it was derived from."""
    min_replicas: int
    """Fewest replicas (0 when scaled to zero is allowed)."""
    max_replicas: int
    """Most replicas."""
    desired_replicas: int | None = None
    """The replica count the autoscaler last set on the Deployment."""
    current_replicas: int = 0
    """Replicas that exist."""
    message: str = ""
    """What the autoscaler last reported (an unavailable metric, a fallback from KEDA to the HPA)."""


class QuantizedModelStatus(ApiModel):
    """What qmo observed and decided. Written only by the operator."""

    phase: Phase = "Pending"
    """Pending, Planning, Quantizing, Deploying, Ready, Degraded or Failed."""
    message: str | None = None
    """Why the model is in this phase, with numbers for planning failures."""
    observed_generation: int | None = None
    """The .metadata.generation last reconciled."""
    conditions: list[Condition] = Field(default_factory=list)
    """Planned, WeightsReady, Deployed, QualityGate, Available, PlanVerified."""
    resolved_revision: str | None = None
    """Commit sha the source revision resolved to."""
    resolved_source: str | None = None
    """The repo@revision that resolvedRevision was resolved from (a new revision is resolved again)."""
    plan: PlanStatus | None = None
    """The serving plan."""
    replan: ReplanStatus | None = None
    """The re-plan with more headroom after a failed start, while it applies."""
    artifact: ArtifactStatusRef | None = None
    """The ModelArtifact in use."""
    endpoint: str | None = None
    """OpenAI-compatible base URL inside the cluster."""
    replicas: int = 0
    """Replicas that exist (scale subresource)."""
    ready_replicas: int = 0
    """Replicas that are ready."""
    ready: str = "0/0"
    """ready/desired, for kubectl's READY column."""
    selector: str | None = None
    """Label selector of the serving pods (scale subresource, HPA)."""
    network_policy: str | None = None
    """Name of the NetworkPolicy qmo made for the serving pods (spec.serving.networkPolicy.enabled)."""
    autoscaling: AutoscalingStatus | None = None
    """The autoscaler that owns the replica count (spec.serving.autoscaling), and why it stands where it does."""


def parse_spec(spec: dict[str, Any]) -> QuantizedModelSpec:
    """Validate a stored spec. Raises pydantic.ValidationError with field paths relative to spec."""
    return QuantizedModelSpec.model_validate(spec)
