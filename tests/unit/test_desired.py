from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from qmo.api.artifact import ArtifactJobSpec, ModelArtifactSpec
from qmo.api.quantizedmodel import ModelSource, NetworkPolicySpec, PlanStatus, QuantizationSpec, parse_spec
from qmo.api.versions import DEFAULT_VLLM_CPU_IMAGE
from qmo.commands import quantize as quantize_command
from qmo.desired.artifact import (
    artifact_recipe,
    build_evict_job,
    build_quantize_job,
    content_key,
    quantize_args,
)
from qmo.desired.common import Owner, Placement
from qmo.desired.names import MAX_DNS_LABEL, dns_label
from qmo.desired.serving import build_network_policy, build_serving_deployment, build_serving_service

GOLDEN = Path(__file__).parent / "golden"
SHA = "0e9e39f249a16976918f6564b8830bc894c89659"
OWNER = Owner(api_version="qmo.dev/v1alpha1", kind="QuantizedModel", name="llama", uid="uid-1")
ARTIFACT_OWNER = Owner(api_version="qmo.dev/v1alpha1", kind="ModelArtifact", name="llama-awq", uid="uid-2")
PLAN = PlanStatus(
    gpu_class="h100-80gb",
    gpu_memory_gib=79.18,
    tensor_parallel_size=2,
    dtype="bfloat16",
    kv_cache_dtype="fp8",
    max_model_len=8192,
    max_num_seqs=256,
    weights_gib_per_gpu=2.8,
    kv_cache_gib_per_gpu=64.0,
    overhead_gib_per_gpu=4.2,
    kv_cache_tokens=1_000_000,
    max_concurrency=122.0,
    checkpoint_bytes=5_900_000_000,
    vllm_args=["--tensor-parallel-size", "2", "--kv-cache-dtype", "fp8", "--dtype", "bfloat16"],
)


def hf_source(revision: str = SHA, secret: bool = False) -> ModelSource:
    hf: dict[str, Any] = {"repo": "meta-llama/Llama-3.1-8B", "revision": revision}
    if secret:
        hf["tokenSecretRef"] = {"name": "hf-token"}
    return ModelSource.model_validate({"huggingface": hf})


def artifact_spec(method: str = "awq", **quantization: Any) -> ModelArtifactSpec:
    """The artifact as the reconciler specs it: the normalised recipe, the evaluation beside it."""
    requested = QuantizationSpec.model_validate({"method": method, **quantization})
    recipe = artifact_recipe(requested)
    source = hf_source(secret=True)
    key = content_key(source, recipe)
    return ModelArtifactSpec(
        key=key,
        source=source,
        recipe=recipe,
        cache_claim_name="qmo-cache",
        path=key,
        predicted_bytes=5_900_000_000,
        evaluation=requested.evaluation,
        job=ArtifactJobSpec(image="quantizer:1", gpus=1, node_selector={"gpu": "h100"}),
    )


def check_golden(name: str, manifest: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.yaml"
    # Through JSON first: what the API server receives, with no YAML aliases for shared sub-dicts.
    text = yaml.safe_dump(json.loads(json.dumps(manifest)), sort_keys=True)
    if os.environ.get("QMO_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.read_text() == text, f"{path} differs; set QMO_UPDATE_GOLDEN=1 to accept the change"


def test_equivalent_recipes_share_a_key() -> None:
    explicit = artifact_recipe(QuantizationSpec(method="awq", bits=4, symmetric=False, dampening=0.5))
    implicit = artifact_recipe(QuantizationSpec(method="awq"))
    assert content_key(hf_source(), explicit) == content_key(hf_source(), implicit)


def test_token_secret_does_not_change_the_key() -> None:
    recipe = artifact_recipe(QuantizationSpec(method="gptq"))
    assert content_key(hf_source(secret=True), recipe) == content_key(hf_source(), recipe)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"method": "awq"}, {"method": "gptq"}),
        ({"method": "gptq", "bits": 4}, {"method": "gptq", "bits": 8}),
        ({"method": "gptq", "groupSize": 128}, {"method": "gptq", "groupSize": 64}),
        ({"method": "gptq", "actOrder": False}, {"method": "gptq", "actOrder": True}),
        ({"method": "awq"}, {"method": "awq", "calibration": {"samples": 64}}),
    ],
)
def test_different_recipes_get_different_keys(first: dict[str, Any], second: dict[str, Any]) -> None:
    a = artifact_recipe(QuantizationSpec.model_validate(first))
    b = artifact_recipe(QuantizationSpec.model_validate(second))
    assert content_key(hf_source(), a) != content_key(hf_source(), b)


def test_a_different_commit_is_a_different_artifact() -> None:
    recipe = artifact_recipe(QuantizationSpec(method="fp8-dynamic"))
    assert content_key(hf_source(SHA), recipe) != content_key(hf_source("1" * 40), recipe)


def test_bitsandbytes_and_none_share_the_16_bit_copy() -> None:
    nf4 = artifact_recipe(QuantizationSpec(method="bitsandbytes-nf4"))
    none = artifact_recipe(QuantizationSpec(method="none"))
    assert content_key(hf_source(), nf4) == content_key(hf_source(), none)


def test_quantize_job_golden_and_secret_only_as_env_reference() -> None:
    spec = artifact_spec("gptq", actOrder=True, calibration={"configMapRef": {"name": "texts"}})
    job = build_quantize_job(artifact=ARTIFACT_OWNER, namespace="ns", spec=spec)
    check_golden("quantize_job", job)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    } in container["env"]
    assert "hf-token" not in " ".join(container["args"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True


def test_copy_only_methods_pass_no_recipe_flags() -> None:
    args = quantize_args(artifact_spec("none"))
    assert args[:2] == ["--method", "none"]
    assert "--bits" not in args and "--calibration-samples" not in args


@pytest.mark.parametrize(
    "evaluation",
    [
        {"enabled": False},
        {"tokens": 8192},
        {"dataset": "wikitext"},
        {"configMapRef": {"name": "eval-texts"}},
        {"pvc": {"claimName": "texts", "path": "/eval.jsonl"}},
    ],
)
def test_evaluation_does_not_enter_the_key_or_the_recipe(evaluation: dict[str, Any]) -> None:
    """It does not change the weights: the same artifact, whoever measures it how."""
    spec = QuantizationSpec.model_validate({"method": "gptq", "evaluation": evaluation})
    recipe = artifact_recipe(spec)
    assert recipe.evaluation is None and "evaluation" not in recipe.to_wire()
    assert content_key(hf_source(), recipe) == content_key(
        hf_source(), artifact_recipe(QuantizationSpec(method="gptq"))
    )


def quantize_container(spec: ModelArtifactSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    pod = build_quantize_job(artifact=ARTIFACT_OWNER, namespace="ns", spec=spec)["spec"]["template"]["spec"]
    return pod["containers"][0], pod["volumes"]


@pytest.mark.parametrize(
    ("evaluation", "flags", "volume"),
    [
        (None, ["--eval-tokens", "2048"], None),
        ({"tokens": 8192}, ["--eval-tokens", "8192"], None),
        (
            {"dataset": "Salesforce/wikitext"},
            ["--eval-dataset", "Salesforce/wikitext", "--eval-tokens", "2048"],
            None,
        ),
        (
            {"configMapRef": {"name": "eval-texts"}, "tokens": 4096},
            ["--eval-dir", "/evaluation", "--eval-tokens", "4096"],
            {"name": "evaluation", "configMap": {"name": "eval-texts"}},
        ),
        (
            {"pvc": {"claimName": "texts", "path": "/held-out/eval.jsonl"}},
            ["--eval-jsonl", "/evaluation/held-out/eval.jsonl", "--eval-tokens", "2048"],
            {"name": "evaluation", "persistentVolumeClaim": {"claimName": "texts", "readOnly": True}},
        ),
        ({"enabled": False, "configMapRef": {"name": "eval-texts"}}, ["--no-eval"], None),
    ],
)
def test_quantize_job_gets_the_evaluation_flags_and_a_read_only_mount(
    evaluation: dict[str, Any] | None, flags: list[str], volume: dict[str, Any] | None
) -> None:
    spec = artifact_spec("awq", **({"evaluation": evaluation} if evaluation is not None else {}))
    container, volumes = quantize_container(spec)
    args = container["args"]
    assert args[-len(flags) :] == flags
    assert [a for a in args if a.startswith("--") and "eval" in a] == [f for f in flags if f.startswith("--")]
    mounts = [m for m in container["volumeMounts"] if m["name"] == "evaluation"]
    if volume is None:
        assert "evaluation" not in {v["name"] for v in volumes} and not mounts
    else:
        assert volume in volumes
        assert mounts == [{"name": "evaluation", "mountPath": "/evaluation", "readOnly": True}]


@pytest.mark.parametrize(
    ("evaluation", "parsed"),
    [
        (
            {"dataset": "Salesforce/wikitext", "tokens": 512},
            {"eval_dataset": "Salesforce/wikitext", "eval_tokens": 512},
        ),
        ({"configMapRef": {"name": "t"}}, {"eval_dir": Path("/evaluation"), "eval_tokens": 2048}),
        ({"pvc": {"claimName": "t", "path": "/a.jsonl"}}, {"eval_jsonl": Path("/evaluation/a.jsonl")}),
        ({"enabled": False}, {"evaluate": False}),
    ],
)
def test_the_worker_parses_the_evaluation_flags_the_job_passes(
    evaluation: dict[str, Any], parsed: dict[str, Any]
) -> None:
    """The flags are a contract with `qmo quantize`: its own parser reads what the operator writes."""
    parser = argparse.ArgumentParser()
    quantize_command.add_arguments(parser)
    args = vars(parser.parse_args(quantize_args(artifact_spec("gptq", evaluation=evaluation))))
    assert {name: args[name] for name in parsed} == parsed


def test_calibration_and_evaluation_texts_mount_side_by_side() -> None:
    spec = artifact_spec(
        "gptq",
        calibration={"configMapRef": {"name": "calib"}},
        evaluation={"configMapRef": {"name": "held-out"}},
    )
    container, volumes = quantize_container(spec)
    assert {"name": "calibration", "configMap": {"name": "calib"}} in volumes
    assert {"name": "evaluation", "configMap": {"name": "held-out"}} in volumes
    paths = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert (paths["calibration"], paths["evaluation"]) == ("/calibration", "/evaluation")
    assert container["args"][container["args"].index("--calibration-dir") + 1] == "/calibration"
    assert container["args"][container["args"].index("--eval-dir") + 1] == "/evaluation"


@pytest.mark.parametrize("method", ["none", "prequantized", "bitsandbytes-nf4"])
def test_copy_only_methods_measure_nothing_and_mount_no_evaluation_text(method: str) -> None:
    """The worker evaluates only what it quantized; a copy has no figures (the gate says NotMeasured)."""
    container, volumes = quantize_container(artifact_spec(method, evaluation={"configMapRef": {"name": "t"}}))
    assert not [a for a in container["args"] if a.startswith(("--eval", "--no-eval"))]
    assert "evaluation" not in {v["name"] for v in volumes}


def test_evict_job_removes_exactly_the_artifact_paths() -> None:
    spec = artifact_spec()
    job = build_evict_job(artifact=ARTIFACT_OWNER, namespace="ns", spec=spec)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["rm", "-rf", "--", f"/cache/{spec.key}", f"/cache/{spec.key}.partial"]


def test_a_cpu_class_serves_from_the_cpu_image_on_host_memory_without_a_gpu() -> None:
    serving = parse_spec(
        {
            "source": {"huggingface": {"repo": "a/b"}},
            "quantization": {"method": "gptq"},
            "serving": {"gpuClass": "cpu", "resources": {"requests": {"cpu": "1500m"}}},
        }
    ).serving
    cpu_plan = PLAN.model_copy(update={"gpu_memory_gib": 3.5, "tensor_parallel_size": 1})
    placement = Placement(device="cpu", node_selector={"qmo.dev/node": "cpu"})
    deployment = build_serving_deployment(
        model="tiny",
        namespace="ns",
        owner=OWNER,
        serving=serving,
        plan=cpu_plan,
        artifact_key="ab" * 32,
        artifact_path="ab" * 32,
        placement=placement,
    )
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == DEFAULT_VLLM_CPU_IMAGE
    assert container["resources"] == {"requests": {"cpu": "1500m", "memory": "3584Mi"}}
    assert pod["nodeSelector"] == {"qmo.dev/node": "cpu"}
    job = artifact_spec().job.model_copy(
        update={"gpus": 0, "device": "cpu", "node_selector": {"qmo.dev/node": "cpu"}}
    )
    job_pod = build_quantize_job(
        artifact=ARTIFACT_OWNER, namespace="ns", spec=artifact_spec().model_copy(update={"job": job})
    )["spec"]["template"]["spec"]
    assert job_pod["nodeSelector"] == {"qmo.dev/node": "cpu"}
    assert "nvidia.com/gpu" not in json.dumps(job_pod["containers"][0].get("resources", {}))


def test_serving_deployment_golden_and_planned_args() -> None:
    serving = parse_spec(
        {
            "source": {"huggingface": {"repo": "a/b"}},
            "quantization": {"method": "awq"},
            "serving": {"gpuClass": "h100-80gb", "replicas": 2, "extraArgs": ["--enable-prefix-caching"]},
        }
    ).serving
    placement = Placement(
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
    )
    deployment = build_serving_deployment(
        model="llama",
        namespace="ns",
        owner=OWNER,
        serving=serving,
        plan=PLAN,
        artifact_key="ab" * 32,
        artifact_path="ab" * 32,
        placement=placement,
    )
    check_golden("serving_deployment", deployment)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][-1] == "--enable-prefix-caching"
    assert container["args"][container["args"].index("--tensor-parallel-size") + 1] == "2"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_builders_are_deterministic() -> None:
    spec = artifact_spec()
    first = build_quantize_job(artifact=ARTIFACT_OWNER, namespace="ns", spec=spec)
    second = build_quantize_job(artifact=ARTIFACT_OWNER, namespace="ns", spec=artifact_spec())
    assert yaml.safe_dump(first) == yaml.safe_dump(second)


@pytest.mark.parametrize("name", ["llama", "a" * 63, "a" * 200, "Llama_3.1", "9lives", "x--y"])
def test_dns_labels_are_valid_and_short(name: str) -> None:
    label = dns_label(name, "vllm")
    assert len(label) <= MAX_DNS_LABEL
    assert label[0].isalpha() and label[-1].isalnum()
    assert all((c.isalnum() and c.islower()) or c.isdigit() or c == "-" for c in label)


def test_shortened_names_do_not_collide() -> None:
    assert dns_label("a" * 70 + "x") != dns_label("a" * 70 + "y")
    assert dns_label("a.b") != dns_label("a_b")
    assert dns_label("llama", "vllm") == "llama-vllm"


def test_artifact_names_are_readable_and_keyed() -> None:
    from qmo.desired.names import artifact_name

    name = artifact_name("Llama-3.1-8B-Instruct", "awq", "19213e27d4" + "0" * 54)
    assert name == "llama-3-1-8b-instruct-awq-19213e27d4"
    assert artifact_name("x" * 300, "fp8-dynamic", "f" * 64).endswith("fp8-dynamic-ffffffffff")


def test_network_policy_admits_only_the_listed_peers_to_the_serving_port_of_this_models_pods() -> None:
    peers = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}},
    ]
    spec = NetworkPolicySpec.model_validate({"enabled": True, "ingressFrom": peers})
    policy = build_network_policy(model="llama", namespace="team", owner=OWNER, policy=spec)
    service = build_serving_service(model="llama", namespace="team", owner=OWNER)
    assert policy["spec"]["podSelector"] == {"matchLabels": service["spec"]["selector"]}
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress is left to the cluster's own policies
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert rule["from"] == [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": "gateway"},
                "matchExpressions": [],
            }
        },
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}},
    ]
    assert policy["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid


def test_network_policy_without_peers_admits_the_models_own_namespace_only() -> None:
    policy = build_network_policy(
        model="llama", namespace="team", owner=OWNER, policy=NetworkPolicySpec(enabled=True)
    )
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]


@pytest.mark.parametrize(
    "peer",
    [
        {},
        {"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}},
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}},
    ],
)
def test_an_ingress_peer_is_pods_namespaces_or_an_ip_block(peer: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="ingressFrom"):
        parse_spec(
            {
                "source": {"huggingface": {"repo": "a/b"}},
                "quantization": {"method": "awq"},
                "serving": {"gpuClass": "l4", "networkPolicy": {"enabled": True, "ingressFrom": [peer]}},
            }
        )
