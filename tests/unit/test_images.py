"""The Dockerfiles cannot be built here (no Docker engine); check what can be checked by reading them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qmo.cli import SUBCOMMANDS

IMAGES = Path(__file__).resolve().parents[2] / "images"
EXPECTED_ENTRYPOINT = {
    "operator": ["qmo", "run"],
    "quantizer": ["qmo", "quantize"],
    "quantizer-legacy": ["qmo", "quantize"],
}


def instructions(name: str) -> list[tuple[str, str]]:
    text = (IMAGES / name / "Dockerfile").read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


@pytest.mark.parametrize("name", sorted(EXPECTED_ENTRYPOINT))
def test_base_images_are_pinned(name: str) -> None:
    for keyword, rest in instructions(name):
        if keyword == "FROM":
            image = rest.split()[0]
            assert ":" in image or "@sha256:" in image, image
            assert not image.endswith(":latest"), image


@pytest.mark.parametrize("name", sorted(EXPECTED_ENTRYPOINT))
def test_the_final_stage_runs_as_a_non_root_user(name: str) -> None:
    users = [rest for keyword, rest in instructions(name) if keyword == "USER"]
    assert users, f"{name} sets no USER"
    assert users[-1].split(":")[0] not in ("0", "root")


@pytest.mark.parametrize("name", sorted(EXPECTED_ENTRYPOINT))
def test_the_entrypoint_is_a_real_qmo_subcommand(name: str) -> None:
    [entrypoint] = [json.loads(rest) for keyword, rest in instructions(name) if keyword == "ENTRYPOINT"]
    assert entrypoint == EXPECTED_ENTRYPOINT[name]
    assert entrypoint[1] in SUBCOMMANDS


@pytest.mark.parametrize("name", ["quantizer", "quantizer-legacy"])
def test_python_packages_are_pinned(name: str) -> None:
    installs = " ".join(
        rest for keyword, rest in instructions(name) if keyword == "RUN" and "pip install" in rest
    )
    quoted = re.findall(r'"([^"]+)"', installs)
    unpinned = [spec for spec in quoted if "==" not in spec and not spec.startswith(".")]
    assert not unpinned, f"unpinned packages in {name}: {unpinned}"
    assert "torch==" in installs and "transformers==" in installs


def test_the_operator_image_has_no_torch() -> None:
    text = (IMAGES / "operator" / "Dockerfile").read_text()
    assert "torch" not in text.replace("no torch", "")
    assert "[quantizer]" not in text
