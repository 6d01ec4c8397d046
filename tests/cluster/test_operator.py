"""The operator, end to end, on the real control plane: kwok completes the Jobs and readies the pods.

One operator process serves the whole session (the ``operator`` fixture in conftest; it is SIGKILLed and
restarted by one test); every test works in its own namespace, so they cannot see each other's models or
artifacts.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from qmo.sandbox import stages
from qmo.sandbox.harness import EXAMPLE_SHA as SHA_A
from qmo.sandbox.harness import GATED_REPO, GATED_TOKEN, HubStandIn, OperatorProcess, example_config
from qmo.sandbox.harness import GATED_SHA as SHA_B
from qmo.sandbox.harness import quantized_model as model
from qmo.sandbox.testing import Kube, SessionCluster
from qmo.sandbox.wait import wait_for


def container_args(deployment: dict[str, Any]) -> list[str]:
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def arg_value(args: list[str], flag: str) -> str:
    """The value of ``--flag value`` or ``--flag=value``."""
    for index, arg in enumerate(args):
        if arg == flag:
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {args}")


def test_model_goes_ready_with_the_planned_children(k: Kube) -> None:
    k.apply(model("llama"))
    ready = k.wait_phase("llama", "Ready")
    status = ready["status"]
    plan = status["plan"]
    assert status["resolvedRevision"] == SHA_A
    assert plan["tensorParallelSize"] == 1
    assert plan["kvCacheTokens"] >= 8192
    assert status["ready"] == "1/1"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Planned": "True",
        "WeightsReady": "True",
        "Deployed": "True",
        # The sandbox's fake quantize Job reports no quality figures: not measured, so not blocked.
        "QualityGate": "Unknown",
        "Available": "True",
        # kwok's pods serve no /metrics: what vLLM allocated cannot be read (tests/cluster/test_plan_verification_on_cluster.py).
        "PlanVerified": "Unknown",
    }

    [artifact] = k.list("modelartifacts")
    assert artifact["status"]["phase"] == "Ready"
    assert artifact["spec"]["key"] == status["artifact"]["key"]
    assert [ref["uid"] for ref in artifact["metadata"]["ownerReferences"]] == [ready["metadata"]["uid"]]

    [job] = k.list("jobs", "app.kubernetes.io/component=quantizer")
    job_args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert arg_value(job_args, "--method") == "awq"
    assert arg_value(job_args, "--revision") == SHA_A
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"])

    claim = k.get("pvc", "qmo-cache")
    assert claim is not None and claim["status"]["phase"] == "Bound"

    deployment = k.get("deployment", "llama-vllm")
    assert deployment is not None
    args = container_args(deployment)
    assert args[0] == f"/cache/{artifact['spec']['key']}"
    assert arg_value(args, "--max-model-len") == "8192"
    assert args[args.index("--served-model-name") + 1] == "llama"
    assert args[1:] == [
        "--served-model-name",
        "llama",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        *plan["vllmArgs"],
    ]
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    pods = k.list("pods", "qmo.dev/model=llama")
    assert pods and all(p["spec"]["nodeName"].startswith("gpu-h100") for p in pods)
    service = k.get("service", "llama-vllm")
    assert service is not None and service["spec"]["ports"][0]["port"] == 8000
    assert k.get("pdb", "llama-vllm") is not None
    assert status["endpoint"] == f"http://llama-vllm.{k.namespace}.svc:8000/v1"


def test_two_models_share_one_artifact_and_eviction_waits_for_the_last(k: Kube) -> None:
    k.apply(model("first", serving={"maxModelLen": 4096}))
    k.apply(model("second", serving={"maxModelLen": 8192, "replicas": 2}))
    first = k.wait_phase("first", "Ready")
    second = k.wait_phase("second", "Ready")
    assert first["status"]["artifact"]["name"] == second["status"]["artifact"]["name"]
    [artifact] = k.list("modelartifacts")
    owners = {ref["uid"] for ref in artifact["metadata"]["ownerReferences"]}
    assert owners == {first["metadata"]["uid"], second["metadata"]["uid"]}
    assert len(k.list("jobs", "app.kubernetes.io/component=quantizer")) == 1

    k.delete("qm", "first")
    wait_for(
        lambda: (
            [
                r["uid"]
                for r in (k.get("ma", artifact["metadata"]["name"]) or {})
                .get("metadata", {})
                .get("ownerReferences", [])
            ]
            == [second["metadata"]["uid"]]
        ),
        timeout=60,
        description="the garbage collector to drop the deleted model's ownerReference",
    )
    assert k.get("ma", artifact["metadata"]["name"])["status"]["phase"] == "Ready"  # type: ignore[index]

    k.delete("qm", "second")
    evict_seen: list[bool] = []

    def artifact_gone() -> bool:
        if k.list("jobs", "app.kubernetes.io/component=evictor"):
            evict_seen.append(True)
        return k.get("ma", artifact["metadata"]["name"]) is None

    wait_for(artifact_gone, timeout=90, interval=0.1, description="the artifact to be evicted and deleted")
    assert evict_seen, "the artifact went away without running its evict Job"


def test_spec_change_builds_a_new_artifact_while_the_old_one_serves(k: Kube) -> None:
    k.apply(model("roll", method="gptq"))
    before = k.wait_phase("roll", "Ready")
    old_key = before["status"]["artifact"]["key"]
    slow = {"podAnnotations": {stages.RUN_DURATION_ANNOTATION: "4s"}}
    k.apply(model("roll", method="gptq", quantization={"bits": 8}, quantize_job=slow))

    def quantizing_with_old_serving() -> dict[str, Any] | None:
        current = k.get("qm", "roll")
        assert current is not None
        status = current["status"]
        if status.get("phase") == "Quantizing" and status["artifact"]["key"] != old_key:
            return current
        return None

    wait_for(quantizing_with_old_serving, timeout=60, description="the new artifact to be building")
    deployment = k.get("deployment", "roll-vllm")
    assert deployment is not None
    assert container_args(deployment)[0] == f"/cache/{old_key}", "the old weights must keep serving meanwhile"
    assert deployment["status"].get("readyReplicas") == 1

    after = k.wait_phase("roll", "Ready", timeout=120)
    new_key = after["status"]["artifact"]["key"]
    assert new_key != old_key
    assert container_args(k.get("deployment", "roll-vllm"))[0] == f"/cache/{new_key}"  # type: ignore[arg-type]
    wait_for(
        lambda: [a["spec"]["key"] for a in k.list("modelartifacts")] == [new_key],
        timeout=90,
        description="the old artifact to be released and evicted",
    )


def test_quantize_failure_reports_the_reason_and_a_spec_fix_recovers(k: Kube) -> None:
    failing = {"backoffLimit": 0, "podAnnotations": {stages.FAIL_ANNOTATION: "true"}}
    k.apply(model("broken", method="fp8-dynamic", quantize_job=failing))
    failed = k.wait_phase("broken", "Failed")
    assert "failed" in failed["status"]["message"]
    assert "BackoffLimitExceeded" in failed["status"]["message"]
    conditions = {c["type"]: c for c in failed["status"]["conditions"]}
    assert conditions["WeightsReady"]["status"] == "False"
    assert conditions["WeightsReady"]["reason"] == "QuantizationFailed"
    assert k.get("deployment", "broken-vllm") is None

    # The SRE fixes the Job (here: drops what made it fail) -> the artifact is retried from scratch.
    k.apply(model("broken", method="fp8-dynamic", quantize_job={"backoffLimit": 0}))
    recovered = k.wait_phase("broken", "Ready", timeout=120)
    assert recovered["status"]["artifact"]["phase"] == "Ready"


def test_a_plan_that_cannot_fit_fails_with_numbers_before_any_job(k: Kube) -> None:
    k.apply(
        model(
            "too-big",
            method="none",
            serving={"gpuClass": "l4", "maxModelLen": 131072, "tensorParallelSize": 1},
        )
    )
    failed = k.wait_phase("too-big", "Failed")
    message = failed["status"]["message"]
    assert "GiB" in message, message
    conditions = {c["type"]: c for c in failed["status"]["conditions"]}
    assert conditions["Planned"]["status"] == "False"
    assert conditions["Planned"]["reason"] == "DoesNotFit"
    assert k.list("jobs") == []
    assert k.list("modelartifacts") == []


def test_plans_never_ask_for_more_gpus_per_replica_than_one_node_has(k: Kube) -> None:
    # The catalog's l4 assumes 8 per node; the sandbox's L4 nodes have one each. Unquantized weights and a
    # 128k context need two L4s, so the plan must fail naming the node size, not roll out a pod no node
    # can take.
    k.apply(model("wide", method="none", serving={"gpuClass": "l4", "maxModelLen": 131072}))
    failed = k.wait_phase("wide", "Failed")
    message = failed["status"]["message"]
    assert "1 GPUs per node" in message, message
    assert k.list("deployments") == []


@pytest.mark.parametrize(
    ("method", "waiting_phase"),
    [("awq", "Quantizing"), ("none", "Deploying")],  # the quantize pod, or (no GPU Job) the serving pod
)
def test_a_pod_no_node_can_take_says_why(
    k: Kube, cluster: SessionCluster, method: str, waiting_phase: str
) -> None:
    gpu_class = f"nowhere-{k.namespace}"  # cluster-scoped: named after the test's namespace
    manifest = {
        "apiVersion": "qmo.dev/v1alpha1",
        "kind": "GPUClass",
        "metadata": {"name": gpu_class},
        "spec": {"memoryGiB": 79.18, "gpusPerNode": 8, "nodeSelector": {"qmo.dev/pool": "none"}},
    }
    k.apply(manifest)
    try:
        k.apply(model("stranded", method=method, serving={"gpuClass": gpu_class}))
        stranded = wait_for(
            # The selector's words, not any Unschedulable: a CPU Job pod waits a moment for its claim.
            lambda: (
                lambda m: m if "didn't match Pod's node affinity" in m["status"].get("message", "") else None
            )(k.get("qm", "stranded") or {"status": {}}),
            timeout=90,
            description="the model to report its unschedulable pod",
        )
        status = stranded["status"]
        assert status["phase"] == waiting_phase  # an autoscaler may still add a node: not Failed
        assert "Unschedulable: 0/" in status["message"], status["message"]
    finally:
        cluster.kubectl("delete", "gpuclass", gpu_class, "--wait=false", check=False)


@pytest.mark.parametrize(
    ("spec_patch", "field_path"),
    [
        ({"serving": {"gpuClass": "h100-80gb", "replicas": -1}}, "spec.serving.replicas"),
        (
            {"serving": {"gpuClass": "h100-80gb", "tensorParallelSize": "lots"}},
            "spec.serving.tensorParallelSize",
        ),
        ({"quantization": {"method": "awq", "bits": 8}}, "spec.quantization"),
        ({"quantization": {"method": "int3"}}, "spec.quantization.method"),
        ({"source": {"huggingface": {"repo": "a/b"}, "pvc": {"claimName": "x"}}}, "spec.source"),
    ],
)
def test_invalid_specs_are_refused_by_the_api_server_with_the_field_path(
    k: Kube, spec_patch: dict[str, Any], field_path: str
) -> None:
    manifest = model("invalid")
    manifest["spec"].update(spec_patch)
    error = k.apply(manifest, check=False)
    assert "invalid" in error.lower() or "Unsupported value" in error, error
    assert field_path in error, error
    assert k.get("qm", "invalid") is None


def test_an_unchanged_model_causes_no_writes(k: Kube, operator: OperatorProcess) -> None:
    k.apply(model("steady"))
    k.wait_phase("steady", "Ready")
    [artifact] = k.list("modelartifacts")

    def versions() -> dict[str, str]:
        objects = {
            "qm": k.get("qm", "steady"),
            "ma": k.get("ma", artifact["metadata"]["name"]),
            "deployment": k.get("deployment", "steady-vllm"),
            "service": k.get("service", "steady-vllm"),
            "pdb": k.get("pdb", "steady-vllm"),
        }
        return {kind: obj["metadata"]["resourceVersion"] for kind, obj in objects.items() if obj}

    def writes() -> float:
        return sum(
            operator.metric_value("qmo_api_requests_total", verb=verb) for verb in ("POST", "PATCH", "DELETE")
        )

    def write_counts() -> dict[str, float]:
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in operator.metrics().splitlines()
            if line.startswith("qmo_api_requests_total{")
            and any(v in line for v in ("POST", "PATCH", "DELETE"))
        }

    def every_model() -> dict[str, tuple[str, ...]]:
        """Every QuantizedModel in the cluster (the session's operator reconciles them all): which one wrote."""
        listed = json.loads(k.cluster.kubectl("get", "qm", "-A", "-o", "json").stdout)["items"]
        return {
            f"{m['metadata']['namespace']}/{m['metadata']['name']}": (
                m["metadata"]["resourceVersion"],
                str(m["metadata"].get("deletionTimestamp")),
                ",".join(m["metadata"].get("finalizers") or []),
                str((m.get("status") or {}).get("phase")),
                str((m.get("status") or {}).get("message"))[:200],
            )
            for m in listed
        }

    def quiet_window() -> bool:
        """Three resyncs of every model with no write at all. Earlier tests' namespaces may still be
        terminating (their deletions are writes), so retry the window until they are gone."""
        before, writes_before, counts_before = versions(), writes(), write_counts()
        reconciles = operator.metric_value("qmo_reconcile_duration_seconds_count", kind="QuantizedModel")
        wait_for(
            lambda: (
                operator.metric_value("qmo_reconcile_duration_seconds_count", kind="QuantizedModel")
                >= reconciles + 3
            ),
            timeout=60,
            description="three more reconciles (resync timer)",
        )
        assert versions() == before, "a resync changed an object of an unchanged model"
        # Not even a no-op PATCH: every write request the operator sends is counted, changed or not.
        if writes() != writes_before:
            # Which writes (verb, resource): the window is retried, and a failure shows the last ones.
            print(
                "writes in the window:",
                {k: v for k, v in write_counts().items() if v != counts_before.get(k)},
                "models (a no-op status patch changes no resourceVersion):",
                every_model(),
            )
            return False
        return True

    wait_for(quiet_window, timeout=120, interval=0, description="a resync window with no writes")


def test_operator_killed_mid_flight_restarts_without_duplicates(k: Kube, operator: OperatorProcess) -> None:
    slow = {"podAnnotations": {stages.RUN_DURATION_ANNOTATION: "6s"}}
    k.apply(model("survivor", method="gptq", quantize_job=slow))
    wait_for(
        lambda: k.list("jobs", "app.kubernetes.io/component=quantizer"), timeout=60, description="the Job"
    )
    operator.kill()
    operator.start()
    ready = k.wait_phase("survivor", "Ready", timeout=120)
    assert len(k.list("jobs", "app.kubernetes.io/component=quantizer")) == 1
    assert len(k.list("modelartifacts")) == 1
    assert ready["status"]["plan"]["tensorParallelSize"] == 1


def test_gated_model_token_reaches_only_the_job_and_never_status_or_events(
    k: Kube, cluster: SessionCluster, operator: OperatorProcess
) -> None:
    k.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hf-token"},
            "stringData": {"token": GATED_TOKEN},
        }
    )
    k.apply(model("gated", repo=GATED_REPO, token_secret="hf-token"))
    ready = k.wait_phase("gated", "Ready")
    assert ready["status"]["resolvedRevision"] == SHA_B
    [job] = k.list("jobs", "app.kubernetes.io/component=quantizer")
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in env
    deployment = k.get("deployment", "gated-vllm")
    events = cluster.kubectl("get", "events", "-n", k.namespace, "-o", "json").stdout
    for text in (json.dumps(ready), json.dumps(deployment), events, operator.log_tail(100000)):
        assert GATED_TOKEN not in text


def test_missing_token_secret_fails_with_the_field_path(k: Kube) -> None:
    k.apply(model("no-secret", repo=GATED_REPO, token_secret="absent"))
    failed = k.wait_phase("no-secret", "Failed")
    assert "spec.source.huggingface.tokenSecretRef" in failed["status"]["message"]


def test_serving_only_change_rolls_the_deployment_on_the_same_artifact(k: Kube) -> None:
    k.apply(model("tune", serving={"maxModelLen": 4096}))
    before = k.wait_phase("tune", "Ready")
    k.apply(model("tune", serving={"maxModelLen": 16384, "replicas": 2}))

    def rolled() -> dict[str, Any] | None:
        current = k.get("qm", "tune")
        deployment = k.get("deployment", "tune-vllm")
        if not current or not deployment or current["status"].get("phase") != "Ready":
            return None
        if arg_value(container_args(deployment), "--max-model-len") != "16384":
            return None
        return current if current["status"]["ready"] == "2/2" else None

    after = wait_for(rolled, timeout=90, description="the Deployment to roll to the new serving settings")
    assert after["status"]["artifact"]["key"] == before["status"]["artifact"]["key"]
    assert after["status"]["plan"]["maxModelLen"] == 16384
    assert len(k.list("jobs", "app.kubernetes.io/component=quantizer")) == 1


MODELS_CLAIM = {
    "apiVersion": "v1",
    "kind": "PersistentVolumeClaim",
    "metadata": {"name": "models"},
    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "100Gi"}}},
}


def test_pvc_source_is_planned_from_the_config_its_inspect_job_reads(k: Kube) -> None:
    k.apply(MODELS_CLAIM)
    manifest = model(
        "from-pvc",
        method="w8a8",
        # In the sandbox the inspect pod "copies" config.json by reporting this as its termination message.
        quantize_job={
            "podAnnotations": {stages.TERMINATION_MESSAGE_ANNOTATION: json.dumps(example_config())}
        },
    )
    manifest["spec"]["source"] = {"pvc": {"claimName": "models", "path": "/llama-3.1-8b"}}
    k.apply(manifest)
    ready = k.wait_phase("from-pvc", "Ready")
    assert ready["status"]["plan"]["weightsGibPerGpu"] < 10  # int8 weights of an 8B model
    [inspect] = k.list("jobs", "app.kubernetes.io/component=inspector")
    container = inspect["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["cp", "--", "/source/llama-3.1-8b/config.json", "/dev/termination-log"]
    assert "resources" in container and "nvidia.com/gpu" not in json.dumps(container["resources"])
    [job] = k.list("jobs", "app.kubernetes.io/component=quantizer")
    pod_spec = job["spec"]["template"]["spec"]
    assert arg_value(pod_spec["containers"][0]["args"], "--source") == "/source/llama-3.1-8b"
    assert {"name": "source", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod_spec[
        "volumes"
    ]


def test_evaluation_text_reaches_the_quantize_job_and_stays_out_of_the_key(k: Kube) -> None:
    k.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "held-out"},
            "data": {"01-news.txt": "The council met on Tuesday.", "02-code.txt": "def f(): return 1"},
        }
    )
    evaluation = {"configMapRef": {"name": "held-out"}, "tokens": 4096}
    k.apply(model("measured", method="gptq", quantization={"evaluation": evaluation}))
    measured = k.wait_phase("measured", "Ready")
    [job] = k.list("jobs", "app.kubernetes.io/component=quantizer")
    pod_spec = job["spec"]["template"]["spec"]
    args = pod_spec["containers"][0]["args"]
    assert arg_value(args, "--eval-dir") == "/evaluation"
    assert arg_value(args, "--eval-tokens") == "4096"
    [volume] = [v for v in pod_spec["volumes"] if v["name"] == "evaluation"]
    assert volume["configMap"]["name"] == "held-out"
    assert {"name": "evaluation", "mountPath": "/evaluation", "readOnly": True} in pod_spec["containers"][0][
        "volumeMounts"
    ]
    artifact = k.get("ma", measured["status"]["artifact"]["name"])
    assert artifact is not None
    assert artifact["spec"]["evaluation"] == {**evaluation, "enabled": True}
    assert "evaluation" not in artifact["spec"]["recipe"]

    # The same recipe measured differently is the same weights: the same artifact, no second Job.
    k.apply(model("unmeasured", method="gptq", quantization={"evaluation": {"enabled": False}}))
    unmeasured = k.wait_phase("unmeasured", "Ready")
    assert unmeasured["status"]["artifact"] == measured["status"]["artifact"]
    assert len(k.list("jobs", "app.kubernetes.io/component=quantizer")) == 1


def test_unreadable_pvc_config_fails_with_the_path(k: Kube) -> None:
    k.apply(MODELS_CLAIM)
    manifest = model(
        "bad-pvc",
        quantize_job={"podAnnotations": {stages.TERMINATION_MESSAGE_ANNOTATION: "not json"}},
    )
    manifest["spec"]["source"] = {"pvc": {"claimName": "models", "path": "/nowhere"}}
    k.apply(manifest)
    failed = k.wait_phase("bad-pvc", "Failed")
    assert "/nowhere/config.json" in failed["status"]["message"]
    assert k.list("modelartifacts") == []


def test_a_claim_in_another_namespace_cannot_be_used(k: Kube) -> None:
    manifest = model("elsewhere")
    manifest["spec"]["source"] = {"pvc": {"claimName": "models", "path": "/llama"}}
    k.apply(manifest)
    failed = k.wait_phase("elsewhere", "Failed")
    assert "spec.source.pvc.claimName" in failed["status"]["message"]
    assert k.list("jobs") == []


def test_the_workers_summary_lands_in_the_artifact_status(
    k: Kube, cluster: SessionCluster, operator: OperatorProcess
) -> None:
    quality = {
        "dataset": "qmo-builtin-english",
        "tokens": 2044,
        "source_perplexity": 7.912,
        "quantized_perplexity": 8.105,
        "perplexity_increase_percent": 2.439,
        "kl_mean": 0.021,
        "top1_agreement": 0.9312,
    }
    summary = {
        "size_bytes": 5_727_858_176,
        "manifest_sha256": "c" * 64,
        "durations": {"total": 812.4},
        "validation": {"top1_agreement": 0.97, "mean_abs_logit_error": 0.031},
        "quality": quality,
        "versions": {"llmcompressor": "0.14.0.1", "torch": "2.14.0"},
    }
    k.apply(
        model(
            "summarised",
            method="gptq",
            quantize_job={"podAnnotations": {stages.TERMINATION_MESSAGE_ANNOTATION: json.dumps(summary)}},
        )
    )
    ready = k.wait_phase("summarised", "Ready")
    artifact = k.get("ma", ready["status"]["artifact"]["name"])
    assert artifact is not None
    status = artifact["status"]
    assert status["sizeBytes"] == summary["size_bytes"]
    assert status["size"] == "5.33Gi"  # the SIZE column
    assert status["manifestDigest"] == summary["manifest_sha256"]
    assert status["quantizeSeconds"] == 812.4
    assert status["validation"]["top1_agreement"] == 0.97
    assert status["versions"]["llmcompressor"] == "0.14.0.1"
    assert status["quality"]["perplexityIncreasePercent"] == 2.439
    assert status["quality"]["klMean"] == 0.021
    assert status["quality"]["top1Agreement"] == 0.9312
    table = cluster.kubectl("get", "ma", artifact["metadata"]["name"], "-n", k.namespace).stdout
    header, row = table.strip().splitlines()
    assert "PPL+%" in header.split() and "TOP1" in header.split()
    assert "2.439" in row.split() and "0.9312" in row.split()
    labels = {"artifact": artifact["metadata"]["name"], "namespace": k.namespace}
    assert operator.metric_value("qmo_artifact_quality", measure="top1_agreement", **labels) == 0.9312
    assert operator.metric_value("qmo_artifact_quality", measure="kl_mean", **labels) == 0.021


def test_every_pod_qmo_creates_passes_the_restricted_pod_security_level(
    k: Kube, cluster: SessionCluster
) -> None:
    cluster.kubectl(
        "label", "namespace", k.namespace, "pod-security.kubernetes.io/enforce=restricted", "--overwrite"
    )
    k.apply(MODELS_CLAIM)
    manifest = model(
        "restricted",
        method="gptq",
        serving={"tensorParallelSize": 2},  # TP > 1 adds the /dev/shm memory volume
        quantize_job={
            "podAnnotations": {stages.TERMINATION_MESSAGE_ANNOTATION: json.dumps(example_config())}
        },
    )
    manifest["spec"]["source"] = {"pvc": {"claimName": "models", "path": "/llama"}}  # the inspect Job too
    k.apply(manifest)
    k.wait_phase("restricted", "Ready")
    components = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in k.list("pods")}
    assert components == {"inspector", "quantizer", "serving"}
    k.delete("qm", "restricted")
    wait_for(
        lambda: not k.list("modelartifacts"), timeout=90, description="eviction (the evict Job's pod too)"
    )


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("no-layers", lambda c: c.pop("num_hidden_layers")),
        ("text-heads", lambda c: c.update(num_attention_heads="thirty-two")),
        ("absurd", lambda c: c.update(hidden_size=10**12, vocab_size=10**12)),
        ("unknown-type", lambda c: c.update(model_type="made-up-llm")),
        ("not-an-object", None),
    ],
)
def test_hostile_config_json_fails_the_model_with_a_clear_reason(
    k: Kube, hub: HubStandIn, name: str, mutate: Any
) -> None:
    config: Any = example_config()
    if mutate is None:
        config = ["not", "a", "config"]
    else:
        mutate(config)
    repo = f"hostile/{name}-{k.namespace}"
    hub.add(repo, config, sha="c" * 40)
    k.apply(model(name, repo=repo))
    failed = k.wait_phase(name, "Failed", timeout=60)
    reason = {c["type"]: c for c in failed["status"]["conditions"]}["Planned"]["reason"]
    assert reason in ("InvalidModelConfig", "DoesNotFit"), failed["status"]
    assert failed["status"]["message"]
    assert k.list("jobs") == [] and k.list("modelartifacts") == []


def test_network_policy_is_created_on_request_and_removed_when_turned_off(k: Kube) -> None:
    gateway = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}
    k.apply(model("fenced", serving={"networkPolicy": {"enabled": True, "ingressFrom": [gateway]}}))
    ready = k.wait_phase("fenced", "Ready")
    assert ready["status"]["networkPolicy"] == "fenced-vllm"
    policy = k.get("networkpolicy", "fenced-vllm")
    assert policy is not None
    service = k.get("service", "fenced-vllm")
    assert service is not None
    # The API server accepted it as a real NetworkPolicy, selecting exactly the Service's pods.
    assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    [rule] = policy["spec"]["ingress"]
    assert rule["from"][0]["namespaceSelector"] == gateway["namespaceSelector"]
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert policy["metadata"]["ownerReferences"][0]["name"] == "fenced"

    k.apply(model("fenced", serving={"networkPolicy": {"enabled": False}}))
    wait_for(
        lambda: k.get("networkpolicy", "fenced-vllm") is None,
        timeout=60,
        description="the NetworkPolicy deleted once turned off",
    )
    settled_model = wait_for(
        lambda: (lambda m: m if m and "networkPolicy" not in m["status"] else None)(k.get("qm", "fenced")),
        timeout=30,
        description="status.networkPolicy cleared",
    )
    assert settled_model["status"]["phase"] == "Ready"


def quality_summary(increase: float, top1: float) -> str:
    """The quantize pod's termination message, with the figures the worker would have measured."""
    quality = {
        "dataset": "qmo-builtin-english",
        "tokens": 2044,
        "source_perplexity": 8.0,
        "quantized_perplexity": round(8.0 * (1 + increase / 100), 4),
        "perplexity_increase_percent": increase,
        "kl_mean": 0.02,
        "top1_agreement": top1,
    }
    return json.dumps({"size_bytes": 1000, "quality": quality})


def test_a_failed_quality_gate_holds_the_rollout_and_thresholds_alone_re_decide(
    k: Kube, operator: OperatorProcess
) -> None:
    def annotated(summary: str) -> dict[str, Any]:
        return {"podAnnotations": {stages.TERMINATION_MESSAGE_ANNOTATION: summary}}

    k.apply(model("gated", method="gptq", quantize_job=annotated(quality_summary(2.0, 0.95))))
    first = k.wait_phase("gated", "Ready")
    deployment = k.get("deployment", "gated-vllm")
    assert deployment is not None
    pods = {
        p["metadata"]["uid"]
        for p in k.list("pods", "qmo.dev/model=gated,app.kubernetes.io/component=serving")
    }
    assert pods

    # A new recipe whose quantization came out wrecked: 8-bit gptq, +48% perplexity, top-1 0.55.
    k.apply(
        model(
            "gated",
            method="gptq",
            quantization={"bits": 8},
            quantize_job=annotated(quality_summary(48.0, 0.55)),
        )
    )
    held = k.wait_phase("gated", "Degraded")
    gate = next(c for c in held["status"]["conditions"] if c["type"] == "QualityGate")
    assert gate["status"] == "False" and gate["reason"] == "QualityBelowThreshold"
    assert "perplexity +48% exceeds the 3% allowed" in gate["message"]
    assert "top-1 agreement 0.55 is below the 0.93 required" in gate["message"]
    assert "the previous artifact keeps serving" in held["status"]["message"]
    assert held["status"]["artifact"]["key"] != first["status"]["artifact"]["key"]
    # Nothing rolled: the same Deployment generation, the same pods, still on the first artifact.
    after = k.get("deployment", "gated-vllm")
    assert after is not None and after["metadata"]["generation"] == deployment["metadata"]["generation"]
    assert after["spec"]["template"] == deployment["spec"]["template"]
    assert {
        p["metadata"]["uid"]
        for p in k.list("pods", "qmo.dev/model=gated,app.kubernetes.io/component=serving")
    } == pods
    artifact = k.get("ma", held["status"]["artifact"]["name"])
    assert artifact is not None
    passed = next(c for c in artifact["status"]["conditions"] if c["type"] == "QualityPassed")
    assert passed["status"] == "False" and "48%" in passed["message"]
    events = k.cluster.kubectl("get", "events", "-n", k.namespace, "-o", "json").stdout
    assert "quality gate: ModelArtifact" in events
    wait_for(
        lambda: operator.metric_value("qmo_quality_gate_blocked", model="gated", namespace=k.namespace) == 1,
        timeout=30,
        description="the quality-gate metric to say blocked",
    )
    quantize_jobs = {
        job["metadata"]["name"] for job in k.list("jobs", "app.kubernetes.io/component=quantizer")
    }

    # Only the thresholds change: decided again from the recorded figures, nothing is re-quantized.
    k.apply(
        model(
            "gated",
            method="gptq",
            quantization={
                "bits": 8,
                "qualityGate": {"maxPerplexityIncreasePercent": 60, "minTop1Agreement": 0.5},
            },
            quantize_job=annotated(quality_summary(48.0, 0.55)),
        )
    )
    ready = k.wait_phase("gated", "Ready")
    assert ready["status"]["artifact"]["key"] == held["status"]["artifact"]["key"]
    gate = next(c for c in ready["status"]["conditions"] if c["type"] == "QualityGate")
    assert gate["status"] == "True" and gate["reason"] == "QualityPassed"
    # No new quantize Job (the first artifact, now released, may already be gone with its own, and its
    # eviction runs a Job of another kind).
    assert {
        job["metadata"]["name"] for job in k.list("jobs", "app.kubernetes.io/component=quantizer")
    } <= quantize_jobs
