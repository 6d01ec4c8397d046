"""The quality gate, pure: per-method thresholds and the verdict on an artifact's measured figures.

A quantization that wrecks the model (a bad recipe, too little calibration data, a broken backend) must not
reach traffic: the model's rollout waits on this verdict. The default thresholds sit at roughly twice what
published 4-bit and 8-bit results on 7-8B models lose (4-bit AWQ/GPTQ: +2-6% perplexity; 8-bit: under 1%),
so a hard but healthy model passes and a broken quantization, which costs tens to hundreds of percent,
does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qmo.api.quantizedmodel import QualityGateSpec, QuantizationSpec

# Methods with no quantize step to measure: the cache holds the source's own bytes (or the source's own
# quantization, which qmo did not make).
UNGATED_METHODS = frozenset({"none", "prequantized", "bitsandbytes-nf4"})


@dataclass(frozen=True)
class QualityThresholds:
    max_perplexity_increase_percent: float
    min_top1_agreement: float


DEFAULT_THRESHOLDS = {
    4: QualityThresholds(max_perplexity_increase_percent=10.0, min_top1_agreement=0.85),
    8: QualityThresholds(max_perplexity_increase_percent=3.0, min_top1_agreement=0.93),
}


def quality_thresholds(quantization: QuantizationSpec) -> QualityThresholds | None:
    """The thresholds this model's artifact must meet, or None where nothing is gated."""
    gate = quantization.quality_gate or QualityGateSpec()
    if not gate.enabled or quantization.method in UNGATED_METHODS:
        return None
    bits = 4 if quantization.method in ("awq", "nvfp4") or quantization.effective_bits == 4 else 8
    default = DEFAULT_THRESHOLDS[bits]
    return QualityThresholds(
        max_perplexity_increase_percent=default.max_perplexity_increase_percent
        if gate.max_perplexity_increase_percent is None
        else gate.max_perplexity_increase_percent,
        min_top1_agreement=default.min_top1_agreement
        if gate.min_top1_agreement is None
        else gate.min_top1_agreement,
    )


@dataclass(frozen=True)
class GateVerdict:
    passed: bool | None
    """True: may serve; False: blocked; None: nothing to judge (not gated or not measured), may serve."""
    reason: str
    message: str

    @property
    def blocks(self) -> bool:
        return self.passed is False


def gate_verdict(quality: Mapping[str, Any] | None, thresholds: QualityThresholds | None) -> GateVerdict:
    """Judge ``ModelArtifact.status.quality`` (wire spelling) against ``thresholds``."""
    if thresholds is None:
        return GateVerdict(None, "NotGated", "the quality gate is off for this model or method")
    if not quality:
        # Artifacts from before the evaluation existed, or quantized with --no-eval: blocking them would
        # stop every upgraded fleet; they serve, and the condition says they were not measured.
        return GateVerdict(None, "NotMeasured", "the artifact has no quality figures; not gated")
    increase = float(quality["perplexityIncreasePercent"])
    top1 = float(quality["top1Agreement"])
    limit, floor = thresholds.max_perplexity_increase_percent, thresholds.min_top1_agreement
    failures = []
    if increase > limit:
        failures.append(f"perplexity +{increase:g}% exceeds the {limit:g}% allowed")
    if top1 < floor:
        failures.append(f"top-1 agreement {top1:g} is below the {floor:g} required")
    measured = f"on {quality.get('tokens', '?')} tokens of {quality.get('dataset', '?')}"
    if failures:
        return GateVerdict(False, "QualityBelowThreshold", "; ".join(failures) + f" ({measured})")
    return GateVerdict(
        True,
        "QualityPassed",
        f"perplexity +{increase:g}% <= {limit:g}%, top-1 agreement {top1:g} >= {floor:g} ({measured})",
    )
