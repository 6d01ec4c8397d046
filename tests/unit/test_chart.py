"""The Helm chart's data, checked against the code it packages, without helm or a cluster.

What needs helm (lint, template) or an API server (dry-run, install, RBAC) lives in
tests/cluster/test_chart_on_cluster.py. Here: the chart's CRDs are the generated ones, its default GPUClasses are the
planner's catalog, its RBAC grants exactly the API calls qmo's code makes, and docs/reference.md is the
CRD schema rendered.
"""

from __future__ import annotations

import ast
import json
import runpy
from pathlib import Path
from typing import Any

import pytest
import yaml

import qmo
from qmo.api.crds import render_crds
from qmo.api.gpuclass import GPUClassSpec
from qmo.planner import BUILTIN_GPUS
from qmo.reconcile.cache import WATCHED_KINDS
from qmo.reconcile.gpus import BUILTIN_PRODUCT_LABELS, GPU_TOLERATION
from qmo.reconcile.kube import API_VERSIONS, KINDS

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "quantized-model-operator"
OPERATOR = REPO / "operator" / "qmo"

# The GPUClasses the chart ships by default (the issue's list).
SHIPPED_GPU_CLASSES = ("h100-80gb", "h200", "a100-80gb", "a100-40gb", "l40s", "l4", "a10g")
PEERING_CRDS = ("kopf.dev_clusterkopfpeerings.yaml", "kopf.dev_kopfpeerings.yaml")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_chart_crds_are_the_generated_ones() -> None:
    generated = render_crds()
    for name, text in generated.items():
        assert (CHART / "crds" / name).read_text() == text, (
            f"charts/quantized-model-operator/crds/{name} drifted: copy crds/{name} into the chart"
        )
    extra = sorted({p.name for p in (CHART / "crds").iterdir()} - set(generated))
    assert extra == sorted(PEERING_CRDS)


def test_peering_crds_are_kopfs() -> None:
    for name, scope, kind in zip(
        PEERING_CRDS, ("Cluster", "Namespaced"), ("ClusterKopfPeering", "KopfPeering"), strict=True
    ):
        crd = load_yaml(CHART / "crds" / name)
        assert crd["spec"]["group"] == "kopf.dev"
        assert crd["spec"]["scope"] == scope
        assert crd["spec"]["names"]["kind"] == kind
        assert [v["name"] for v in crd["spec"]["versions"]] == ["v1"]


def test_app_version_is_the_package_version() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["appVersion"] == qmo.__version__
    assert chart["name"] == "quantized-model-operator"


def test_values_schema_describes_every_default_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = load_yaml(CHART / "values.yaml")
    assert schema["additionalProperties"] is False
    assert set(values) <= set(schema["properties"]), set(values) - set(schema["properties"])


@pytest.mark.parametrize("name", SHIPPED_GPU_CLASSES)
def test_default_gpu_classes_are_the_planners_catalog(name: str) -> None:
    values = load_yaml(CHART / "values.yaml")["gpuClasses"]
    entry = values["classes"][name]
    # What templates/gpuclasses.yaml renders from the entry.
    spec = GPUClassSpec.model_validate(
        {
            **entry,
            "nodeSelector": {"nvidia.com/gpu.product": entry["product"]},
            "tolerations": values["tolerations"],
        }
    )
    builtin = BUILTIN_GPUS[name]
    assert spec.memory_gib == builtin.memory_gib
    assert spec.gpus_per_node == builtin.gpus_per_node
    assert spec.fp8 == builtin.fp8
    assert spec.interconnect == builtin.interconnect
    assert entry["product"] == BUILTIN_PRODUCT_LABELS[name]
    assert values["tolerations"] == [GPU_TOLERATION]


def test_default_gpu_classes_are_exactly_the_shipped_list() -> None:
    assert sorted(load_yaml(CHART / "values.yaml")["gpuClasses"]["classes"]) == sorted(SHIPPED_GPU_CLASSES)


# --- RBAC: the grants are derived from the code, call by call -------------------------------------------

# Kube methods -> the RBAC verbs the request needs. Server-side apply is a PATCH that creates the object
# the first time, and the API server then also checks `create`.
METHOD_VERBS = {
    "get": {"get"},
    "list": {"list"},
    "create": {"create"},
    "apply": {"patch", "create"},
    "patch": {"patch"},
    "delete": {"delete"},
}

# Calls whose kind is not a string literal: the expression -> the kinds it can be. A new call the table does
# not know fails the test, so a new API request cannot slip in without its grant.
DYNAMIC_KINDS = {
    "owner_kind": {"QuantizedModel", "ModelArtifact"},
    "kind": {"QuantizedModel", "ModelArtifact"},
    "child_kind": {"Service", "PodDisruptionBudget", "NetworkPolicy"},
    "child": {
        "NetworkPolicy",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "StatefulSet",
        "LeaderWorkerSet",
        "HorizontalPodAutoscaler",
        "ScaledObject",
    },
    "autoscaler_kind": {"HorizontalPodAutoscaler", "ScaledObject"},
    "released_kind": {"HorizontalPodAutoscaler", "ScaledObject"},
    "decision.replicas_handoff": {"Deployment"},
    # a NetworkPolicy turned off; what served a model before it changed between one node and several
    "doomed_kind": {"NetworkPolicy", "Deployment", "StatefulSet", "Service", "LeaderWorkerSet"},
    "claim": {"PersistentVolumeClaim"},
    "artifact": {"ModelArtifact"},
    # builder calls, by the builder's name
    "build_quantize_job": {"Job"},
    "build_evict_job": {"Job"},
    "build_inspect_job": {"Job"},
}

# kopf handler decorators -> what kopf does on the watched resource: every handler lists and watches it;
# the state-changing ones (create/update/resume/delete/timer) also PATCH its annotations and finalizers.
KOPF_WATCHING = {"event"}
KOPF_CHANGING = {"create", "update", "resume", "delete", "timer"}

# What kopf itself needs beyond the handlers' resources: Events (kopf.event posts core v1 Events) and CRD
# watching (kopf re-scans a group when its CRDs change).
KOPF_ITSELF = {
    ("", "events"): {"create"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}


def group_and_plural(kind: str) -> tuple[str, str]:
    api_version = API_VERSIONS[kind]
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    return group, KINDS[kind][0]


def calls_to_kube() -> dict[tuple[str, str], set[str]]:
    """(group, resource) -> verbs, from every ``<...>kube.<method>(...)`` call in reconcile/ and handlers/."""
    needed: dict[tuple[str, str], set[str]] = {}
    files = [*sorted((OPERATOR / "reconcile").glob("*.py")), OPERATOR / "handlers" / "operator.py"]
    for path in files:
        if path.name == "kube.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = node.func.value
            is_kube = (isinstance(receiver, ast.Attribute) and receiver.attr == "kube") or (
                isinstance(receiver, ast.Name) and receiver.id == "kube"
            )
            if not is_kube or node.func.attr not in METHOD_VERBS:
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                kinds = {first.value}
            else:
                callee = first.func if isinstance(first, ast.Call) else first
                expression = ast.unparse(callee)
                assert expression in DYNAMIC_KINDS, (
                    f"{path.name}:{node.lineno}: which kinds can {expression!r} be?"
                )
                kinds = DYNAMIC_KINDS[expression]
            subresource = next(
                (
                    k.value.value
                    for k in node.keywords
                    if k.arg == "subresource" and isinstance(k.value, ast.Constant)
                ),
                "",
            )
            for kind in kinds:
                group, plural = group_and_plural(kind)
                resource = f"{plural}/{subresource}" if subresource else plural
                needed.setdefault((group, resource), set()).update(METHOD_VERBS[node.func.attr])
    return needed


def kopf_handlers() -> dict[tuple[str, str], set[str]]:
    """(group, resource) -> verbs kopf needs for the resources the handlers are registered on."""
    tree = ast.parse((OPERATOR / "handlers" / "operator.py").read_text())
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    needed: dict[tuple[str, str], set[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if not (name.startswith("kopf.on.") or name == "kopf.timer"):
            continue
        cause = name.rsplit(".", 1)[1]
        args = [constants[a.id] if isinstance(a, ast.Name) else a.value for a in node.args]  # type: ignore[attr-defined]
        if not args:
            continue  # startup, login, cleanup: no resource
        group, plural = (args[0], args[-1]) if len(args) in (2, 3) else ("", args[0])
        group = "" if group == "v1" else group
        verbs = {"list", "watch"} | ({"patch"} if cause in KOPF_CHANGING else set())
        assert cause in KOPF_CHANGING | KOPF_WATCHING, f"unknown kopf cause {cause}"
        needed.setdefault((group, plural), set()).update(verbs)
    # The watch cache's indexes (registered in a loop over WATCHED_KINDS): kopf lists and watches each.
    for watched in WATCHED_KINDS:
        needed.setdefault((watched.group, watched.plural), set()).update({"list", "watch"})
    return needed


def needed_grants() -> dict[tuple[str, str], set[str]]:
    needed: dict[tuple[str, str], set[str]] = {}
    for source in (calls_to_kube(), kopf_handlers(), KOPF_ITSELF):
        for key, verbs in source.items():
            needed.setdefault(key, set()).update(verbs)
    return needed


def granted(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def rbac_rules() -> dict[str, Any]:
    rules: dict[str, Any] = load_yaml(CHART / "files" / "rbac-rules.yaml")
    return rules


def test_rbac_grants_exactly_what_the_code_calls() -> None:
    rules = rbac_rules()
    grants = granted([*rules["namespaced"], rules["tokenSecrets"], *rules["cluster"], *rules["nodes"]])
    assert grants == needed_grants()


def test_rbac_has_no_wildcards_and_no_broad_reads() -> None:
    rules = rbac_rules()
    every = [*rules["namespaced"], rules["tokenSecrets"], *rules["cluster"], *rules["clusterPeering"]]
    every += rules["nodes"]
    every += rules["namespacedPeering"]
    for rule in every:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"escalate", "bind", "impersonate", "deletecollection", "update"} & set(rule["verbs"])
    grants = granted(every)
    assert grants[("", "secrets")] == {"get"}, "Secrets: get the named token only, never list or watch"
    # Pods are their controllers' to delete; qmo deletes only what it made and no longer wants.
    assert grants[("", "pods")] == {"list", "watch"}
    assert granted(rules["nodes"]) == {("", "nodes"): {"list"}}, "Nodes: list their shapes, nothing more"
    assert ("", "namespaces") not in grants, "cluster-wide kopf never lists namespaces"
    cluster_scoped = {key for key in granted(rules["cluster"])}
    assert cluster_scoped == {
        ("qmo.dev", "gpuclasses"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
    }


def test_namespaced_mode_adds_only_namespace_names() -> None:
    # kopf matches its --namespace list against the cluster's namespaces (list+watch; names only).
    assert granted(rbac_rules()["namespacedMode"]) == {("", "namespaces"): {"list", "watch"}}


def test_peering_rules_cover_kopfs_keepalives() -> None:
    rules = rbac_rules()
    assert granted(rules["clusterPeering"]) == {
        ("kopf.dev", "clusterkopfpeerings"): {"list", "watch", "patch"}
    }
    assert granted(rules["namespacedPeering"]) == {("kopf.dev", "kopfpeerings"): {"list", "watch", "patch"}}


# --- docs/reference.md is the schema, rendered ----------------------------------------------------------


def test_crd_reference_is_up_to_date() -> None:
    generator = runpy.run_path(str(REPO / "docs" / "gen_crd_reference.py"))
    expected = generator["render_reference"]()
    assert (REPO / "docs" / "reference.md").read_text() == expected, (
        "docs/reference.md is stale: run .venv/bin/python docs/gen_crd_reference.py"
    )
