"""Running qmo against a sandbox: the CRDs, a Hugging Face stand-in, the volume provisioner, and the
operator as a real process that can be killed. Shared by the demo, the cluster tests and the benchmarks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from qmo.sandbox.testing import SessionCluster
from qmo.sandbox.wait import StopWaiting, wait_for

EXAMPLES = Path(__file__).parent / "examples"
# What the cluster tier's hub stand-in serves: a public model and a gated one behind a token.
EXAMPLE_REPO = "meta-llama/Llama-3.1-8B"
EXAMPLE_SHA = "a" * 40
GATED_REPO = "meta-llama/Llama-3.1-8B-Gated"
GATED_SHA = "b" * 40
GATED_TOKEN = "hf_sandbox_secret_token_value"


def example_config(name: str = "llama-3.1-8b") -> dict[str, Any]:
    """A public model's config.json, shipped with qmo so the sandbox needs no hub."""
    config: dict[str, Any] = json.loads((EXAMPLES / f"{name}.config.json").read_text())
    return config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HubStandIn:
    """The two Hugging Face endpoints the operator calls, served from memory on 127.0.0.1."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                hub.requests.append((self.path, auth))
                status, body = hub.answer(self.path, auth)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, repo: str, config: dict[str, Any], *, sha: str, token: str | None = None) -> None:
        self.repos[repo] = {"config": config, "sha": sha, "token": token}

    def answer(self, path: str, auth: str | None) -> tuple[int, Any]:
        for repo, entry in self.repos.items():
            if entry["token"] and auth != f"Bearer {entry['token']}":
                if repo in path:
                    return 401, {"error": "gated"}
                continue
            if path.startswith(f"/api/models/{repo}/revision/"):
                return 200, {"id": repo, "sha": entry["sha"]}
            if path == f"/{repo}/resolve/{entry['sha']}/config.json":
                return 200, entry["config"]
        return 404, {"error": "not found"}

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


class OperatorProcess:
    """``qmo run`` as a subprocess against the test cluster: started, SIGKILLed and restarted at will.

    ``kubeconfig`` runs it with other credentials than the cluster admin's (e.g. a ServiceAccount token,
    to prove the chart's RBAC suffices); ``namespaces`` watches only those (``qmo run --namespace``);
    ``peering`` joins that kopf peering (``qmo run --peering``) instead of running standalone.
    """

    def __init__(
        self,
        cluster: SessionCluster,
        hub_url: str,
        log_dir: Path,
        *,
        resync_seconds: float = 3,
        kubeconfig: Path | None = None,
        namespaces: Sequence[str] = (),
        peering: str = "",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.cluster = cluster
        self.extra_args = tuple(extra_args)
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.namespaces = tuple(namespaces)
        self.peering = peering
        self.hub_url = hub_url
        self.log_dir = log_dir
        self.resync_seconds = resync_seconds
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.metrics_port = free_port()
        env = dict(self.cluster.env(), HF_ENDPOINT=self.hub_url, PYTHONUNBUFFERED="1")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "qmo",
                    "run",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--metrics-host",
                    "127.0.0.1",
                    "--metrics-port",
                    str(self.metrics_port),
                    "--liveness",
                    "",
                    "--resync-seconds",
                    str(self.resync_seconds),
                    *(arg for namespace in self.namespaces for arg in ("--namespace", namespace)),
                    *(("--peering", self.peering) if self.peering else ()),
                    *self.extra_args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._metrics_up, timeout=60, description="the operator's metrics endpoint")

    def _metrics_up(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise StopWaiting(f"the operator exited early:\n{self.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=0.5):
                return True
        except OSError:
            return False

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def metric_value(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        """SIGKILL: no cleanup handlers, no final status writes, exactly like an OOM kill."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@contextmanager
def provisioner(cluster: SessionCluster, log_dir: Path) -> Iterator[None]:
    with (log_dir / "provisioner.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "qmo.sandbox.provisioner", "--kubeconfig", str(cluster.kubeconfig)],
            env=cluster.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def install_crds(cluster: SessionCluster) -> None:
    from qmo.api.crds import render_crds

    cluster.kubectl("apply", "--server-side", "-f", "-", input="---\n".join(render_crds().values()))
    for crd in ("quantizedmodels.qmo.dev", "modelartifacts.qmo.dev", "gpuclasses.qmo.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")


def quantized_model(
    name: str,
    *,
    repo: str = EXAMPLE_REPO,
    method: str = "awq",
    serving: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
    quantize_job: dict[str, Any] | None = None,
    token_secret: str | None = None,
) -> dict[str, Any]:
    source: dict[str, Any] = {"repo": repo}
    if token_secret:
        source["tokenSecretRef"] = {"name": token_secret}
    spec: dict[str, Any] = {
        "source": {"huggingface": source},
        "quantization": {"method": method, **(quantization or {})},
        "serving": {"gpuClass": "h100-80gb", "maxModelLen": 8192, **(serving or {})},
    }
    if quantize_job:
        spec["quantizeJob"] = quantize_job
    return {
        "apiVersion": "qmo.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": name},
        "spec": spec,
    }
