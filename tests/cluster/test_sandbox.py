"""The sandbox control plane is a real Kubernetes: scheduling, Jobs, admission, RBAC and GC all bite.

Every test runs in its own namespace on the session's private control plane (see conftest.py), except
the ``qmo sandbox demo`` test, which needs a sandbox of its own (``private_sandbox``). GPU pods use the
L40S pool only, so the "only a node with two free GPUs" arithmetic is not disturbed by the other tests'
pods.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from qmo.sandbox import build, stages
from qmo.sandbox.demo import DEMO_STEPS, TINY_PROMPT, TINY_TIMEOUT_S, install_qmo, run_demo
from qmo.sandbox.local import Sandbox
from qmo.sandbox.testing import GPU_TOLERATION, SessionCluster
from qmo.sandbox.versions import CachePaths
from qmo.sandbox.wait import wait_for

IMAGE = "registry.k8s.io/pause:3.10"


def pod_manifest(
    name: str,
    *,
    gpus: int = 0,
    node_selector: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    restart_policy: str = "Never",
) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": "100m", "memory": "64Mi"}}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "restartPolicy": restart_policy,
            "tolerations": [GPU_TOLERATION],
            "nodeSelector": node_selector or {},
            "containers": [{"name": "main", "image": IMAGE, "resources": resources}],
        },
    }


def job_manifest(name: str, *, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    pod = pod_manifest(name, annotations=annotations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"annotations": annotations or {}}, "spec": pod["spec"]},
        },
    }


def condition(obj: Any, kind: str) -> str | None:
    for item in obj.status.conditions or []:
        if item.type == kind:
            return str(item.status)
    return None


def test_nodes_advertise_gpus(admin_client: client.ApiClient) -> None:
    items = client.CoreV1Api(admin_client).list_node(label_selector="type=kwok").items
    by_name = {node.metadata.name: node for node in items}
    gpus = {name: node.status.allocatable.get("nvidia.com/gpu") for name, node in by_name.items()}
    assert [gpus[f"gpu-h100-{i}"] for i in range(4)] == ["8"] * 4
    assert [gpus[f"gpu-l40s-{i}"] for i in range(2)] == ["4"] * 2
    assert [gpus[f"gpu-l4-{i}"] for i in range(4)] == ["1"] * 4
    assert gpus["cpu-0"] is None
    h100 = by_name["gpu-h100-0"]
    assert h100.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert h100.metadata.labels["nvidia.com/gpu.count"] == "8"
    assert h100.metadata.labels["node.kubernetes.io/instance-type"] == "p5.48xlarge"
    assert [(t.key, t.value, t.effect) for t in h100.spec.taints] == [
        ("nvidia.com/gpu", "present", "NoSchedule")
    ]
    assert all(condition(node, "Ready") == "True" for node in items)


def test_kubectl_sees_the_pinned_version(cluster: SessionCluster) -> None:
    output = cluster.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.37.2"' in output.replace('":"', '": "')


def test_two_gpu_pod_lands_only_where_two_are_free(admin_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(admin_client)
    l40s = {"qmo.dev/sandbox-gpu": "l40s"}
    # Leave one free GPU on gpu-l40s-0 (4 GPUs): a 2-GPU pod must then go to gpu-l40s-1.
    core.create_namespaced_pod(
        namespace, pod_manifest("filler", gpus=3, node_selector={"kubernetes.io/hostname": "gpu-l40s-0"})
    )
    wait_for(
        lambda: core.read_namespaced_pod("filler", namespace).spec.node_name == "gpu-l40s-0",
        timeout=30,
        description="the filler pod bound to gpu-l40s-0",
    )
    core.create_namespaced_pod(namespace, pod_manifest("two-gpus", gpus=2, node_selector=l40s))
    ready = wait_for(
        lambda: (
            (pod := core.read_namespaced_pod("two-gpus", namespace))
            and condition(pod, "Ready") == "True"
            and pod
        ),
        timeout=30,
        description="the 2-GPU pod Ready",
    )
    assert ready.spec.node_name == "gpu-l40s-1"
    assert ready.status.phase == "Running"

    # A pool with one GPU per node cannot take it at all: the scheduler says so and the pod stays Pending.
    core.create_namespaced_pod(
        namespace, pod_manifest("too-big", gpus=2, node_selector={"qmo.dev/sandbox-gpu": "l4"})
    )
    unschedulable = wait_for(
        lambda: (
            (pod := core.read_namespaced_pod("too-big", namespace))
            and any(c.reason == "Unschedulable" for c in pod.status.conditions or [])
            and pod
        ),
        timeout=30,
        description="the scheduler to report the 2-GPU pod on L4 as Unschedulable",
    )
    assert unschedulable.spec.node_name is None
    assert "nvidia.com/gpu" in next(
        c.message for c in unschedulable.status.conditions if c.reason == "Unschedulable"
    )


def test_job_pod_succeeds_and_job_completes(admin_client: client.ApiClient, namespace: str) -> None:
    batch, core = client.BatchV1Api(admin_client), client.CoreV1Api(admin_client)
    batch.create_namespaced_job(namespace, job_manifest("quantize"))
    job = wait_for(
        lambda: (
            (job := batch.read_namespaced_job("quantize", namespace))
            and condition(job, "Complete") == "True"
            and job
        ),
        timeout=30,
        description="Job quantize Complete",
    )
    assert job.status.succeeded == 1
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=quantize").items
    assert [pod.status.phase for pod in pods] == ["Succeeded"]


def test_pod_marked_to_fail_fails_the_job(admin_client: client.ApiClient, namespace: str) -> None:
    batch, core = client.BatchV1Api(admin_client), client.CoreV1Api(admin_client)
    annotations = {stages.FAIL_ANNOTATION: "true", stages.EXIT_CODE_ANNOTATION: "3"}
    batch.create_namespaced_job(namespace, job_manifest("broken", annotations=annotations))
    job = wait_for(
        lambda: (
            (job := batch.read_namespaced_job("broken", namespace))
            and condition(job, "Failed") == "True"
            and job
        ),
        timeout=30,
        description="Job broken Failed",
    )
    assert next(c.reason for c in job.status.conditions if c.type == "Failed") == "BackoffLimitExceeded"
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=broken").items
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3


def test_restricted_pod_security_refuses_a_privileged_pod(
    admin_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(admin_client)
    core.patch_namespace(
        namespace, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    )
    privileged = pod_manifest("privileged")
    privileged["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, privileged)
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in json.loads(refused.value.body)["message"]

    compliant = pod_manifest("compliant")
    compliant["spec"]["securityContext"] = {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    compliant["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsUser": 65532,
    }
    core.create_namespaced_pod(namespace, compliant)


def test_service_account_without_rbac_is_refused(
    admin_client: client.ApiClient, cluster: SessionCluster, namespace: str
) -> None:
    core, rbac = client.CoreV1Api(admin_client), client.RbacAuthorizationV1Api(admin_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "robot"}})
    token = core.create_namespaced_service_account_token(
        "robot", namespace, {"spec": {"audiences": [], "expirationSeconds": 600}}
    ).status.token

    configuration = client.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = str(cluster.ca_cert)
    configuration.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(configuration) as robot_client:
        robot = client.CoreV1Api(robot_client)
        with pytest.raises(ApiException) as refused:
            robot.list_namespaced_pod(namespace)
        assert refused.value.status == 403
        assert f"system:serviceaccount:{namespace}:robot" in refused.value.body

        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "robot-reads-pods"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": namespace}],
            },
        )
        wait_for(
            lambda: robot.list_namespaced_pod(namespace) is not None,
            timeout=15,
            description="the RoleBinding to let robot list pods",
        )
        with pytest.raises(ApiException) as still_refused:
            robot.delete_collection_namespaced_pod(namespace)
        assert still_refused.value.status == 403


def test_garbage_collector_deletes_owned_objects(admin_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(admin_client)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "owned",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
                ],
            }
        },
    )
    core.delete_namespaced_config_map("owner", namespace)

    def owned_is_gone() -> bool:
        try:
            core.read_namespaced_config_map("owned", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(owned_is_gone, timeout=30, description="the garbage collector to delete the owned ConfigMap")


def test_restarting_pod_marked_to_fail_crash_loops(admin_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(admin_client)
    annotations = {stages.FAIL_ANNOTATION: "true", stages.EXIT_CODE_ANNOTATION: "137"}
    core.create_namespaced_pod(
        namespace, pod_manifest("server", annotations=annotations, restart_policy="Always")
    )

    def crash_looping() -> Any:
        pod = core.read_namespaced_pod("server", namespace)
        statuses = pod.status.container_statuses or []
        return statuses and statuses[0].state.waiting and pod

    pod = wait_for(crash_looping, timeout=30, description="the pod's container in CrashLoopBackOff")
    (status,) = pod.status.container_statuses
    assert pod.status.phase == "Running"
    assert condition(pod, "Ready") == "False"
    assert status.state.waiting.reason == "CrashLoopBackOff"
    assert status.last_state.terminated.exit_code == 137
    # It keeps crashing: the restart count climbs after each back-off, as under a kubelet.
    wait_for(
        lambda: core.read_namespaced_pod("server", namespace).status.container_statuses[0].restart_count >= 2,
        timeout=30,
        description="a second restart after the back-off",
    )


@pytest.fixture
def private_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """``qmo sandbox`` as the user runs it, but with its state under ``tmp_path``: never the user's sandbox.

    Only ``bin/`` and ``engines/`` are shared (links to the cached builds); the sandbox directory, its lock and the demo's
    files are this test's, and its processes die with the test process.
    """
    cache = CachePaths.default()
    build.build(cache)
    root = tmp_path / "qmo-cache"
    root.mkdir()
    (root / "bin").symlink_to(cache.bin_dir.parent, target_is_directory=True)
    (root / "engines").symlink_to(cache.root / "engines", target_is_directory=True)  # the vLLM CPU engine
    sandbox = Sandbox(CachePaths(root), ephemeral=True)
    try:
        yield sandbox
    finally:
        sandbox.control_plane.stop(remove=True)


def test_demo_runs_whatever_state_the_sandbox_is_in(
    private_sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make demo` after `qmo sandbox up`, a second `make demo`, and one after the sandbox broke."""
    _, fresh = private_sandbox.up()
    assert fresh
    # The whole demo, real node included: it ends with the tiny model's answer from a real vLLM.
    assert run_demo(private_sandbox, timeout=TINY_TIMEOUT_S) == 0
    first = capsys.readouterr().out
    assert "the sandbox was already running" in first
    answer = next(line for line in first.splitlines() if line.startswith(f"{TINY_PROMPT} ->"))
    assert answer.removeprefix(f"{TINY_PROMPT} ->").strip()

    # Again: everything is there already (the model stays Ready, vLLM keeps serving).
    assert run_demo(private_sandbox) == 0
    second = capsys.readouterr().out
    assert "the sandbox was already running" in second and f"{TINY_PROMPT} ->" in second

    # Broken: the demo starts a fresh sandbox. The steps up to the first that uses it are enough here;
    # the operator's steps on a fresh sandbox ran above.
    state = private_sandbox.control_plane.load_state()
    assert state is not None
    os.kill(state.pids["kube-apiserver"], signal.SIGKILL)
    through_install = DEMO_STEPS[: [step.run for step in DEMO_STEPS].index(install_qmo) + 1]
    assert run_demo(private_sandbox, steps=through_install) == 0
    output = capsys.readouterr().out
    assert "a previous sandbox is not healthy; removing it and starting fresh" in output
    assert "started a fresh sandbox" in output
