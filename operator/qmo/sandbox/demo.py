"""``qmo sandbox demo``: the README's first command, as a list of steps that grows with the operator.

Each step is a function of a DemoContext with a title; adding a step (install the CRDs, run the operator,
apply a QuantizedModel, watch it reach Ready) means appending one function to DEMO_STEPS.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qmo.sandbox.local import Sandbox


@dataclass
class DemoContext:
    sandbox: Sandbox
    timeout: float
    kubeconfig: Path | None = None
    notes: list[str] = field(default_factory=list)

    def kubectl(self, *args: str) -> None:
        """Run kubectl against the sandbox, echoing the command as a user would type it."""
        print(f"$ kubectl {' '.join(args)}", flush=True)
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        subprocess.run([str(self.sandbox.paths.bin_dir / "kubectl"), *args], env=env, check=True)


@dataclass(frozen=True)
class DemoStep:
    title: str
    run: Callable[[DemoContext], None]


def bring_up(context: DemoContext) -> None:
    plane, fresh = context.sandbox.up(timeout=context.timeout)
    context.kubeconfig = plane.kubeconfig
    print("started a fresh sandbox" if fresh else "the sandbox was already running")


def show_versions(context: DemoContext) -> None:
    context.kubectl("version")


def show_nodes(context: DemoContext) -> None:
    context.kubectl("get", "nodes", "-o", "wide")


def show_gpus(context: DemoContext) -> None:
    columns = ",".join(
        (
            "NODE:.metadata.name",
            r"PRODUCT:.metadata.labels.nvidia\.com/gpu\.product",
            r"GPU-MEMORY-MIB:.metadata.labels.nvidia\.com/gpu\.memory",
            r"INSTANCE:.metadata.labels.node\.kubernetes\.io/instance-type",
            r"ALLOCATABLE-GPUS:.status.allocatable.nvidia\.com/gpu",
            "TAINTS:.spec.taints[*].key",
        )
    )
    context.kubectl("get", "nodes", "-o", f"custom-columns={columns}")


DEMO_STEPS: list[DemoStep] = [
    DemoStep("Build (or reuse) the pinned control plane and start the sandbox", bring_up),
    DemoStep("The API server is a real Kubernetes", show_versions),
    DemoStep("Fake nodes, managed by kwok", show_nodes),
    DemoStep(
        "Their GPUs, as the NVIDIA device plugin and GPU feature discovery would report them", show_gpus
    ),
]


def run_demo(sandbox: Sandbox, *, timeout: float = 120.0, steps: list[DemoStep] | None = None) -> int:
    context = DemoContext(sandbox=sandbox, timeout=timeout)
    chosen = DEMO_STEPS if steps is None else steps
    for number, step in enumerate(chosen, start=1):
        print(f"\n== {number}/{len(chosen)} {step.title}", flush=True)
        try:
            step.run(context)
        except subprocess.CalledProcessError as error:
            print(f"demo step failed: {error}", file=sys.stderr)
            return 1
    print("\nThe sandbox keeps running. Use it with:")
    for line in sandbox.env_lines():
        print(f"  {line}")
    print("Stop it with `qmo sandbox down`.")
    return 0
