"""Prometheus metrics the operator exports (names are part of the contract with dashboards and alerts)."""

from __future__ import annotations

import contextlib

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """All of qmo's metrics on one registry (tests build a private one)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.reconcile_seconds = Histogram(
            "qmo_reconcile_duration_seconds",
            "Time spent in one reconcile",
            ["kind"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.reconcile_errors = Counter(
            "qmo_reconcile_errors_total",
            "Reconciles that raised, by kind and reason",
            ["kind", "reason"],
            registry=registry,
        )
        self.reconcile_conflicts = Counter(
            "qmo_reconcile_conflicts_total",
            "Status writes refused as computed from an old object (409), then decided again on a fresh read",
            ["kind"],
            registry=registry,
        )
        self.model_phase = Gauge(
            "qmo_model_phase",
            "1 for the phase a QuantizedModel is in (models by phase: sum by (phase))",
            ["namespace", "model", "phase"],
            registry=registry,
        )
        self.artifacts = Counter(
            "qmo_artifacts_total",
            "Artifacts a model asked for: built (new) or reused",
            ["result"],
            registry=registry,
        )
        self.artifact_phase = Gauge(
            "qmo_artifact_phase",
            "1 for the phase a ModelArtifact is in",
            ["namespace", "artifact", "phase"],
            registry=registry,
        )
        self.artifact_bytes = Gauge(
            "qmo_artifact_size_bytes",
            "Bytes of a ready artifact on disk",
            ["namespace", "artifact"],
            registry=registry,
        )
        self.artifact_quality = Gauge(
            "qmo_artifact_quality",
            "Quality of a ready artifact against its source: perplexity_increase_percent, kl_mean, "
            "top1_agreement",
            ["namespace", "artifact", "measure"],
            registry=registry,
        )
        self.quality_gate_blocked = Gauge(
            "qmo_quality_gate_blocked",
            "1 while a model's new artifact failed its quality gate and its rollout is held",
            ["namespace", "model"],
            registry=registry,
        )
        self.quantize_seconds = Histogram(
            "qmo_quantize_duration_seconds",
            "Wall time of quantize Jobs that completed",
            ["method"],
            registry=registry,
            buckets=(60, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800),
        )
        self.api_requests = Counter(
            "qmo_api_requests_total",
            "Requests the reconcilers sent to the API server, by verb and resource",
            ["verb", "resource"],
            registry=registry,
        )
        self.plan_gpus = Gauge(
            "qmo_plan_gpus", "GPUs per replica the plan chose", ["namespace", "model"], registry=registry
        )
        self.plan_kv_tokens = Gauge(
            "qmo_plan_kv_cache_tokens",
            "KV-cache tokens the plan predicts",
            ["namespace", "model"],
            registry=registry,
        )
        self.observed_kv_tokens = Gauge(
            "qmo_observed_kv_cache_tokens",
            "KV-cache tokens per replica vLLM really allocated (its /metrics), beside qmo_plan_kv_cache_tokens",
            ["namespace", "model"],
            registry=registry,
        )
        self.plan_kv_error = Gauge(
            "qmo_plan_kv_cache_error_percent",
            "(observed - predicted) / predicted KV-cache tokens in percent; negative: fewer than planned",
            ["namespace", "model"],
            registry=registry,
        )
        self.replans = Counter(
            "qmo_replans_total",
            "Re-plans with more headroom after the plan's arguments failed to start, by reason",
            ["reason"],
            registry=registry,
        )

    PHASES = ("Pending", "Planning", "Quantizing", "Deploying", "Ready", "Degraded", "Failed")
    ARTIFACT_PHASES = ("Pending", "Quantizing", "Ready", "Failed", "Evicting")

    def set_model_phase(self, namespace: str, model: str, phase: str) -> None:
        for candidate in self.PHASES:
            self.model_phase.labels(namespace, model, candidate).set(1 if candidate == phase else 0)

    def forget_model(self, namespace: str, model: str) -> None:
        for candidate in self.PHASES:
            with contextlib.suppress(KeyError):
                self.model_phase.remove(namespace, model, candidate)
        for gauge in (
            self.plan_kv_tokens,
            self.plan_gpus,
            self.quality_gate_blocked,
            self.observed_kv_tokens,
            self.plan_kv_error,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, model)

    def set_artifact_phase(self, namespace: str, artifact: str, phase: str) -> None:
        for candidate in self.ARTIFACT_PHASES:
            self.artifact_phase.labels(namespace, artifact, candidate).set(1 if candidate == phase else 0)
