"""The real node's pure parts: images to local environments, container paths to host paths, pod IPs, and
the pod status a kubelet reports from its processes (see qmo.sandbox.kubelet)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from qmo.api.versions import DEFAULT_VLLM_CPU_IMAGE, DEFAULT_VLLM_IMAGE
from qmo.desired.serving import pip_wheel_entrypoint
from qmo.reconcile.kube import Manifest

# kubelet keeps the last 80 lines (or 2048 bytes) of a failed container's log as its message.
MESSAGE_LINES, MESSAGE_BYTES = 80, 2048
VLLM_IMAGES = (DEFAULT_VLLM_IMAGE.split(":")[0], DEFAULT_VLLM_CPU_IMAGE.split(":")[0])


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Environments:
    """Where each image's programs come from on this machine."""

    worker_bin: Path
    """The project environment's bin directory (qmo, python)."""
    engine_python: Path | None
    """The pinned vLLM CPU engine's python, or None when it is not installed."""

    def command(self, image: str, argv: list[str]) -> tuple[list[str], str]:
        """(the argv to execute, PATH) for a container of ``image``; ValueError when the image has none."""
        repository = image.split("@")[0]
        if ":" in repository.rsplit("/", 1)[-1]:
            repository = repository.rsplit(":", 1)[0]  # the tag, not a registry's port
        host_path = os.environ.get("PATH", "/usr/bin:/bin")
        if repository in VLLM_IMAGES:
            if self.engine_python is None:
                raise ValueError("the vLLM CPU engine is not installed (make vllm)")
            path = f"{self.engine_python.parent}:{host_path}"
            if argv[:2] == ["vllm", "serve"]:
                return [str(self.engine_python), *pip_wheel_entrypoint(argv[2:])], path
            return argv, path
        if repository.rsplit("/", 1)[-1].startswith("quantizer") or repository.endswith("/qmo"):
            # Every worker image (quantizer, quantizer-<backend>) runs `qmo quantize` from .venv, which
            # re-runs itself in the backend's locked environment: the same one that backend's image holds.
            return argv, f"{self.worker_bin}:{host_path}"
        raise ValueError(f"image {image!r} has no local environment (this node runs qmo's and vLLM's images)")


def loopback_ip(index: int) -> str:
    """The index-th pod address: 127.77.x.y (never 127.0.0.1, the host's own)."""
    return f"127.77.{(index // 250) % 250}.{index % 250 + 1}"


class PathMap:
    """Container paths under a mount -> host paths, for command, args and env values."""

    def __init__(self, mounts: Mapping[str, Path], pod_ip: str) -> None:
        self.mounts = sorted(mounts.items(), key=lambda item: len(item[0]), reverse=True)
        self.pod_ip = pod_ip

    def __call__(self, value: str) -> str:
        if value == "0.0.0.0":
            return self.pod_ip
        for mount, host in self.mounts:
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(host) + value[len(mount.rstrip("/")) :]
        if value.startswith("--") and "=" in value:
            flag, _, rest = value.partition("=")
            return f"{flag}={self(rest)}"
        return value


@dataclass
class ContainerRun:
    name: str
    spec: Manifest
    restarts: int = 0
    process: asyncio.subprocess.Process | None = None
    started_at: str = ""
    ready: bool = False
    started: bool = False
    last_terminated: Manifest | None = None
    terminated: Manifest | None = None
    waiting: Manifest | None = None


@dataclass
class PodRun:
    uid: str
    namespace: str
    name: str
    directory: Path
    ip: str
    containers: list[ContainerRun] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    stopper: asyncio.Task[None] | None = None
    started_at: str = ""
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qmo-pod-", dir="/tmp")))


def termination_message(termination_file: Path, log_path: Path, *, failed: bool, policy: str | None) -> str:
    with contextlib.suppress(OSError):
        text = termination_file.read_text(errors="replace").strip()
        if text:
            return text[:4096]
    if failed and policy == "FallbackToLogsOnError":
        with contextlib.suppress(OSError):
            lines = log_path.read_bytes()[-64 * 1024 :].decode(errors="replace").splitlines()
            return "\n".join(lines[-MESSAGE_LINES:])[-MESSAGE_BYTES:]
    return ""


def pod_status(run: PodRun, *, phase: str = "Running", message: str = "") -> Manifest:
    """The pod's status as kubelet reports it: phase, conditions, each container's state, the IPs."""
    stamp = now()
    ready = all(c.ready for c in run.containers)
    statuses = []
    for c in run.containers:
        if c.terminated is not None:
            state: Manifest = {"terminated": c.terminated}
        elif c.waiting is not None:
            state = {"waiting": c.waiting}
        else:
            state = {"running": {"startedAt": c.started_at or stamp}}
        status = {
            "name": c.name,
            "image": c.spec["image"],
            "imageID": c.spec["image"],
            "ready": c.ready,
            "started": c.started,
            "restartCount": c.restarts,
            "state": state,
        }
        if c.last_terminated is not None:
            status["lastState"] = {"terminated": c.last_terminated}
        statuses.append(status)
    conditions = [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": str(ready)},
        {"type": "Ready", "status": str(ready)},
    ]
    body: Manifest = {
        "status": {
            "phase": phase,
            "conditions": [{**c, "lastTransitionTime": stamp} for c in conditions],
            "containerStatuses": statuses,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": run.ip,
            "podIPs": [{"ip": run.ip}],
            "startTime": run.started_at or stamp,
        }
    }
    if message:
        body["status"]["message"] = message
    return body
