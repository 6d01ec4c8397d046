"""Benchmark the sandbox: cold build time, warm start-to-ready time, resident memory of the control plane.

Run: ``.venv/bin/python benchmarks/sandbox.py [--runs 3]`` (after ``qmo sandbox build``). The cold build
time is read from the build stamp (measured when the cache was filled); each warm run starts a private
control plane from scratch in a temporary directory (fresh certificates and etcd, the cached binaries),
waits until fake GPU nodes are Ready and pods can be scheduled, measures, and stops it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from qmo.sandbox import build, versions
from qmo.sandbox.cluster import ControlPlane
from qmo.sandbox.versions import CachePaths

WARM_START_TARGET_S = 20.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="warm starts to time")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after ready before reading RSS")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
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
    return 0 if statistics.median(starts) < WARM_START_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
