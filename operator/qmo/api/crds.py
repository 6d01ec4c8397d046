"""Generate the CustomResourceDefinitions from the pydantic models, so the schema has one source.

pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema: everything inlined (no
``$ref``), optional fields as plain types (no ``anyOf`` with null), int-or-string marked as such, no
``additionalProperties: false`` next to ``properties``. ``to_structural`` does exactly that conversion.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel

from qmo.api.artifact import ModelArtifactSpec, ModelArtifactStatus
from qmo.api.base import GROUP, VERSION
from qmo.api.gpuclass import GPUClassSpec
from qmo.api.quantizedmodel import QuantizedModelSpec, QuantizedModelStatus

JsonSchema = dict[str, Any]

_DROPPED_KEYS = frozenset({"title", "$defs", "additionalProperties", "const", "examples"})


def _resolve(node: Any, defs: Mapping[str, JsonSchema]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _structural(node: JsonSchema) -> JsonSchema:
    node = dict(node)
    if node.get("x-kubernetes-int-or-string"):
        # int-or-string carries no type and no anyOf branches the user must pick between.
        keep = {"description", "default", "x-kubernetes-validations"}
        return {"x-kubernetes-int-or-string": True, **{k: v for k, v in node.items() if k in keep}}
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union of {len(branches)} types structurally: {branches}")
        node = {**branches[0], **node}
        return _structural(node)
    if "const" in node:
        node["enum"] = [node["const"]]
    if "default" in node and node["default"] is None:
        del node["default"]  # "unset" is not a value a structural schema may default to
    if "description" in node:
        node["description"] = " ".join(node["description"].split())
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        # JSON Schema 2020 writes exclusive bounds as numbers; OpenAPI v3.0 (what CRDs speak) as flags.
        if isinstance(node.get(bound), int | float) and not isinstance(node[bound], bool):
            node[inclusive] = node.pop(bound)
            node[bound] = True
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.setdefault("type", "object")
    elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _structural(node["additionalProperties"])
        return {k: v for k, v in node.items() if k not in _DROPPED_KEYS - {"additionalProperties"}}
    if "properties" in node:
        node["properties"] = {name: _structural(sub) for name, sub in node["properties"].items()}
        node["type"] = "object"
    if "items" in node:
        node["items"] = _structural(node["items"])
    if "enum" in node and "type" not in node:
        node["type"] = "integer" if all(isinstance(v, int) for v in node["enum"]) else "string"
    return {k: v for k, v in node.items() if k not in _DROPPED_KEYS}


def to_structural(model: type[BaseModel]) -> JsonSchema:
    """The structural OpenAPI v3 schema of a model, as a CRD's openAPIV3Schema expects."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    resolved = _resolve(schema, schema.get("$defs", {}))
    return _structural(resolved)


def _column(
    name: str, json_path: str, type_: str = "string", priority: int = 0, description: str = ""
) -> JsonSchema:
    column: JsonSchema = {"name": name, "type": type_, "jsonPath": json_path}
    if priority:
        column["priority"] = priority
    if description:
        column["description"] = description
    return column


_AGE = _column("Age", ".metadata.creationTimestamp", "date")


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    scope: str,
    spec: type[BaseModel],
    status: type[BaseModel] | None,
    description: str,
    columns: list[JsonSchema],
    scale: JsonSchema | None = None,
) -> JsonSchema:
    properties: JsonSchema = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": to_structural(spec),
    }
    subresources: JsonSchema = {}
    if status is not None:
        properties["status"] = to_structural(status)
        subresources["status"] = {}
    if scale is not None:
        subresources["scale"] = scale
    version: JsonSchema = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": description,
                "required": ["spec"],
                "properties": properties,
            }
        },
        "additionalPrinterColumns": [*columns, _AGE],
    }
    if subresources:
        version["subresources"] = subresources
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "qmo"}},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["qmo"],
            },
            "versions": [version],
        },
    }


def build_crds() -> dict[str, JsonSchema]:
    """file name -> CRD manifest, for every kind qmo defines."""
    return {
        "qmo.dev_quantizedmodels.yaml": _crd(
            kind="QuantizedModel",
            plural="quantizedmodels",
            short_names=["qm"],
            scope="Namespaced",
            spec=QuantizedModelSpec,
            status=QuantizedModelStatus,
            description="A model to quantize in-cluster and serve with vLLM on right-sized GPUs.",
            columns=[
                _column("Phase", ".status.phase"),
                _column("Method", ".spec.quantization.method"),
                _column("GPU", ".spec.serving.gpuClass"),
                _column("TP", ".status.plan.tensorParallelSize", "integer"),
                _column("Ready", ".status.ready"),
                _column("KV Tokens", ".status.plan.kvCacheTokens", "integer", priority=1),
                _column("KV Observed", ".status.plan.observed.kvCacheTokens", "integer", priority=1),
                _column("KV Err%", ".status.plan.observed.errorPercent", "number", priority=1),
                _column("Message", ".status.message", priority=1),
                _column("Endpoint", ".status.endpoint", priority=1),
            ],
            scale={
                "specReplicasPath": ".spec.serving.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        ),
        "qmo.dev_modelartifacts.yaml": _crd(
            kind="ModelArtifact",
            plural="modelartifacts",
            short_names=["ma"],
            scope="Namespaced",
            spec=ModelArtifactSpec,
            status=ModelArtifactStatus,
            description="A quantized checkpoint in the cache, shared by every QuantizedModel that needs it.",
            columns=[
                _column("Phase", ".status.phase"),
                _column("Method", ".spec.recipe.method"),
                _column(
                    "Size",
                    ".status.size",
                    description="bytes on disk from the worker's manifest; ~ marks the planner's prediction",
                ),
                _column(
                    "PPL+%",
                    ".status.quality.perplexityIncreasePercent",
                    "number",
                    description="perplexity increase against the source, in percent",
                ),
                _column(
                    "Top1",
                    ".status.quality.top1Agreement",
                    "number",
                    description="share of tokens whose top-ranked next token matches the source's",
                ),
                _column("KL", ".status.quality.klMean", "number", priority=1),
                _column("Users", ".status.users", "integer"),
                _column("Job", ".status.jobName", priority=1),
            ],
        ),
        "qmo.dev_gpuclasses.yaml": _crd(
            kind="GPUClass",
            plural="gpuclasses",
            short_names=["gpuc"],
            scope="Cluster",
            spec=GPUClassSpec,
            status=None,
            description="A kind of GPU node the planner sizes models for (like a StorageClass for GPUs).",
            columns=[
                _column("Memory", ".spec.memoryGiB", "number"),
                _column("GPUs/Node", ".spec.gpusPerNode", "integer"),
                _column("FP8", ".spec.fp8", "boolean"),
                _column("Interconnect", ".spec.interconnect"),
                _column("Price/h", ".spec.pricePerHour", "number", priority=1),
            ],
        ),
    }


def render_crds() -> dict[str, str]:
    """file name -> YAML text, byte-for-byte what crds/ holds."""
    header = "# Generated by `qmo crds` from operator/qmo/api. Do not edit by hand.\n"
    return {
        name: header + yaml.safe_dump(crd, sort_keys=False, width=120) for name, crd in build_crds().items()
    }
