"""The ModelArtifact SIZE column: the manifest's bytes for people, or the planner's prediction marked ~."""

from __future__ import annotations

import json

import pytest

from qmo.api.crds import build_crds
from qmo.desired.artifact import artifact_size
from qmo.desired.common import human_bytes
from qmo.reconcile.artifact import summary_fields

GIB = 2**30


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (512, "512"),
        (1024, "1.00Ki"),
        (98_304, "96.0Ki"),
        (6_501_000, "6.20Mi"),
        (851_443_712, "812Mi"),
        (1023 * 2**20, "1023Mi"),
        (5_727_858_176, "5.33Gi"),
        (140 * GIB, "140Gi"),
        (3 * 2**40, "3.00Ti"),
    ],
)
def test_bytes_read_in_kubernetes_binary_units(size: int, text: str) -> None:
    assert human_bytes(size) == text


@pytest.mark.parametrize(
    ("size_bytes", "predicted_bytes", "column"),
    [
        (5_727_858_176, 5_700_000_000, "5.33Gi"),  # the worker's manifest: what is on disk
        (None, 5_727_858_176, "~5.33Gi"),  # no summary yet (or a Job that ended without one)
        (None, 0, None),  # nothing known: the column stays empty rather than guess
        (6_501_000, 0, "6.20Mi"),
    ],
)
def test_the_size_column_prefers_the_manifest_and_marks_a_prediction(
    size_bytes: int | None, predicted_bytes: int, column: str | None
) -> None:
    assert artifact_size(size_bytes, predicted_bytes) == column


def test_the_manifests_size_reaches_the_column_through_the_workers_summary() -> None:
    summary = json.dumps({"key": "k" * 64, "method": "awq", "size_bytes": 5_727_858_176})
    fields = summary_fields(summary)
    assert artifact_size(fields.get("sizeBytes"), 5_000_000_000) == "5.33Gi"


def test_the_size_column_shows_the_readable_size() -> None:
    columns = build_crds()["qmo.dev_modelartifacts.yaml"]["spec"]["versions"][0]["additionalPrinterColumns"]
    size = next(c for c in columns if c["name"] == "Size")
    assert size["jsonPath"] == ".status.size" and size["type"] == "string"
