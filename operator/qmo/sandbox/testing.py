"""The control plane as the cluster test tier sees it: what the ``cluster`` fixture yields.

Kept free of pytest so the operator's own tests (and scripts) can type against it and reuse the helpers.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmo.sandbox import build, nodes, stages
from qmo.sandbox.cluster import ControlPlane
from qmo.sandbox.wait import wait_for

GPU_TOLERATION: dict[str, Any] = {
    "key": "nvidia.com/gpu",
    "operator": "Exists",
    "effect": "NoSchedule",
}


@dataclass(frozen=True)
class SessionCluster:
    """A running private control plane: its kubeconfig, the matching binaries, and its files."""

    kubeconfig: Path
    bin_dir: Path
    directory: Path
    server: str
    ca_cert: Path
    plane: ControlPlane

    @classmethod
    def of(cls, plane: ControlPlane, bin_dir: Path) -> SessionCluster:
        """The running control plane ``plane`` (started), seen through the binaries in ``bin_dir``."""
        assert plane.state is not None, "the control plane is not started"
        return cls(
            kubeconfig=plane.kubeconfig,
            bin_dir=bin_dir,
            directory=plane.directory,
            server=f"https://127.0.0.1:{plane.state.ports.apiserver}",
            ca_cert=plane.pki.ca_cert,
            plane=plane,
        )

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster and capture its output."""
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            env=env,
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (an operator, helm) that should talk to this cluster."""
        return dict(
            os.environ,
            KUBECONFIG=str(self.kubeconfig),
            PATH=f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        )


class Kube:
    """kubectl against a SessionCluster in one namespace, returning JSON (the cluster tests' ``k``)."""

    def __init__(self, cluster: SessionCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def apply(self, manifest: dict[str, Any], *, check: bool = True) -> str:
        result = self.cluster.kubectl(
            "apply", "-n", self.namespace, "-f", "-", input=json.dumps(manifest), check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl apply failed: {result.stderr}")
        return result.stderr if result.returncode else result.stdout

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.cluster.kubectl("get", kind, name, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def get_with_managed_fields(self, kind: str, name: str) -> dict[str, Any]:
        """The object with its managedFields (kubectl leaves them out unless asked)."""
        found = self.cluster.kubectl(
            "get", kind, name, "-n", self.namespace, "-o", "json", "--show-managed-fields"
        )
        return dict(json.loads(found.stdout))

    def list(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-n", self.namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        return list(json.loads(self.cluster.kubectl(*args).stdout)["items"])

    def delete(self, kind: str, name: str) -> None:
        self.cluster.kubectl("delete", kind, name, "-n", self.namespace, "--wait=false")

    def phase(self, name: str) -> str | None:
        phase = ((self.get("qm", name) or {}).get("status") or {}).get("phase")
        return str(phase) if phase is not None else None

    def snapshot(self) -> str:
        """What a person debugging a failed test would look at first: the namespace's objects and events."""
        lines = []
        for args in (
            ("get", "quantizedmodels,modelartifacts,jobs,pods,deployments,statefulsets", "-o", "wide"),
            (
                "get",
                "quantizedmodels",
                "-o",
                'jsonpath={range .items[*]}{.metadata.name}: {.status}{"\\n"}{end}',
            ),
            ("get", "events", "--sort-by=.lastTimestamp"),
        ):
            result = self.cluster.kubectl(*args, "-n", self.namespace, check=False)
            lines.append(f"$ kubectl {' '.join(args)}\n{result.stdout}{result.stderr}")
        return "\n".join(lines)

    def wait_phase(self, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            model = self.get("qm", name)
            return model if model and model.get("status", {}).get("phase") == phase else None

        model = wait_for(reached, timeout=timeout, description=f"QuantizedModel {name} to be {phase}")
        assert model is not None  # wait_for returns only a truthy result
        return model


def replica_owners(workload: dict[str, Any]) -> set[str]:
    """The field managers that own a workload's spec.replicas (read with Kube.get_with_managed_fields)."""
    assert "managedFields" in workload["metadata"], "read with --show-managed-fields"
    return {
        entry["manager"]
        for entry in workload["metadata"].get("managedFields") or []
        if "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {})
    }


@contextmanager
def private_cluster(
    name: str,
    fleet: str,
    *,
    timings: stages.StageTimings = stages.DEFAULT_TIMINGS,
    audit_writes: bool = False,
) -> Iterator[tuple[SessionCluster, Path]]:
    """A control plane of its own (benchmarks): started in a temporary folder, removed afterwards.

    Yields the cluster and a scratch folder beside it for logs.
    """
    bin_dir = build.build().bin_dir
    with tempfile.TemporaryDirectory(prefix=f"qmo-{name}-") as tmp:
        plane = ControlPlane(
            Path(tmp) / "plane",
            bin_dir=bin_dir,
            fleet=nodes.parse_fleet(fleet),
            timings=timings,
            ephemeral=True,
            context=f"qmo-{name}",
            audit_writes=audit_writes,
        )
        plane.start(timeout=300)
        try:
            yield SessionCluster.of(plane, bin_dir), Path(tmp)
        finally:
            plane.stop(remove=True)
