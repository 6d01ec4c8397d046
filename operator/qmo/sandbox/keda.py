"""KEDA's operator and metrics adapter as local processes against a sandbox control plane.

Built opt-in by ``make keda`` (qmo.sandbox.build.build_keda) into ~/.cache/qmo/bin/keda-<version>/, with
KEDA's own ``config/`` copied from its module. Installed the way KEDA's release manifests install it, less
the Deployments: its CRDs, the ``keda`` namespace, the ``keda-operator`` ServiceAccount and KEDA's RBAC
(``config/rbac``, ``config/metrics-server``). Both processes run under that ServiceAccount's token, so KEDA's
own RBAC is what lets it work, as in a cluster.

Out of the cluster (what KEDA's flags allow, checked against v2.21.0's cmd/operator and cmd/adapter):
- every listener on 127.0.0.1 at a free port (operator metrics, health probes and its gRPC metrics service;
  the adapter's secure port), except the adapter's own /metrics, which KEDA binds on all interfaces
  (``--port``: no address can be given);
- leader election off; no certificate rotation (``--enable-cert-rotation`` stays false, which would patch
  Secrets and the APIService): one certificate from a CA of our own, in KEDA's layout (``ca.crt``,
  ``tls.crt``, ``tls.key``), serves the adapter's HTTPS and both ends of the operator-adapter gRPC (mutual
  TLS; its SANs hold 127.0.0.1, the address the adapter dials);
- the APIService ``v1beta1.external.metrics.k8s.io`` reaches the adapter as the custom-metrics stand-in is
  reached (qmo.sandbox.custom_metrics): an ExternalName Service ``localhost`` and the adapter's port, with
  the certificate's CA as caBundle; kube-apiserver authenticates to the adapter with its front-proxy
  client certificate, which the adapter checks (it reads kube-system/extension-apiserver-authentication).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from qmo.sandbox import pki
from qmo.sandbox.cluster import die_with_parent
from qmo.sandbox.testing import SessionCluster
from qmo.sandbox.wait import StopWaiting, wait_for

NAMESPACE = "keda"
SERVICE_ACCOUNT = "keda-operator"
METRICS_SERVICE = "keda-metrics-apiserver"
EXTERNAL_METRICS_GROUP = "external.metrics.k8s.io"
APISERVICE = f"v1beta1.{EXTERNAL_METRICS_GROUP}"
# KEDA's manifests, relative to its config/: what its release YAML applies besides the two Deployments, the
# admission webhooks (not run here) and the Services in front of the pods (there are no pods).
INSTALL_FILES = (
    "general/namespace.yaml",
    "service_account/service_account.yaml",
    "rbac/role.yaml",
    "rbac/role_binding.yaml",
    "rbac/aggregate_cluster_roles.yaml",
    "metrics-server/role.yaml",
    "metrics-server/role_binding.yaml",
)
TOKEN_DURATION = "24h"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def crd_files(config_dir: Path) -> list[Path]:
    return sorted((config_dir / "crd" / "bases").glob("*.yaml"))


def crd_names(config_dir: Path) -> list[str]:
    """``<plural>.<group>`` of each CRD file (KEDA names them ``<group>_<plural>.yaml``)."""
    names = []
    for path in crd_files(config_dir):
        group, plural = path.stem.split("_", 1)
        names.append(f"{plural}.{group}")
    return names


def token_kubeconfig(*, server: str, ca_cert: Path, token: str, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sandbox",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_cert.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "keda", "context": {"cluster": "sandbox", "user": user}}],
        "current-context": "keda",
    }


def apiservice_manifests(*, port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """KEDA's APIService (config/metrics-server/api_service.yaml) with a port and caBundle, and the
    ExternalName Service that sends kube-apiserver's proxied requests to 127.0.0.1."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE},
            "spec": {"type": "ExternalName", "externalName": "localhost"},
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE},
            "spec": {
                "group": EXTERNAL_METRICS_GROUP,
                "version": "v1beta1",
                "service": {"namespace": NAMESPACE, "name": METRICS_SERVICE, "port": port},
                "caBundle": base64.b64encode(ca_bundle).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


class Keda:
    """KEDA installed in a control plane and running beside it; ``stop`` removes every trace.

    ``directory`` holds its certificates, kubeconfig and logs (``keda-operator.log``, ``keda-adapter.log``).
    The processes die with the thread that started them (PR_SET_PDEATHSIG), as the control plane's do.
    """

    def __init__(self, cluster: SessionCluster, keda_dir: Path, directory: Path) -> None:
        self.cluster = cluster
        self.keda_dir = keda_dir
        self.config_dir = keda_dir / "config"
        self.directory = directory
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports = {
            name: free_port()
            for name in ("operator-metrics", "operator-health", "operator-grpc", "adapter", "adapter-metrics")
        }

    def __enter__(self) -> Keda:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def cert_dir(self) -> Path:
        return self.directory / "certs"

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    def log(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def start(self, *, timeout: float = 120.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._install()
        self._write_credentials()
        env = dict(
            os.environ,
            KUBECONFIG=str(self.kubeconfig),
            WATCH_NAMESPACE="",  # all namespaces, as KEDA's default install
            POD_NAMESPACE=NAMESPACE,
            KEDA_CLUSTER_OBJECT_NAMESPACE=NAMESPACE,
        )
        custom_ca = self.directory / "custom-ca"  # --ca-dir: extra CAs for scalers (none)
        custom_ca.mkdir(exist_ok=True)
        self._spawn(
            "keda-operator",
            [
                f"--metrics-bind-address=127.0.0.1:{self.ports['operator-metrics']}",
                f"--health-probe-bind-address=127.0.0.1:{self.ports['operator-health']}",
                f"--metrics-service-bind-address=127.0.0.1:{self.ports['operator-grpc']}",
                "--leader-elect=false",
                "--enable-cert-rotation=false",
                f"--cert-dir={self.cert_dir}",
                f"--ca-dir={custom_ca}",
                "--zap-log-level=info",
                "--zap-encoder=console",
            ],
            env,
        )
        wait_for(
            lambda: self._serving("keda-operator", self.ports["operator-grpc"]),
            timeout=timeout,
            description="KEDA's operator to serve its gRPC metrics service",
        )
        self._spawn(
            "keda-adapter",
            [
                f"--secure-port={self.ports['adapter']}",
                "--bind-address=127.0.0.1",
                f"--port={self.ports['adapter-metrics']}",
                f"--cert-dir={self.cert_dir}",
                f"--tls-cert-file={self.cert_dir / 'tls.crt'}",
                f"--tls-private-key-file={self.cert_dir / 'tls.key'}",
                f"--client-ca-file={self.cert_dir / 'ca.crt'}",
                f"--lister-kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                f"--metrics-service-address=127.0.0.1:{self.ports['operator-grpc']}",
                "--zap-log-level=info",
                "--zap-encoder=console",
            ],
            env,
        )
        wait_for(
            lambda: self._serving("keda-adapter", self.ports["adapter"]),
            timeout=timeout,
            description="KEDA's metrics adapter to serve",
        )
        for manifest in apiservice_manifests(
            port=self.ports["adapter"], ca_bundle=(self.cert_dir / "ca.crt").read_bytes()
        ):
            self.cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(manifest))
        wait_for(self._available, timeout=timeout, description=f"the APIService {APISERVICE} to be Available")

    def stop(self, *, grace: float = 10.0) -> None:
        """Undo ``start``: ScaledObjects go while KEDA still runs (its finalizer on each needs it), then
        the APIService (an unavailable one breaks every client's discovery), the processes, what was
        installed."""
        kubectl = self.cluster.kubectl
        if self.processes and all(process.poll() is None for process in self.processes.values()):
            kubectl("delete", "scaledobjects.keda.sh", "--all", "-A", "--timeout=60s", check=False)
        kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found", check=False)
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.processes.clear()
        # Anything a dead KEDA left finalized would hold its CRD in Terminating: release it first.
        for resource in ("scaledobjects.keda.sh", "scaledjobs.keda.sh"):
            found = kubectl("get", resource, "-A", "-o", "json", check=False)
            if found.returncode != 0:
                continue
            for item in json.loads(found.stdout)["items"]:
                meta = item["metadata"]
                kubectl(
                    "patch", resource, meta["name"], "-n", meta["namespace"], "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}', check=False,
                )  # fmt: skip
        kubectl("delete", "crd", *crd_names(self.config_dir), "--ignore-not-found", check=False)
        kubectl(
            "delete", "--ignore-not-found", "--wait=false",
            *(f"-f={self.config_dir / path}" for path in reversed(INSTALL_FILES)), check=False,
        )  # fmt: skip

    def wait(self) -> str:
        """Block until one of KEDA's processes exits and return its name (a foreground run: Ctrl-C)."""
        while True:
            for name, process in self.processes.items():
                try:
                    process.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    continue
                return name

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _install(self) -> None:
        files = [*crd_files(self.config_dir), *(self.config_dir / path for path in INSTALL_FILES)]
        self.cluster.kubectl("apply", "--server-side", *(f"-f={path}" for path in files))
        self.cluster.kubectl(
            "wait", "--for=condition=Established", *(f"crd/{name}" for name in crd_names(self.config_dir)),
            "--timeout=60s",
        )  # fmt: skip

    def _write_credentials(self) -> None:
        """The ServiceAccount's token in a kubeconfig, and the serving/gRPC certificate."""
        token = self.cluster.kubectl(
            "create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, f"--duration={TOKEN_DURATION}"
        ).stdout.strip()
        config = token_kubeconfig(
            server=self.cluster.server, ca_cert=self.cluster.ca_cert, token=token, user=SERVICE_ACCOUNT
        )
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)
        self.cert_dir.mkdir(exist_ok=True)
        ca_cert, ca_key = self.cert_dir / "ca.crt", self.directory / "ca.key"
        pki.make_ca(ca_cert, ca_key, "qmo-sandbox-keda-ca")
        pki.issue(
            (ca_cert, ca_key),
            self.cert_dir / "tls.crt",
            self.cert_dir / "tls.key",
            f"/CN={METRICS_SERVICE}",
            [
                "keyUsage=critical,digitalSignature",
                # The operator's gRPC server requires a client certificate from the adapter: the same one.
                "extendedKeyUsage=serverAuth,clientAuth",
                f"subjectAltName=DNS:{METRICS_SERVICE}.{NAMESPACE}.svc,"
                f"DNS:keda-operator.{NAMESPACE}.svc,DNS:localhost,IP:127.0.0.1",
            ],
        )

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        with self.log(name).open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [str(self.keda_dir / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def _check_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise StopWaiting(f"{name} exited ({process.returncode}):\n{self.log_tail(name)}")

    def _serving(self, name: str, port: int) -> bool:
        self._check_running()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def _available(self) -> bool:
        self._check_running()
        found = self.cluster.kubectl("get", "apiservice", APISERVICE, "-o", "json", check=False)
        if found.returncode != 0:
            return False
        conditions = json.loads(found.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)
