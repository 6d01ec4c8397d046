"""Chaos benchmark: SIGKILL the operator at random moments while a fleet converges; audit what is left.

Starts a private sandbox control plane, applies N QuantizedModels on M sources (one in ten is moved to
another method halfway, one source's models fail their quantize Job), and SIGKILLs the operator K times
at random intervals, restarting it at once. Prints the kills, the reconciles they cut across, the time
from the last kill until every model is Ready or Failed-with-reason, and the audit (``qmo.sandbox.chaos``):
duplicates, orphans and incomplete status, which must be none.

    .venv/bin/python benchmarks/chaos.py --models 60 --sources 12 --kills 25
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from qmo.sandbox import stages
from qmo.sandbox.chaos import KillCampaign, audit, settled
from qmo.sandbox.harness import HubStandIn, OperatorProcess, example_config, install_crds, provisioner
from qmo.sandbox.harness import quantized_model as model
from qmo.sandbox.testing import Kube, SessionCluster, private_cluster
from qmo.sandbox.wait import wait_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=60)
    parser.add_argument("--sources", type=int, default=12)
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--min-interval", type=float, default=0.5)
    parser.add_argument("--max-interval", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    timings = stages.StageTimings(start_delay_ms=200, run_duration_ms=1000, node_heartbeat_ms=60000)
    with private_cluster("chaos", "cpu:1,h100:20x8", timings=timings) as (cluster, tmp):
        run(cluster, args, tmp)


def run(cluster: SessionCluster, args: argparse.Namespace, tmp: Path) -> None:
    install_crds(cluster)
    cluster.kubectl("create", "namespace", "chaos")
    k = Kube(cluster, "chaos")
    slow = {"podAnnotations": {stages.RUN_DURATION_ANNOTATION: "4s"}}
    failing = {"backoffLimit": 0, "podAnnotations": {stages.FAIL_ANNOTATION: "true"}}

    def manifest(index: int, method: str = "awq") -> dict[str, Any]:
        source = index % args.sources
        return model(
            f"m-{index:04d}",
            repo=f"chaos/source-{source:03d}",
            method=method,
            serving={"maxModelLen": 4096 * (1 + index % 3)},
            quantize_job=failing if source == 0 else slow,
        )

    def apply_all(manifests: list[dict[str, Any]]) -> None:
        cluster.kubectl(
            "apply",
            "-n",
            "chaos",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": manifests}),
        )

    with HubStandIn() as hub, provisioner(cluster, tmp):
        for source in range(args.sources):
            hub.add(f"chaos/source-{source:03d}", example_config(), sha=f"{source + 1:040x}")
        operator = OperatorProcess(cluster, hub.url, tmp, resync_seconds=10)
        operator.start()
        try:
            apply_all([manifest(i) for i in range(args.models)])
            moved = [i for i in range(args.models) if i % 10 == 5]

            def halfway(kill: int) -> None:
                if kill == args.kills // 2:
                    apply_all([manifest(i, method="gptq") for i in moved])

            campaign = KillCampaign(
                operator, seed=args.seed, min_interval=args.min_interval, max_interval=args.max_interval
            )
            started = time.monotonic()
            campaign.run(args.kills, after_restart=halfway)
            last_kill = time.monotonic()

            def all_settled() -> bool:
                models = k.list("qm")
                return len(models) == args.models and all(settled(m) for m in models)

            wait_for(all_settled, timeout=900, interval=1, description="every model Ready or Failed")
            converged = time.monotonic() - last_kill
            reconciles = campaign.finish()
            models = k.list("qm")
            problems = audit(cluster, "chaos")
        finally:
            operator.stop()

    phases: dict[str, int] = {}
    for item in models:
        phases[item["status"]["phase"]] = phases.get(item["status"]["phase"], 0) + 1
    print(f"chaos: {args.models} models on {args.sources} sources ({len(moved)} moved to gptq halfway)")
    print(
        f"  SIGKILLs:                     {campaign.kills} at {min(campaign.intervals):.1f}-"
        f"{max(campaign.intervals):.1f} s intervals (seed {args.seed})"
    )
    print(f"  reconciles cut across:        {reconciles:.0f}")
    print(f"  settled after the last kill:  {converged:.1f} s ({time.monotonic() - started:.0f} s in all)")
    print(f"  phases:                       {phases}")
    print(f"  audit problems:               {len(problems)}")
    for problem in problems:
        print(f"    {problem}")


if __name__ == "__main__":
    main()
