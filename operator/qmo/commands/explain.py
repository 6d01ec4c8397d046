"""``qmo explain NAME [-n NAMESPACE]``: one QuantizedModel's story, as ``qmo.desired.explain`` tells it.

Reads the QuantizedModel, its ModelArtifact and the Events of both with qmo's own API client and the
kubeconfig (``--kubeconfig``/``$KUBECONFIG``, ``--context``; in a pod, its ServiceAccount). Exit 0 with the
story, 1 when the model does not exist or the API server cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the QuantizedModel")
    parser.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace, else default")
    parser.add_argument(
        "--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: in-cluster or ~/.kube/config"
    )
    parser.add_argument("--context", help="the kubeconfig context (default: its current one)")


def default_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace kubectl would use: the context's, the pod's own in a cluster, else default."""
    from kubernetes import config

    try:
        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError, TypeError):
        try:
            return IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
        except OSError:
            return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


class NotFound(Exception):
    pass


async def read_story(
    kubeconfig: str | None, context: str | None, namespace: str, name: str
) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """(the QuantizedModel, its ModelArtifact or None, the Events of both)."""
    from qmo.reconcile.kube import Kube, load_credentials

    kube = Kube(await asyncio.to_thread(load_credentials, kubeconfig, context))
    try:
        model = await kube.get("QuantizedModel", namespace, name)
        if model is None:
            raise NotFound(f"QuantizedModel {namespace}/{name} not found")
        artifact_name = ((model.get("status") or {}).get("artifact") or {}).get("name")
        artifact = await kube.get("ModelArtifact", namespace, artifact_name) if artifact_name else None
        events: list[dict[str, Any]] = []
        for obj in (model, artifact):
            if obj is not None:
                uid = obj["metadata"]["uid"]
                events += await kube.list("Event", namespace, field_selector=f"involvedObject.uid={uid}")
        return model, artifact, events
    finally:
        await kube.close()


def run(args: argparse.Namespace) -> int:
    from kubernetes.config import ConfigException

    from qmo.desired.explain import explain
    from qmo.reconcile.kube import ApiError

    namespace = args.namespace or default_namespace(args.kubeconfig, args.context)
    try:
        model, artifact, events = asyncio.run(read_story(args.kubeconfig, args.context, namespace, args.name))
    except NotFound as error:
        print(f"qmo explain: {error}", file=sys.stderr)
        return 1
    except ConfigException as error:
        print(
            f"qmo explain: no cluster to read from ({error}): set KUBECONFIG or pass --kubeconfig FILE",
            file=sys.stderr,
        )
        return 1
    except ApiError as error:
        print(f"qmo explain: cannot read from the API server: {error}", file=sys.stderr)
        return 1
    print(explain(model, artifact=artifact, events=events, now=datetime.now(UTC)), end="")
    return 0
