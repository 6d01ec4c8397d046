"""``qmo explain``: one QuantizedModel's story for a person, table-driven across the phases it passes through.

The objects are spelt as the API server returns them (camelCase status as the operator writes it), so each
row is what ``kubectl get -o json`` would show at that point of the model's life.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from qmo.cli import main
from qmo.commands import explain as explain_command
from qmo.desired import explain as explain_module
from qmo.desired.explain import EVENTS_SHOWN, RUNBOOK, explain

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
ARTIFACT = "llama-3-1-8b-instruct-awq-0e9e39f2"
JOB = f"{ARTIFACT}-quantize"

PLAN = {
    "gpuClass": "h100-80gb",
    "gpuMemoryGib": 79.18,
    "tensorParallelSize": 1,
    "dtype": "bfloat16",
    "kvCacheDtype": "auto",
    "maxModelLen": 8192,
    "maxNumSeqs": 256,
    "weightsGibPerGpu": 5.47,
    "kvCacheGibPerGpu": 64.46,
    "overheadGibPerGpu": 1.33,
    "kvCacheTokens": 528016,
    "maxConcurrency": 64.46,
    "checkpointBytes": 5_727_858_176,
    "vllmArgs": ["--tensor-parallel-size=1", "--max-model-len=8192", "--max-num-seqs=256"],
    "gpuMemoryUtilization": 0.9,
}
QUALITY = {
    "dataset": "qmo-builtin-english",
    "tokens": 2044,
    "sourcePerplexity": 7.912,
    "quantizedPerplexity": 8.105,
    "perplexityIncreasePercent": 2.439,
    "klMean": 0.021,
    "top1Agreement": 0.9312,
}


def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def quantized_model(status: dict[str, Any] | None, **serving: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "llama-3-1-8b-awq", "namespace": "demo", "generation": 1, "uid": "uid-qm"},
        "spec": {
            "source": {"huggingface": {"repo": "meta-llama/Llama-3.1-8B-Instruct", "revision": "main"}},
            "quantization": {"method": "awq", "bits": 4, "groupSize": 128},
            "serving": {
                "gpuClass": "h100-80gb",
                "replicas": 2,
                "maxModelLen": 8192,
                "concurrency": 64,
                **serving,
            },
        },
        **({"status": {"observedGeneration": 1, **status}} if status is not None else {}),
    }


def model_artifact(phase: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": ARTIFACT, "namespace": "demo", "uid": "uid-ma"},
        "status": {"phase": phase, "jobName": JOB, "users": 1, "size": "~5.33Gi", **status},
    }


def event(
    reason: str, message: str, *, minutes_ago: int, kind: str = "QuantizedModel", **extra: Any
) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(NOW.timestamp() - 60 * minutes_ago, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": extra.pop("type", "Normal"),
        "reason": reason,
        "message": message,
        "lastTimestamp": stamp,
        "involvedObject": {"kind": kind},
        **extra,
    }


PLANNED = condition(
    "Planned", "True", "Planned", "tp=1 kv=auto kv_tokens=528016 max_concurrency=64.46 max_num_seqs=256"
)
WAITING = {
    "phase": "Quantizing",
    "resolvedRevision": "0e9e39f249a16976918f6564b8830bc894c89659",
    "plan": PLAN,
}

CASES: dict[str, tuple[dict[str, Any], dict[str, Any] | None, list[str]]] = {
    "Pending": (
        quantized_model(None),
        None,
        ["demo/llama-3-1-8b-awq: no status yet", "operator has not reconciled"],
    ),
    "Quantizing": (
        quantized_model(
            {
                **WAITING,
                "message": f"waiting for ModelArtifact {ARTIFACT} (Quantizing)",
                "artifact": {"name": ARTIFACT, "key": "0e" * 32},
                "conditions": [
                    condition("WeightsReady", "False", "ArtifactQuantizing", f"quantize Job {JOB} running"),
                    PLANNED,
                    condition("QualityGate", "Unknown", "WaitingForWeights"),
                ],
            }
        ),
        model_artifact("Quantizing", message=f"quantize Job {JOB} running"),
        [
            "huggingface meta-llama/Llama-3.1-8B-Instruct@main (commit 0e9e39f249a1)",
            "awq (4-bit, group 128)",
            "h100-80gb: 79.18 GiB per GPU x 0.9 = 71.26 GiB budget",
            "weights 5.47 + overhead 1.33 + KV cache 64.46 GiB",
            "528,016 tokens = 64.46 sequences of 8,192 (concurrency asked: 64)",
            "256 (vLLM's default; concurrency 64 is what the KV cache holds at max-model-len, not a cap",
            "checkpoint      5.33Gi",
            f"Artifact {ARTIFACT}: Quantizing, ~5.33Gi, Job {JOB}, used by 1 model(s)",
            f"kubectl logs -n demo job/{JOB} -f",
        ],
    ),
    "Ready": (
        quantized_model(
            {
                **WAITING,
                "phase": "Ready",
                "message": "serving on 1x h100-80gb per replica",
                "endpoint": "http://llama-3-1-8b-awq.demo.svc:8000/v1",
                "ready": "2/2",
                "artifact": {"name": ARTIFACT, "key": "0e" * 32},
                "conditions": [
                    PLANNED,
                    condition("WeightsReady", "True", "ArtifactReady"),
                    condition("Available", "True", "RolledOut", "2/2 replicas ready"),
                    condition("QualityGate", "True", "QualityPassed", "perplexity +2.439% <= 10%"),
                ],
            }
        ),
        model_artifact("Ready", size="5.33Gi", quantizeSeconds=812.4, quality=QUALITY),
        [
            "demo/llama-3-1-8b-awq: Ready",
            "endpoint http://llama-3-1-8b-awq.demo.svc:8000/v1 (2/2 replicas ready)",
            f"Artifact {ARTIFACT}: Ready, 5.33Gi, quantized in 812.4 s",
            "perplexity 7.912 -> 8.105 (+2.439%), top-1 agreement 0.9312, KL 0.021 (2044 tokens of qmo-builtin-english)",
            "QualityGate   True     QualityPassed       perplexity +2.439% <= 10%",
            "Nothing to do: it serves at http://llama-3-1-8b-awq.demo.svc:8000/v1",
        ],
    ),
    "Degraded: quality gate": (
        quantized_model(
            {
                **WAITING,
                "phase": "Degraded",
                "message": f"quality gate: ModelArtifact {ARTIFACT}: perplexity +48% exceeds the 10% allowed; nothing was deployed",
                "artifact": {"name": ARTIFACT, "key": "0e" * 32},
                "conditions": [
                    PLANNED,
                    condition("WeightsReady", "True", "ArtifactReady"),
                    condition("Deployed", "False", "QualityGateFailed"),
                    condition(
                        "QualityGate",
                        "False",
                        "QualityBelowThreshold",
                        "perplexity +48% exceeds the 10% allowed",
                    ),
                ],
            }
        ),
        model_artifact(
            "Ready",
            size="5.33Gi",
            quality={**QUALITY, "quantizedPerplexity": 11.71, "perplexityIncreasePercent": 48.0},
        ),
        [
            "QualityGate   False    QualityBelowThreshold  perplexity +48% exceeds the 10% allowed",
            "(+48%)",
            "The artifact fails the quality gate: perplexity +48% exceeds the 10% allowed.",
            "relax spec.quantization.qualityGate",
            "docs/operations.md#a-quality-gate-failed",
        ],
    ),
    "Failed: Job": (
        quantized_model(
            {
                "phase": "Failed",
                "message": f"ModelArtifact {ARTIFACT} failed: quantize Job {JOB} failed (BackoffLimitExceeded): OOMKilled",
                "artifact": {"name": ARTIFACT, "key": "0e" * 32},
                "plan": PLAN,
                "conditions": [
                    condition(
                        "WeightsReady", "False", "QuantizationFailed", f"ModelArtifact {ARTIFACT} failed"
                    ),
                ],
            }
        ),
        model_artifact("Failed", message=f"quantize Job {JOB} failed (BackoffLimitExceeded): OOMKilled"),
        [
            "demo/llama-3-1-8b-awq: Failed",
            f"message  quantize Job {JOB} failed (BackoffLimitExceeded): OOMKilled",
            "WeightsReady  False    QuantizationFailed",
            f"The quantize Job failed: quantize Job {JOB} failed (BackoffLimitExceeded): OOMKilled",
            f"Read the worker's output: kubectl logs -n demo job/{JOB}",
            "a failed artifact is deleted and quantized again with the new Job settings",
        ],
    ),
    "Failed: does not fit": (
        quantized_model(
            {
                "phase": "Failed",
                "message": "needs 24.4 GiB per GPU ... GPU l4 has 19.8; tensor-parallel-size 2 would fit",
                "conditions": [condition("Planned", "False", "DoesNotFit", "needs 24.4 GiB per GPU")],
            }
        ),
        None,
        ["tensor-parallel-size 2 would fit", "The model does not fit the GPU class", "qmo plan tries them"],
    ),
    "Quantizing: no node": (
        quantized_model({**WAITING, "message": "waiting", "artifact": {"name": ARTIFACT, "key": "0e" * 32}}),
        model_artifact(
            "Pending", message=f"quantize Job {JOB} waiting for a node (Unschedulable: 0/3 nodes)"
        ),
        ["No node can take the quantize Job's pod", "docs/operations.md#a-quantize-job-is-stuck"],
    ),
}


# A model no node holds: TP 8 inside a node x PP 2 across nodes (Llama-3.1-405B bf16 on 2 x 8 H100).
MULTI_NODE_PLAN = {
    **PLAN,
    "tensorParallelSize": 8,
    "pipelineParallelSize": 2,
    "weightsGibPerGpu": 47.31,
    "kvCacheGibPerGpu": 21.5,
    "kvCacheTokens": 722096,
    "maxConcurrency": 5.51,
    "maxModelLen": 131072,
}
MULTI_NODE = {"maxNodes": 2, "replicas": 1}
HPA_STATUS = {
    "autoscaler": "HorizontalPodAutoscaler",
    "name": "llama-3-1-8b-awq-vllm",
    "metric": "vllm:num_requests_running",
    "target": 64.0,
    "targetSource": "spec.serving.concurrency",
    "minReplicas": 1,
    "maxReplicas": 4,
    "desiredReplicas": 2,
    "currentReplicas": 2,
    "message": "ScalingActive: FailedGetPodsMetric: unable to get metric vllm:num_requests_running",
}
AUTOSCALING = {"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}
SCALE_TO_ZERO = {
    "autoscaling": {
        "minReplicas": 1,
        "maxReplicas": 8,
        "metric": "queueDepth",
        "target": 4,
        "scaleToZero": True,
        "idleSeconds": 600,
        "wakeQuery": "sum(gateway_pending)",
    }
}
SERVING = {
    **WAITING,
    "artifact": {"name": ARTIFACT, "key": "0e" * 32},
    "endpoint": "http://llama-3-1-8b-awq.demo.svc:8000/v1",
}

CASES.update(
    {
        "Ready: two nodes per replica, verified at the leader": (
            quantized_model(
                {
                    **SERVING,
                    "phase": "Ready",
                    "ready": "1/1",
                    "plan": {
                        **MULTI_NODE_PLAN,
                        "observed": {
                            "kvCacheTokens": 722096,
                            "errorPercent": 0.0,
                            "pods": 1,
                            "scrapedAt": "2026-12-07T11:00:00Z",
                        },
                    },
                    "conditions": [
                        PLANNED,
                        condition(
                            "PlanVerified", "True", "Verified", "vLLM allocated 722096 KV-cache tokens"
                        ),
                    ],
                },
                **MULTI_NODE,
            ),
            model_artifact("Ready"),
            [
                "h100-80gb, 1 replica(s), maxNodes 2,",
                "8 GPU(s) per node x 2 nodes per replica = 16 GPUs, 2 pipeline stages "
                "(one per node; rank 0, the leader, serves HTTP)",
                "per GPU (most of any stage)  weights 47.31",
                "722,096 tokens = 5.51 sequences of 131,072 (concurrency asked: 64); per replica, each stage "
                "holds them for its layers",
                "722,096 KV tokens per replica (+0% against the plan), read from 1 leader pod(s)",
                "Nothing to do: it serves at",
            ],
        ),
        "Deploying: two nodes per replica, no room": (
            quantized_model(
                {
                    **SERVING,
                    "phase": "Deploying",
                    "plan": MULTI_NODE_PLAN,
                    "message": "0/1 replicas ready (Unschedulable: 0/4 nodes are available: 3 Insufficient "
                    "nvidia.com/gpu, 1 node(s) didn't match pod anti-affinity rules)",
                },
                **MULTI_NODE,
            ),
            model_artifact("Ready"),
            [
                "A replica needs 2 nodes with 8 free GPUs of h100-80gb each, one pod per node",
                "qmo plan --max-nodes",
                "kubectl get pods -n demo -l qmo.dev/model=llama-3-1-8b-awq -o wide",
                "docs/operations.md#a-multi-node-model",
            ],
        ),
        "Deploying: two nodes per replica, starting": (
            quantized_model(
                {**SERVING, "phase": "Deploying", "plan": MULTI_NODE_PLAN, "message": "0/1 replicas ready"},
                **MULTI_NODE,
            ),
            model_artifact("Ready"),
            [
                "vLLM is starting (loading weights, warming up) on 2 nodes per replica; a leader is ready only "
                "once every node of its group joined it",
                "kubectl logs -n demo -l qmo.dev/model=llama-3-1-8b-awq --prefix",
                "docs/operations.md#a-multi-node-model",
            ],
        ),
        "Ready: the HPA cannot read its metric": (
            quantized_model(
                {
                    **SERVING,
                    "phase": "Ready",
                    "ready": "2/2",
                    "autoscaling": HPA_STATUS,
                    "conditions": [
                        PLANNED,
                        condition(
                            "Autoscaling", "False", "FailedGetPodsMetric", "HorizontalPodAutoscaler ..."
                        ),
                    ],
                },
                **AUTOSCALING,
            ),
            model_artifact("Ready"),
            [
                "h100-80gb, maxModelLen 8192",  # replicas is unused while autoscaling
                "autoscaling   1-4 replicas on runningRequests, target from the plan",
                "Autoscaling (HorizontalPodAutoscaler llama-3-1-8b-awq-vllm)",
                "replicas  desired 2, current 2, range 1-4",
                "metric    vllm:num_requests_running at 64 per replica (target from spec.serving.concurrency)",
                "message   ScalingActive: FailedGetPodsMetric",
                "Autoscaling   False    FailedGetPodsMetric",
                "It serves at http://llama-3-1-8b-awq.demo.svc:8000/v1 (OpenAI API, /v1/models), but:",
                "The autoscaler cannot scale (FailedGetPodsMetric): the replica count stays where it is.",
                'kubectl get --raw "/apis/custom.metrics.k8s.io/v1beta2/namespaces/demo/pods/*/'
                'vllm:num_requests_running"; kubectl describe hpa -n demo llama-3-1-8b-awq-vllm',
                "docs/operations.md#autoscaling",
            ],
        ),
        "Deploying: KEDA cannot reach Prometheus": (
            quantized_model(
                {
                    **SERVING,
                    "phase": "Deploying",
                    "message": "0/1 replicas ready",
                    "autoscaling": {
                        **HPA_STATUS,
                        "autoscaler": "ScaledObject",
                        "metric": "vllm:num_requests_waiting",
                        "target": 4.0,
                        "targetSource": "spec",
                        "minReplicas": 0,
                        "maxReplicas": 8,
                        "message": "Ready: ScaledObjectCheckFailed: prometheus query failed",
                    },
                    "conditions": [condition("Autoscaling", "False", "ScaledObjectCheckFailed")],
                },
                **SCALE_TO_ZERO,
            ),
            model_artifact("Ready"),
            [
                "1-8 replicas on queueDepth, target 4 per replica, scale to zero after 600 s idle",
                "Autoscaling (ScaledObject llama-3-1-8b-awq-vllm)",
                "range 0-8",
                "vLLM is starting",
                "The autoscaler cannot scale (ScaledObjectCheckFailed)",
                "kubectl describe scaledobject -n demo llama-3-1-8b-awq-vllm",
                "docs/operations.md#autoscaling",
            ],
        ),
    }
)


@pytest.mark.parametrize("case", list(CASES))
def test_the_story_has_the_plan_the_artifact_the_conditions_and_what_to_do(case: str) -> None:
    model, artifact, expected = CASES[case]
    story = explain(model, artifact=artifact, events=[], now=NOW)
    words = " ".join(story.split())  # the columns' widths are the layout's business, not the story's
    for text in expected:
        assert " ".join(text.split()) in words, f"{case}: {text!r} missing from:\n{story}"
    assert story.rstrip().splitlines()[-1].startswith("  - ")  # it always ends with what to do next


def test_conditions_follow_the_stages_and_show_their_reasons() -> None:
    model, artifact, _ = CASES["Ready"]
    story = explain(model, artifact=artifact, now=NOW)
    block = story.split("Conditions\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in block] == ["Planned", "WeightsReady", "QualityGate", "Available"]


def test_the_autoscaling_condition_comes_after_the_stages() -> None:
    model, artifact, _ = CASES["Ready: the HPA cannot read its metric"]
    conditions = model["status"]["conditions"]
    model["status"]["conditions"] = [
        conditions[1],
        condition("PlanVerified", "True", "Verified"),
        condition("Available", "True", "RolledOut"),
        conditions[0],
    ]
    story = explain(model, artifact=artifact, now=NOW)
    block = story.split("Conditions\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in block] == ["Planned", "Available", "PlanVerified", "Autoscaling"]


def test_a_model_that_scales_and_serves_well_has_nothing_to_do() -> None:
    model, artifact, _ = CASES["Ready: the HPA cannot read its metric"]
    model["status"]["conditions"] = [condition("Autoscaling", "True", "Scaling")]
    steps = explain(model, artifact=artifact, now=NOW).split("Next\n", 1)[1]
    assert steps.startswith("  - Nothing to do") and "autoscaler" not in steps


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_runbook_link_explain_gives_has_its_section() -> None:
    operations = Path(__file__).parents[2] / RUNBOOK
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in operations.read_text().splitlines()
        if line.startswith("#")
    }
    linked = set(
        re.findall(r"#([a-z0-9-]+)", Path(explain_module.__file__).read_text().split("RUNBOOK = ")[1])
    )
    assert "autoscaling" in linked and "a-multi-node-model" in linked
    assert linked <= anchors, f"no such section in {RUNBOOK}: {sorted(linked - anchors)}"


def test_the_last_events_of_both_objects_come_newest_last_with_their_age() -> None:
    model, artifact, _ = CASES["Ready"]
    events = [event(f"Step{i}", f"step {i}", minutes_ago=60 - i) for i in range(EVENTS_SHOWN + 2)]
    events.append(event("Ready", "checkpoint ready", minutes_ago=0, kind="ModelArtifact", count=3))
    story = explain(model, artifact=artifact, events=list(reversed(events)), now=NOW)
    block = story.split("Events", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block[0] == f" (last {EVENTS_SHOWN} of {EVENTS_SHOWN + 3})"
    assert block[-1].split() == [
        "0s",
        "ago",
        "Normal",
        "Ready:",
        "[ModelArtifact]",
        "checkpoint",
        "ready",
        "(x3)",
    ]
    assert block[1].split()[:4] == ["57m", "ago", "Normal", "Step3:"]
    assert "none (Kubernetes keeps events" in explain(model, artifact=artifact, now=NOW)


def test_a_spec_the_operator_has_not_seen_yet_is_called_out() -> None:
    model, artifact, _ = CASES["Ready"]
    model = {**model, "metadata": {**model["metadata"], "generation": 2}}
    assert "generation 1 of 2" in explain(model, artifact=artifact, now=NOW)


def test_an_artifact_that_is_gone_is_said_to_be(tmp_path: Path) -> None:
    model, _, _ = CASES["Quantizing"]
    assert f"Artifact {ARTIFACT}: not found" in explain(model, artifact=None, now=NOW)


def test_the_command_defaults_to_the_kubeconfig_contexts_namespace(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: a\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: a, context: {cluster: c, user: u, namespace: demo}},"
        " {name: b, context: {cluster: c, user: u}}]\n"
    )
    assert explain_command.default_namespace(str(kubeconfig), None) == "demo"
    assert explain_command.default_namespace(str(kubeconfig), "b") == "default"
    parser = argparse.ArgumentParser()
    explain_command.add_arguments(parser)
    args = parser.parse_args(["llama", "-n", "prod", "--kubeconfig", str(kubeconfig)])
    assert (args.name, args.namespace) == ("llama", "prod")


def test_no_cluster_to_read_from_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(variable, raising=False)
    assert main(["explain", "llama", "-n", "demo", "--kubeconfig", str(tmp_path / "missing")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("qmo explain: no cluster to read from") and "--kubeconfig FILE" in error
    assert "Traceback" not in error
