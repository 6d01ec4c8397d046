"""The Argo CD health checks in docs/argocd/, run under a real Lua 5.1 interpreter on status fixtures.

Argo CD runs health scripts in gopher-lua, a Lua 5.1; Debian's ``lua5.1`` is the same language. The
object is handed to the script as the global ``obj``, exactly as Argo CD does, and the script's returned
table is printed back. The argocd-cm snippet must carry the same scripts byte for byte.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "docs" / "argocd"
LUA = shutil.which("lua5.1")


@pytest.fixture(autouse=True)
def lua_interpreter() -> None:
    # Not a skip: a health check nobody ran is exactly what this test exists to prevent.
    assert LUA is not None, "these tests need Lua 5.1: apt-get install -y lua5.1 (make test installs it)"


def lua_literal(value: Any) -> str:
    """A Python value (what JSON gives) as a Lua table constructor."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua 5.1 escapes for this text
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(item) for item in value) + "}"
    return "{" + ", ".join(f"[{json.dumps(k)}] = {lua_literal(v)}" for k, v in value.items()) + "}"


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    script = ARGOCD / "qmo.dev" / kind / "health.lua"
    program = (
        f"obj = {lua_literal(obj)}\n"
        f"local hs = dofile({json.dumps(str(script))})\n"
        'io.write(hs.status, "\\n", hs.message or "")\n'
    )
    assert LUA is not None
    result = subprocess.run(
        [LUA, "-"], input=program, capture_output=True, text=True, timeout=10, check=False
    )
    assert result.returncode == 0, result.stderr
    status, _, message = result.stdout.partition("\n")
    return status, message


def resource(
    kind: str, *, generation: int = 2, status: dict[str, Any] | None = None, **meta: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "qmo.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "llama", "namespace": "team", "generation": generation, **meta},
        "spec": {},
    }
    if status is not None:
        body["status"] = status
    return body


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("Ready", "Healthy"),
        ("Pending", "Progressing"),
        ("Planning", "Progressing"),
        ("Quantizing", "Progressing"),
        ("Deploying", "Progressing"),
        ("Degraded", "Degraded"),
        ("Failed", "Degraded"),
        ("SomethingNew", "Progressing"),
    ],
)
def test_quantized_model_phase_maps_to_health(phase: str, expected: str) -> None:
    status, message = health(
        "QuantizedModel",
        resource(
            "QuantizedModel", status={"phase": phase, "observedGeneration": 2, "message": f"{phase} because"}
        ),
    )
    assert status == expected
    assert message == f"{phase} because"


def test_quantized_model_with_no_status_is_progressing() -> None:
    assert health("QuantizedModel", resource("QuantizedModel"))[0] == "Progressing"


@pytest.mark.parametrize("observed", [1, None])
def test_quantized_model_with_a_stale_status_is_progressing_even_if_it_said_ready(
    observed: int | None,
) -> None:
    status = {"phase": "Ready", "message": "serving"}
    if observed is not None:
        status["observedGeneration"] = observed
    result, message = health("QuantizedModel", resource("QuantizedModel", generation=2, status=status))
    assert result == "Progressing"
    assert "generation 2" in message


def test_a_failed_model_whose_spec_was_fixed_is_progressing() -> None:
    status = {"phase": "Failed", "observedGeneration": 3, "message": "quantize Job failed"}
    assert (
        health("QuantizedModel", resource("QuantizedModel", generation=4, status=status))[0] == "Progressing"
    )


def test_quantized_model_without_a_message_reports_its_phase() -> None:
    assert health(
        "QuantizedModel", resource("QuantizedModel", status={"phase": "Deploying", "observedGeneration": 2})
    ) == (
        "Progressing",
        "Deploying",
    )


def test_quantized_model_with_a_status_but_no_phase_is_progressing() -> None:
    assert (
        health("QuantizedModel", resource("QuantizedModel", status={"observedGeneration": 2}))[0]
        == "Progressing"
    )


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("Ready", "Healthy"),
        ("Pending", "Progressing"),
        ("Quantizing", "Progressing"),
        ("Evicting", "Progressing"),
        ("Failed", "Degraded"),
    ],
)
def test_model_artifact_phase_maps_to_health(phase: str, expected: str) -> None:
    body = resource("ModelArtifact", generation=1, status={"phase": phase, "observedGeneration": 1})
    assert health("ModelArtifact", body)[0] == expected


def test_model_artifact_being_deleted_is_progressing() -> None:
    body = resource(
        "ModelArtifact",
        generation=1,
        status={"phase": "Ready", "observedGeneration": 1},
        deletionTimestamp="2026-11-24T00:00:00Z",
    )
    assert health("ModelArtifact", body) == ("Progressing", "Evicting the cached files")


@pytest.mark.parametrize(
    ("generation", "status"), [(1, None), (2, {"phase": "Ready", "observedGeneration": 1})]
)
def test_model_artifact_not_yet_observed_is_progressing(
    generation: int, status: dict[str, Any] | None
) -> None:
    assert (
        health("ModelArtifact", resource("ModelArtifact", generation=generation, status=status))[0]
        == "Progressing"
    )


def test_argocd_cm_snippet_carries_the_same_scripts() -> None:
    snippet = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert snippet["kind"] == "ConfigMap" and snippet["metadata"]["name"] == "argocd-cm"
    for kind in ("QuantizedModel", "ModelArtifact"):
        key = f"resource.customizations.health.qmo.dev_{kind}"
        assert snippet["data"][key] == (ARGOCD / "qmo.dev" / kind / "health.lua").read_text(), key
