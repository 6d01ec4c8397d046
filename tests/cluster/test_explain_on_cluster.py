"""``qmo explain`` against the real control plane: it reads the model, its artifact and their events with
qmo's own client and the kubeconfig, and tells a Ready model's and a failed model's story."""

from __future__ import annotations

import os
import subprocess
import sys

from qmo.sandbox import stages
from qmo.sandbox.harness import quantized_model as model
from qmo.sandbox.testing import Kube


def qmo_explain(k: Kube, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=str(k.cluster.kubeconfig))
    return subprocess.run(
        [sys.executable, "-m", "qmo", "explain", name, "-n", k.namespace, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_explain_tells_a_ready_model_and_a_failed_one(k: Kube) -> None:
    k.apply(model("told"))
    ready = k.wait_phase("told", "Ready")
    result = qmo_explain(k, "told")
    assert result.returncode == 0, result.stderr
    story = result.stdout
    artifact = ready["status"]["artifact"]["name"]
    plan = ready["status"]["plan"]
    assert f"QuantizedModel {k.namespace}/told: Ready" in story
    assert f"{plan['kvCacheTokens']:,} tokens" in story
    assert f"Artifact {artifact}: Ready" in story
    assert "WeightsReady" in story and "ArtifactReady" in story
    assert "Nothing to do" in story
    assert "Events\n" in story and "Ready" in story.split("Events", 1)[1]  # the operator's own events

    failing = {"backoffLimit": 0, "podAnnotations": {stages.FAIL_ANNOTATION: "true"}}
    k.apply(model("broken", method="fp8-dynamic", quantize_job=failing))
    k.wait_phase("broken", "Failed")
    story = qmo_explain(k, "broken").stdout
    assert "QuantizationFailed" in story and "BackoffLimitExceeded" in story
    assert f"kubectl logs -n {k.namespace} job/" in story

    missing = qmo_explain(k, "no-such-model")
    assert missing.returncode == 1
    assert f"QuantizedModel {k.namespace}/no-such-model not found" in missing.stderr
