"""A stand-in for a custom-metrics adapter (prometheus-adapter): ``custom.metrics.k8s.io`` for pods.

The real HPA controller (kube-controller-manager) reads Pods metrics through the aggregation layer: it
asks kube-apiserver for ``/apis/custom.metrics.k8s.io/v1beta2/namespaces/NS/pods/*/METRIC?labelSelector=``
and kube-apiserver proxies that to the APIService's backend. This module is that backend, answering with
values a test sets, so an autoscaler is driven by the real controller, through the real aggregator.

How it is reached (what works in the sandbox, checked against kube-apiserver v1.37):
- with ``--enable-aggregator-routing=true`` kube-apiserver dials an endpoint of the APIService's Service,
  but an EndpointSlice may not hold a loopback address (127.0.0.0/8 is refused by validation, and so is
  link-local 169.254.0.0/16), and every sandbox process listens on 127.0.0.1 only;
- without it (the default, and the sandbox's setting) kube-apiserver dials the Service's cluster IP, which
  needs kube-proxy (none here), or for a Service of type ExternalName the name it names: an ExternalName
  Service ``localhost`` sends the proxied requests to this server on 127.0.0.1. kube-apiserver checks the
  server's certificate for ``<service>.<namespace>.svc`` against the APIService's caBundle, so the server
  gets a certificate for that name from a CA of its own.

The load is modelled as a total spread evenly over the pods the HPA asks about (the Service balances
requests), so replicas settle where the per-pod value meets the target instead of growing forever.
Authentication of the proxied requests (the front-proxy client certificate and X-Remote-User) is not
checked: only kube-apiserver can reach 127.0.0.1's port from the cluster's side.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from qmo.sandbox import pki

GROUP = "custom.metrics.k8s.io"
VERSION = "v1beta2"
PodLister = Callable[[str, str], Sequence[str]]
"""(namespace, label selector) -> names of the pods the selector matches."""


def apiservice_manifest(*, namespace: str, service: str, port: int, ca_bundle: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": f"{VERSION}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "version": VERSION,
            "service": {"namespace": namespace, "name": service, "port": port},
            "caBundle": base64.b64encode(ca_bundle).decode(),
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }


def external_name_service(*, namespace: str, service: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service, "namespace": namespace},
        "spec": {"type": "ExternalName", "externalName": "localhost"},
    }


class CustomMetricsStandIn:
    """``custom.metrics.k8s.io/v1beta2`` for pods on 127.0.0.1 over TLS; ``set_load`` decides the values."""

    def __init__(self, pods: PodLister, *, namespace: str, service: str = "custom-metrics") -> None:
        self.pods = pods
        self.namespace = namespace
        self.service = service
        self.loads: dict[tuple[str, str], float] = {}
        """(namespace, metric) -> the total over the pods the HPA asks about."""
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._dir = tempfile.TemporaryDirectory(prefix="qmo-custom-metrics-")
        directory = Path(self._dir.name)
        self.ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
        cert, key = directory / "server.crt", directory / "server.key"
        pki.make_ca(self.ca_cert, ca_key, "qmo-custom-metrics-ca")
        pki.issue(
            (self.ca_cert, ca_key),
            cert,
            key,
            "/CN=custom-metrics",
            [
                "keyUsage=critical,digitalSignature",
                "extendedKeyUsage=serverAuth",
                f"subjectAltName=DNS:{service}.{namespace}.svc",
            ],
        )
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, body = stand_in.respond(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CustomMetricsStandIn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._dir.cleanup()

    def manifests(self) -> list[dict[str, Any]]:
        """What registers it: the ExternalName Service (in ``namespace``, which must exist), the APIService."""
        return [
            external_name_service(namespace=self.namespace, service=self.service),
            apiservice_manifest(
                namespace=self.namespace,
                service=self.service,
                port=self.port,
                ca_bundle=self.ca_cert.read_bytes(),
            ),
        ]

    def set_load(self, namespace: str, metric: str, total: float) -> None:
        with self._lock:
            self.loads[namespace, metric] = total

    def asked(self, metric: str) -> bool:
        """Whether a client (the HPA controller) has asked for this metric."""
        with self._lock:
            return any(f"/{metric}" in path for path in self.requests)

    def respond(self, raw_path: str) -> tuple[int, dict[str, Any]]:
        url = urlparse(raw_path)
        with self._lock:
            self.requests.append(url.path)
        # Segments arrive escaped: client-go sends the "all pods" name as %2A.
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        base = ["apis", GROUP, VERSION]
        if parts == base:
            # Discovery: kube-apiserver's availability check and clients' version negotiation.
            return 200, {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{GROUP}/{VERSION}",
                "resources": [
                    {"name": "pods/*", "singularName": "", "namespaced": True, "kind": "MetricValueList",
                     "verbs": ["get"]},
                ],
            }  # fmt: skip
        # /apis/custom.metrics.k8s.io/v1beta2/namespaces/NS/pods/*/METRIC
        if len(parts) == 8 and parts[:4] == [*base, "namespaces"] and parts[5] == "pods":
            namespace, metric = parts[4], parts[7]
            selector = parse_qs(url.query).get("labelSelector", [""])[0]
            names = sorted(self.pods(namespace, selector))
            if parts[6] != "*":
                names = [name for name in names if name == parts[6]]
            with self._lock:
                total = self.loads.get((namespace, metric))
            if total is None or not names:
                return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                             "reason": "NotFound", "message": f"no {metric} for pods in {namespace}"}  # fmt: skip
            return 200, self.metric_values(namespace, metric, names, total / len(names))
        return 404, {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": 404,
            "reason": "NotFound",
        }

    @staticmethod
    def metric_values(namespace: str, metric: str, pods: Sequence[str], value: float) -> dict[str, Any]:
        now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        milli = f"{round(value * 1000)}m"
        return {
            "kind": "MetricValueList",
            "apiVersion": f"{GROUP}/{VERSION}",
            "metadata": {},
            "items": [
                {
                    "describedObject": {
                        "kind": "Pod",
                        "namespace": namespace,
                        "name": name,
                        "apiVersion": "/v1",
                    },
                    "metric": {"name": metric},
                    "timestamp": now,
                    "windowSeconds": 30,
                    "value": milli,
                }
                for name in pods
            ],
        }
