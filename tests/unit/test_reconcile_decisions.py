"""The pure decisions inside the reconcile loops: status diffs, conditions, rollout and Job reading."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qmo.desired.jobs import job_seconds, job_state, termination_message
from qmo.desired.serving import serving_args
from qmo.desired.status import (
    comparable_as_sent,
    condition,
    deployment_rollout,
    guarded_status_write,
    merge_patch_for,
    status_write,
)
from qmo.reconcile.artifact import summary_fields


def test_merge_patch_is_none_when_nothing_changed() -> None:
    status = {"phase": "Ready", "plan": {"tensorParallelSize": 1}}
    assert merge_patch_for(status, dict(status)) is None


def test_merge_patch_nulls_fields_that_disappeared() -> None:
    assert merge_patch_for({"phase": "Failed", "message": "x"}, {"phase": "Ready"}) == {
        "phase": "Ready",
        "message": None,
    }


def test_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    first = condition([], type_="Available", status=True, reason="RolledOut", generation=1, now="T1")
    again = condition([first], type_="Available", status=True, reason="RolledOut", generation=2, now="T2")
    flipped = condition([again], type_="Available", status=False, reason="Lost", generation=2, now="T3")
    assert again["lastTransitionTime"] == "T1"
    assert flipped["lastTransitionTime"] == "T3"
    assert (
        condition([], type_="Planned", status=None, reason="Reading", generation=1, now="T")["status"]
        == "Unknown"
    )


def deployment(**status: Any) -> dict[str, Any]:
    return {"metadata": {"generation": 2}, "status": {"observedGeneration": 2, **status}}


@pytest.mark.parametrize(
    ("observed", "replicas", "expected"),
    [
        (None, 1, (False, 0, "NotCreated")),
        (
            deployment(replicas=1, updatedReplicas=1, availableReplicas=1, readyReplicas=1),
            1,
            (True, 1, "RolledOut"),
        ),
        (
            deployment(replicas=2, updatedReplicas=1, availableReplicas=1, readyReplicas=1),
            2,
            (False, 1, "RollingOut"),
        ),
        (
            {"metadata": {"generation": 3}, "status": {"observedGeneration": 2, "readyReplicas": 1}},
            1,
            (False, 1, "RolloutPending"),
        ),
        (
            deployment(conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]),
            1,
            (False, 0, "ProgressDeadlineExceeded"),
        ),
        (deployment(), 0, (True, 0, "RolledOut")),
    ],
)
def test_deployment_rollout(
    observed: dict[str, Any] | None, replicas: int, expected: tuple[bool, int, str]
) -> None:
    assert deployment_rollout(observed, replicas) == expected


def test_worker_made_checkpoints_carry_their_own_format() -> None:
    planned = ["--quantization=awq", "--dtype=bfloat16", "--quantization", "gptq", "--max-model-len=8192"]
    assert serving_args(planned, "awq") == ["--dtype=bfloat16", "--max-model-len=8192"]
    assert serving_args(["--quantization=bitsandbytes"], "bitsandbytes-nf4") == [
        "--quantization=bitsandbytes"
    ]


def test_job_state_reads_the_controllers_conditions() -> None:
    assert job_state(None) == ("Missing", "")
    assert job_state({"status": {"active": 1}}) == ("Running", "")
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == ("Complete", "")
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "too many"}
    assert job_state({"status": {"conditions": [failed]}}) == ("Failed", "BackoffLimitExceeded: too many")
    assert (
        job_seconds(
            {"status": {"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:30Z"}}
        )
        == 90
    )


def pod(name: str, phase: str, created: str, message: str | None) -> dict[str, Any]:
    terminated = {"exitCode": 0, **({"message": message} if message else {})}
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "status": {"phase": phase, "containerStatuses": [{"state": {"terminated": terminated}}]},
    }


def test_termination_message_of_the_newest_pod_in_the_phase() -> None:
    pods = [
        pod("a", "Failed", "2026-01-01T00:00:00Z", "first try"),
        pod("b", "Failed", "2026-01-01T00:05:00Z", "second try"),
        pod("c", "Succeeded", "2026-01-01T00:09:00Z", None),
    ]
    assert termination_message(pods, phase="Failed") == "second try"
    assert termination_message(pods, phase="Succeeded") is None


def test_summary_fields_take_what_is_well_formed_and_ignore_the_rest() -> None:
    message = json.dumps(
        {
            "size_bytes": 10,
            "manifest_sha256": "ab",
            "durations": {"total": 1.26},
            "versions": {"torch": "2.14"},
            "validation": "not a dict",
            "unknown": 1,
        }
    )
    assert summary_fields(message) == {
        "sizeBytes": 10,
        "manifestDigest": "ab",
        "quantizeSeconds": 1.3,
        "versions": {"torch": "2.14"},
    }
    assert summary_fields("not json") == {}
    assert summary_fields(None) == {}


def test_status_writes_are_bound_to_the_resource_version_they_were_computed_from() -> None:
    meta = {"name": "m", "resourceVersion": "41"}
    assert status_write(meta, {"users": 3}) == {"metadata": {"resourceVersion": "41"}, "status": {"users": 3}}


def test_a_model_status_write_tests_what_it_was_decided_from_not_the_resource_version() -> None:
    meta = {"name": "m", "resourceVersion": "41", "generation": 3}
    old = {"phase": "Deploying", "message": "0/1 replicas ready", "plan": {"weightsGiBPerGpu": 5.49}}
    write, json_patch = guarded_status_write(meta, old, {"phase": "Ready", "message": None, "a/b": 1})
    # A metadata-only write in between (kopf's annotations, a label) changes neither: the write still holds.
    assert json_patch
    assert write == [
        {"op": "test", "path": "/metadata/generation", "value": 3},
        {"op": "test", "path": "/status", "value": old},
        {"op": "add", "path": "/status/phase", "value": "Ready"},
        {"op": "remove", "path": "/status/message"},
        {"op": "add", "path": "/status/a~1b", "value": 1},
    ]


@pytest.mark.parametrize(
    "old",
    [
        {},  # no status yet: nothing to test against
        {"message": "perplexity > 2%"},  # Go writes > as \u003e: the server's text would never match
        {"plan": {"errorPercent": 0.00001}},  # Go: 0.00001, Python: 1e-05
        {"message": "caf\u00e9"},  # Go writes non-ASCII raw, Python escaped
    ],
)
def test_a_status_the_server_would_not_compare_equal_keeps_the_resource_version_guard(
    old: dict[str, Any],
) -> None:
    meta = {"name": "m", "resourceVersion": "41", "generation": 3}
    assert guarded_status_write(meta, old, {"phase": "Ready"}) == (
        status_write(meta, {"phase": "Ready"}),
        False,
    )


def test_values_compared_on_the_server_as_python_writes_them() -> None:
    assert comparable_as_sent({"a": [1, True, None, 0.9, 79.18, "x-y (z)\n"], "b": {"c": 123456.5}})
    assert not comparable_as_sent({"a": 5e-05})
    assert not comparable_as_sent({"a": 1e16})
    assert not comparable_as_sent({"a": 2.0})  # Go writes 2
    assert not comparable_as_sent(["a&b"])


def test_the_workers_quality_figures_reach_the_artifact_status_in_camel_case() -> None:
    quality = {
        "dataset": "qmo-builtin-english",
        "tokens": 1559,
        "source_perplexity": 303.8,
        "quantized_perplexity": 309.88,
        "perplexity_increase_percent": 2.001,
        "kl_mean": 0.006379,
        "top1_agreement": 0.83,
    }
    assert summary_fields(json.dumps({"quality": quality}))["quality"] == {
        "dataset": "qmo-builtin-english",
        "tokens": 1559,
        "sourcePerplexity": 303.8,
        "quantizedPerplexity": 309.88,
        "perplexityIncreasePercent": 2.001,
        "klMean": 0.006379,
        "top1Agreement": 0.83,
    }
    # A figure out of range or missing (another worker version) leaves quality out, not the whole status.
    damaged = summary_fields(json.dumps({"size_bytes": 1, "quality": {**quality, "top1_agreement": 7}}))
    assert damaged == {"sizeBytes": 1}
