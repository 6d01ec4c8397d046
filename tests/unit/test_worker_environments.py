"""The legacy quantize workers' locked environments: what each lock pins, and how an install splits it."""

from __future__ import annotations

import re

import pytest

from qmo.engine.install import VLLM_ENGINE, EngineInstallError, split_lock
from qmo.quantizer.environments import ENVS_DIR, WORKER_ENVIRONMENTS


def requirements(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, flags=re.M))


@pytest.mark.parametrize("name", sorted(WORKER_ENVIRONMENTS))
def test_every_worker_lock_pins_every_distribution_with_hashes(name: str) -> None:
    environment = WORKER_ENVIRONMENTS[name]
    text = environment.lock.read_text()
    pinned = requirements(text)
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)[1:]
    assert len(entries) == len(pinned) > 20
    for entry in entries:
        assert "--hash=sha256:" in entry, entry.splitlines()[0]
    # What the .in file asks for is exactly what the lock pins (a stale lock fails here).
    for line in (ENVS_DIR / f"{name}.in").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            package, version = line.split("==")
            assert pinned[package] == version, f"{environment.lock.name}: {package}"
    assert environment.key() != VLLM_ENGINE.key()


def test_the_archived_backends_keep_their_last_working_stack() -> None:
    for name in ("autoawq", "autogptq"):
        pinned = requirements(WORKER_ENVIRONMENTS[name].lock.read_text())
        assert (pinned["torch"], pinned["transformers"]) == ("2.6.0", "4.51.3"), name
    assert requirements(WORKER_ENVIRONMENTS["autogptq"].lock.read_text())["peft"] == "0.13.2"
    gptqmodel = requirements(WORKER_ENVIRONMENTS["gptqmodel"].lock.read_text())
    assert gptqmodel["gptqmodel"] == "7.7.0"


def test_a_source_build_is_installed_apart_from_the_rest_of_its_lock() -> None:
    environment = WORKER_ENVIRONMENTS["autogptq"]
    rest, only = split_lock(environment.lock.read_text(), environment.source_builds)
    assert list(requirements(only)) == ["auto-gptq"]
    assert "auto-gptq" not in requirements(rest)
    assert requirements(rest).keys() | {"auto-gptq"} == requirements(environment.lock.read_text()).keys()
    assert only.count("--hash=sha256:") >= 1
    # Without isolation the build uses the environment's own setuptools and wheel: they must be locked.
    assert {"setuptools", "wheel", "torch"} <= requirements(rest).keys()
    with pytest.raises(EngineInstallError, match="no pin for not-there"):
        split_lock(environment.lock.read_text(), ("not-there",))
