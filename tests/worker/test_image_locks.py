"""Each image's lock resolves on this platform: every pinned file exists on the registry with its hash, for
CPython 3.11 on x86_64 Linux, installed without a resolver (``--no-deps --require-hashes``), as in the
images and in ``make worker-envs``. A dry run: nothing is installed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qmo.quantizer.environments import WORKER_ENVIRONMENTS

REPO = Path(__file__).parents[2]
LOCKS = [
    "tests/requirements.txt",
    "images/operator/requirements.txt",
    "images/quantizer/requirements.txt",
    *(str(environment.lock.relative_to(REPO)) for environment in WORKER_ENVIRONMENTS.values()),
]


@pytest.fixture(scope="module")
def empty_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare CPython 3.11 environment, so the dry run installs every pin rather than finding it present."""
    venv = tmp_path_factory.mktemp("empty-venv")
    subprocess.run(["python3.11", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv / "bin" / "python"


@pytest.mark.parametrize("lock", LOCKS)
def test_the_lock_resolves_here_with_every_hash(lock: str, empty_python: Path) -> None:
    uv = Path(sys.executable).with_name("uv")
    pinned = set(re.findall(r"^([A-Za-z0-9_.-]+)==", (REPO / lock).read_text(), flags=re.M))
    command = [str(uv), "pip", "install", "--dry-run", "--no-deps", "--require-hashes"]
    command += ["--python", str(empty_python), "-r", str(REPO / lock)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    would_install = set(re.findall(r"^ \+ ([A-Za-z0-9_.-]+)==", done.stderr, flags=re.M))
    normalise = {name.lower().replace("_", "-") for name in pinned}
    assert {name.lower().replace("_", "-") for name in would_install} == normalise, json.dumps(
        sorted(normalise ^ {n.lower().replace("_", "-") for n in would_install})
    )
