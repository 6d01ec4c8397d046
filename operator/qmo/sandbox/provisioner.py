"""A fake dynamic volume provisioner for the sandbox: every pending claim gets a pre-bound PersistentVolume.

The sandbox has no storage driver, and kube-scheduler refuses pods whose claims are unbound, so without
this no qmo pod would ever be scheduled. Volumes are hostPath placeholders (kwok never mounts anything);
released ones are deleted, like a real provisioner's Delete reclaim policy.

Run it as ``python -m qmo.sandbox.provisioner --kubeconfig PATH``; it polls, which is plenty for a
sandbox and keeps it to a few lines.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from kubernetes import client, config

log = logging.getLogger("qmo.sandbox.provisioner")
PROVISIONED_BY = "qmo.dev/sandbox-provisioner"


def pv_for_claim(claim: Any) -> dict[str, Any]:
    meta = claim.metadata
    spec = claim.spec
    name = f"pv-{meta.uid}"
    pv_spec: dict[str, Any] = {
        "capacity": {"storage": spec.resources.requests["storage"]},
        "accessModes": list(spec.access_modes or ["ReadWriteOnce"]),
        "persistentVolumeReclaimPolicy": "Retain",
        "hostPath": {"path": f"/var/lib/qmo-sandbox/{meta.namespace}/{meta.name}"},
        "claimRef": {
            "namespace": meta.namespace,
            "name": meta.name,
            "uid": meta.uid,
            "kind": "PersistentVolumeClaim",
        },
        "storageClassName": spec.storage_class_name or "",
    }
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {PROVISIONED_BY: "true"}},
        "spec": pv_spec,
    }


def provision_once(core: client.CoreV1Api) -> int:
    """Create volumes for unbound claims and delete released ones; returns how many it changed."""
    changed = 0
    existing = {pv.metadata.name: pv for pv in core.list_persistent_volume().items}
    for claim in core.list_persistent_volume_claim_for_all_namespaces().items:
        if claim.spec.volume_name or claim.status.phase != "Pending":
            continue
        manifest = pv_for_claim(claim)
        if manifest["metadata"]["name"] in existing:
            continue
        try:
            core.create_persistent_volume(manifest)
            changed += 1
            log.info(
                "provisioned %s for %s/%s",
                manifest["metadata"]["name"],
                claim.metadata.namespace,
                claim.metadata.name,
            )
        except client.ApiException as error:
            if error.status != 409:
                raise
    for pv in existing.values():
        annotations = pv.metadata.annotations or {}
        if annotations.get(PROVISIONED_BY) and pv.status.phase in ("Released", "Failed"):
            core.delete_persistent_volume(pv.metadata.name)
            changed += 1
    return changed


def run(kubeconfig: str, stop: threading.Event, interval: float = 0.5) -> None:
    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    while not stop.is_set():
        try:
            provision_once(core)
        except Exception as error:  # the API server may be restarting; keep going
            log.warning("provisioning pass failed: %s", error)
        stop.wait(interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(args.kubeconfig, stop, args.interval)


if __name__ == "__main__":
    main()
