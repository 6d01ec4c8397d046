"""A fake dynamic volume provisioner for the sandbox: every pending claim gets a pre-bound PersistentVolume.

The sandbox has no storage driver, and kube-scheduler refuses pods whose claims are unbound, so without
this no qmo pod would ever be scheduled. Volumes are hostPath placeholders (kwok never mounts anything);
released ones are deleted, like a real provisioner's Delete reclaim policy.

Run it as ``python -m qmo.sandbox.provisioner --kubeconfig PATH``; it polls, which is plenty for a
sandbox and keeps it to a few lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from qmo.reconcile.kube import ApiError, Kube, load_credentials

log = logging.getLogger("qmo.sandbox.provisioner")
PROVISIONED_BY = "qmo.dev/sandbox-provisioner"


def pv_for_claim(claim: dict[str, Any]) -> dict[str, Any]:
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pv-{meta['uid']}", "annotations": {PROVISIONED_BY: "true"}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": f"/var/lib/qmo-sandbox/{meta['namespace']}/{meta['name']}"},
            "claimRef": {
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "storageClassName": spec.get("storageClassName") or "",
        },
    }


async def provision_once(kube: Kube) -> int:
    """Create volumes for unbound claims and delete released ones; returns how many it changed."""
    changed = 0
    volumes = {pv["metadata"]["name"]: pv for pv in await kube.list("PersistentVolume", None)}
    for claim in await kube.list("PersistentVolumeClaim", None):
        if claim["spec"].get("volumeName") or claim.get("status", {}).get("phase") != "Pending":
            continue
        volume = pv_for_claim(claim)
        if volume["metadata"]["name"] in volumes:
            continue
        try:
            await kube.create(volume)
        except ApiError as error:
            if error.status != 409:
                raise
        else:
            changed += 1
            log.info("provisioned %s for %s/%s", volume["metadata"]["name"], *_where(claim))
    for name, pv in volumes.items():
        ours = (pv["metadata"].get("annotations") or {}).get(PROVISIONED_BY)
        if ours and pv.get("status", {}).get("phase") in ("Released", "Failed"):
            await kube.delete("PersistentVolume", None, name)
            changed += 1
    return changed


def _where(claim: dict[str, Any]) -> tuple[str, str]:
    return claim["metadata"]["namespace"], claim["metadata"]["name"]


async def run(kubeconfig: str, stop: asyncio.Event, interval: float = 0.5) -> None:
    kube = Kube(load_credentials(kubeconfig))
    try:
        while not stop.is_set():
            try:
                await provision_once(kube)
            except ApiError as error:  # the API server may be restarting; keep going
                log.warning("provisioning pass failed: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
    finally:
        await kube.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run(args.kubeconfig, stop, args.interval)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
