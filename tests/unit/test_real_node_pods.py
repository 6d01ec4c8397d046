"""The real node's pure parts: which local program an image runs, where container paths live on the host,
and the pod status a kubelet reports (the node itself runs in tests/cluster/test_real_node.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qmo.api.backends import BACKENDS, worker_image
from qmo.api.versions import DEFAULT_VLLM_CPU_IMAGE, DEFAULT_VLLM_IMAGE
from qmo.sandbox.pods import (
    MESSAGE_LINES,
    ContainerRun,
    Environments,
    PathMap,
    PodRun,
    loopback_ip,
    pod_status,
    termination_message,
)

ENVIRONMENTS = Environments(worker_bin=Path("/venv/bin"), engine_python=Path("/engine/bin/python"))


@pytest.mark.parametrize("image", [DEFAULT_VLLM_IMAGE, DEFAULT_VLLM_CPU_IMAGE, "vllm/vllm-openai@sha256:ab"])
def test_vllm_images_run_the_engine_behind_the_wheels_entrypoint(image: str) -> None:
    argv, path = ENVIRONMENTS.command(image, ["vllm", "serve", "/m", "--port", "8000"])
    assert argv == [
        "/engine/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model=/m",
        "--port",
        "8000",
    ]
    assert path.startswith("/engine/bin:")


def test_the_worker_image_runs_in_the_project_environment_and_others_are_refused() -> None:
    for backend in BACKENDS:
        image = worker_image(backend).replace("ghcr.io", "registry:5000")
        argv, path = ENVIRONMENTS.command(image, ["qmo", "quantize"])
        assert argv == ["qmo", "quantize"] and path.startswith("/venv/bin:"), image
    with pytest.raises(ValueError, match="no local environment"):
        ENVIRONMENTS.command("nginx:1.27", ["nginx"])
    with pytest.raises(ValueError, match="make vllm"):
        Environments(worker_bin=Path("/v"), engine_python=None).command(DEFAULT_VLLM_IMAGE, ["vllm", "serve"])


def test_paths_under_a_mount_and_the_bind_all_address_are_rewritten() -> None:
    paths = PathMap({"/cache": Path("/state/volumes/ns/qmo-cache"), "/cache/x": Path("/other")}, "127.77.0.9")
    assert paths("/cache/abc/config.json") == "/state/volumes/ns/qmo-cache/abc/config.json"
    assert paths("/cache/x/y") == "/other/y"  # the longest mount wins
    assert paths("--model=/cache/abc") == "--model=/state/volumes/ns/qmo-cache/abc"
    assert paths("0.0.0.0") == "127.77.0.9"
    assert paths("/cachet") == "/cachet" and paths("hello") == "hello"


def test_pod_addresses_are_distinct_loopback_addresses_never_the_hosts() -> None:
    addresses = {loopback_ip(index) for index in range(1, 2000)}
    assert len(addresses) == 1999 and "127.0.0.1" not in addresses
    assert all(a.startswith("127.77.") for a in addresses)


def test_the_termination_message_is_the_file_else_the_logs_tail_of_a_failure(tmp_path: Path) -> None:
    termination, log = tmp_path / "termination", tmp_path / "log"
    log.write_text("\n".join(f"line {n}" for n in range(200)))
    assert termination_message(termination, log, failed=False, policy="FallbackToLogsOnError") == ""
    tail = termination_message(termination, log, failed=True, policy="FallbackToLogsOnError")
    assert tail.splitlines()[-1] == "line 199" and len(tail.splitlines()) <= MESSAGE_LINES
    assert termination_message(termination, log, failed=True, policy="File") == ""
    termination.write_text('{"size_bytes": 1}')
    assert (
        termination_message(termination, log, failed=True, policy="FallbackToLogsOnError")
        == '{"size_bytes": 1}'
    )


def test_the_status_says_ready_only_when_every_container_is(tmp_path: Path) -> None:
    run = PodRun(uid="u", namespace="ns", name="p", directory=tmp_path, ip="127.77.0.2", tmp=tmp_path)
    run.containers = [ContainerRun("a", {"image": "i"}), ContainerRun("b", {"image": "i"})]
    run.containers[0].ready = True
    run.containers[1].last_terminated = {"exitCode": 137, "reason": "Error"}
    run.containers[1].waiting = {"reason": "CrashLoopBackOff"}
    status = pod_status(run)["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
    assert status["podIP"] == "127.77.0.2" and status["phase"] == "Running"
    b = status["containerStatuses"][1]
    assert (
        b["state"] == {"waiting": {"reason": "CrashLoopBackOff"}}
        and b["lastState"]["terminated"]["exitCode"] == 137
    )
    run.containers[1].ready = True
    assert {c["type"]: c["status"] for c in pod_status(run)["status"]["conditions"]}["Ready"] == "True"
