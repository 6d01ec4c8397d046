"""``qmo run``: the operator itself (kopf), with its metrics endpoint and liveness probe."""

from __future__ import annotations

import argparse
import logging
import os
import time

# How long a peer's keep-alive holds: a replica that dies without saying goodbye (SIGKILL, a lost node) is
# presumed dead this long after its last keep-alive, and then a standby takes over. kopf's keep-alive is
# sent every lifetime - 5..10 s, so 15 s means one small PATCH per replica every 5-10 s.
DEFAULT_PEERING_LIFETIME = 15


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: in-cluster or ~/.kube/config"
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: the whole cluster",
    )
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("QMO_METRICS_PORT", "8080")))
    parser.add_argument("--metrics-host", default=os.environ.get("QMO_METRICS_HOST", "0.0.0.0"))
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint URL ('' disables)"
    )
    parser.add_argument("--peering", default="", help="kopf peering name for HA (default: standalone)")
    parser.add_argument(
        "--peering-priority",
        type=int,
        default=None,
        help="the higher acts, the rest stand by; default: older replicas first (minus the start time in "
        "microseconds), so a new replica never takes over from a healthy one",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=int(os.environ.get("QMO_PEERING_LIFETIME", str(DEFAULT_PEERING_LIFETIME))),
        help="seconds a silent peer is still presumed alive: the longest a standby waits to take over",
    )
    parser.add_argument(
        "--resync-seconds", type=float, default=float(os.environ.get("QMO_RESYNC_SECONDS", "60"))
    )
    parser.add_argument(
        "--multi-node",
        choices=("auto", "leaderworkerset", "statefulset"),
        default=os.environ.get("QMO_MULTI_NODE", "auto"),
        help="how a replica that spans nodes runs: a LeaderWorkerSet (auto: when the cluster serves "
        "leaderworkerset.x-k8s.io/v1) or one StatefulSet per replica",
    )
    parser.add_argument(
        "--prometheus-url",
        default=os.environ.get("QMO_PROMETHEUS_URL", ""),
        help="Prometheus that KEDA's triggers query for autoscaling models (e.g. "
        "http://prometheus-operated.monitoring.svc:9090); unset, they get a HorizontalPodAutoscaler",
    )
    parser.add_argument("--verbose", action="store_true")


def peering_priority(explicit: int | None, started_ns: int) -> int:
    """kopf peering priority: the higher acts. Default: minus the start time in microseconds.

    The priorities must differ: kopf pauses *every* operator when two of the same priority meet, which
    would leave no one acting. Older first means a joining replica never takes over from a healthy one;
    a tie needs two starts in the same microsecond.
    """
    return explicit if explicit is not None else -(started_ns // 1000)


def run(args: argparse.Namespace) -> int:
    import kopf
    from prometheus_client import start_http_server

    from qmo.handlers.operator import OperatorConfig, build_registry

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host)
    registry = build_registry(
        OperatorConfig(
            kubeconfig=args.kubeconfig,
            resync_seconds=args.resync_seconds,
            peering_lifetime=args.peering_lifetime,
            multi_node=args.multi_node,
            prometheus_url=args.prometheus_url or None,
        )
    )
    priority = peering_priority(args.peering_priority, time.time_ns())
    kopf.run(
        registry=registry,
        priority=priority,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=not args.peering,
        peering_name=args.peering or None,
        liveness_endpoint=args.liveness or None,
    )
    return 0
