"""Run a control plane as local processes: etcd, kube-apiserver, controller-manager, scheduler, kwok.

Everything listens on 127.0.0.1 only, on free ports picked at start, so the user's sandbox and any number
of test sessions coexist. Each process runs in its own process group and is recorded in ``state.json``;
``stop`` (or ``qmo sandbox down`` from another process) ends exactly those groups. An *ephemeral* control
plane (the test fixture's) also asks the kernel to kill its processes when the Python process that started
them dies, so a killed test run leaves no orphans.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qmo.sandbox import kubelet, nodes, pki, stages
from qmo.sandbox.wait import StopWaiting, WaitTimeout, wait_for

# Controllers the sandbox needs: Jobs and garbage collection for the operator, namespace and service-account
# housekeeping for a usable cluster, Deployments/ReplicaSets/PDBs for serving. Node lifecycle stays off:
# kwok's nodes have no kubelet heartbeats worth judging.
CONTROLLERS = (
    "job-controller",
    "cronjob-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "disruption-controller",
    "endpointslice-controller",
    "ttl-after-finished-controller",
    "horizontal-pod-autoscaler-controller",
    "resourcequota-controller",
    "pod-garbage-collector-controller",
    "persistentvolume-binder-controller",
    "persistentvolumeclaim-protection-controller",
    "persistentvolume-protection-controller",
)
ADMISSION_PLUGINS = (
    "NamespaceLifecycle",
    "LimitRanger",
    "ServiceAccount",
    "PodSecurity",
    "NodeRestriction",
    "Priority",
    "DefaultTolerationSeconds",
    "DefaultStorageClass",
    "StorageObjectInUseProtection",
    "ResourceQuota",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionWebhook",
)
# TaintNodesByCondition puts node.kubernetes.io/not-ready on every new node and leaves its removal to the
# node-lifecycle controller, which the sandbox does not run (see CONTROLLERS).
DISABLED_ADMISSION_PLUGINS = ("TaintNodesByCondition",)
PROCESS_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubelet")
# The real node's kubelet is qmo's own (qmo.sandbox.kubelet), run by this Python, not a binary in bin_dir.
KUBELET_MODULE = "qmo.sandbox.kubelet"
STATE_FILE = "state.json"
# Every write once it completed: who, verb, object, subresource, and for qmo's own kinds the request body
# (which field a write changed). Reads are not logged.
AUDIT_WRITES_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Request
    verbs: [patch, update]
    resources: [{group: qmo.dev}]
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""
PR_SET_PDEATHSIG = 1


class ControlPlaneError(StopWaiting):
    """The control plane failed to start; the message carries the tail of the failing component's log."""


@dataclass
class Ports:
    etcd: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    @classmethod
    def free(cls) -> Ports:
        # Hold all sockets open while choosing so the five ports are distinct.
        sockets = []
        try:
            for _ in range(5):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("127.0.0.1", 0))
                sockets.append(sock)
            return cls(*(sock.getsockname()[1] for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()


@dataclass
class State:
    """What ``state.json`` records about a running control plane."""

    bin_dir: str
    ports: Ports
    pids: dict[str, int] = field(default_factory=dict)
    fleet: str = ""
    started_at: float = 0.0
    ready_seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> State:
        raw = json.loads(text)
        raw["ports"] = Ports(**raw["ports"])
        return cls(**raw)


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the thread that spawned it exits (Linux only).

    The kernel ties the signal to the spawning *thread*, so ephemeral control planes must be started from a
    thread that lives as long as they should (the main thread, as pytest fixtures are).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def process_alive(pid: int, bin_dir: str) -> bool:
    """True if ``pid`` runs and is one of ours: a recycled pid running something else is not."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    ours = cmdline.startswith(bin_dir.encode()) or f"\0-m\0{KUBELET_MODULE}\0".encode() in cmdline
    return state != "Z" and ours


def kubeconfig(
    *, server: str, ca: Path, cert: Path, key: Path, user: str, context: str = "qmo-sandbox"
) -> dict[str, Any]:
    """A self-contained kubeconfig (certificates embedded), so it can be copied anywhere."""

    def embed(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": context, "cluster": {"server": server, "certificate-authority-data": embed(ca)}}
        ],
        "users": [
            {"name": user, "user": {"client-certificate-data": embed(cert), "client-key-data": embed(key)}}
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user}}],
        "current-context": context,
    }


class AdminApi:
    """A tiny HTTPS client with the admin certificate: enough to wait for readiness and create nodes.

    The sandbox itself does not need the ``kubernetes`` client library (slow to import, and its
    configuration is global); tests use it through the fixtures.
    """

    def __init__(self, port: int, paths: pki.Pki) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(paths.ca_cert))
        self.context.load_cert_chain(str(paths.client_cert(pki.ADMIN)), str(paths.client_key(pki.ADMIN)))

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=10)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, data.decode(errors="replace")


def _https_ok(port: int, path: str = "/healthz") -> bool:
    """Health of a component's self-signed endpoint (controller-manager, scheduler): only the status."""
    # These endpoints serve certificates the components generate themselves; only the status matters.
    context = ssl._create_unverified_context()
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    finally:
        connection.close()


def _http_json(port: int, path: str) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


class ControlPlane:
    """One control plane with its own directory: pki/, etcd/, logs/, kubeconfig, state.json."""

    def __init__(
        self,
        directory: Path,
        *,
        bin_dir: Path,
        fleet: list[nodes.NodeGroup] | None = None,
        timings: stages.StageTimings = stages.DEFAULT_TIMINGS,
        ephemeral: bool = False,
        context: str = "qmo-sandbox",
        audit_writes: bool = False,
        hpa_sync_seconds: int = 15,
        volumes_dir: Path | None = None,
    ) -> None:
        self.directory = directory
        # Provisioned volumes' data; outside ``directory`` it outlives stop(remove=True) (a Retain volume).
        self.volumes_dir = (
            volumes_dir if volumes_dir is not None else kubelet.default_volumes_dir(self.node_dir)
        )
        self.bin_dir = bin_dir
        self.fleet = fleet if fleet is not None else nodes.default_fleet()
        self.timings = timings
        self.ephemeral = ephemeral
        self.context = context
        # An audit log of every write (who, what, which subresource): benchmarks use it to say where
        # steady-state writes come from.
        self.audit_writes = audit_writes
        # How often the HPA controller re-reads metrics and rescales (kube-controller-manager's default: 15).
        self.hpa_sync_seconds = hpa_sync_seconds
        self.pki = pki.Pki(directory / "pki")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.state: State | None = None

    # Paths a user needs.
    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.directory / "logs"

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.jsonl"

    @property
    def state_file(self) -> Path:
        return self.directory / STATE_FILE

    def load_state(self) -> State | None:
        try:
            return State.from_json(self.state_file.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def running(self) -> dict[str, bool]:
        """Which recorded processes are alive (empty when nothing was started here)."""
        state = self.state or self.load_state()
        if state is None:
            return {}
        return {name: process_alive(pid, state.bin_dir) for name, pid in state.pids.items()}

    def healthy(self) -> bool:
        state = self.state or self.load_state()
        alive = self.running()
        if state is None or not alive or not all(alive.values()) or set(alive) != set(PROCESS_ORDER):
            return False
        try:
            status, _ = AdminApi(state.ports.apiserver, self.pki).request("GET", "/readyz")
        except OSError:
            return False
        return status == 200

    def attach(self) -> bool:
        """Adopt the healthy control plane ``state.json`` records, as if this process had started it.

        ``qmo sandbox up``, ``demo`` and a second ``demo`` are separate processes: the one that finds the
        sandbox running needs its ports (``state``) just as the one that started it. False, with nothing
        adopted, when there is no record or what it records is not healthy.
        """
        self.state = self.load_state()
        if self.state is not None and self.healthy():
            return True
        self.state = None
        return False

    # Lifecycle.
    def start(self, *, timeout: float = 120.0, attempts: int = 3) -> float:
        """Start everything and wait until pods can be scheduled and run; return seconds to ready.

        Free ports are picked, then released for the components to bind, so another process may take one
        in between; such a start is retried on fresh ports (and a fresh etcd).
        """
        started = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if not self.pki.complete():
            pki.generate(self.pki.directory)
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(timeout)
                break
            except ControlPlaneError as error:
                if "address already in use" not in str(error) or attempt == attempts:
                    raise
                shutil.rmtree(self.directory / "etcd", ignore_errors=True)
        assert self.state is not None
        self.state.ready_seconds = round(time.monotonic() - started, 2)
        self.state_file.write_text(self.state.to_json())
        return self.state.ready_seconds

    def _start_once(self, timeout: float) -> None:
        ports = Ports.free()
        self.state = State(
            bin_dir=str(self.bin_dir),
            ports=ports,
            fleet=",".join(group.spec for group in self.fleet),
            started_at=time.time(),
        )
        self._write_configs(ports)
        try:
            self._spawn("etcd", self._etcd_args(ports))
            self._wait("etcd", lambda: _http_json(ports.etcd, "/health").get("health") == "true", timeout)
            self._spawn("kube-apiserver", self._apiserver_args(ports))
            api = AdminApi(ports.apiserver, self.pki)
            self._wait("kube-apiserver", lambda: api.request("GET", "/readyz")[0] == 200, timeout)
            self._spawn("kube-controller-manager", self._controller_manager_args(ports))
            self._spawn("kube-scheduler", self._scheduler_args(ports))
            self._spawn("kwok", self._kwok_args())
            self._create_nodes(api)
            self._spawn("kubelet", self._kubelet_args())
            self._wait("kube-scheduler", lambda: _https_ok(ports.scheduler), timeout)
            self._wait("kube-controller-manager", lambda: _https_ok(ports.controller_manager), timeout)
            expected = sum(group.nodes for group in self.fleet)
            self._wait("kwok", lambda: self._ready_nodes(api) == expected, timeout, what="fake nodes Ready")
            self._wait(
                "kubelet",
                lambda: api.request("GET", f"/api/v1/nodes/{kubelet.NODE_NAME}")[0] == 200,
                timeout,
                what="the real node",
            )
            self._wait(
                "kube-controller-manager",
                lambda: api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
                timeout,
                what="the default ServiceAccount",
            )
        except BaseException:
            self.stop(remove=False)
            raise

    def restart_apiserver(self, *, down_seconds: float = 0.0, timeout: float = 120.0) -> float:
        """SIGKILL kube-apiserver, keep it down ``down_seconds``, start it on the same port; seconds down.

        etcd keeps the data, so this is the fault a control-plane upgrade or an OOM kill gives clients:
        refused connections, broken watches, then the same objects at newer resourceVersions.
        """
        assert self.state is not None, "the control plane is not running"
        ports = self.state.ports
        process = self.processes.pop("kube-apiserver")
        killed = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        if down_seconds > 0:
            time.sleep(down_seconds)  # the outage itself: its length is the point
        self._spawn("kube-apiserver", self._apiserver_args(ports))
        api = AdminApi(ports.apiserver, self.pki)
        self._wait("kube-apiserver", lambda: api.request("GET", "/readyz")[0] == 200, timeout)
        return time.monotonic() - killed

    def stop(self, *, remove: bool = False, grace: float = 5.0) -> list[str]:
        """Terminate every recorded process group (SIGTERM, then SIGKILL); return the names stopped."""
        state = self.state or self.load_state()
        stopped: list[str] = []
        if state is not None:
            targets = {
                name: pid
                for name, pid in state.pids.items()
                if name in self.processes or process_alive(pid, state.bin_dir)
            }
            for name in reversed(PROCESS_ORDER):
                if name in targets:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(targets[name], signal.SIGTERM)
            deadline = time.monotonic() + grace
            for name, pid in targets.items():
                if not self._reap(name, pid, state.bin_dir, deadline):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                    self._reap(name, pid, state.bin_dir, time.monotonic() + grace)
                stopped.append(name)
        self.processes.clear()
        self.state = None
        self.state_file.unlink(missing_ok=True)
        if remove and self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)
        return stopped

    def _reap(self, name: str, pid: int, bin_dir: str, deadline: float) -> bool:
        process = self.processes.get(name)
        while time.monotonic() < deadline:
            if process is not None:
                if process.poll() is not None:
                    return True
            elif not process_alive(pid, bin_dir):
                return True
            time.sleep(0.05)
        return False

    # Internals.
    def _spawn(self, name: str, args: list[str]) -> None:
        assert self.state is not None
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it from here
        executable = sys.executable if args[0] == "-m" else str(self.bin_dir / args[0])
        try:
            process = subprocess.Popen(
                [executable, *(args if args[0] == "-m" else args[1:])],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
                preexec_fn=die_with_parent if self.ephemeral else None,
            )
        finally:
            log.close()
        self.processes[name] = process
        self.state.pids[name] = process.pid
        self.state_file.write_text(self.state.to_json())

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float, *, what: str | None = None) -> None:
        def check() -> bool:
            for component, process in self.processes.items():
                if process.poll() is not None:
                    raise ControlPlaneError(
                        f"{component} exited with {process.returncode} while waiting for {what or name}\n"
                        + self.log_tail(component)
                    )
            return ready()

        try:
            wait_for(check, timeout=timeout, interval=0.1, description=what or f"{name} to be ready")
        except WaitTimeout as error:
            raise ControlPlaneError(f"{error}\n{self.log_tail(name)}") from None

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.logs / f"{name}.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no log at {path})"
        return f"--- last lines of {path}:\n" + "\n".join(tail)

    def _ready_nodes(self, api: AdminApi) -> int:
        status, body = api.request("GET", f"/api/v1/nodes?labelSelector={nodes.GPU_CLASS_LABEL}")
        if status != 200:
            return 0
        count = 0
        for node in body.get("items", []):
            conditions = node.get("status", {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                count += 1
        return count

    def _create_nodes(self, api: AdminApi) -> None:
        for manifest in nodes.fleet_manifests(self.fleet):
            status, body = api.request("POST", "/api/v1/nodes", manifest)
            if status not in (201, 409):
                raise ControlPlaneError(
                    f"creating node {manifest['metadata']['name']} failed: {status} {body}"
                )

    def _component_kubeconfig(self, identity: pki.Identity, ports: Ports) -> Path:
        path = self.pki.directory / f"{identity.file_stem}.kubeconfig"
        config = kubeconfig(
            server=f"https://127.0.0.1:{ports.apiserver}",
            ca=self.pki.ca_cert,
            cert=self.pki.client_cert(identity),
            key=self.pki.client_key(identity),
            user=identity.user,
            context=self.context,
        )
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def _write_configs(self, ports: Ports) -> None:
        for identity in pki.CLIENT_IDENTITIES:
            self._component_kubeconfig(identity, ports)
        admin = self.pki.directory / f"{pki.ADMIN.file_stem}.kubeconfig"
        self.kubeconfig.write_text(admin.read_text())
        self.kubeconfig.chmod(0o600)
        (self.directory / "kwok.yaml").write_text(stages.kwok_config_yaml(self.timings))
        if self.audit_writes:
            (self.directory / "audit-policy.yaml").write_text(AUDIT_WRITES_POLICY)

    @property
    def node_dir(self) -> Path:
        """The real node's pods (their directories and logs) and volumes."""
        return self.directory / "node"

    def set_node_env(self, env: dict[str, str]) -> None:
        """Environment every container on the real node gets from now on (e.g. HF_ENDPOINT)."""
        self.node_dir.mkdir(parents=True, exist_ok=True)
        (self.node_dir / kubelet.NODE_ENV_FILE).write_text(json.dumps(env))

    def _kubelet_args(self) -> list[str]:
        return [
            "-m",
            KUBELET_MODULE,
            "--kubeconfig",
            str(self.kubeconfig),
            "--state-dir",
            str(self.node_dir),
            "--volumes-dir",
            str(self.volumes_dir),
            # The API server's own serving pair serves kubectl logs (it checks no kubelet certificate).
            "--tls-cert",
            str(self.pki.serving_cert),
            "--tls-key",
            str(self.pki.serving_key),
        ]

    def _etcd_args(self, ports: Ports) -> list[str]:
        client, peer = f"http://127.0.0.1:{ports.etcd}", f"http://127.0.0.1:{ports.etcd_peer}"
        return [
            "etcd",
            "--name=sandbox",
            f"--data-dir={self.directory / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=sandbox={peer}",
            "--initial-cluster-state=new",
            # A sandbox holds nothing worth an fsync; skipping it makes every write fast.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_args(self, ports: Ports) -> list[str]:
        p = self.pki
        return [
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{ports.etcd}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The `kubernetes` Service's endpoint may not be a loopback address, and nothing in-cluster
            # needs it: kwok's pods do not run.
            "--endpoint-reconciler-type=none",
            f"--secure-port={ports.apiserver}",
            f"--tls-cert-file={p.serving_cert}",
            f"--tls-private-key-file={p.serving_key}",
            f"--client-ca-file={p.ca_cert}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=" + ",".join(ADMISSION_PLUGINS),
            "--disable-admission-plugins=" + ",".join(DISABLED_ADMISSION_PLUGINS),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.service_account_pub}",
            f"--service-account-signing-key-file={p.service_account_key}",
            f"--service-cluster-ip-range={pki.SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
            "--enable-priority-and-fairness=false",
            f"--cert-dir={self.directory / 'apiserver'}",
            # The aggregation layer, for APIServices such as custom.metrics.k8s.io (the HPA's Pods metrics).
            # Routing stays on the Service (no --enable-aggregator-routing): an endpoint may not be a
            # loopback address, while an ExternalName Service naming localhost reaches a server on
            # 127.0.0.1 (qmo.sandbox.custom_metrics).
            f"--requestheader-client-ca-file={p.front_proxy_ca_cert}",
            f"--requestheader-allowed-names={pki.FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p.front_proxy_client_cert}",
            f"--proxy-client-key-file={p.front_proxy_client_key}",
            *(
                (
                    f"--audit-policy-file={self.directory / 'audit-policy.yaml'}",
                    f"--audit-log-path={self.audit_log}",
                    "--audit-log-format=json",
                    "--audit-log-mode=blocking",
                )
                if self.audit_writes
                else ()
            ),
        ]

    def _controller_manager_args(self, ports: Ports) -> list[str]:
        config = self.pki.directory / f"{pki.CONTROLLER_MANAGER.file_stem}.kubeconfig"
        return [
            "kube-controller-manager",
            f"--kubeconfig={config}",
            f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.controller_manager}",
            f"--cert-dir={self.directory / 'kube-controller-manager'}",
            "--leader-elect=false",
            "--controllers=" + ",".join(CONTROLLERS),
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            f"--service-cluster-ip-range={pki.SERVICE_CLUSTER_IP_RANGE}",
            f"--horizontal-pod-autoscaler-sync-period={self.hpa_sync_seconds}s",
            "--profiling=false",
        ]

    def _scheduler_args(self, ports: Ports) -> list[str]:
        config = self.pki.directory / f"{pki.SCHEDULER.file_stem}.kubeconfig"
        return [
            "kube-scheduler",
            f"--kubeconfig={config}",
            f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.scheduler}",
            f"--cert-dir={self.directory / 'kube-scheduler'}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _kwok_args(self) -> list[str]:
        return [
            "kwok",
            f"--kubeconfig={self.pki.directory / (pki.KWOK.file_stem + '.kubeconfig')}",
            f"--config={self.directory / 'kwok.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={nodes.KWOK_ANNOTATION}={nodes.KWOK_ANNOTATION_VALUE}",
            # Heartbeats come from the node-heartbeat stage; leases would gate pod handling on lease ownership.
            "--node-lease-duration-seconds=0",
            "--cidr=10.244.0.0/16",
            "--node-ip=10.0.0.1",
        ]
