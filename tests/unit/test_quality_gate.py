"""The quality gate's pure parts: per-method thresholds, the verdict, and that thresholds are not part of
the artifact's key (changing one re-decides, never re-quantizes)."""

from __future__ import annotations

from typing import Any

import pytest

from qmo.api.quantizedmodel import ModelSource, QuantizationSpec
from qmo.desired.artifact import artifact_recipe, content_key
from qmo.desired.quality import QualityThresholds, gate_verdict, quality_thresholds

GOOD = {
    "dataset": "qmo-builtin-english",
    "tokens": 2044,
    "perplexityIncreasePercent": 2.4,
    "klMean": 0.02,
    "top1Agreement": 0.93,
}


def spec(method: str, **extra: Any) -> QuantizationSpec:
    return QuantizationSpec.model_validate({"method": method, **extra})


@pytest.mark.parametrize(
    ("quantization", "expected"),
    [
        (spec("awq"), QualityThresholds(10.0, 0.85)),
        (spec("gptq"), QualityThresholds(10.0, 0.85)),
        (spec("nvfp4"), QualityThresholds(10.0, 0.85)),
        (spec("gptq", bits=8), QualityThresholds(3.0, 0.93)),
        (spec("w8a8"), QualityThresholds(3.0, 0.93)),
        (spec("fp8-dynamic"), QualityThresholds(3.0, 0.93)),
        (spec("awq", qualityGate={"maxPerplexityIncreasePercent": 25}), QualityThresholds(25.0, 0.85)),
        (spec("w8a8", qualityGate={"minTop1Agreement": 0.5}), QualityThresholds(3.0, 0.5)),
        (spec("awq", qualityGate={"enabled": False}), None),
        (spec("none"), None),
        (spec("prequantized"), None),
        (spec("bitsandbytes-nf4"), None),
    ],
)
def test_thresholds_per_method_and_overrides(quantization: QuantizationSpec, expected: Any) -> None:
    assert quality_thresholds(quantization) == expected


def test_a_failed_gate_names_each_figure_and_its_threshold() -> None:
    bad = {**GOOD, "perplexityIncreasePercent": 41.7, "top1Agreement": 0.61}
    verdict = gate_verdict(bad, QualityThresholds(10.0, 0.85))
    assert verdict.blocks and verdict.reason == "QualityBelowThreshold"
    assert "perplexity +41.7% exceeds the 10% allowed" in verdict.message
    assert "top-1 agreement 0.61 is below the 0.85 required" in verdict.message
    assert "2044 tokens of qmo-builtin-english" in verdict.message
    only_top1 = gate_verdict({**GOOD, "top1Agreement": 0.9}, QualityThresholds(3.0, 0.93))
    assert only_top1.blocks and "perplexity" not in only_top1.message


def test_a_passing_or_unjudged_artifact_may_serve() -> None:
    assert gate_verdict(GOOD, QualityThresholds(10.0, 0.85)).passed is True
    assert gate_verdict(GOOD, QualityThresholds(2.4, 0.93)).passed is True  # limits are inclusive
    not_measured = gate_verdict(None, QualityThresholds(10.0, 0.85))
    assert not_measured.passed is None and not not_measured.blocks and not_measured.reason == "NotMeasured"
    assert gate_verdict(GOOD, None).reason == "NotGated"


def test_thresholds_are_not_part_of_the_artifact_key() -> None:
    source = ModelSource.model_validate({"huggingface": {"repo": "a/b", "revision": "c" * 40}})
    plain = content_key(source, artifact_recipe(spec("awq")))
    strict = content_key(
        source, artifact_recipe(spec("awq", qualityGate={"maxPerplexityIncreasePercent": 1}))
    )
    off = content_key(source, artifact_recipe(spec("awq", qualityGate={"enabled": False})))
    assert plain == strict == off
