"""``qmo sandbox demo``: the README's first command, as a list of steps that grows with the operator.

Each step is a function of a DemoContext with a title; adding a step (install the CRDs, run the operator,
apply a QuantizedModel, watch it reach Ready) means appending one function to DEMO_STEPS.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qmo.sandbox import kubelet
from qmo.sandbox.ask import AskError, ask
from qmo.sandbox.cluster import ControlPlane
from qmo.sandbox.harness import (
    EXAMPLES,
    HubStandIn,
    OperatorProcess,
    example_config,
    install_crds,
    provisioner,
)
from qmo.sandbox.local import Sandbox
from qmo.sandbox.testing import SessionCluster
from qmo.sandbox.tiny_model import build_in_subprocess
from qmo.sandbox.wait import WaitTimeout, wait_for


@dataclass
class DemoContext:
    sandbox: Sandbox
    timeout: float
    kubeconfig: Path | None = None
    notes: list[str] = field(default_factory=list)
    # Processes the demo runs beside the sandbox (hub stand-in, provisioner, operator); closed at the end.
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    plane: ControlPlane | None = None
    hub: HubStandIn | None = None

    def session(self) -> SessionCluster:
        assert self.plane is not None
        return SessionCluster.of(self.plane, self.sandbox.paths.bin_dir)

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
    context.plane = plane
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


DEMO_MODEL = "llama-3-1-8b-awq"
DEMO_SHA = "0e9e39f249a16976918f6564b8830bc894c89659"


def install_qmo(context: DemoContext) -> None:
    install_crds(context.session())
    context.kubectl("apply", "-f", str(EXAMPLES / "gpuclasses.yaml"))
    context.kubectl("get", "gpuclasses")


def start_operator(context: DemoContext) -> None:
    """The operator as a local process, with the two things a laptop sandbox lacks: a volume provisioner
    and the Hugging Face hub (a stand-in serving the model's public config.json)."""
    session = context.session()
    directory = context.sandbox.paths.root / "sandbox" / "demo"
    directory.mkdir(parents=True, exist_ok=True)
    hub = context.resources.enter_context(HubStandIn())
    hub.add("meta-llama/Llama-3.1-8B-Instruct", example_config(), sha=DEMO_SHA)
    context.hub = hub
    context.resources.enter_context(provisioner(session, directory))
    operator = OperatorProcess(session, hub.url, directory, resync_seconds=10)
    operator.start()
    context.resources.callback(operator.stop)
    print(f"operator running (log: {operator.log_path}); Hugging Face stand-in at {hub.url}")


def apply_model(context: DemoContext) -> None:
    session = context.session()
    namespace = session.kubectl("create", "namespace", "demo", "--dry-run=client", "-o", "yaml").stdout
    session.kubectl("apply", "-f", "-", input=namespace)
    print((EXAMPLES / "quantizedmodel.yaml").read_text())
    context.kubectl("apply", "-f", str(EXAMPLES / "quantizedmodel.yaml"))


def watch_phase(context: DemoContext, name: str, *, timeout: float) -> None:
    """Print each phase the QuantizedModel passes through until it is Ready."""
    session = context.session()
    seen: list[str] = []

    def ready() -> bool:
        result = session.kubectl(
            "get", "qm", name, "-n", "demo", "-o", "jsonpath={.status.phase}", check=False
        )
        phase = result.stdout.strip()
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
            print(f"  phase: {phase}", flush=True)
        if phase == "Failed" or (phase == "Degraded" and "Ready" not in seen):
            # Failed, or held before it ever served (a quality gate, a start that fails): neither ends
            # without a change to the spec.
            jsonpath = "jsonpath={.status.message}"
            message = session.kubectl("get", "qm", name, "-n", "demo", "-o", jsonpath).stdout
            raise AssertionError(f"QuantizedModel {name} is {phase}: {message}")
        return phase == "Ready"

    wait_for(ready, timeout=timeout, interval=0.5, description=f"QuantizedModel {name} to be Ready")


def watch_until_ready(context: DemoContext) -> None:
    watch_phase(context, DEMO_MODEL, timeout=context.timeout)
    context.kubectl("get", "qm,ma", "-n", "demo")


def show_what_it_made(context: DemoContext) -> None:
    context.kubectl("get", "jobs,deployments,services,pdb,pvc", "-n", "demo")
    context.kubectl("get", "pods", "-n", "demo", "-o", "wide")
    session = context.session()
    model = json.loads(session.kubectl("get", "qm", DEMO_MODEL, "-n", "demo", "-o", "json").stdout)
    plan = model["status"]["plan"]
    print(
        f"plan: {plan['tensorParallelSize']} x {plan['gpuClass']} per replica, weights {plan['weightsGibPerGpu']} GiB,"
        f" KV cache {plan['kvCacheGibPerGpu']} GiB = {plan['kvCacheTokens']} tokens"
        f" ({plan['maxConcurrency']} sequences of {plan['maxModelLen']}), overhead {plan['overheadGibPerGpu']} GiB"
    )
    print("vLLM runs with: " + " ".join(plan["vllmArgs"]))
    print(f"endpoint: {model['status']['endpoint']}")


TINY_MODEL = "tiny-llama"
TINY_REPO = "qmo-sandbox/tiny-llama"
TINY_SHA = "5e1f0a7c3b9d2e4f6a8c0b1d3e5f7a9c2b4d6e8f"
TINY_PROMPT = "the quick brown fox"
# Quantizing on CPU, then vLLM's CPU engine loading and warming up, on 2 cores.
TINY_TIMEOUT_S = 600.0


def tiny_model_on_the_real_node(context: DemoContext) -> None:
    """A tiny random Llama (made here once, offered by the hub stand-in) on the cpu class: the quantize Job
    and vLLM really run, as processes of the sandbox's real node."""
    assert context.plane is not None and context.hub is not None
    # Beside the volumes, not in the sandbox's state: like a model on the hub it outlives `down`, so the
    # artifact kept on the cache volume stays the quantization of exactly these weights.
    source = context.sandbox.paths.sandbox_hub_dir / TINY_REPO
    if not (source / "config.json").is_file():
        print(f"making a tiny random Llama in {source}", flush=True)
        build_in_subprocess(source)
    context.hub.add_directory(TINY_REPO, source, sha=TINY_SHA)
    context.plane.set_node_env({"HF_ENDPOINT": context.hub.url})
    context.kubectl("get", "node", kubelet.NODE_NAME, "-o", "wide")
    print((EXAMPLES / "tiny-llama.yaml").read_text())
    context.kubectl("apply", "-f", str(EXAMPLES / "tiny-llama.yaml"))
    watch_phase(context, TINY_MODEL, timeout=max(context.timeout, TINY_TIMEOUT_S))
    context.kubectl("get", "qm,ma,pods", "-n", "demo", "-o", "wide")


def ask_the_model(context: DemoContext) -> None:
    answer = ask(context.session(), TINY_MODEL, TINY_PROMPT, namespace="demo")
    print(f"$ qmo sandbox ask {TINY_MODEL} {TINY_PROMPT!r} -n demo   (pod {answer.pod}, {answer.url})")
    print(f"{TINY_PROMPT} ->{answer.text}")


DEMO_STEPS: list[DemoStep] = [
    DemoStep("Build (or reuse) the pinned control plane and start the sandbox", bring_up),
    DemoStep("The API server is a real Kubernetes", show_versions),
    DemoStep("Fake nodes, managed by kwok", show_nodes),
    DemoStep(
        "Their GPUs, as the NVIDIA device plugin and GPU feature discovery would report them", show_gpus
    ),
    DemoStep("Install qmo's CRDs and the fleet's GPU classes", install_qmo),
    DemoStep("Run the operator", start_operator),
    DemoStep("Apply a QuantizedModel", apply_model),
    DemoStep("Plan -> quantize Job -> vLLM Deployment, until Ready", watch_until_ready),
    DemoStep("What the operator created, and the plan it chose", show_what_it_made),
    DemoStep(
        "A tiny model on the real node: really quantized, really served by vLLM on CPU",
        tiny_model_on_the_real_node,
    ),
    DemoStep("Ask it", ask_the_model),
]


def run_demo(sandbox: Sandbox, *, timeout: float = 120.0, steps: list[DemoStep] | None = None) -> int:
    context = DemoContext(sandbox=sandbox, timeout=timeout)
    chosen = DEMO_STEPS if steps is None else steps
    with context.resources:
        for number, step in enumerate(chosen, start=1):
            print(f"\n== {number}/{len(chosen)} {step.title}", flush=True)
            try:
                step.run(context)
            except (subprocess.CalledProcessError, AssertionError, AskError, WaitTimeout) as error:
                print(f"demo step failed: {error}", file=sys.stderr)
                return 1
    print("\nThe sandbox keeps running. Use it with:")
    for line in sandbox.env_lines():
        print(f"  {line}")
    print("Stop it with `qmo sandbox down`.")
    return 0
