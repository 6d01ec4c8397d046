"""The argv contract: what the operator renders for a GPU Deployment is accepted by vLLM 0.25.1's own parser.

The args go through the operator's real pure path (spec -> plan request -> planner -> plan status ->
Deployment), then through ``vllm serve``'s parser in the pinned engine (``vllm_argv_parser.py``, run by the
engine's interpreter: vLLM lives in its own environment). A rejected flag fails with vLLM's message.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qmo.api.gpuclass import GPUClassSpec
from qmo.api.quantizedmodel import parse_spec
from qmo.desired.common import Owner, Placement
from qmo.desired.multinode import NODE_RANK_ENV, NodePod, build_node_groups
from qmo.desired.serving import build_serving_deployment, plan_request
from qmo.planner import BUILTIN_GPUS, PlanningError, plan
from qmo.reconcile.gpus import ResolvedGPU, from_gpu_class
from qmo.reconcile.model import plan_status
from qmo.sandbox.tiny_model import tiny_llama_config

REPO = Path(__file__).parents[2]
CONFIGS = REPO / "tests" / "unit" / "configs"
SANDBOX_EXAMPLES = REPO / "operator" / "qmo" / "sandbox" / "examples"
# The public config.json behind each example's source repository (the hub is unreachable here).
EXAMPLE_CONFIGS = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
}
# Models the sandbox makes itself: their config comes from the same code that builds them.
SANDBOX_CONFIGS = {"qmo-sandbox/tiny-llama": tiny_llama_config()}
# The sandbox's own GPU classes (the cpu class among them), as its examples apply them.
SANDBOX_GPU_CLASSES = {
    doc["metadata"]["name"]: from_gpu_class(doc["metadata"]["name"], GPUClassSpec.model_validate(doc["spec"]))
    for doc in yaml.safe_load_all((SANDBOX_EXAMPLES / "gpuclasses.yaml").read_text())
    if isinstance(doc, dict) and doc.get("kind") == "GPUClass"
}
OWNER = Owner(api_version="qmo.dev/v1alpha1", kind="QuantizedModel", name="m", uid="uid")


class VllmParser:
    """vLLM's ``vllm serve`` parser in the engine's interpreter, asked one argv at a time over a pipe."""

    def __init__(self, python: Path) -> None:
        self.process = subprocess.Popen(
            [str(python), str(Path(__file__).with_name("vllm_argv_parser.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
        assert self.process.stdout is not None
        ready = json.loads(self.process.stdout.readline() or "{}")
        assert ready.get("ready", "").startswith("0.25.1"), f"unexpected parser start: {ready}"

    def check(self, argv: list[str]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(argv) + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        return answer

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def vllm_parser(engine_python: Path) -> Iterator[VllmParser]:
    parser = VllmParser(engine_python)
    try:
        yield parser
    finally:
        parser.close()


def rendered_argv(spec: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """What follows ``vllm serve`` in the Deployment the operator would apply for this spec."""
    parsed = parse_spec(spec)
    gpu = SANDBOX_GPU_CLASSES.get(parsed.serving.gpu_class) or ResolvedGPU(
        spec=BUILTIN_GPUS[parsed.serving.gpu_class], placement=Placement()
    )
    result = plan(config, plan_request(parsed), gpu.spec)
    if not result.fits:
        raise PlanningError(result.reason or "does not fit")
    deployment = build_serving_deployment(
        model="m",
        namespace="ns",
        owner=OWNER,
        serving=parsed.serving,
        plan=plan_status(gpu, result, parsed.quantization.method),
        artifact_key="ab" * 32,
        artifact_path="ab" * 32,
        placement=gpu.placement,
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vllm", "serve"]
    return list(container["args"])


def assert_accepted(parser: VllmParser, argv: list[str]) -> None:
    answer = parser.check(argv)
    flags = " ".join(arg for arg in argv if arg.startswith("--"))
    assert answer["ok"], f"vLLM 0.25.1 refused: {answer['error']}\n  args: {flags}"


def repo_examples() -> list[tuple[str, dict[str, Any]]]:
    """Every QuantizedModel in the repo's examples and docs (YAML files, YAML blocks, heredocs)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted([*REPO.glob("operator/qmo/sandbox/examples/*.yaml"), *REPO.glob("docs/**/*.md")]):
        text = path.read_text()
        chunks = (
            [text]
            if path.suffix == ".yaml"
            else re.findall(r"```ya?ml\n(.*?)```|<<'?YAML'?\n(.*?)\nYAML", text, flags=re.S)
        )
        for chunk in chunks:
            body = chunk if isinstance(chunk, str) else "".join(chunk)
            try:
                documents = list(yaml.safe_load_all(body))
            except yaml.YAMLError:
                continue
            for doc in documents:
                if isinstance(doc, dict) and doc.get("kind") == "QuantizedModel" and "spec" in doc:
                    found.append((f"{path.relative_to(REPO)}:{doc['metadata']['name']}", doc["spec"]))
    return found


EXAMPLES = repo_examples()


def test_the_repo_has_examples_to_check() -> None:
    names = [name for name, _ in EXAMPLES]
    assert any(name.startswith("operator/qmo/sandbox/examples/") for name in names), names
    assert any(name.startswith("docs/") for name in names), names


@pytest.mark.parametrize(("name", "spec"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_every_example_renders_args_vllm_accepts(
    vllm_parser: VllmParser, name: str, spec: dict[str, Any]
) -> None:
    repo = spec["source"]["huggingface"]["repo"]
    if repo in SANDBOX_CONFIGS:
        config = SANDBOX_CONFIGS[repo]
    else:
        assert repo in EXAMPLE_CONFIGS, f"{name}: add the public config.json of {repo} to tests/unit/configs"
        config = json.loads((CONFIGS / f"{EXAMPLE_CONFIGS[repo]}.json").read_text())
    assert_accepted(vllm_parser, rendered_argv(spec, config))


def test_a_flag_vllm_does_not_know_is_refused_by_name(vllm_parser: VllmParser) -> None:
    """The contract can fail: a misspelt flag comes back with its name."""
    answer = vllm_parser.check(["/cache/x", "--kv-cache-dtyp=fp8"])
    assert not answer["ok"] and "--kv-cache-dtyp" in answer["error"]
    answer = vllm_parser.check(["/cache/x", "--kv-cache-dtype=int3"])
    assert not answer["ok"] and "--kv-cache-dtype" in answer["error"]


@st.composite
def specs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    config_name = draw(st.sampled_from(sorted(p.stem for p in CONFIGS.glob("*.json"))))
    method = draw(
        st.sampled_from(["none", "awq", "gptq", "w8a8", "fp8", "fp8-dynamic", "nvfp4", "bitsandbytes-nf4"])
    )
    quantization: dict[str, Any] = {"method": method}
    if method == "gptq":
        quantization["bits"] = draw(st.sampled_from([4, 8]))
    serving: dict[str, Any] = {
        "gpuClass": draw(st.sampled_from(sorted(BUILTIN_GPUS))),
        "kvCacheDtype": draw(st.sampled_from(["auto", "fp8", "bfloat16"])),
        "maxModelLen": draw(st.sampled_from([1024, 4096, 8192, 32768])),
        "tensorParallelSize": draw(st.sampled_from(["auto", 1, 2, 4, 8])),
    }
    if draw(st.booleans()):
        serving["concurrency"] = draw(st.integers(min_value=1, max_value=512))
    if draw(st.booleans()):
        serving["gpuMemoryUtilization"] = draw(st.sampled_from([0.8, 0.9, 0.95]))
    config = json.loads((CONFIGS / f"{config_name}.json").read_text())
    return {
        "source": {"huggingface": {"repo": f"example/{config_name}"}},
        "quantization": quantization,
        "serving": serving,
    }, config


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=specs())
def test_planned_args_are_accepted_by_vllm(
    vllm_parser: VllmParser, case: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    spec, config = case
    try:
        argv = rendered_argv(spec, config)
    except (PlanningError, ValueError):
        assume(False)  # refused before any GPU is spent: nothing reaches vLLM
        return
    assert_accepted(vllm_parser, argv)


def multi_node_objects(shape: str) -> tuple[dict[str, Any], ...]:
    """What the operator applies for Llama-3.1-405B bf16 on 2 nodes of 8x H100 (TP 8 x PP 2), per shape."""
    config = json.loads((CONFIGS / "llama-3.1-405b.json").read_text())
    parsed = parse_spec(
        {
            "source": {"huggingface": {"repo": "meta-llama/Llama-3.1-405B"}},
            "quantization": {"method": "none"},
            "serving": {"gpuClass": "h100-80gb", "maxModelLen": 8192, "maxNodes": 2},
        }
    )
    gpu = ResolvedGPU(spec=BUILTIN_GPUS["h100-80gb"], placement=Placement())
    result = plan(config, plan_request(parsed), gpu.spec)
    assert result.fits and result.pipeline_parallel_size == 2 and result.tensor_parallel_size == 8
    pod = NodePod(
        "m", "ns", parsed.serving, plan_status(gpu, result, "none"), "ab" * 32, "ab" * 32, Placement()
    )
    return build_node_groups(shape=shape, pod=pod, owner=OWNER)  # type: ignore[arg-type]


def expanded(args: list[str], env: dict[str, str]) -> list[str]:
    """Container args as the kubelet passes them: each ``$(NAME)`` replaced by the container's variable."""
    for name, value in env.items():
        args = [arg.replace(f"$({name})", value) for arg in args]
    assert not any("$(" in arg for arg in args), args
    return args


@pytest.mark.parametrize("rank", [0, 1])
def test_statefulset_node_args_start_a_multi_node_group_in_vllm(vllm_parser: VllmParser, rank: int) -> None:
    stateful_set = next(m for m in multi_node_objects("statefulset") if m["kind"] == "StatefulSet")
    container = stateful_set["spec"]["template"]["spec"]["containers"][0]
    argv = expanded(container["args"], {NODE_RANK_ENV: str(rank)})
    if rank > 0:
        argv.append("--headless")  # what the container's launch script adds (tests/unit/test_multinode.py)
    answer = vllm_parser.check(argv)
    assert answer["ok"], answer["error"]
    assert answer["parallel"] == {
        "world_size": 16,
        "local_world_size": 8,  # each node runs its TP group: one pipeline stage per node
        "node_rank_within_dp": rank,  # 0: the engine and the OpenAI server; 1: vLLM's headless multiproc node
        "master": "m-vllm-0-0.m-vllm-nodes.ns.svc:29501",
        "headless": rank > 0,
    }


@pytest.mark.parametrize("role", ["leaderTemplate", "workerTemplate"])
def test_leader_worker_set_args_start_a_multi_node_group_in_vllm(vllm_parser: VllmParser, role: str) -> None:
    [lws] = multi_node_objects("leaderworkerset")
    container = lws["spec"]["leaderWorkerTemplate"][role]["spec"]["containers"][0]
    # What LWS injects: the leader's address in both; the worker's index (1 for the second node).
    argv = expanded(container["args"], {"LWS_LEADER_ADDRESS": "m-vllm-0.m-vllm.ns", "LWS_WORKER_INDEX": "1"})
    answer = vllm_parser.check(argv)
    assert answer["ok"], answer["error"]
    worker = role == "workerTemplate"
    assert answer["parallel"]["local_world_size"] == 8
    assert answer["parallel"]["node_rank_within_dp"] == int(worker)
    assert answer["parallel"]["headless"] is worker
    assert answer["parallel"]["master"] == "m-vllm-0.m-vllm.ns:29501"


def test_the_multi_node_flags_need_the_multiprocessing_executor(vllm_parser: VllmParser) -> None:
    """The multi-node check can fail: vLLM 0.25.1 refuses --nnodes with the Ray executor (Ray places its
    workers itself), which is why qmo names the mp executor rather than leaving it to vLLM's default."""
    stateful_set = next(m for m in multi_node_objects("statefulset") if m["kind"] == "StatefulSet")
    container = stateful_set["spec"]["template"]["spec"]["containers"][0]
    argv = [
        "--distributed-executor-backend=ray" if arg.startswith("--distributed-executor-backend=") else arg
        for arg in expanded(container["args"], {NODE_RANK_ENV: "1"})
    ]
    answer = vllm_parser.check(argv)
    assert not answer["ok"] and "nnodes > 1 can only be set when distributed executor" in answer["error"]
