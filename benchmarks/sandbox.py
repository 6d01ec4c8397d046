"""Benchmark the sandbox: cold build time, warm start-to-ready time, resident memory of the control plane,
and ``make demo`` end to end.

Run: ``.venv/bin/python benchmarks/sandbox.py [--runs 3] [--demo]`` (after ``make sandbox-build vllm``).
The cold build and engine install times are read from their stamps (measured when the caches were
filled); each warm run starts a private control plane from scratch in a temporary directory (fresh
certificates and etcd, the cached binaries), waits until the nodes are Ready and pods can be scheduled,
measures, and stops it. ``--demo`` times ``qmo sandbox demo`` (what ``make demo`` runs once its caches
are warm) in a private cache directory sharing only the binaries and the engine: first with no sandbox and
no tiny model (a new user's first demo, less the one-time builds), then again with everything up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qmo.engine.install import EnginePaths
from qmo.sandbox import build, versions
from qmo.sandbox.cluster import ControlPlane
from qmo.sandbox.versions import CachePaths

WARM_START_TARGET_S = 20.0
WARM_DEMO_TARGET_S = 90.0


def engine_install_seconds() -> float | None:
    try:
        return float(json.loads((EnginePaths.default().root / "install-stamp.json").read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return None


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def time_demo() -> dict[str, float]:
    """Seconds of a first and a second ``qmo sandbox demo`` in a private cache directory."""
    cache = CachePaths.default()
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="qmo-bench-demo-") as directory:
        root = Path(directory)
        (root / "bin").symlink_to(cache.bin_dir.parent, target_is_directory=True)
        (root / "engines").symlink_to(cache.root / "engines", target_is_directory=True)
        env = dict(os.environ, QMO_CACHE_DIR=str(root))
        command = [sys.executable, "-m", "qmo", "sandbox"]
        try:
            for label in ("first_demo_s", "second_demo_s"):
                started = time.monotonic()
                result = subprocess.run(
                    [*command, "demo"], env=env, capture_output=True, text=True, check=False
                )
                seconds[label] = round(time.monotonic() - started, 1)
                if result.returncode != 0:
                    raise RuntimeError(
                        f"qmo sandbox demo failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
                    )
                answer = [line for line in result.stdout.splitlines() if " ->" in line]
                print(
                    f"{label}: {seconds[label]} s; {answer[-1] if answer else 'no answer printed'}",
                    flush=True,
                )
        finally:
            subprocess.run([*command, "down"], env=env, capture_output=True, check=False)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="warm starts to time")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after ready before reading RSS")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--demo", action="store_true", help="also time a first and a second `make demo`")
    args = parser.parse_args()

    paths = CachePaths.default()
    check_started = time.monotonic()
    result = build.build(paths)
    warm_check_ms = (time.monotonic() - check_started) * 1000
    stamp = result.stamp

    starts: list[float] = []
    rss: dict[str, float] = {}
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="qmo-bench-") as directory:
            plane = ControlPlane(Path(directory), bin_dir=result.bin_dir, ephemeral=True, context="qmo-bench")
            try:
                starts.append(plane.start(timeout=120))
                if run == args.runs - 1:
                    time.sleep(args.settle)  # let the informers settle before reading memory
                    assert plane.state is not None
                    rss = {name: round(rss_mib(pid), 1) for name, pid in plane.state.pids.items()}
            finally:
                plane.stop()

    report = {
        "versions": versions.versions_key(),
        "cold_build_s": stamp.get("seconds"),
        "cold_build_steps_s": stamp.get("steps"),
        "cold_build_cpus": stamp.get("cpus"),
        "cold_build_finished": stamp.get("finished"),
        "warm_build_check_ms": round(warm_check_ms, 1),
        "warm_start_to_ready_s": starts,
        "warm_start_to_ready_median_s": round(statistics.median(starts), 2),
        "rss_mib": rss,
        "rss_total_mib": round(sum(rss.values()), 1),
        "engine_install_s": engine_install_seconds(),
        **(time_demo() if args.demo else {}),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"versions                 {report['versions']}")
        print(
            f"cold build               {report['cold_build_s']:.0f} s on {report['cold_build_cpus']} CPUs "
            f"(finished {report['cold_build_finished']}; steps {report['cold_build_steps_s']})"
        )
        print(f"warm build check         {report['warm_build_check_ms']} ms (no rebuild)")
        print(
            f"warm start-to-ready      median {report['warm_start_to_ready_median_s']} s over {args.runs} runs "
            f"{starts} (target < {WARM_START_TARGET_S:.0f} s)"
        )
        for name, mib in rss.items():
            print(f"rss {name:<25}{mib:8.1f} MiB")
        print(f"rss control plane total      {report['rss_total_mib']:8.1f} MiB")
        print(f"vLLM CPU engine install  {report['engine_install_s']} s (once; from its stamp)")
        if args.demo:
            print(
                f"make demo, first         {report['first_demo_s']} s (no sandbox, no tiny model; caches warm)"
            )
            print(
                f"make demo, again         {report['second_demo_s']} s (target < {WARM_DEMO_TARGET_S:.0f} s)"
            )
    return 0 if statistics.median(starts) < WARM_START_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
