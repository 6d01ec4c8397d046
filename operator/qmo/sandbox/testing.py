"""The control plane as the cluster test tier sees it: what the ``cluster`` fixture yields.

Kept free of pytest so the operator's own tests (and scripts) can type against it and reuse the helpers.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmo.sandbox.cluster import ControlPlane

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
