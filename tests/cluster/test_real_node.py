"""The sandbox's real node: pods bound to it are real processes (qmo.sandbox.kubelet).

A tiny random Llama, offered by the Hugging Face stand-in, goes the whole way on the cpu GPU class: the
operator's quantize Job really runs llm-compressor and writes the artifact into the cache claim's
directory, vLLM's CPU engine really serves it and turns Ready from its real /health probe, the plan is
verified against vLLM's real /metrics, a SIGKILLed vLLM is restarted, and deleting the model ends every
process. One vLLM at a time (about 3.5 GiB): the serving test does all of that with one model.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qmo.sandbox import kubelet
from qmo.sandbox.ask import ask, container_log
from qmo.sandbox.harness import EXAMPLES, HubStandIn
from qmo.sandbox.testing import Kube, SessionCluster
from qmo.sandbox.wait import wait_for

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_models import build_tiny_llama_in_subprocess

TINY_REPO = "qmo-sandbox/tiny-llama"
TINY_SHA = "8c2c33db93329c85b4cb2e4426590086f26df7c6"
# vLLM's CPU engine loads, profiles and warms up in 35-60 s on 2 cores; a quantize Job imports torch and
# llm-compressor first. Generous, since CI machines vary; the waits end as soon as the state is reached.
START_S = 420.0


@pytest.fixture(scope="module")
def tiny_repo(hub: HubStandIn, tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = build_tiny_llama_in_subprocess(tmp_path_factory.mktemp("tiny") / "tiny-llama")
    hub.add_directory(TINY_REPO, directory, sha=TINY_SHA)
    return TINY_REPO


@pytest.fixture(scope="module")
def cpu_class(cluster: SessionCluster) -> Iterator[None]:
    documents = list(yaml.safe_load_all((EXAMPLES / "gpuclasses.yaml").read_text()))
    [cpu] = [d for d in documents if d["metadata"]["name"] == "cpu"]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(cpu))
    yield
    cluster.kubectl("delete", "gpuclass", "cpu", "--wait=false", check=False)


def tiny_model(**spec_changes: Any) -> dict[str, Any]:
    model = yaml.safe_load((EXAMPLES / "tiny-llama.yaml").read_text())
    del model["metadata"]["namespace"]
    for key, value in spec_changes.items():
        model["spec"][key] = {**model["spec"].get(key, {}), **value}
    return model


def parent_of(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ...", and comm may hold spaces or parentheses.
    return int((Path("/proc") / str(pid) / "stat").read_bytes().rpartition(b")")[2].split()[1])


def pod_processes(pod_uid: str) -> list[int]:
    """Pids of live processes a pod started (the node marks each with the pod's uid)."""
    marker = f"{kubelet.POD_MARKER}={pod_uid}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (
                marker in (proc / "environ").read_bytes().split(b"\0")
                and b"Z" not in ((proc / "stat").read_bytes().rpartition(b")")[2][:3])
            ):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def serving_pod(k: Kube) -> dict[str, Any] | None:
    pods = k.list("pods", "qmo.dev/model=tiny-llama,app.kubernetes.io/component=serving")
    return pods[0] if len(pods) == 1 else None


def test_a_tiny_model_is_really_quantized_served_restarted_and_stopped(
    k: Kube, cluster: SessionCluster, tiny_repo: str, cpu_class: None
) -> None:
    k.apply(tiny_model())
    ready = k.wait_phase("tiny-llama", "Ready", timeout=START_S)
    status = ready["status"]

    # The quantize Job ran for real: llm-compressor's checkpoint and qmo's files on the claim's directory.
    artifact = k.get("ma", status["artifact"]["name"])
    assert artifact is not None and artifact["status"]["phase"] == "Ready"
    claim = k.get("pvc", "qmo-cache")
    assert claim is not None
    volumes = cluster.plane.node_dir / "volumes" / k.namespace / "qmo-cache"
    weights = volumes / artifact["spec"]["key"]
    assert (weights / "config.json").is_file() and list(weights.glob("*.safetensors"))
    assert "quantization_config" in (weights / "config.json").read_text()
    assert artifact["status"]["quality"]["top1Agreement"] > 0  # the Job's own evaluation, measured

    # vLLM really serves it, at the pod's own loopback address, and answers.
    pod = serving_pod(k)
    assert pod is not None and pod["spec"]["nodeName"] == kubelet.NODE_NAME
    assert pod["status"]["podIP"].startswith("127.77.")
    answer = ask(cluster, "tiny-llama", "the quick brown fox", namespace=k.namespace)
    assert answer.text.strip()

    # The plan, checked against what vLLM really allocated: the CPU plan's pool is passed as bytes.
    def observed() -> dict[str, Any] | None:
        plan = ((k.get("qm", "tiny-llama") or {}).get("status") or {}).get("plan") or {}
        return plan if (plan.get("observed") or {}).get("kvCacheTokens") else None

    plan = wait_for(observed, timeout=60, description="vLLM's KV cache in status")
    assert plan["observed"]["kvCacheTokens"] == plan["kvCacheTokens"]
    assert plan["observed"]["errorPercent"] == 0

    # SIGKILL vLLM: the node restarts the container, the probe readies it again.
    pids = pod_processes(pod["metadata"]["uid"])
    assert pids, "no process carries the serving pod's uid"
    # The container's own process is the one whose parent is not the pod's: pids wrap (32768 here) over a
    # long test run, so the lowest one can be a child of vLLM's, whose death restarts nothing.
    [main] = [pid for pid in pids if parent_of(pid) not in pids]
    os.kill(main, signal.SIGKILL)

    def restarted_and_ready() -> dict[str, Any] | None:
        current = serving_pod(k)
        statuses = (current or {}).get("status", {}).get("containerStatuses") or [{}]
        return current if statuses[0].get("restartCount", 0) >= 1 and statuses[0].get("ready") else None

    again = wait_for(restarted_and_ready, timeout=START_S, description="vLLM restarted and Ready")
    assert again["metadata"]["uid"] == pod["metadata"]["uid"]  # the same pod: the container restarted
    assert again["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 137
    k.wait_phase("tiny-llama", "Ready", timeout=60)
    assert ask(cluster, "tiny-llama", "the quick brown fox", namespace=k.namespace).text.strip()

    # Deleting the model ends its processes, children included.
    k.delete("qm", "tiny-llama")
    wait_for(
        lambda: not pod_processes(pod["metadata"]["uid"]) and serving_pod(k) is None,
        timeout=120,
        description="the serving pod and its processes gone",
    )


def test_a_worker_that_fails_gives_a_failed_job_and_its_own_message(
    k: Kube, cluster: SessionCluster, tiny_repo: str, cpu_class: None
) -> None:
    k.apply(
        tiny_model(
            quantization={"calibration": {"dataset": "qmo-sandbox/no-such-dataset", "samples": 4}},
            quantizeJob={"backoffLimit": 0},
        )
    )
    failed = k.wait_phase("tiny-llama", "Failed", timeout=START_S)
    message = failed["status"]["message"]
    assert "no-such-dataset" in message, message
    [job] = k.list("jobs", "app.kubernetes.io/component=quantizer")
    assert any(c["type"] == "Failed" and c["status"] == "True" for c in job["status"]["conditions"])
    [worker] = k.list("pods", f"job-name={job['metadata']['name']}")
    terminated = worker["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] != 0 and "no-such-dataset" in terminated["message"]
    # Its whole output stays readable: kubectl logs (through the API server) and qmo sandbox logs (files).
    logs = cluster.kubectl("logs", worker["metadata"]["name"], "-n", k.namespace).stdout
    assert "no-such-dataset" in logs
    log = container_log(cluster.plane.node_dir, worker["metadata"]["name"], namespace=k.namespace)
    assert log.read_text() == logs
