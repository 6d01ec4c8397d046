"""Plan verification on the real control plane: the operator reads the serving pods' vLLM /metrics and
puts what vLLM allocated beside the prediction; a start that is OOMKilled leads to exactly one re-plan.

kwok plays the kubelet, so no vLLM runs here: a pod annotated with a loopback address gets it as its IP
(the sandbox's stage), and a real HTTP server on that address's port 8000 answers with the text vLLM
0.25.1 really serves, its KV pool set by the test. The operator scrapes ``podIP:8000`` exactly as in a
cluster. (When the sandbox has a node running real processes, real vLLM replaces the stand-in.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from qmo.desired.verification import kv_error_percent
from qmo.sandbox import stages
from qmo.sandbox.harness import OperatorProcess
from qmo.sandbox.harness import quantized_model as model
from qmo.sandbox.testing import Kube
from qmo.sandbox.wait import wait_for

sys.path.insert(0, str(Path(__file__).parents[1]))
from vllm_metrics import REAL_METRICS, MetricsStandIn, loopback_address, with_pool


def plan_verified(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "PlanVerified")


def events(k: Kube, reason: str) -> list[dict[str, Any]]:
    listed = json.loads(k.cluster.kubectl("get", "events", "-n", k.namespace, "-o", "json").stdout)["items"]
    return [e for e in listed if e.get("reason") == reason]


def test_observed_kv_tokens_appear_beside_the_prediction(k: Kube, operator: OperatorProcess) -> None:
    address = loopback_address()
    # 512 blocks of 16: far below what an H100 plan predicts, so the first observation is a mismatch.
    with MetricsStandIn(with_pool(REAL_METRICS, 512), host=address, port=8000) as vllm:
        k.apply(model("seen", serving={"podAnnotations": {stages.POD_IP_ANNOTATION: address}}))
        k.wait_phase("seen", "Ready")

        def observed_with(tokens: int) -> dict[str, Any] | None:
            qm = k.get("qm", "seen")
            observed = (((qm or {}).get("status") or {}).get("plan") or {}).get("observed") or {}
            return qm if observed.get("kvCacheTokens") == tokens else None

        status = wait_for(lambda: observed_with(8192), timeout=60, description="observed KV tokens")["status"]
        predicted = status["plan"]["kvCacheTokens"]
        observed = status["plan"]["observed"]
        assert observed["kvCacheBlocks"] == 512 and observed["blockSize"] == 16 and observed["pods"] == 1
        assert observed["errorPercent"] == kv_error_percent(predicted=predicted, observed=8192) < -5
        condition = plan_verified(status)
        assert (condition["status"], condition["reason"]) == ("False", "KVCacheMismatch")
        assert (
            f"vLLM allocated 8192 KV-cache tokens per replica, the plan predicted {predicted}"
            in (condition["message"])
        )
        assert status["phase"] == "Ready"  # it serves; the plan is what is wrong
        assert len(events(k, "PlanMismatch")) == 1
        wait_for(
            lambda: (
                operator.metric_value("qmo_observed_kv_cache_tokens", model="seen", namespace=k.namespace)
                == 8192
            ),
            timeout=30,
            description="the observed-tokens gauge",
        )
        assert operator.metric_value(
            "qmo_plan_kv_cache_error_percent", model="seen", namespace=k.namespace
        ) == pytest.approx(observed["errorPercent"], abs=0.01)
        scrapes = vllm.requests

        # vLLM now allocates what was planned; a rollout change (a second replica) reads it again.
        vllm.text = with_pool(REAL_METRICS, predicted // 16)
        k.apply(model("seen", serving={"replicas": 2, "podAnnotations": {stages.POD_IP_ANNOTATION: address}}))
        status = wait_for(lambda: observed_with(predicted // 16 * 16), timeout=60, description="re-read")[
            "status"
        ]
        assert status["plan"]["observed"]["pods"] == 2
        assert abs(status["plan"]["observed"]["errorPercent"]) < 0.1
        assert (plan_verified(status)["status"], plan_verified(status)["reason"]) == ("True", "Verified")
        # Two pods, one observation each: reconciles in between read nothing.
        assert vllm.requests - scrapes == 2


def test_an_oom_killed_start_re_plans_exactly_once(k: Kube, operator: OperatorProcess) -> None:
    oom = {
        stages.FAIL_ANNOTATION: "true",
        stages.EXIT_CODE_ANNOTATION: "137",
        stages.EXIT_REASON_ANNOTATION: "OOMKilled",
    }
    replans_before = operator.metric_value("qmo_replans_total", reason="OOMKilled")
    k.apply(model("oom", serving={"podAnnotations": oom}))

    def failed_after_replan() -> dict[str, Any] | None:
        qm = k.get("qm", "oom") or {}
        conditions = (qm.get("status") or {}).get("conditions", [])
        verified = next((c for c in conditions if c["type"] == "PlanVerified"), {})
        return qm if "even after the re-plan" in verified.get("message", "") else None

    degraded = wait_for(failed_after_replan, timeout=120, description="a failed start after the re-plan")
    status = degraded["status"]
    assert status["phase"] == "Degraded"
    replan = status["replan"]
    assert replan["reason"] == "OOMKilled"
    assert (replan["fromGpuMemoryUtilization"], replan["gpuMemoryUtilization"]) == (0.9, 0.85)
    assert replan["generation"] == degraded["metadata"]["generation"]
    assert status["plan"]["gpuMemoryUtilization"] == 0.85
    deployment = k.get("deployment", "oom-vllm")
    assert deployment is not None
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--gpu-memory-utilization=0.85" in args
    condition = plan_verified(status)
    assert (condition["status"], condition["reason"]) == ("False", "StartupFailed")
    assert "OOMKilled, exit code 137" in condition["message"]
    assert "even after the re-plan to --gpu-memory-utilization 0.85" in condition["message"]
    assert status["message"] == condition["message"]
    [replanned] = events(k, "Replanned")
    assert replanned.get("count", 1) == 1
    assert operator.metric_value("qmo_replans_total", reason="OOMKilled") == replans_before + 1

    # Still once: the re-planned pods keep failing, and the Deployment stays where the re-plan put it.
    generation = deployment["metadata"]["generation"]
    pods = k.list("pods", "qmo.dev/model=oom")
    wait_for(
        lambda: any(
            int(c.get("restartCount", 0)) >= 3
            for p in k.list("pods", "qmo.dev/model=oom")
            for c in p.get("status", {}).get("containerStatuses", [])
        ),
        timeout=60,
        description="the re-planned pod to crash again",
    )
    assert pods
    again = k.get("deployment", "oom-vllm")
    assert again is not None and again["metadata"]["generation"] == generation
    assert len(events(k, "Replanned")) == 1

    # The user's fix (here: the pods stop failing) is a new generation: planned from the spec again.
    k.apply(model("oom"))
    ready = k.wait_phase("oom", "Ready", timeout=120)
    assert "replan" not in ready["status"]
    assert ready["status"]["plan"]["gpuMemoryUtilization"] == 0.9
