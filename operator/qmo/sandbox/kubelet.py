"""The sandbox's real node: a small kubelet that runs each container of the pods bound to it as a local process.

There is no container engine on the machines the sandbox targets, so a container is a process: the image
picks a local environment (qmo's worker image runs in the project's environment, vLLM's images in the
pinned CPU engine), volumes are host directories, and the pod's IP is a loopback address of its own. What
a kubelet user relies on is kept: phase and container states from the real process (exit code, and the
termination message or the log's last lines), restarts per restartPolicy with back-off, HTTP readiness,
liveness and startup probes, env from Secrets and ConfigMaps, PVC/emptyDir/Secret/ConfigMap volumes, and
processes (with all their children) that die with the pod.

Two liberties, because processes share the host's filesystem and network: a path under a mount is
rewritten to the volume's host directory in the command, args and env, and a bind-all address (0.0.0.0)
means the pod's IP. Run it as ``python -m qmo.sandbox.kubelet --kubeconfig PATH --state-dir DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
from aiohttp import web

from qmo.reconcile.kube import ApiError, Kube, Manifest, load_credentials
from qmo.sandbox.pods import (
    ContainerRun,
    Environments,
    PathMap,
    PodRun,
    loopback_ip,
    now,
    pod_status,
    termination_message,
)

log = logging.getLogger("qmo.sandbox.kubelet")

NODE_NAME = "sandbox-cpu"
NODE_LABEL = "qmo.dev/sandbox-node"
# Only pods that ask for this node land on it: the cpu GPUClass tolerates the taint.
TAINT = {"key": NODE_LABEL, "value": "process", "effect": "NoSchedule"}
TOLERATION = {"key": NODE_LABEL, "operator": "Equal", "value": "process", "effect": "NoSchedule"}
# What 2 cores and 24 GiB hold beside the control plane: one vLLM (it requests 1500m CPU) and one quantize
# Job (it requests 8 GiB) at a time; two vLLMs exceed the CPU, two Jobs the memory.
CAPACITY = {"cpu": "2", "memory": "14Gi", "pods": "16", "ephemeral-storage": "100Gi"}
# Restart back-off: kubelet's doubling from 10 s to 5 min, scaled down for a sandbox.
BACK_OFF_FIRST_S, BACK_OFF_MAX_S = 2.0, 60.0
POLL_S = 0.5
NODE_ENV_FILE = "env.json"  # NAME -> VALUE given to every container, read at each start (e.g. HF_ENDPOINT)
POD_MARKER = "QMO_SANDBOX_POD_UID"  # in every process's environment: how a restarted kubelet finds leftovers
PR_SET_PDEATHSIG = 1
PROVISIONED_ROOT = "/var/lib/qmo-sandbox"  # where the sandbox provisioner's hostPath volumes say they are


def _die_with_kubelet() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def default_volumes_dir(state_dir: Path) -> Path:
    """Where provisioned volumes' data live unless told otherwise: inside the node's state."""
    return state_dir / "volumes"


class ProcessKubelet:
    def __init__(
        self,
        kube: Kube,
        state_dir: Path,
        environments: Environments,
        extra_env: Mapping[str, str],
        *,
        volumes_dir: Path | None = None,
    ):
        self.kube = kube
        self.state_dir = state_dir
        # Where provisioned volumes' data live: the user's sandbox keeps it across `down` (a Retain volume).
        self.volumes_dir = volumes_dir or default_volumes_dir(state_dir)
        self.environments = environments
        self.extra_env = dict(extra_env)
        self.pods: dict[str, PodRun] = {}
        self.logs_port = 0  # the HTTPS port the API server proxies `kubectl logs` to (serve_logs)
        self._next_ip = 0

    # --- the node -------------------------------------------------------------------------------------
    async def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "labels": {
                    NODE_LABEL: "process",
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                },
            },
            "spec": {"taints": [TAINT]},
        }
        existing = await self.kube.get("Node", None, NODE_NAME)
        if existing is None:
            await self.kube.create(node)
        stamp = now()
        status = {
            "capacity": CAPACITY,
            "allocatable": CAPACITY,
            "addresses": [
                # No Hostname address: the API server would prefer it for kubectl logs, and no DNS knows it.
                {"type": "InternalIP", "address": "127.0.0.1"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.logs_port}},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "qmo sandbox process kubelet",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
            "nodeInfo": {
                "kubeletVersion": "qmo-process",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "process://local",
                "kernelVersion": os.uname().release,
                "osImage": "local processes",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        await self.kube.patch("Node", None, NODE_NAME, {"status": status}, subresource="status")

    def reap_leftovers(self) -> int:
        """Kill process groups a crashed kubelet left behind (found by the pod marker in their env)."""
        killed = 0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            if f"{POD_MARKER}=".encode() in environ and str(self.state_dir).encode() in environ:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(proc.name), signal.SIGKILL)
                    killed += 1
        return killed

    def node_env(self) -> dict[str, str]:
        try:
            return {
                str(k): str(v) for k, v in json.loads((self.state_dir / NODE_ENV_FILE).read_text()).items()
            }
        except (OSError, ValueError, AttributeError):
            return {}

    def host_path(self, path: str) -> Path:
        """The sandbox provisioner's volumes live under the volumes directory, not in /var/lib."""
        if path.startswith(PROVISIONED_ROOT + "/"):
            return self.volumes_dir / path[len(PROVISIONED_ROOT) + 1 :]
        return Path(path)

    # --- the loop ---------------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.register()
        for leftover in await self._bound_pods():
            # Their processes died with the previous kubelet: let their controllers make new ones.
            await self.kube.delete(
                "Pod", leftover["metadata"]["namespace"], leftover["metadata"]["name"], grace=0
            )
        while True:
            try:
                await self.sync(await self._bound_pods())
            except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                log.warning("sync failed: %s", error)
            await asyncio.sleep(POLL_S)

    async def _bound_pods(self) -> list[Manifest]:
        return await self.kube.list("Pod", None, field_selector=f"spec.nodeName={NODE_NAME}")

    async def sync(self, pods: list[Manifest]) -> None:
        seen = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            run = self.pods.get(uid)
            if pod["metadata"].get("deletionTimestamp"):
                if run is None:
                    await self._forget(pod)
                elif not run.stopping:
                    run.stopping = True
                    grace = min(int(pod["spec"].get("terminationGracePeriodSeconds", 30)), 30)
                    run.stopper = asyncio.ensure_future(self._stop_and_delete(run, grace))
                continue
            if run is None and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                self.pods[uid] = run = self._new_run(pod)
                run.task = asyncio.ensure_future(self._run_pod(run, pod))
        for uid, run in list(self.pods.items()):
            if uid not in seen and not run.stopping:  # deleted with grace 0 by someone else
                run.stopping = True
                await self._kill(run, grace=0)
                self.pods.pop(uid, None)

    def _new_run(self, pod: Manifest) -> PodRun:
        meta = pod["metadata"]
        self._next_ip += 1
        directory = self.state_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
        directory.mkdir(parents=True, exist_ok=True)
        return PodRun(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            directory=directory,
            ip=loopback_ip(self._next_ip),
            containers=[ContainerRun(c["name"], c) for c in pod["spec"].get("containers", [])],
        )

    async def _forget(self, pod: Manifest) -> None:
        meta = pod["metadata"]
        await self.kube.delete("Pod", meta["namespace"], meta["name"], uid=meta["uid"], grace=0)

    async def _stop_and_delete(self, run: PodRun, grace: int) -> None:
        await self._kill(run, grace=grace)
        shutil.rmtree(run.tmp, ignore_errors=True)
        with contextlib.suppress(ApiError):
            await self.kube.delete("Pod", run.namespace, run.name, uid=run.uid, grace=0)
        self.pods.pop(run.uid, None)

    async def _kill(self, run: PodRun, *, grace: int) -> None:
        if run.task is not None:
            run.task.cancel()
        processes = [
            c.process for c in run.containers if c.process is not None and c.process.returncode is None
        ]
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM if grace else signal.SIGKILL)
        deadline = time.monotonic() + grace
        for process in processes:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
            await process.wait()

    async def shutdown(self) -> None:
        for run in list(self.pods.values()):
            await self._kill(run, grace=2)

    # --- one pod ------------------------------------------------------------------------------------------
    async def _run_pod(self, run: PodRun, pod: Manifest) -> None:
        try:
            mounts = await self._volumes(run, pod)
            env = await self._env_base(run, pod)
        except (ApiError, ValueError, KeyError) as error:
            await self._fail_pod(run, pod, "CreateContainerConfigError", str(error))
            return
        run.started_at = now()
        await asyncio.gather(*(self._run_container(run, pod, c, mounts, env) for c in run.containers))
        codes = [int((c.terminated or {}).get("exitCode", 1)) for c in run.containers]
        await self._write_status(
            run, pod, phase="Succeeded" if all(code == 0 for code in codes) else "Failed"
        )

    async def _volumes(self, run: PodRun, pod: Manifest) -> dict[str, Path]:
        """Each volume as a host directory: container mount path -> host path."""
        hosts: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes", []):
            name = volume["name"]
            if "emptyDir" in volume:
                hosts[name] = run.directory / "volumes" / name
                hosts[name].mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in volume:
                claim = await self.kube.get(
                    "PersistentVolumeClaim", run.namespace, volume["persistentVolumeClaim"]["claimName"]
                )
                if claim is None or not claim["spec"].get("volumeName"):
                    raise ValueError(f"volume {name}: claim is missing or not bound")
                pv = await self.kube.get("PersistentVolume", None, claim["spec"]["volumeName"])
                path = ((pv or {}).get("spec") or {}).get("hostPath", {}).get("path")
                if not path:
                    raise ValueError(
                        f"volume {name}: PersistentVolume {claim['spec']['volumeName']} has no hostPath"
                    )
                hosts[name] = self.host_path(path)
                hosts[name].mkdir(parents=True, exist_ok=True)
            elif "secret" in volume or "configMap" in volume:
                kind, ref = (
                    ("Secret", volume["secret"]["secretName"])
                    if "secret" in volume
                    else (
                        "ConfigMap",
                        volume["configMap"]["name"],
                    )
                )
                hosts[name] = self._write_files(
                    run.directory / "volumes" / name, await self._data(kind, run.namespace, ref)
                )
            elif "projected" in volume:
                # The ServiceAccount token volume every pod gets: its CA and namespace; no token (qmo's own
                # pods turn automounting off, and nothing here talks to the API server from a pod).
                files: dict[str, bytes] = {"namespace": run.namespace.encode(), "token": b""}
                for source in volume["projected"].get("sources", []):
                    if "configMap" in source or "secret" in source:
                        kind = "ConfigMap" if "configMap" in source else "Secret"
                        ref = source.get("configMap") or source["secret"]
                        with contextlib.suppress(ValueError):
                            files.update(await self._data(kind, run.namespace, ref["name"]))
                hosts[name] = self._write_files(run.directory / "volumes" / name, files)
            else:
                raise ValueError(
                    f"volume {name}: only emptyDir, persistentVolumeClaim, secret and configMap run here"
                )
        mounts: dict[str, Path] = {}
        for container in pod["spec"].get("containers", []):
            for mount in container.get("volumeMounts", []):
                source = hosts[mount["name"]]
                mounts[mount["mountPath"]] = source / mount["subPath"] if mount.get("subPath") else source
            termination = container.get("terminationMessagePath", "/dev/termination-log")
            mounts[termination] = run.directory / f"{container['name']}.termination-log"
        return mounts

    async def _data(self, kind: str, namespace: str, name: str) -> dict[str, bytes]:
        body = await self.kube.get(kind, namespace, name)
        if body is None:
            raise ValueError(f"{kind} {name} not found")
        if kind == "Secret":
            return {k: base64.b64decode(v) for k, v in (body.get("data") or {}).items()}
        return {k: str(v).encode() for k, v in (body.get("data") or {}).items()}

    @staticmethod
    def _write_files(directory: Path, data: Mapping[str, bytes]) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        for key, value in data.items():
            (directory / key).write_bytes(value)
        return directory

    async def _env_base(self, run: PodRun, pod: Manifest) -> dict[str, dict[str, str]]:
        """Each container's env as the pod spec resolves it (values, Secret and ConfigMap keys, fields)."""
        fields = {
            "metadata.name": run.name,
            "metadata.namespace": run.namespace,
            "metadata.uid": run.uid,
            "spec.nodeName": NODE_NAME,
            "status.podIP": run.ip,
            "status.hostIP": "127.0.0.1",
        }
        resolved: dict[str, dict[str, str]] = {}
        for container in pod["spec"].get("containers", []):
            env: dict[str, str] = {}
            for item in container.get("env", []):
                source = item.get("valueFrom")
                if source is None:
                    env[item["name"]] = str(item.get("value", ""))
                elif "fieldRef" in source:
                    env[item["name"]] = fields.get(source["fieldRef"]["fieldPath"], "")
                else:
                    kind, ref = (
                        ("Secret", source["secretKeyRef"])
                        if "secretKeyRef" in source
                        else (
                            "ConfigMap",
                            source["configMapKeyRef"],
                        )
                    )
                    data = await self._data(kind, run.namespace, ref["name"])
                    if ref["key"] in data:
                        env[item["name"]] = data[ref["key"]].decode()
                    elif not ref.get("optional"):
                        raise ValueError(f"env {item['name']}: {kind} {ref['name']} has no key {ref['key']}")
            resolved[container["name"]] = env
        return resolved

    async def _run_container(
        self,
        run: PodRun,
        pod: Manifest,
        container: ContainerRun,
        mounts: Mapping[str, Path],
        env: Mapping[str, dict[str, str]],
    ) -> None:
        policy = pod["spec"].get("restartPolicy", "Always")
        paths = PathMap(mounts, run.ip)
        spec = container.spec
        argv = [paths(a) for a in [*spec.get("command", []), *spec.get("args", [])]]
        try:
            argv, path = self.environments.command(spec["image"], argv)
        except ValueError as error:
            container.terminated = {
                "exitCode": 128,
                "reason": "ImageNotRunnable",
                "message": str(error),
                "finishedAt": now(),
            }
            await self._write_status(run, pod)
            return
        process_env = {
            "PATH": path,
            "HOME": str(run.directory / "home"),
            # Short: vLLM puts ZeroMQ sockets there, whose paths may not exceed 107 bytes.
            "TMPDIR": str(run.tmp),
            **self.extra_env,
            **self.node_env(),
            **{k: paths(v) for k, v in env[container.name].items()},
            POD_MARKER: run.uid,
            "QMO_SANDBOX_STATE": str(self.state_dir),
        }
        (run.directory / "home").mkdir(exist_ok=True)
        termination_file = mounts[spec.get("terminationMessagePath", "/dev/termination-log")]
        log_path = run.directory / f"{container.name}.log"
        back_off = BACK_OFF_FIRST_S
        while True:
            termination_file.unlink(missing_ok=True)
            with log_path.open("ab") as output:
                container.process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    env=process_env,
                    cwd=paths(spec["workingDir"]) if spec.get("workingDir") else str(run.directory),
                    start_new_session=True,
                    preexec_fn=_die_with_kubelet,
                )
            container.started_at, container.waiting, container.terminated = now(), None, None
            container.ready = container.started = False
            await self._write_status(run, pod)
            probing = asyncio.ensure_future(self._probe(run, pod, container))
            try:
                code = await container.process.wait()
            finally:
                probing.cancel()
            # A container's end is its whole process group's (as a cgroup's): children it left behind
            # (vLLM's engine core outlives a SIGKILLed API server) go with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(container.process.pid, signal.SIGKILL)
            container.ready = False
            terminated = {
                "exitCode": code if code >= 0 else 128 - code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": container.started_at,
                "finishedAt": now(),
                "containerID": f"process://{container.process.pid}",
            }
            message = termination_message(
                termination_file, log_path, failed=code != 0, policy=spec.get("terminationMessagePolicy")
            )
            if message:
                terminated["message"] = message
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if not restart:
                container.terminated = terminated
                await self._write_status(run, pod)
                return
            container.last_terminated = terminated
            container.restarts += 1
            container.waiting = {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {back_off:g}s restarting failed container",
            }
            await self._write_status(run, pod)
            await asyncio.sleep(back_off)
            back_off = min(back_off * 2, BACK_OFF_MAX_S)

    async def _probe(self, run: PodRun, pod: Manifest, container: ContainerRun) -> None:
        """startup, then readiness and liveness, over HTTP to the pod IP, as kubelet runs them."""
        spec = container.spec
        startup, readiness, liveness = (
            spec.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")
        )
        async with aiohttp.ClientSession() as session:
            if startup is not None and not await self._until(session, run, spec, startup, want=True):
                self._signal(container, signal.SIGKILL)  # startup never succeeded: restart it
                return
            container.started = True
            if readiness is None:
                container.ready = True
                await self._write_status(run, pod)
            elif startup is None:
                await asyncio.sleep(float(readiness.get("initialDelaySeconds", 0)))
            failures = {"readiness": 0, "liveness": 0}
            period = min(
                float((p or {}).get("periodSeconds", 10))
                for p in (readiness, liveness, {"periodSeconds": 10})
            )
            while True:
                if readiness is not None:
                    ok = await self._check(session, run, spec, readiness)
                    failures["readiness"] = 0 if ok else failures["readiness"] + 1
                    ready = ok or (
                        container.ready and failures["readiness"] < int(readiness.get("failureThreshold", 3))
                    )
                    if ready != container.ready:
                        container.ready = ready
                        await self._write_status(run, pod)
                if liveness is not None:
                    ok = await self._check(session, run, spec, liveness)
                    failures["liveness"] = 0 if ok else failures["liveness"] + 1
                    if failures["liveness"] >= int(liveness.get("failureThreshold", 3)):
                        self._signal(container, signal.SIGKILL)
                        return
                await asyncio.sleep(period)

    async def _until(
        self, session: aiohttp.ClientSession, run: PodRun, spec: Manifest, probe: Manifest, *, want: bool
    ) -> bool:
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        for _ in range(int(probe.get("failureThreshold", 3))):
            if await self._check(session, run, spec, probe) == want:
                return True
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))
        return False

    @staticmethod
    async def _check(session: aiohttp.ClientSession, run: PodRun, spec: Manifest, probe: Manifest) -> bool:
        get = probe.get("httpGet")
        if get is None:
            return True  # exec/tcp probes are not run here: counted as passing
        port = get["port"]
        if isinstance(port, str) and not port.isdigit():
            port = next(p["containerPort"] for p in spec.get("ports", []) if p.get("name") == port)
        url = f"http://{run.ip}:{port}{get.get('path', '/')}"
        try:
            timeout = aiohttp.ClientTimeout(total=float(probe.get("timeoutSeconds", 1)) + 1)
            async with session.get(url, timeout=timeout) as response:
                return 200 <= response.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    @staticmethod
    def _signal(container: ContainerRun, signum: int) -> None:
        if container.process is not None and container.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(container.process.pid, signum)

    async def _fail_pod(self, run: PodRun, pod: Manifest, reason: str, message: str) -> None:
        for container in run.containers:
            container.terminated = {
                "exitCode": 128,
                "reason": reason,
                "message": message[:4096],
                "finishedAt": now(),
            }
        await self._write_status(run, pod, phase="Failed", message=message)

    async def _write_status(
        self, run: PodRun, pod: Manifest, *, phase: str = "Running", message: str = ""
    ) -> None:
        with contextlib.suppress(ApiError):  # the pod may be gone meanwhile
            await self.kube.patch(
                "Pod",
                run.namespace,
                run.name,
                pod_status(run, phase=phase, message=message),
                subresource="status",
            )


def engine_python_or_none() -> Path | None:
    from qmo.engine.server import EngineError, engine_python

    try:
        return engine_python()
    except EngineError:
        return None


async def serve_logs(kubelet: ProcessKubelet, cert: str, key: str) -> web.AppRunner:
    """kubelet's ``/containerLogs/{namespace}/{pod}/{container}``, which ``kubectl logs`` reaches through the
    API server (it does not verify kubelet certificates here: no --kubelet-certificate-authority)."""

    async def container_logs(request: web.Request) -> web.StreamResponse:
        info = request.match_info
        runs = sorted(
            (kubelet.state_dir / "pods").glob(f"{info['namespace']}_{info['pod']}_*"),
            key=lambda path: path.stat().st_mtime,
        )
        path = runs[-1] / f"{info['container']}.log" if runs else None
        if path is None or not path.is_file():
            raise web.HTTPNotFound(text=f"no logs of container {info['container']} in pod {info['pod']}")
        text = path.read_bytes()
        if request.query.get("tailLines", "").isdigit():
            text = b"".join(text.splitlines(keepends=True)[-int(request.query["tailLines"]) :])
        if request.query.get("limitBytes", "").isdigit():
            text = text[: int(request.query["limitBytes"])]
        return web.Response(body=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    kubelet.logs_port = int(runner.addresses[0][1])
    return runner


async def _main(args: argparse.Namespace) -> None:
    kube = Kube(load_credentials(args.kubeconfig))
    environments = Environments(worker_bin=Path(sys.executable).parent, engine_python=engine_python_or_none())
    extra_env = dict(item.split("=", 1) for item in args.env)
    kubelet = ProcessKubelet(
        kube,
        Path(args.state_dir).resolve(),
        environments,
        extra_env,
        volumes_dir=Path(args.volumes_dir).resolve() if args.volumes_dir else None,
    )
    logs = await serve_logs(kubelet, args.tls_cert, args.tls_key) if args.tls_cert else None
    reaped = kubelet.reap_leftovers()
    if reaped:
        log.info("killed %d process groups a previous kubelet left", reaped)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    running = asyncio.ensure_future(kubelet.run())
    await stop.wait()
    running.cancel()
    await kubelet.shutdown()
    if logs is not None:
        await logs.cleanup()
    await kube.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m qmo.sandbox.kubelet", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True, help="pod directories, logs and volumes live here")
    parser.add_argument(
        "--volumes-dir", help="provisioned volumes' data instead (default: STATE_DIR/volumes)"
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE given to every container")
    parser.add_argument("--tls-cert", help="serving certificate of the logs endpoint (kubectl logs)")
    parser.add_argument("--tls-key", help="its key")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
