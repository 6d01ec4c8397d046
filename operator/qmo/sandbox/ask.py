"""``qmo sandbox ask`` and ``qmo sandbox logs``: talk to what really runs on the sandbox's real node.

``ask`` sends one completion to a QuantizedModel's ready serving pods (at their pod IPs, as the Service
would) and prints the text; ``logs`` prints a container's output, which the node keeps as files.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qmo.desired.serving import VLLM_PORT
from qmo.sandbox.testing import SessionCluster


class AskError(Exception):
    """Why the model cannot answer (not Ready, no ready pod, the request failed)."""


@dataclass(frozen=True)
class Answer:
    text: str
    pod: str
    url: str


def _json(cluster: SessionCluster, *args: str) -> Any:
    result = cluster.kubectl(*args, "-o", "json", check=False)
    if result.returncode != 0:
        raise AskError(result.stderr.strip() or result.stdout.strip())
    return json.loads(result.stdout)


def ask(
    cluster: SessionCluster,
    name: str,
    prompt: str,
    *,
    namespace: str,
    max_tokens: int = 16,
    timeout: float = 120,
) -> Answer:
    model = _json(cluster, "get", "quantizedmodel", name, "-n", namespace)
    status = model.get("status") or {}
    if status.get("phase") != "Ready":
        raise AskError(
            f"QuantizedModel {namespace}/{name} is {status.get('phase', 'Pending')}: {status.get('message', '')}"
        )
    pods = _json(cluster, "get", "pods", "-n", namespace, "-l", str(status["selector"]))["items"]
    ready = [
        pod
        for pod in pods
        if pod.get("status", {}).get("podIP")
        and any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in pod["status"].get("conditions", [])
        )
    ]
    if not ready:
        raise AskError(f"QuantizedModel {namespace}/{name} has no ready serving pod")
    pod = ready[0]
    url = f"http://{pod['status']['podIP']}:{VLLM_PORT}/v1/completions"
    # Greedy, and past an end-of-sequence token: a small model may well predict one first.
    request_body = {
        "model": name,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    body = json.dumps(request_body).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise AskError(f"{url}: {error}") from error
    return Answer(text=str(answer["choices"][0]["text"]), pod=pod["metadata"]["name"], url=url)


def container_log(node_dir: Path, pod: str, *, namespace: str, container: str | None = None) -> Path:
    """The log file of ``container`` (or the pod's only one) in the newest run of ``namespace/pod``."""
    runs = sorted(
        (node_dir / "pods").glob(f"{namespace}_{pod}_*"), key=lambda path: path.stat().st_mtime, reverse=True
    )
    if not runs:
        raise AskError(
            f"no pod {namespace}/{pod} ran on the real node (logs are kept under {node_dir / 'pods'})"
        )
    logs = sorted(runs[0].glob("*.log"))
    if container is not None:
        logs = [log for log in logs if log.stem == container]
    if len(logs) != 1:
        names = ", ".join(log.stem for log in sorted(runs[0].glob("*.log"))) or "none"
        raise AskError(f"pod {namespace}/{pod}: name one container with -c (containers: {names})")
    return logs[0]
