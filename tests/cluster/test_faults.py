"""Faults on the real control plane: the operator SIGKILLed at random, the API server restarted, a GPU node gone.

After each, ``qmo.sandbox.chaos.audit`` must find nothing wrong: every model Ready or Failed-with-reason,
its status complete, one artifact per key, one quantize Job per artifact, no child without its owner.
The figures (kills, reconciles cut across, time to converge) are printed; ``benchmarks/chaos.py`` runs the
same campaign at a larger size.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from qmo.reconcile.kube import ApiError, load_credentials
from qmo.reconcile.kube import Kube as Client
from qmo.sandbox import nodes, stages
from qmo.sandbox.chaos import KillCampaign, audit, settled
from qmo.sandbox.harness import HubStandIn, OperatorProcess, example_config
from qmo.sandbox.harness import quantized_model as model
from qmo.sandbox.testing import Kube, SessionCluster
from qmo.sandbox.wait import wait_for

QUANTIZER = "app.kubernetes.io/component=quantizer"


def wait_settled(k: Kube, count: int, timeout: float) -> list[dict[str, Any]]:
    def all_settled() -> list[dict[str, Any]] | None:
        models = k.list("qm")
        return models if len(models) == count and all(settled(m) for m in models) else None

    result = wait_for(all_settled, timeout=timeout, interval=1, description=f"{count} models to settle")
    assert result is not None
    return result


def test_random_sigkills_across_fifty_reconciles_leave_nothing_wrong(
    k: Kube, cluster: SessionCluster, hub: HubStandIn, operator: OperatorProcess
) -> None:
    """Kills land while the workload keeps changing: models created in waves, moved to a new method
    (a new artifact, the old one released), deleted (an artifact left with no user is evicted)."""
    for index in range(4):
        hub.add(f"chaos/source-{index}", example_config(), sha=f"{index + 10:040x}")
    slow = {"podAnnotations": {stages.RUN_DURATION_ANNOTATION: "3s"}}
    failing = {"backoffLimit": 0, "podAnnotations": {stages.FAIL_ANNOTATION: "true"}}

    def chaos_model(index: int, method: str = "awq") -> dict[str, Any]:
        # Models i, i+4 and i+8 share a source (and so an artifact) with different context lengths.
        return model(
            f"chaos-{index:02d}",
            repo=f"chaos/source-{index % 4}",
            method=method,
            serving={"maxModelLen": 4096 * (1 + index // 4)},
            quantize_job=slow,
        )

    def change_workload(kill: int) -> None:
        if kill in (1, 2):
            for index in range(4 * kill, 4 * kill + 4):
                k.apply(chaos_model(index))
        elif kill == 4:
            for index in range(3):
                k.apply(chaos_model(index, method="gptq"))
        elif kill == 6:
            k.delete("qm", "chaos-07")
            k.delete("qm", "chaos-11")
        elif kill == 7:
            k.apply(chaos_model(3, method="gptq"))  # source-3's awq artifact now has no user left

    for index in range(4):
        k.apply(chaos_model(index))
    k.apply(model("chaos-doomed", repo="chaos/source-0", method="fp8-dynamic", quantize_job=failing))

    campaign = KillCampaign(operator, seed=20261204, min_interval=1.0, max_interval=4.0)
    started = time.monotonic()
    campaign.run(kills=10, after_restart=change_workload)
    killed_at = time.monotonic()
    models = wait_settled(k, 11, timeout=180)
    # awq for sources 0-2 (still used by models 4-10), gptq for sources 0-3, and the doomed fp8 one.
    wait_for(
        lambda: len(k.list("modelartifacts")) == 8, timeout=120, description="the unused artifact evicted"
    )
    converged = time.monotonic() - killed_at
    reconciles = campaign.finish()
    print(
        f"chaos: {campaign.kills} SIGKILLs at {min(campaign.intervals):.1f}-{max(campaign.intervals):.1f} s "
        f"intervals across {reconciles:.0f} reconciles; settled {converged:.1f} s after the last kill "
        f"({time.monotonic() - started:.1f} s in all)"
    )

    assert reconciles >= 50, f"the kills cut across only {reconciles:.0f} reconciles"
    assert audit(cluster, k.namespace) == []
    phases = {m["metadata"]["name"]: m["status"]["phase"] for m in models}
    assert phases.pop("chaos-doomed") == "Failed"
    assert set(phases.values()) == {"Ready"}, phases
    assert len(k.list("jobs", QUANTIZER)) == 8
    artifact_of = {m["metadata"]["name"]: m["status"]["artifact"]["name"] for m in models}
    assert artifact_of["chaos-04"] == artifact_of["chaos-08"] != artifact_of["chaos-00"]  # awq vs gptq


def test_api_server_restart_mid_rollout_converges_without_duplicates(
    k: Kube, cluster: SessionCluster, operator: OperatorProcess
) -> None:
    slow = {"podAnnotations": {stages.RUN_DURATION_ANNOTATION: "6s"}}
    k.apply(model("outage", method="gptq", quantize_job=slow, serving={"replicas": 2}))
    wait_for(lambda: k.list("jobs", QUANTIZER), timeout=60, description="the quantize Job")

    down = cluster.plane.restart_apiserver(down_seconds=3)
    restarted = time.monotonic()
    ready = k.wait_phase("outage", "Ready", timeout=120)
    print(
        f"API server down {down:.1f} s mid-quantize; model Ready {time.monotonic() - restarted:.1f} s after "
        "it came back"
    )

    assert audit(cluster, k.namespace) == []
    assert len(k.list("jobs", QUANTIZER)) == 1
    assert len(k.list("modelartifacts")) == 1
    assert ready["status"]["plan"]["tensorParallelSize"] == 1
    assert operator.process is not None and operator.process.poll() is None, "the operator died"


def test_a_gpu_node_disappearing_moves_the_replica_and_the_model_is_ready_again(
    k: Kube, cluster: SessionCluster
) -> None:
    k.apply(model("mover"))
    k.wait_phase("mover", "Ready")
    [pod] = k.list("pods", "app.kubernetes.io/component=serving")
    lost = pod["spec"]["nodeName"]
    manifest = next(m for m in nodes.fleet_manifests(cluster.plane.fleet) if m["metadata"]["name"] == lost)
    cluster.kubectl("delete", "node", lost, "--wait=false")
    lost_at = time.monotonic()
    try:
        # The pod GC deletes pods bound to a node that is gone; the ReplicaSet places a new one elsewhere.
        def replaced() -> dict[str, Any] | None:
            pods = [
                p for p in k.list("pods", "app.kubernetes.io/component=serving") if p["spec"].get("nodeName")
            ]
            fresh = [p for p in pods if p["metadata"]["uid"] != pod["metadata"]["uid"]]
            return fresh[0] if fresh and len(pods) == 1 else None

        moved = wait_for(replaced, timeout=180, interval=1, description="the replica on another node")
        assert moved is not None
        assert moved["spec"]["nodeName"] != lost

        def ready_again() -> dict[str, Any] | None:
            current = k.get("qm", "mover")
            status = (current or {}).get("status") or {}
            return current if status.get("phase") == "Ready" and status.get("readyReplicas") == 1 else None

        wait_for(ready_again, timeout=60, description="the model Ready on the new node")
        print(
            f"node {lost} deleted; replica on {moved['spec']['nodeName']}, Ready {time.monotonic() - lost_at:.1f} s later"
        )
        assert audit(cluster, k.namespace) == []
    finally:
        # The fleet is the session's: put the node back for the tests after this one.
        cluster.kubectl("create", "-f", "-", input=json.dumps(manifest), check=False)
        wait_for(
            lambda: cluster.kubectl("get", "node", lost, check=False).returncode == 0,
            timeout=30,
            description=f"node {lost} back",
        )


def test_a_guarded_json_patch_on_a_changed_object_is_a_conflict(k: Kube, cluster: SessionCluster) -> None:
    """The artifact's owner list is patched with a resourceVersion "test": when another writer got there
    first the API server answers 422 with a generic message, which qmo must treat as a conflict (decide
    again on a fresh read), never as a reconcile error."""

    from qmo.reconcile.kube import ApiError

    def secret(value: str) -> dict[str, Any]:
        data = {"a": base64.b64encode(value.encode()).decode()}
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "raced"}, "data": data}

    k.apply(secret("1"))

    async def race() -> ApiError:
        client = Client(load_credentials(str(cluster.kubeconfig)))
        try:
            seen = await client.get("Secret", k.namespace, "raced")
            assert seen is not None
            k.apply(secret("2"))
            stale = [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": seen["metadata"]["resourceVersion"],
                },
                {"op": "add", "path": "/metadata/labels", "value": {"b": "3"}},
            ]
            try:
                await client.patch("Secret", k.namespace, "raced", stale, json_patch=True)
            except ApiError as error:
                return error
            raise AssertionError("a patch testing a stale resourceVersion was accepted")
        finally:
            await client.close()

    error = asyncio.run(race())
    assert error.status == 409 and "changed since it was read" in error.message
    after = k.get("secret", "raced")
    assert after is not None and after["data"] == {"a": "Mg=="} and not after["metadata"].get("labels")
