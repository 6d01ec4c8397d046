"""Every QuantizedModel decision, table-driven and with hypothesis: from an observed snapshot to what to do.

The snapshots are built the way the cluster would show them (an artifact in a phase, a Deployment with a
controller status, pods); ``decide_model`` is the one pure function ``reconcile/model.py`` applies.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmo.api.quantizedmodel import QuantizedModelSpec
from qmo.desired.common import Placement, ResolvedGPU
from qmo.desired.decision import (
    Failure,
    ModelIntent,
    ModelSnapshot,
    decide_model,
    hash_of,
    plan_model,
)
from qmo.desired.names import serving_name
from qmo.desired.verification import Verification
from qmo.planner import BUILTIN_GPUS

CONFIG = json.loads((Path(__file__).parent / "configs" / "llama-3.1-8b.json").read_text())
UID = "model-uid"
OTHER_UID = "other-model-uid"
SPEC = {
    "source": {"huggingface": {"repo": "meta-llama/Llama-3.1-8B-Instruct", "revision": "a" * 40}},
    "quantization": {"method": "awq"},
    "serving": {"gpuClass": "h100-80gb", "replicas": 2},
}
GOOD_QUALITY = {"perplexityIncreasePercent": 1.0, "top1Agreement": 0.97, "klMean": 0.01, "tokens": 4096}
BAD_QUALITY = {"perplexityIncreasePercent": 40.0, "top1Agreement": 0.5, "klMean": 0.9, "tokens": 4096}


def snapshot(
    *,
    spec: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    artifacts: tuple[dict[str, Any], ...] = (),
    deployment: dict[str, Any] | None = None,
    child_hashes: dict[str, str | None] | None = None,
    pods: tuple[dict[str, Any], ...] | None = None,
    generation: int = 1,
) -> ModelSnapshot:
    parsed = QuantizedModelSpec.model_validate(spec or SPEC)
    return ModelSnapshot(
        namespace="ns",
        name="m",
        uid=UID,
        generation=generation,
        now="2026-12-07T00:00:00Z",
        spec=parsed,
        old=old or {},
        source=parsed.source,
        resolved_source="meta-llama/Llama-3.1-8B-Instruct@main",
        config=CONFIG,
        gpu=ResolvedGPU(spec=BUILTIN_GPUS[parsed.serving.gpu_class], placement=Placement()),
        artifacts=artifacts,
        deployment=deployment,
        child_hashes=child_hashes or {},
        pods=pods,
    )


def intent_of(snap: ModelSnapshot) -> ModelIntent:
    intent = plan_model(snap)
    assert not isinstance(intent, Failure), intent
    return intent


def artifact(
    snap: ModelSnapshot,
    phase: str,
    *,
    quality: dict[str, Any] | None = None,
    owners: tuple[str, ...] = (UID,),
    key: str | None = None,
    name: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    intent = intent_of(snap)
    body = json.loads(json.dumps(intent.artifact))
    body["metadata"].update(
        name=name or intent.artifact_name,
        uid=f"uid-{name or intent.artifact_name}",
        resourceVersion="7",
        ownerReferences=[{"uid": uid, "kind": "QuantizedModel", "name": uid} for uid in owners],
    )
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    body["spec"]["key"] = key or intent.key
    body["status"] = {"phase": phase, "message": f"artifact is {phase}"}
    if quality is not None:
        body["status"]["quality"] = quality
    return body


def deployment_for(
    snap: ModelSnapshot,
    *,
    ready: int,
    updated: int | None = None,
    current: bool = True,
    observed: bool = True,
) -> dict[str, Any]:
    """The Deployment as its controller reports it: current (this plan's template) or a previous one."""
    body = json.loads(json.dumps(intent_of(snap).deployment))
    if not current:
        body["metadata"]["annotations"]["qmo.dev/desired-hash"] = "previous"
    replicas = snap.spec.serving.replicas
    body["metadata"]["generation"] = 3
    body["status"] = {
        "observedGeneration": 3 if observed else 2,
        "replicas": replicas,
        "updatedReplicas": replicas if updated is None else updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
    }
    return body


def children_hashes(snap: ModelSnapshot) -> dict[str, str | None]:
    return {child["kind"]: hash_of(child) for child in intent_of(snap).children}


def decide(snap: ModelSnapshot, verification: Verification | None = None) -> Any:
    intent = intent_of(snap)
    return decide_model(snap, intent) if verification is None else decide_model(snap, intent, verification)


def applied_kinds(decision: Any) -> list[str]:
    return [manifest["kind"] for manifest in decision.apply]


BASE = snapshot()


@pytest.mark.parametrize(
    ("name", "snap", "phase", "applies", "creates_artifact"),
    [
        ("new model: create the artifact", BASE, "Quantizing", [], True),
        (
            "artifact quantizing: wait, deploy nothing",
            snapshot(artifacts=(artifact(BASE, "Quantizing"),)),
            "Quantizing",
            [],
            False,
        ),
        (
            "weights ready: deploy everything",
            snapshot(artifacts=(artifact(BASE, "Ready", quality=GOOD_QUALITY),)),
            "Deploying",
            ["Deployment", "Service", "PodDisruptionBudget"],
            False,
        ),
        (
            "rolled out and unchanged: Ready, no write",
            snapshot(
                artifacts=(artifact(BASE, "Ready", quality=GOOD_QUALITY),),
                deployment=deployment_for(BASE, ready=2),
                child_hashes=children_hashes(BASE),
            ),
            "Ready",
            [],
            False,
        ),
        (
            "quality gate fails on a new model: nothing deploys",
            snapshot(artifacts=(artifact(BASE, "Ready", quality=BAD_QUALITY),)),
            "Degraded",
            [],
            False,
        ),
        (
            "quality gate fails with a previous artifact serving: untouched",
            snapshot(
                artifacts=(artifact(BASE, "Ready", quality=BAD_QUALITY),),
                deployment=deployment_for(BASE, ready=2, current=False),
            ),
            "Degraded",
            [],
            False,
        ),
        (
            "replicas lost after Ready: Degraded",
            snapshot(
                old={"phase": "Ready"},
                artifacts=(artifact(BASE, "Ready", quality=GOOD_QUALITY),),
                deployment=deployment_for(BASE, ready=1),
                child_hashes=children_hashes(BASE),
            ),
            "Degraded",
            [],
            False,
        ),
        (
            "new template over a serving one: roll, not Ready yet",
            snapshot(
                old={"phase": "Ready"},
                artifacts=(artifact(BASE, "Ready", quality=GOOD_QUALITY),),
                deployment=deployment_for(BASE, ready=2, current=False),
                child_hashes=children_hashes(BASE),
            ),
            "Deploying",
            ["Deployment"],
            False,
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_each_situation_gets_its_phase_and_its_writes(
    name: str, snap: ModelSnapshot, phase: str, applies: list[str], creates_artifact: bool
) -> None:
    decision = decide(snap)
    assert decision.failure is None and decision.retry is None, name
    assert decision.status["phase"] == phase, (name, decision.status["message"])
    assert applied_kinds(decision) == applies, name
    assert (decision.create_artifact is not None) == creates_artifact, name
    if creates_artifact:
        assert decision.cache_claim is not None and decision.cache_claim["kind"] == "PersistentVolumeClaim"


def test_the_gate_names_figure_and_threshold_and_holds_the_rollout() -> None:
    decision = decide(snapshot(artifacts=(artifact(BASE, "Ready", quality=BAD_QUALITY),)))
    gate = next(c for c in decision.status["conditions"] if c["type"] == "QualityGate")
    assert gate["status"] == "False" and "perplexity" in gate["message"].lower()
    assert "nothing was deployed" in decision.status["message"]
    assert any(e.reason == "Degraded" and e.type == "Warning" for e in decision.events)


def test_a_failed_artifact_fails_the_model_with_its_message() -> None:
    decision = decide(snapshot(artifacts=(artifact(BASE, "Failed"),)))
    assert decision.failure is not None and decision.failure.reason == "QuantizationFailed"
    assert "artifact is Failed" in decision.failure.message and not decision.apply


def test_a_spec_change_after_a_failure_retries_the_artifact_from_scratch() -> None:
    failed = artifact(BASE, "Failed")
    decision = decide(
        snapshot(artifacts=(failed,), old={"phase": "Failed", "observedGeneration": 1}, generation=2)
    )
    assert decision.delete_artifact is failed and decision.retry and decision.failure is None


def test_an_artifact_being_evicted_is_waited_for() -> None:
    decision = decide(snapshot(artifacts=(artifact(BASE, "Ready", deleting=True),)))
    assert decision.retry and "evicted" in decision.retry and not decision.apply


def test_a_second_model_joins_an_existing_artifact_instead_of_creating_one() -> None:
    shared = artifact(BASE, "Quantizing", owners=(OTHER_UID,))
    decision = decide(snapshot(artifacts=(shared,)))
    assert decision.create_artifact is None and decision.adopt_artifact is shared


def test_old_artifacts_are_released_only_once_the_new_one_serves() -> None:
    current = artifact(BASE, "Ready", quality=GOOD_QUALITY)
    alone = artifact(BASE, "Ready", name="old-alone", key="0" * 64)
    shared = artifact(BASE, "Ready", name="old-shared", key="1" * 64, owners=(UID, OTHER_UID))
    rolling = snapshot(
        old={"phase": "Deploying"},
        artifacts=(current, alone, shared),
        deployment=deployment_for(BASE, ready=1, updated=1),
        child_hashes=children_hashes(BASE),
    )
    assert decide(rolling).release == []
    rolled = snapshot(
        old={"phase": "Deploying"},
        artifacts=(current, alone, shared),
        deployment=deployment_for(BASE, ready=2),
        child_hashes=children_hashes(BASE),
    )
    releases = {r.name: r for r in decide(rolled).release}
    assert set(releases) == {"old-alone", "old-shared"}
    assert releases["old-alone"].remaining_owners == ()
    assert [ref["uid"] for ref in releases["old-shared"].remaining_owners] == [OTHER_UID]


def test_a_network_policy_is_applied_before_the_deployment_and_removed_when_turned_off() -> None:
    with_policy = {**SPEC, "serving": {**SPEC["serving"], "networkPolicy": {"enabled": True}}}
    base = snapshot(spec=with_policy)
    ready = artifact(base, "Ready", quality=GOOD_QUALITY)
    decision = decide(snapshot(spec=with_policy, artifacts=(ready,)))
    assert applied_kinds(decision)[:2] == ["NetworkPolicy", "Deployment"]
    assert decision.status["networkPolicy"] == serving_name("m")
    off = decide(snapshot(artifacts=(ready,), old={"networkPolicy": serving_name("m")}))
    assert off.delete == [("NetworkPolicy", serving_name("m"))] and "networkPolicy" not in off.status


def test_a_plan_that_does_not_fit_is_a_failure_naming_why() -> None:
    serving = {**SPEC["serving"], "gpuClass": "l4", "maxModelLen": 131072, "tensorParallelSize": 1}
    snap = snapshot(spec={**SPEC, "serving": serving, "quantization": {"method": "none"}})
    result = plan_model(snap)
    assert isinstance(result, Failure) and result.reason == "DoesNotFit" and "GiB" in result.message


LLAMA_405B = json.loads((Path(__file__).parent / "configs" / "llama-3.1-405b.json").read_text())


def test_max_nodes_reaches_the_plan_and_one_node_stays_the_default() -> None:
    snap = snapshot(spec={**SPEC, "quantization": {"method": "none"}})
    result = plan_model(dataclasses.replace(snap, config=LLAMA_405B))
    assert isinstance(result, Failure) and result.reason == "DoesNotFit"
    assert "needs 2 nodes of 8x h100-80gb" in result.message and "max_nodes allows 1" in result.message
    assert intent_of(snapshot(spec={**SPEC, "serving": {**SPEC["serving"], "maxNodes": 4}})).serving_plan == (
        intent_of(snapshot()).serving_plan
    )


def test_a_model_spanning_nodes_cannot_autoscale_and_is_told_which_field() -> None:
    serving = {**SPEC["serving"], "maxNodes": 2, "autoscaling": {"minReplicas": 1, "maxReplicas": 3}}
    snap = snapshot(spec={**SPEC, "serving": serving, "quantization": {"method": "none"}})
    result = plan_model(dataclasses.replace(snap, config=LLAMA_405B))
    assert isinstance(result, Failure) and result.reason == "AutoscalingUnsupported"
    assert result.message.startswith("spec.serving.autoscaling: ") and "spans 2 nodes" in result.message


def test_verification_figures_and_replan_reach_status() -> None:
    snap = snapshot(
        artifacts=(artifact(BASE, "Ready", quality=GOOD_QUALITY),),
        deployment=deployment_for(BASE, ready=2),
        child_hashes=children_hashes(BASE),
    )
    observed = {"kvCacheTokens": 100, "errorPercent": -50.0, "pods": 2, "revision": "x/2", "scrapedAt": "t"}
    verification = Verification(False, "KVCacheMismatch", "vLLM allocated 100", observed=observed)
    decision = decide(snap, verification)
    assert decision.status["plan"]["observed"] == observed
    verified = next(c for c in decision.status["conditions"] if c["type"] == "PlanVerified")
    assert (verified["status"], verified["reason"]) == ("False", "KVCacheMismatch")


# --- properties over every combination the cluster can show -------------------------------------------

PHASES = st.sampled_from([None, "Pending", "Quantizing", "Ready", "Failed"])


@st.composite
def situations(draw: st.DrawFn) -> ModelSnapshot:
    phase = draw(PHASES)
    artifacts: list[dict[str, Any]] = []
    if phase is not None:
        quality = draw(st.sampled_from([None, GOOD_QUALITY, BAD_QUALITY]))
        artifacts.append(artifact(BASE, phase, quality=quality))
    if draw(st.booleans()):
        artifacts.append(artifact(BASE, "Ready", name="previous", key="0" * 64, quality=GOOD_QUALITY))
    deployment = None
    if draw(st.booleans()):
        ready = draw(st.integers(0, 2))
        deployment = deployment_for(
            BASE,
            ready=ready,
            updated=draw(st.integers(0, 2)),
            current=draw(st.booleans()),
            observed=draw(st.booleans()),
        )
    old_phase = draw(st.sampled_from([None, "Quantizing", "Deploying", "Ready", "Degraded"]))
    return snapshot(
        old={"phase": old_phase} if old_phase else {},
        artifacts=tuple(artifacts),
        deployment=deployment,
        child_hashes=children_hashes(BASE) if draw(st.booleans()) else {},
    )


@settings(max_examples=300, deadline=None)
@given(snap=situations())
def test_properties_of_every_decision(snap: ModelSnapshot) -> None:
    decision = decide(snap)
    intent = intent_of(snap)
    mine = next((a for a in snap.artifacts if a["metadata"]["name"] == intent.artifact_name), None)
    status = (mine or {}).get("status") or {}
    weights_ready = status.get("phase") == "Ready"
    gated = weights_ready and status.get("quality") == BAD_QUALITY
    # Unready or gated weights never reach a Deployment: whatever serves keeps serving, untouched.
    if not weights_ready or gated:
        assert "Deployment" not in applied_kinds(decision)
    # Nothing the model serves from is ever deleted: qmo deletes no Deployment, and releases neither the
    # current key's artifact nor anything before the new template has rolled out.
    assert all(kind == "NetworkPolicy" for kind, _ in decision.delete)
    assert all(r.name != intent.artifact_name for r in decision.release)
    if decision.release:
        assert decision.status["phase"] == "Ready" and "Deployment" not in applied_kinds(decision)
    # Ready only when the current weights passed the gate and every replica runs them.
    if decision.status.get("phase") == "Ready":
        assert weights_ready and not gated and snap.deployment is not None
        assert hash_of(snap.deployment) == hash_of(intent.deployment)
    # The same snapshot gives the same decision.
    again = decide(snap)
    assert (again.status, again.apply, again.release) == (decision.status, decision.apply, decision.release)


@pytest.mark.parametrize(
    ("backend", "method", "quant_method"),
    [
        ("llm-compressor", "awq", "compressed-tensors"),
        ("autoawq", "awq", "awq"),
        ("gptqmodel", "gptq", "gptq"),
    ],
)
def test_the_artifact_job_runs_the_backends_own_image_and_recipe(
    backend: str, method: str, quant_method: str
) -> None:
    spec = {**SPEC, "quantization": {"method": method, "backend": backend}}
    intent = intent_of(snapshot(spec=spec))
    job = intent.artifact["spec"]["job"]
    suffix = "" if backend == "llm-compressor" else f"-{backend}"
    assert job["image"] == f"ghcr.io/qmo-dev/quantizer{suffix}:0.1.0"
    assert intent.artifact["spec"]["recipe"]["backend"] == backend
    # The plan sizes what that backend writes: AutoAWQ's and GPTQModel's native tensors, in float16.
    plan = intent.serving_plan
    assert plan.weight_format.startswith(method)
    assert ("--dtype=float16" in plan.vllm_args) == (quant_method != "compressed-tensors"), plan.vllm_args


def test_a_spec_image_wins_over_the_backends_default() -> None:
    spec = {
        **SPEC,
        "quantization": {"method": "awq", "backend": "autoawq"},
        "quantizeJob": {"image": "r/q:1"},
    }
    assert intent_of(snapshot(spec=spec)).artifact["spec"]["job"]["image"] == "r/q:1"


def test_autogptq_on_a_cpu_class_fails_before_any_job_naming_the_cpu_alternative() -> None:
    spec = {**SPEC, "quantization": {"method": "gptq", "backend": "autogptq"}}
    snap = snapshot(spec=spec)
    cpu = dataclasses.replace(BUILTIN_GPUS["h100-80gb"], name="cpu", device="cpu")
    failure = plan_model(dataclasses.replace(snap, gpu=ResolvedGPU(spec=cpu, placement=Placement())))
    assert isinstance(failure, Failure) and failure.reason == "BackendNeedsGPU"
    assert "spec.quantization.backend" in failure.message and "gptqmodel" in failure.message
    # The same model on a GPU class plans (its Job gets the GPU).
    assert (
        intent_of(snapshot(spec={**spec, "serving": {"gpuClass": "h100-80gb"}})).artifact["spec"]["job"][
            "gpus"
        ]
        == 1
    )
