"""Build the pinned control-plane binaries from the Go module proxy, once, into a versioned cache.

No Docker and no release downloads: only ``go`` and the module proxy. ``k8s.io/kubernetes`` is not meant to
be a dependency (its go.mod points the staging modules at ``./staging``), so a small go.mod is generated in
the cache that requires it and replaces every staging module with its published ``v0.x`` twin; etcd's server
is built from the same module graph (the version Kubernetes itself pins). kwok and helm build from their own
go.mod with ``go install pkg@version``. The stamp is written last: binaries without a stamp are a broken
build and are rebuilt; a stamp with all binaries present means a warm start never touches ``go``.

KEDA (``build_keda``, ``make keda``) is opt-in and cached the same way in a directory of its own: only its
cluster test and ``qmo sandbox keda`` need it, and it is about 320 modules.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from qmo.sandbox import versions
from qmo.sandbox.versions import CachePaths

BUILD_MODULE = "qmo.dev/sandbox-build"
KEDA_BUILD_MODULE = "qmo.dev/sandbox-keda-build"
# The release date of k8s.io/kubernetes v1.37.2 (from the proxy's .info), stamped as buildDate.
KUBERNETES_BUILD_DATE = "2026-10-27T12:01:04Z"


class BuildError(RuntimeError):
    """A ``go`` command failed; the message names the step and the log to read."""


@dataclass(frozen=True)
class BuildResult:
    bin_dir: Path
    built: bool  # False when the cache was warm
    seconds: float  # this call's time; the cold build's own time is in the stamp
    stamp: dict[str, Any]


def go_mod_text() -> str:
    """The generated go.mod: Kubernetes and etcd at their pinned versions, staging modules replaced."""
    go_version = "1.26.0"
    replaces = "\n".join(
        f"\tk8s.io/{name} => k8s.io/{name} {versions.STAGING_VERSION}" for name in versions.STAGING_MODULES
    )
    return (
        f"module {BUILD_MODULE}\n\n"
        f"go {go_version}\n\n"
        "require (\n"
        f"\tk8s.io/kubernetes {versions.KUBERNETES_VERSION}\n"
        f"\tgo.etcd.io/etcd/server/v3 {versions.ETCD_VERSION}\n"
        ")\n\n"
        f"replace (\n{replaces}\n)\n"
    )


def kubernetes_ldflags() -> str:
    """Version stamps as Kubernetes' own hack/lib/version.sh sets them, so clients see the real version."""
    major, minor = versions.KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": versions.KUBERNETES_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": KUBERNETES_BUILD_DATE,
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{key}={value}" for key, value in values.items()]
    return " ".join(flags)


def kwok_ldflags() -> str:
    return f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={versions.KWOK_VERSION}"


def helm_ldflags() -> str:
    return (
        f"-s -w -X helm.sh/helm/v3/internal/version.version={versions.HELM_VERSION}"
        " -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    )


def go_env(paths: CachePaths) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(paths.gomodcache),
        GOCACHE=str(paths.gocache),
        CGO_ENABLED="0",
        # -modcacherw: a module cache the user can delete with plain `rm -rf ~/.cache/qmo`.
        GOFLAGS="-buildvcs=false -modcacherw",
    )
    return env


def is_built(paths: CachePaths) -> bool:
    return read_stamp(paths) is not None


def _complete_stamp(
    stamp_path: Path, key: str, bin_dir: Path, binaries: Iterable[str]
) -> dict[str, Any] | None:
    """A stamp naming ``key`` with every binary present and executable, or None (a broken or old build)."""
    try:
        stamp: dict[str, Any] = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("key") != key:
        return None
    if not all(os.access(bin_dir / name, os.X_OK) for name in binaries):
        return None
    return stamp


def read_stamp(paths: CachePaths) -> dict[str, Any] | None:
    """The stamp of a complete build of exactly these versions, or None."""
    return _complete_stamp(paths.stamp, versions.versions_key(), paths.bin_dir, versions.BINARIES)


@contextlib.contextmanager
def build_lock(paths: CachePaths, name: str = "build") -> Iterator[None]:
    """One build of a kind at a time per cache (``make test`` and a pytest session may race for it)."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cached_build(
    paths: CachePaths,
    bin_dir: Path,
    lock_name: str,
    what: str,
    read: Callable[[], dict[str, Any] | None],
    cold: Callable[[], dict[str, Any]],
) -> BuildResult:
    """``read()``'s stamp when the build is cached, else ``cold()`` under the build's lock (once)."""
    started = time.monotonic()
    stamp = read()
    if stamp is not None:
        return BuildResult(bin_dir, built=False, seconds=time.monotonic() - started, stamp=stamp)
    with build_lock(paths, lock_name):
        stamp = read()  # another process may have finished it while we waited
        if stamp is not None:
            return BuildResult(bin_dir, built=False, seconds=time.monotonic() - started, stamp=stamp)
        if shutil.which("go") is None:
            raise BuildError(f"{what} is built from Go modules, but `go` is not on PATH")
        stamp = cold()
    return BuildResult(bin_dir, built=True, seconds=time.monotonic() - started, stamp=stamp)


def build(paths: CachePaths | None = None, *, jobs: int = 2, out: TextIO = sys.stdout) -> BuildResult:
    """Build the control plane (what `make demo` needs) unless these versions are already cached."""
    cache = paths or CachePaths.default()
    return _cached_build(
        cache,
        cache.bin_dir,
        "build",
        "the sandbox",
        lambda: read_stamp(cache),
        lambda: _cold_build(cache, jobs=jobs, out=out),
    )


def read_helm_stamp(paths: CachePaths) -> dict[str, Any] | None:
    return _complete_stamp(paths.helm_stamp, versions.versions_key(), paths.bin_dir, ("helm",))


def build_helm(paths: CachePaths | None = None, *, jobs: int = 2, out: TextIO = sys.stdout) -> BuildResult:
    """Build helm beside the control plane unless it is cached: only the chart tests (`make test`) use it,
    so a fresh `make demo` does not wait for it."""
    cache = paths or CachePaths.default()

    def cold() -> dict[str, Any]:
        cache.bin_dir.mkdir(parents=True, exist_ok=True)
        cache.helm_stamp.unlink(missing_ok=True)
        env = dict(go_env(cache), GOBIN=str(cache.bin_dir))
        command = ["go", "install", "-p", str(jobs), "-trimpath", "-ldflags", helm_ldflags()]
        step = ("helm", [*command, f"helm.sh/helm/v3/cmd/helm@{versions.HELM_VERSION}"], cache.src_dir)
        cache.src_dir.mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = {}
        failure = _run_lane([step], cache.build_log, env, timings, out)
        if failure is not None:
            raise failure
        stamp = {"key": versions.versions_key(), "helm": versions.HELM_VERSION, "seconds": timings["helm"]}
        cache.helm_stamp.write_text(json.dumps(stamp, indent=2) + "\n")
        return stamp

    return _cached_build(cache, cache.bin_dir, "helm-build", "helm", lambda: read_helm_stamp(cache), cold)


def _cold_build(paths: CachePaths, *, jobs: int, out: TextIO) -> dict[str, Any]:
    paths.bin_dir.mkdir(parents=True, exist_ok=True)
    paths.stamp.unlink(missing_ok=True)
    module_dir = paths.src_dir / "kubernetes"
    module_dir.mkdir(parents=True, exist_ok=True)
    (module_dir / "go.mod").write_text(go_mod_text())
    env = go_env(paths)
    # -trimpath and -s -w keep the binaries small and the build cache independent of the cache location.
    go_build = ["go", "build", "-mod=mod", "-p", str(jobs), "-trimpath"]
    go_install = ["go", "install", "-p", str(jobs), "-trimpath"]
    steps: list[tuple[str, list[str], Path]] = [
        (
            "kubernetes",
            [
                *go_build,
                "-ldflags",
                kubernetes_ldflags(),
                "-o",
                str(paths.bin_dir) + "/",
                *(f"k8s.io/kubernetes/cmd/{command}" for command in versions.KUBERNETES_COMMANDS),
            ],
            module_dir,
        ),
        (
            "etcd",
            [*go_build, "-ldflags", "-s -w", "-o", str(paths.bin_dir / "etcd"), "go.etcd.io/etcd/server/v3"],
            module_dir,
        ),
        (
            "kwok",
            [*go_install, "-ldflags", kwok_ldflags(), f"sigs.k8s.io/kwok/cmd/kwok@{versions.KWOK_VERSION}"],
            paths.src_dir,
        ),
    ]
    env["GOBIN"] = str(paths.bin_dir)
    timings: dict[str, float] = {}
    total_started = time.monotonic()
    paths.build_log.write_text(
        f"== cold build of {versions.versions_key()} at {time.strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
        f"== one log per step beside this one: {paths.build_log.name.removesuffix('.log')}.<step>.log\n"
    )
    # Two lanes at once: Kubernetes is most of the work, and while it downloads modules or links (one core)
    # the other lane's kwok uses the idle core. Each step writes its own log.
    lanes = [steps[:2], steps[2:]]
    with concurrent.futures.ThreadPoolExecutor(len(lanes)) as pool:
        for failure in pool.map(lambda lane: _run_lane(lane, paths.build_log, env, timings, out), lanes):
            if failure is not None:
                raise failure
    total = round(time.monotonic() - total_started, 1)
    go_version = subprocess.run(["go", "version"], env=env, capture_output=True, text=True).stdout.strip()
    stamp = {
        "key": versions.versions_key(),
        "kubernetes": versions.KUBERNETES_VERSION,
        "etcd": versions.ETCD_VERSION,
        "kwok": versions.KWOK_VERSION,
        "go": go_version,
        "jobs": jobs,
        "cpus": os.cpu_count(),
        "seconds": total,
        "steps": timings,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    paths.stamp.write_text(json.dumps(stamp, indent=2) + "\n")
    print(f"sandbox build: all binaries built in {total:.0f} s into {paths.bin_dir}", file=out, flush=True)
    return stamp


def step_log(build_log: Path, step: str) -> Path:
    return build_log.with_name(f"{build_log.name.removesuffix('.log')}.{step}.log")


def _run_lane(
    lane: list[tuple[str, list[str], Path]],
    build_log: Path,
    env: dict[str, str],
    timings: dict[str, float],
    out: TextIO,
) -> BuildError | None:
    """Run a lane's steps in order; the first failure, with the tail of its log, or None."""
    for name, command, cwd in lane:
        print(f"sandbox build: {name} ...", file=out, flush=True)
        log_path = step_log(build_log, name)
        with open(log_path, "w") as log:
            log.write(f"== {name}: {' '.join(command)}\n")
            log.flush()
            step_started = time.monotonic()
            result = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        timings[name] = round(time.monotonic() - step_started, 1)
        if result.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
            return BuildError(
                f"building {name} failed (exit {result.returncode}); the full log is {log_path}\n{tail}"
            )
        print(f"sandbox build: {name} done in {timings[name]:.0f} s", file=out, flush=True)
    return None


def keda_go_mod_text() -> str:
    """The scratch go.mod that builds KEDA: KEDA required, its own replace and exclude lines repeated."""
    replaces = "\n".join(f"replace {line}" for line in versions.KEDA_REPLACES)
    excludes = "\n".join(f"exclude {line}" for line in versions.KEDA_EXCLUDES)
    return (
        f"module {KEDA_BUILD_MODULE}\n\n"
        "go 1.26.0\n\n"
        f"require {versions.KEDA_MODULE} {versions.KEDA_VERSION}\n\n"
        f"{replaces}\n\n{excludes}\n"
    )


def keda_ldflags() -> str:
    """The version KEDA logs at start and reports in its metrics, as its own Makefile stamps it."""
    package = f"{versions.KEDA_MODULE}/version"
    return f"-s -w -X {package}.Version={versions.KEDA_VERSION.lstrip('v')} -X {package}.GitCommit=module"


def keda_module_dir(paths: CachePaths) -> Path:
    return paths.gomodcache / f"{versions.KEDA_MODULE}@{versions.KEDA_VERSION}"


def read_keda_stamp(paths: CachePaths) -> dict[str, Any] | None:
    """The stamp of a complete KEDA build of this version (binaries and CRDs there), or None."""
    stamp = _complete_stamp(paths.keda_stamp, versions.keda_key(), paths.keda_bin_dir, versions.KEDA_COMMANDS)
    if stamp is None or not any((paths.keda_config_dir / "crd" / "bases").glob("*.yaml")):
        return None
    return stamp


def build_keda(paths: CachePaths | None = None, *, jobs: int = 2, out: TextIO = sys.stdout) -> BuildResult:
    """Build KEDA's operator and metrics adapter unless this version's build is already cached.

    Opt-in (``make keda``): about 320 modules and minutes of compiling that only the KEDA cluster test and
    someone trying KEDA in the sandbox need.
    """
    cache = paths or CachePaths.default()
    return _cached_build(
        cache,
        cache.keda_bin_dir,
        "keda-build",
        "KEDA",
        lambda: read_keda_stamp(cache),
        lambda: _cold_keda_build(cache, jobs=jobs, out=out),
    )


def _cold_keda_build(paths: CachePaths, *, jobs: int, out: TextIO) -> dict[str, Any]:
    bin_dir = paths.keda_bin_dir
    bin_dir.mkdir(parents=True, exist_ok=True)
    paths.keda_stamp.unlink(missing_ok=True)
    module_dir = paths.keda_src_dir
    module_dir.mkdir(parents=True, exist_ok=True)
    (module_dir / "go.mod").write_text(keda_go_mod_text())
    (module_dir / "go.sum").unlink(missing_ok=True)
    env = go_env(paths)
    packages = [f"{versions.KEDA_MODULE}/{package}" for package in versions.KEDA_COMMANDS.values()]
    # `go get` resolves the graph from KEDA's go.mod (the same versions its release uses) and downloads
    # it; the build then compiles both commands at once, and go names them after their directories.
    steps: list[tuple[str, list[str], Path]] = [
        ("keda-modules", ["go", "get", *(f"{package}@{versions.KEDA_VERSION}" for package in packages)], module_dir),
        (
            "keda-compile",
            [
                "go", "build", "-mod=mod", "-p", str(jobs), "-trimpath", "-ldflags", keda_ldflags(),
                "-o", str(module_dir / "bin") + "/", *packages,
            ],
            module_dir,
        ),
    ]  # fmt: skip
    timings: dict[str, float] = {}
    total_started = time.monotonic()
    paths.keda_build_log.write_text(
        f"== cold build of {versions.keda_key()} at {time.strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
        f"== one log per step beside this one: {paths.keda_build_log.name.removesuffix('.log')}.<step>.log\n"
    )
    failure = _run_lane(steps, paths.keda_build_log, env, timings, out)
    if failure is not None:
        raise failure
    for name, package in versions.KEDA_COMMANDS.items():
        os.replace(module_dir / "bin" / Path(package).name, bin_dir / name)
    # The CRDs and RBAC come with the binaries, so the Go caches stay removable once the stamp exists.
    shutil.rmtree(paths.keda_config_dir, ignore_errors=True)
    # copyfile, not copy2: the module cache is read-only, and a copy that keeps that mode is a nuisance to remove.
    shutil.copytree(keda_module_dir(paths) / "config", paths.keda_config_dir, copy_function=shutil.copyfile)
    total = round(time.monotonic() - total_started, 1)
    go_version = subprocess.run(["go", "version"], env=env, capture_output=True, text=True).stdout.strip()
    stamp = {
        "key": versions.keda_key(),
        "keda": versions.KEDA_VERSION,
        "go": go_version,
        "jobs": jobs,
        "cpus": os.cpu_count(),
        "seconds": total,
        "steps": timings,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    paths.keda_stamp.write_text(json.dumps(stamp, indent=2) + "\n")
    print(f"sandbox build: KEDA built in {total:.0f} s into {bin_dir}", file=out, flush=True)
    return stamp


def main(argv: list[str] | None = None) -> int:
    """``make sandbox-build`` (and ``make keda`` with ``--keda``). Standard library only, so make runs it
    with the system Python beside the installs of ``.venv`` and the engine: on a fresh machine the Go build
    is the longest step, and it starts first."""
    parser = argparse.ArgumentParser(prog="python -m qmo.sandbox.build")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--keda", action="store_true", help=f"build KEDA {versions.KEDA_VERSION} (opt-in) instead"
    )
    which.add_argument(
        "--helm", action="store_true", help=f"build helm {versions.HELM_VERSION} (the chart tests)"
    )
    args = parser.parse_args(argv)
    try:
        result = build_keda() if args.keda else build_helm() if args.helm else build()
    except BuildError as error:
        print(f"qmo sandbox build: {error}", file=sys.stderr)
        return 1
    what = (
        versions.keda_key()
        if args.keda
        else f"helm {versions.HELM_VERSION}"
        if args.helm
        else versions.versions_key()
    )
    print(describe(result, what))
    return 0


def describe(result: BuildResult, key: str) -> str:
    """One line for a person: what was built now, or where the cached binaries are."""
    seconds = result.stamp.get("seconds", 0)
    if result.built:
        return f"built {key} in {seconds:.0f} s"
    return f"binaries: {result.bin_dir} (cached; the cold build took {seconds:.0f} s)"


if __name__ == "__main__":
    sys.exit(main())
