"""The user's sandbox: one control plane under ``~/.cache/qmo/sandbox`` that outlives the command.

``up`` is idempotent (a healthy sandbox is reused, a half-dead one is torn down and started fresh),
``down`` ends the recorded processes and removes the state, and every command prints what a shell
needs to use it: the kubeconfig, and the cached bin dir holding the matching kubectl and helm.
"""

from __future__ import annotations

import contextlib
import fcntl
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from qmo.sandbox import build, nodes, versions
from qmo.sandbox.cluster import PROCESS_ORDER, ControlPlane
from qmo.sandbox.versions import CachePaths


class Sandbox:
    def __init__(
        self, paths: CachePaths, *, fleet: list[nodes.NodeGroup] | None = None, ephemeral: bool = False
    ) -> None:
        self.paths = paths
        self.fleet = fleet if fleet is not None else nodes.default_fleet()
        # The user's sandbox outlives the command; a test's dies with the test process.
        self.ephemeral = ephemeral

    @property
    def control_plane(self) -> ControlPlane:
        return ControlPlane(
            self.paths.sandbox_dir,
            bin_dir=self.paths.bin_dir,
            fleet=self.fleet,
            ephemeral=self.ephemeral,
            # Quantized weights outlive `down` (the next quantize Job of the same artifact verifies and
            # reuses them instead of quantizing again); a test's sandbox has a cache root of its own.
            volumes_dir=self.paths.sandbox_volumes_dir,
        )

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with open(self.paths.root / ".sandbox.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def env_lines(self) -> list[str]:
        return [
            f"export KUBECONFIG={shlex.quote(str(self.kubeconfig))}",
            f'export PATH={shlex.quote(str(self.paths.bin_dir))}:"$PATH"',
        ]

    def ensure_built(self) -> build.BuildResult:
        result = build.build(self.paths)
        print(build.describe(result, versions.versions_key()))
        return result

    def up(self, *, timeout: float = 120.0) -> tuple[ControlPlane, bool]:
        """Start the sandbox unless it already runs; return it, running (``state`` set), and whether it
        was started now."""
        self.ensure_built()
        with self._lock():
            plane = self.control_plane
            if plane.attach():
                return plane, False
            if plane.load_state() is not None:
                print("a previous sandbox is not healthy; removing it and starting fresh")
                plane.stop(remove=True)
                plane = self.control_plane
            plane.start(timeout=timeout)
            return plane, True

    # Commands: each prints for a human and returns an exit status.
    def build_command(self, *, keda: bool = False) -> int:
        if not keda:
            self.ensure_built()
            return 0
        result = build.build_keda(self.paths)
        print(build.describe(result, versions.keda_key()))
        return 0

    def up_command(self, *, timeout: float) -> int:
        started = time.monotonic()
        plane, fresh = self.up(timeout=timeout)
        state = plane.state
        if fresh and state is not None:
            print(
                f"sandbox ready in {time.monotonic() - started:.1f} s (control plane {state.ready_seconds:.1f} s)"
            )
        else:
            print("sandbox already running")
            wanted = ",".join(group.spec for group in self.fleet)
            if state is not None and state.fleet != wanted:
                print(f"note: it runs the fleet {state.fleet}; `qmo sandbox down` first to get {wanted}")
        print(f"kubeconfig: {plane.kubeconfig}")
        print("use it with:")
        for line in self.env_lines():
            print(f"  {line}")
        print("  kubectl get nodes -o wide")
        return 0

    def down_command(self, *, purge: bool = False) -> int:
        with self._lock():
            plane = self.control_plane
            stopped = plane.stop(remove=True)
            # What outlives `down`: the volumes (quantized weights) and the demo's models on the hub stand-in.
            kept = [
                d for d in (plane.volumes_dir, self.paths.sandbox_hub_dir) if d.is_dir() and any(d.iterdir())
            ]
            if purge:
                for directory in kept:
                    shutil.rmtree(directory, ignore_errors=True)
        print(f"sandbox stopped ({', '.join(stopped)})" if stopped else "no sandbox was running")
        if kept:
            where = ", ".join(str(directory) for directory in kept)
            print(
                f"removed: {where}"
                if purge
                else f"kept for the next demo (quantized weights, the tiny model): {where}; "
                "`qmo sandbox down --purge` removes them"
            )
        return 0

    def status_command(self) -> int:
        plane = self.control_plane
        state = plane.load_state()
        if state is None:
            print("sandbox: not running (start it with `qmo sandbox up`)")
            return 1
        alive = plane.running()
        for name in PROCESS_ORDER:
            pid = state.pids.get(name)
            status = "running" if alive.get(name) else "stopped"
            print(f"{name:<24} {status:<8} pid {pid}")
        healthy = plane.healthy()
        print(
            f"apiserver   https://127.0.0.1:{state.ports.apiserver} ({'ready' if healthy else 'NOT ready'})"
        )
        print(f"fleet       {state.fleet}")
        print(f"kubeconfig  {plane.kubeconfig}")
        print(f"binaries    {state.bin_dir}")
        return 0 if healthy else 1

    def kubeconfig_command(self) -> int:
        print(self.kubeconfig)
        return 0 if self.kubeconfig.exists() else 1

    def env_command(self) -> int:
        for line in self.env_lines():
            print(line)
        return 0
