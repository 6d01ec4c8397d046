from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from qmo.api.crds import render_crds, to_structural
from qmo.api.quantizedmodel import QuantizedModelSpec, parse_spec

REPO = Path(__file__).resolve().parents[2]


def minimal_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"huggingface": {"repo": "meta-llama/Llama-3.1-8B"}},
        "quantization": {"method": "awq"},
        "serving": {"gpuClass": "h100-80gb"},
    }
    spec.update(overrides)
    return spec


def test_generated_crds_match_the_committed_files() -> None:
    for name, text in render_crds().items():
        committed = (REPO / "crds" / name).read_text()
        assert committed == text, f"crds/{name} drifted from operator/qmo/api; run `qmo crds`"


def test_minimal_spec_gets_the_documented_defaults() -> None:
    spec = parse_spec(minimal_spec())
    assert spec.serving.replicas == 1
    assert spec.serving.tensor_parallel_size == "auto"
    assert spec.serving.max_nodes == 1
    assert spec.quantization.effective_bits == 4
    assert spec.quantization.group_size == 128
    assert spec.cache.access_mode == "ReadWriteMany"
    assert spec.source.huggingface is not None and spec.source.huggingface.revision == "main"


@pytest.mark.parametrize(
    ("quantization", "message"),
    [
        (
            {"method": "w8a8", "backend": "gptqmodel"},
            "spec.quantization.backend: backend gptqmodel does not quantize",
        ),
        (
            {"method": "awq", "backend": "autogptq"},
            "valid pairs: llm-compressor with any method; autoawq with awq",
        ),
        (
            {"method": "awq", "backend": "autoawq", "groupSize": -1},
            "spec.quantization.groupSize: backend autoawq",
        ),
    ],
)
def test_a_backend_that_cannot_do_the_method_is_refused_with_the_valid_pairs(
    quantization: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        parse_spec(minimal_spec(quantization=quantization))


@pytest.mark.parametrize(
    ("backend", "method"), [("autoawq", "awq"), ("gptqmodel", "gptq"), ("gptqmodel", "awq")]
)
def test_every_backend_and_method_pair_the_table_allows_is_admitted(backend: str, method: str) -> None:
    spec = parse_spec(minimal_spec(quantization={"method": method, "backend": backend}))
    assert spec.quantize_job.image_for(backend) == f"ghcr.io/qmo-dev/quantizer-{backend}:0.1.0"


def test_wire_form_round_trips_with_camel_case_keys() -> None:
    spec = parse_spec(minimal_spec(serving={"gpuClass": "l4", "maxModelLen": 4096, "tensorParallelSize": 2}))
    wire = spec.to_wire()
    assert wire["serving"]["maxModelLen"] == 4096
    assert QuantizedModelSpec.model_validate(wire) == spec


@pytest.mark.parametrize(
    ("overrides", "path_fragment"),
    [
        ({"source": {}}, "source"),
        (
            {"source": {"huggingface": {"repo": "a/b"}, "pvc": {"claimName": "x"}}},
            "source",
        ),
        ({"quantization": {"method": "awq", "bits": 8}}, "quantization"),
        ({"quantization": {"method": "fp8", "bits": 4}}, "quantization"),
        ({"quantization": {"method": "gptq", "backend": "autoawq"}}, "quantization"),
        ({"quantization": {"method": "gptq", "backend": "no-such"}}, "quantization"),
        ({"quantization": {"method": "int3"}}, "quantization.method"),
        ({"serving": {"gpuClass": "h100", "replicas": -1}}, "serving.replicas"),
        ({"serving": {"gpuClass": "h100", "tensorParallelSize": "many"}}, "serving.tensorParallelSize"),
        ({"serving": {"gpuClass": "h100", "gpuMemoryUtilization": 1.5}}, "serving.gpuMemoryUtilization"),
        ({"serving": {"gpuClass": "h100", "maxNodes": 0}}, "serving.maxNodes"),
        ({"serving": {"gpuClass": "h100", "typo": 1}}, "serving.typo"),
        (
            {
                "quantization": {
                    "method": "awq",
                    "evaluation": {"dataset": "d", "configMapRef": {"name": "t"}},
                }
            },
            "quantization.evaluation",
        ),
        ({"quantization": {"method": "awq", "evaluation": {"tokens": 64}}}, "quantization.evaluation.tokens"),
        (
            {"quantization": {"method": "awq", "evaluation": {"pvc": {"claimName": "t", "path": "/texts/"}}}},
            "quantization.evaluation.pvc.path",
        ),
        (
            {
                "quantization": {
                    "method": "awq",
                    "evaluation": {"pvc": {"claimName": "t", "path": "/../x.jsonl"}},
                }
            },
            "quantization.evaluation.pvc.path",
        ),
    ],
)
def test_invalid_specs_name_the_field(overrides: dict[str, Any], path_fragment: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_spec(minimal_spec(**overrides))
    locations = [".".join(str(part) for part in e["loc"]) for e in error.value.errors()]
    assert any(path_fragment in location for location in locations), locations


def test_structural_schema_has_no_refs_nulls_or_unions() -> None:
    text = str(to_structural(QuantizedModelSpec))
    for forbidden in ("$ref", "anyOf", "'null'", "additionalProperties': False", "title"):
        assert forbidden not in text


def test_int_or_string_fields_carry_their_cel_rules() -> None:
    serving = to_structural(QuantizedModelSpec)["properties"]["serving"]["properties"]
    tp = serving["tensorParallelSize"]
    assert tp["x-kubernetes-int-or-string"] is True
    assert "auto" in tp["x-kubernetes-validations"][0]["rule"]
    assert "type" not in tp


def test_evaluation_defaults_to_the_built_in_text_and_at_most_one_source_is_refused() -> None:
    assert parse_spec(minimal_spec()).quantization.evaluation is None
    evaluation = parse_spec(
        minimal_spec(quantization={"method": "awq", "evaluation": {}})
    ).quantization.evaluation
    assert evaluation is not None and evaluation.enabled and evaluation.tokens == 2048
    two = {"dataset": "wikitext", "pvc": {"claimName": "texts", "path": "/eval.jsonl"}}
    with pytest.raises(ValidationError, match="set at most one of dataset, configMapRef or pvc") as error:
        parse_spec(minimal_spec(quantization={"method": "awq", "evaluation": two}))
    assert [e["loc"] for e in error.value.errors()] == [("quantization", "evaluation")]


def test_the_evaluation_source_rule_is_in_the_crd_as_for_calibration() -> None:
    quantization = to_structural(QuantizedModelSpec)["properties"]["quantization"]["properties"]
    [rule] = quantization["evaluation"]["x-kubernetes-validations"]
    assert rule["message"] == "set at most one of dataset, configMapRef or pvc"
    assert rule["rule"] == quantization["calibration"]["x-kubernetes-validations"][0]["rule"]
    assert set(quantization["evaluation"]["properties"]) == {
        "enabled",
        "dataset",
        "configMapRef",
        "pvc",
        "tokens",
    }
