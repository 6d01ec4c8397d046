"""HA handover benchmark: how long a standby replica takes to act after the leader is SIGKILLed.

Starts a private sandbox control plane, qmo's and kopf's peering CRDs, a few QuantizedModels, and operator
replicas with kopf peering (as the chart runs them with peering.enabled). Each round: the leader and one
standby run, the leader is SIGKILLed at a random moment of its keep-alive cycle, and the time until the
standby's first reconcile is measured; the standby then leads the next round. A clean exit (SIGTERM) is
measured the same way. Prints min / median / max against the peering lifetime, the bound by design.

    .venv/bin/python benchmarks/ha_handover.py --rounds 8 --lifetime 15
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from qmo.sandbox.harness import (
    EXAMPLE_REPO,
    EXAMPLE_SHA,
    HubStandIn,
    OperatorProcess,
    example_config,
    install_crds,
    provisioner,
    quantized_model,
)
from qmo.sandbox.testing import SessionCluster, private_cluster
from qmo.sandbox.wait import wait_for

CHART_CRDS = Path(__file__).resolve().parents[1] / "charts" / "quantized-model-operator" / "crds"
PEERING = "qmo-bench"
RECONCILES = "qmo_reconcile_duration_seconds_count"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--lifetime", type=int, default=15, help="qmo run --peering-lifetime (seconds)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    with private_cluster("ha", "cpu:1,h100:2x8") as (cluster, tmp):
        run(cluster, args, tmp)


def run(cluster: SessionCluster, args: argparse.Namespace, tmp: Path) -> None:
    install_crds(cluster)
    cluster.kubectl("apply", "--server-side", "-f", str(CHART_CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev")
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(peering))
    cluster.kubectl("create", "namespace", "ha")
    rng = random.Random(args.seed)
    replicas: list[OperatorProcess] = []

    def replica() -> OperatorProcess:
        log_dir = tmp / f"replica-{len(replicas)}"
        log_dir.mkdir()
        operator = OperatorProcess(
            cluster,
            hub.url,
            log_dir,
            peering=PEERING,
            extra_args=("--peering-lifetime", str(args.lifetime)),
        )
        replicas.append(operator)
        operator.start()
        return operator

    def peers() -> int:
        body = json.loads(cluster.kubectl("get", "clusterkopfpeering", PEERING, "-o", "json").stdout)
        return len(body.get("status") or {})

    def first_reconcile(operator: OperatorProcess, since: float) -> float:
        wait_for(
            lambda: operator.metric_value(RECONCILES) > 0,
            timeout=args.lifetime + 60,
            interval=0.05,
            description="the standby's first reconcile",
        )
        return time.monotonic() - since

    killed: list[float] = []
    stopped: list[float] = []
    with HubStandIn() as hub, provisioner(cluster, tmp):
        hub.add(EXAMPLE_REPO, example_config(), sha=EXAMPLE_SHA)
        for index in range(4):
            cluster.kubectl("apply", "-n", "ha", "-f", "-", input=json.dumps(quantized_model(f"ha-{index}")))
        try:
            leader = replica()
            wait_for(lambda: leader.metric_value(RECONCILES) > 0, timeout=60, description="the first leader")
            for round_ in range(args.rounds + 1):
                standby = replica()
                wait_for(lambda: peers() == 2, timeout=60, description="both keep-alives")
                assert standby.metric_value(RECONCILES) == 0, "a standby reconciled while the leader lived"
                # A random moment of the leader's keep-alive cycle: the handover depends on it.
                time.sleep(rng.uniform(0, args.lifetime))  # the fault's timing is the variable measured
                since = time.monotonic()
                if round_ < args.rounds:
                    leader.kill()
                    killed.append(first_reconcile(standby, since))
                    print(
                        f"  round {round_ + 1}: SIGKILL -> standby acting in {killed[-1]:.1f} s", flush=True
                    )
                else:
                    leader.stop()
                    stopped.append(first_reconcile(standby, since))
                    print(f"  clean exit (SIGTERM) -> standby acting in {stopped[-1]:.1f} s", flush=True)
                leader = standby
        finally:
            for operator in replicas:
                operator.stop()

    print(f"HA handover, kopf peering lifetime {args.lifetime} s, {len(killed)} SIGKILLs:")
    print(
        f"  leader SIGKILLed -> standby acting: min {min(killed):.1f} s, median {statistics.median(killed):.1f} s, "
        f"max {max(killed):.1f} s (bound by design: the lifetime)"
    )
    print(f"  leader exits cleanly -> standby acting: {stopped[0]:.1f} s")


if __name__ == "__main__":
    main()
