"""Fleet benchmark: many QuantizedModels sharing few artifacts on many fake GPU nodes.

Starts a private sandbox control plane (kwok nodes), the operator as a real process, and applies N models
that share M artifacts. Prints: time from apply to all Ready, the operator's API requests per model, writes
to qmo-managed resources during a steady-state window (target 0), and the operator's peak RSS.

    .venv/bin/python benchmarks/fleet.py --models 200 --artifacts 20 --nodes 50
    .venv/bin/python benchmarks/fleet.py --sweep 100,300,1000 --nodes 200   # growth, one artifact per 10

Steady-state writes are broken down by who wrote what (from the API server's audit log), so a non-zero
figure names its source.
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from qmo.sandbox import pki, stages
from qmo.sandbox.harness import HubStandIn, OperatorProcess, example_config, install_crds, provisioner
from qmo.sandbox.testing import SessionCluster, private_cluster
from qmo.sandbox.wait import wait_for

WATCHED = (
    "quantizedmodels",
    "modelartifacts",
    "deployments",
    "services",
    "poddisruptionbudgets",
    "jobs",
    "persistentvolumeclaims",
    "events",
)
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def requests_by_verb_and_resource(metrics_text: str) -> dict[tuple[str, str], float]:
    """The operator's qmo_api_requests_total samples, keyed by (verb, resource)."""
    counts: dict[tuple[str, str], float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("qmo_api_requests_total{"):
            continue
        verb = re.search(r'verb="([A-Z]+)"', line)
        resource = re.search(r'resource="([^"]+)"', line)
        if verb and resource:
            counts[verb.group(1), resource.group(1)] = float(line.rsplit(" ", 1)[1])
    return counts


def apiserver_writes(cluster: SessionCluster) -> dict[str, float]:
    """Write requests the API server has served per resource (from its own /metrics)."""
    context = ssl.create_default_context(cafile=str(cluster.ca_cert))
    paths = cluster.plane.pki
    context.load_cert_chain(str(paths.client_cert(pki.ADMIN)), str(paths.client_key(pki.ADMIN)))
    with urllib.request.urlopen(f"{cluster.server}/metrics", context=context, timeout=30) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        verb = re.search(r'verb="([A-Z]+)"', line)
        resource = re.search(r'resource="([a-z]+)"', line)
        if verb and resource and verb.group(1) in WRITES and resource.group(1) in WATCHED:
            totals[resource.group(1)] = totals.get(resource.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def audit_writes_since(path: Path, offset: int) -> tuple[int, dict[str, int]]:
    """Writes to qmo-watched resources logged after byte ``offset``: (new offset, count per source)."""
    counts: dict[str, int] = {}
    with path.open("rb") as log:
        log.seek(offset)
        data = log.read()
    for line in data.splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if ref.get("resource") not in WATCHED or event.get("stage") != "ResponseComplete":
            continue
        who = str((event.get("user") or {}).get("username", "?")).rsplit(":", 1)[-1]
        what = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        key = f"{who} {event['verb']} {what}"
        if event.get("requestObject") is not None:
            key += " " + json.dumps(event["requestObject"], sort_keys=True)[:300]
        counts[key] = counts.get(key, 0) + 1
    return offset + len(data), counts


def status_writes_until(path: Path, offset: int, resource: str = "quantizedmodels") -> dict[str, int]:
    """How the status PATCHes of one kind up to byte ``offset`` of the audit log went: by client and response
    code; for those applied, by what they changed (the status keys, and the phase as ``from->to``); for those
    refused, by who wrote the object last before (the write the refused one's body did not know of). What
    told '11 status writes per model at 1,000' apart from a few at 200: phase changes, conflicts, or writes
    that change nothing."""
    counts: dict[str, int] = {}
    phases: dict[str, str] = {}
    last_writer: dict[str, str] = {}
    with path.open("rb") as log:
        data = log.read(offset)
    for line in data.splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if ref.get("resource") != resource or event["verb"] != "patch":
            continue
        key = f"{ref.get('namespace')}/{ref.get('name')}"
        agent = str(event.get("userAgent", "?")).split("/", 1)[0]
        code = (event.get("responseStatus") or {}).get("code", 0)
        what = f"{agent} {code}"
        if ref.get("subresource") != "status":
            if 200 <= code < 300:
                last_writer[key] = f"{agent} metadata/spec"
            continue
        sent = event.get("requestObject")
        if isinstance(sent, list):  # a JSON patch that tests what it was decided from (guarded_status_write)
            what += " tested"
            status = {
                op["path"].removeprefix("/status/"): op.get("value")
                for op in sent
                if op.get("op") != "test" and op["path"].startswith("/status/")
            }
        else:
            status = (sent or {}).get("status") or {}
        if 200 <= code < 300:
            changed = ",".join(sorted(k for k in status if k != "phase"))
            if "phase" in status:
                was, phases[key] = phases.get(key, "-"), str(status["phase"])
                what += f" phase {was}->{status['phase']}"
            what += f" [{changed}]"
            last_writer[key] = f"{agent} status"
        elif code == 409:
            what += f" (last written by {last_writer.get(key, 'its creator')})"
        counts[what] = counts.get(what, 0) + 1
    return counts


def writes_until(path: Path, offset: int) -> dict[str, int]:
    """Every write to a qmo-watched resource up to byte ``offset`` of the audit log, by client, verb,
    resource and response code: qmo's own request counter does not see kopf's writes (finalizers, handler
    progress and last-handled annotations), which also make the objects' resourceVersions move."""
    counts: dict[str, int] = {}
    with path.open("rb") as log:
        data = log.read(offset)
    for line in data.splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if ref.get("resource") not in WATCHED:
            continue
        agent = str(event.get("userAgent", "?")).split("/", 1)[0]
        code = (event.get("responseStatus") or {}).get("code", 0)
        what = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        key = f"{agent:8} {event['verb'].upper():6} {what} {code}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def models(count: int, artifacts: int, namespace: str) -> dict[str, Any]:
    items = []
    for index in range(count):
        items.append(
            {
                "apiVersion": "qmo.dev/v1alpha1",
                "kind": "QuantizedModel",
                "metadata": {"name": f"model-{index:04d}", "namespace": namespace},
                "spec": {
                    "source": {"huggingface": {"repo": f"fleet/model-{index % artifacts:03d}"}},
                    "quantization": {"method": "awq"},
                    "serving": {"gpuClass": "h100-80gb", "maxModelLen": 8192},
                },
            }
        )
    return {"apiVersion": "v1", "kind": "List", "items": items}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--artifacts", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=50, help="fake nodes with 8 H100 each")
    parser.add_argument("--steady-seconds", type=float, default=60)
    parser.add_argument("--resync-seconds", type=float, default=30)
    parser.add_argument(
        "--sweep",
        default="",
        help="comma-separated model counts, each on a fresh control plane with one artifact per 10 models; "
        "prints a growth table at the end",
    )
    args = parser.parse_args()

    if not args.sweep:
        one_fleet(args, args.models, args.artifacts)
        return
    rows = []
    for count in (int(part) for part in args.sweep.split(",")):
        rows.append(one_fleet(args, count, max(1, count // 10)))
        print(flush=True)
    print(f"growth over {args.nodes} nodes x 8 H100 (resync {args.resync_seconds:.0f} s):")
    header = ("models", "to Ready s", "req/model", "steady writes", "reconciles/min", "peak RSS MiB")
    print("  " + " | ".join(f"{h:>14}" for h in header))
    for row in rows:
        print(
            "  "
            + " | ".join(
                f"{v:>14}"
                for v in (
                    row["models"],
                    f"{row['ready_seconds']:.1f}",
                    f"{row['requests_per_model']:.1f}",
                    f"{row['steady_writes']:.0f}",
                    f"{row['steady_reconciles_per_minute']:.0f}",
                    f"{row['rss_mib']:.0f}",
                )
            )
        )


def one_fleet(args: argparse.Namespace, count: int, artifacts: int) -> dict[str, float]:
    timings = stages.StageTimings(start_delay_ms=200, run_duration_ms=1000, node_heartbeat_ms=60000)
    fleet = f"cpu:1,h100:{args.nodes}x8"
    with private_cluster("fleet", fleet, timings=timings, audit_writes=True) as (cluster, tmp):
        return run(cluster, args, tmp, count, artifacts)


def run(
    cluster: SessionCluster, args: argparse.Namespace, tmp: Path, count: int, artifact_count: int
) -> dict[str, float]:
    install_crds(cluster)
    cluster.kubectl("create", "namespace", "fleet")
    with HubStandIn() as hub, provisioner(cluster, tmp):
        for index in range(artifact_count):
            hub.add(f"fleet/model-{index:03d}", example_config(), sha=f"{index:040x}")
        operator = OperatorProcess(cluster, hub.url, tmp, resync_seconds=args.resync_seconds)
        operator.start()
        try:
            started = time.monotonic()
            # One POST per model; SessionCluster.kubectl's 60 s limit is too short for hundreds of them.
            subprocess.run(
                [str(cluster.bin_dir / "kubectl"), "create", "-f", "-"],
                input=json.dumps(models(count, artifact_count, "fleet")),
                env=cluster.env(),
                text=True,
                check=True,
                capture_output=True,
                timeout=1200,
            )

            progress = {"printed": started}

            def all_ready() -> bool:
                listed = json.loads(cluster.kubectl("get", "qm", "-n", "fleet", "-o", "json").stdout)["items"]
                ready = sum(1 for m in listed if m.get("status", {}).get("phase") == "Ready")
                now = time.monotonic()
                if now - progress["printed"] >= 30:  # a long run shows it is moving
                    progress["printed"] = now
                    print(f"  {now - started:6.0f} s: {ready}/{count} Ready", flush=True)
                return ready == count

            wait_for(all_ready, timeout=3600, interval=2, description=f"{count} models Ready")
            elapsed = time.monotonic() - started
            ready_offset = cluster.plane.audit_log.stat().st_size
            requests = operator.metric_value("qmo_api_requests_total")
            conflicts = operator.metric_value("qmo_reconcile_conflicts_total", kind="QuantizedModel")
            breakdown = requests_by_verb_and_resource(operator.metrics())
            artifacts = json.loads(cluster.kubectl("get", "ma", "-n", "fleet", "-o", "json").stdout)["items"]
            jobs = json.loads(
                cluster.kubectl(
                    "get", "jobs", "-n", "fleet", "-l", "app.kubernetes.io/component=quantizer", "-o", "json"
                ).stdout
            )["items"]

            # Steady state starts after one full resync period: artifacts recount their users on their own
            # resync timer, so those status writes are still settling, not steady state.
            time.sleep(
                args.resync_seconds + 5
            )  # a settling window of known length, not a wait for a condition
            before = apiserver_writes(cluster)
            audit_offset, _ = audit_writes_since(cluster.plane.audit_log, 0)
            reconciles_before = operator.metric_value("qmo_reconcile_duration_seconds_count")
            time.sleep(args.steady_seconds)  # the measurement window itself
            after = apiserver_writes(cluster)
            _, writers = audit_writes_since(cluster.plane.audit_log, audit_offset)
            reconciles = operator.metric_value("qmo_reconcile_duration_seconds_count") - reconciles_before
            steady_writes = {
                r: after.get(r, 0) - before.get(r, 0) for r in after if after.get(r, 0) != before.get(r, 0)
            }
            assert operator.process is not None
            rss = peak_rss_mib(operator.process.pid)
        finally:
            operator.stop()

    print(f"fleet: {count} QuantizedModels, {artifact_count} sources, {args.nodes} nodes x 8 H100")
    print(f"  artifacts created:            {len(artifacts)} (quantize Jobs: {len(jobs)})")
    print(f"  apply -> all Ready:           {elapsed:.1f} s")
    print(
        f"  operator API requests:        {requests:.0f} ({requests / count:.1f} per model, reconcile only)"
    )
    for (verb, resource), sent in sorted(breakdown.items(), key=lambda item: -item[1]):
        print(f"    {sent / count:6.2f}  {verb:6} {resource}")
    all_writes = writes_until(cluster.plane.audit_log, ready_offset)
    print("  writes to Ready per model, every client (audit log):")
    for what, sent in sorted(all_writes.items(), key=lambda item: -item[1]):
        if sent / count >= 0.05:
            print(f"    {sent / count:6.2f}  {what}")
    status_writes = status_writes_until(cluster.plane.audit_log, ready_offset)
    print(
        f"  QuantizedModel status PATCHes to Ready: {sum(status_writes.values())} "
        f"(conflicts retried: {conflicts:.0f}), by client, code and change:"
    )
    ranked_status = sorted(status_writes.items(), key=lambda item: -item[1])
    for what, sent in ranked_status[:16]:
        print(f"    {sent / count:6.2f}  {what}")
    if len(ranked_status) > 16:
        print(f"    ... {len(ranked_status) - 16} more kinds of status write")
    print(f"  steady-state reconciles:      {reconciles:.0f} in {args.steady_seconds:.0f} s")
    print(f"  steady-state writes:          {sum(steady_writes.values()):.0f} {steady_writes or ''}")
    ranked = sorted(writers.items(), key=lambda item: -item[1])
    for writer, writes in ranked[:12]:
        print(f"    {writes:6d}  {writer}")
    if len(ranked) > 12:
        print(f"    ... {len(ranked) - 12} more distinct writes")
    print(f"  operator peak RSS:            {rss:.0f} MiB", flush=True)
    return {
        "models": count,
        "ready_seconds": elapsed,
        "requests_per_model": requests / count,
        "steady_writes": sum(steady_writes.values()),
        "steady_reconciles_per_minute": reconciles * 60 / args.steady_seconds,
        "rss_mib": rss,
    }


if __name__ == "__main__":
    main()
