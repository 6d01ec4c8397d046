"""A small async client for the Kubernetes API: the handful of verbs qmo needs, over one aiohttp session.

Why not the generated client: qmo needs server-side apply, JSON/merge patches and plain dicts, which
the generated models only get in the way of, and the reconcile loop is async. Credentials still come
from the official ``kubernetes.config`` loaders (kubeconfig or in-cluster). Every request is counted by
verb, which the fleet benchmark reports as requests per model.
"""

from __future__ import annotations

import json
import ssl
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from qmo.desired.common import label_selector
from qmo.reconcile.cache import WatchCache

__all__ = ["API_VERSIONS", "KINDS", "ApiError", "Credentials", "Kube", "label_selector", "load_credentials"]

Manifest = dict[str, Any]

# kind -> (plural, namespaced). Only the kinds qmo reads or writes.
KINDS: dict[str, tuple[str, bool]] = {
    "QuantizedModel": ("quantizedmodels", True),
    "ModelArtifact": ("modelartifacts", True),
    "GPUClass": ("gpuclasses", False),
    "Deployment": ("deployments", True),
    "StatefulSet": ("statefulsets", True),
    "LeaderWorkerSet": ("leaderworkersets", True),
    "Service": ("services", True),
    "PodDisruptionBudget": ("poddisruptionbudgets", True),
    "NetworkPolicy": ("networkpolicies", True),
    "HorizontalPodAutoscaler": ("horizontalpodautoscalers", True),
    "ScaledObject": ("scaledobjects", True),
    "Job": ("jobs", True),
    "Pod": ("pods", True),
    "PersistentVolumeClaim": ("persistentvolumeclaims", True),
    "PersistentVolume": ("persistentvolumes", False),
    "Node": ("nodes", False),
    "Secret": ("secrets", True),
    "ConfigMap": ("configmaps", True),
    "Event": ("events", True),
}
API_VERSIONS: dict[str, str] = {
    "QuantizedModel": "qmo.dev/v1alpha1",
    "ModelArtifact": "qmo.dev/v1alpha1",
    "GPUClass": "qmo.dev/v1alpha1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "LeaderWorkerSet": "leaderworkerset.x-k8s.io/v1",
    "Service": "v1",
    "PodDisruptionBudget": "policy/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "ScaledObject": "keda.sh/v1alpha1",
    "Job": "batch/v1",
    "Pod": "v1",
    "PersistentVolumeClaim": "v1",
    "PersistentVolume": "v1",
    "Node": "v1",
    "Secret": "v1",
    "ConfigMap": "v1",
    "Event": "v1",
}


def _error_message(error: dict[str, Any], text: str) -> str:
    """The server's message, with the field causes a 422 keeps in details (its message alone is generic)."""
    message = str(error.get("message", text))
    causes = (error.get("details") or {}).get("causes") or []
    named = [f"{c.get('field', '?')}: {c.get('message', '')}" for c in causes if isinstance(c, dict)]
    return f"{message} ({'; '.join(named)})" if named else message


# What the API server answers (422, no field causes) when a JSON patch's "test" operation does not hold.
FAILED_PATCH_TEST = "the server rejected our request due to an error in our request"


class ApiError(Exception):
    """The API server refused a request."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying: throttling, server trouble, timeouts."""
        return self.status in (429, 500, 502, 503, 504) or self.status == 0

    @property
    def not_served(self) -> bool:
        """A 404 for the path itself, not for an object (whose 404 is a Status with reason NotFound): the
        server does not serve that kind now, e.g. its CRD was just removed. Discovery again fixes it."""
        return self.status == 404 and self.reason != "NotFound"


def path_for(
    kind: str, namespace: str | None = None, name: str | None = None, *, subresource: str = ""
) -> str:
    api_version = API_VERSIONS[kind]
    plural, namespaced = KINDS[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced and namespace is not None:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{quote(name)}"
    if subresource:
        base += f"/{subresource}"
    return base


def resource_of(path: str) -> str:
    """The resource a request path addresses, with its subresource: ``quantizedmodels/status``."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    # /api/v1/... or /apis/group/version/...; then namespaces/NS when namespaced; then plural[/name[/sub]]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    # A group/version alone is discovery (Kube.serves: is LeaderWorkerSet installed?).
    return rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "") if rest else "discovery"


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    verify: bool = True
    # In a cluster the ServiceAccount token is a projected file the kubelet rotates: re-read it on a 401.
    token_file: str | None = None

    def current_token(self) -> str | None:
        if self.token_file:
            try:
                with open(self.token_file) as handle:
                    return handle.read().strip() or self.token
            except OSError:
                return self.token
        return self.token


IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def load_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """Credentials from a kubeconfig, or the in-cluster ServiceAccount when there is none."""
    from kubernetes import client, config

    configuration = client.Configuration()
    # The kubernetes package ships no type hints for its config loaders.
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        token_file = None
    except (config.ConfigException, FileNotFoundError, TypeError):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        token_file = IN_CLUSTER_TOKEN
    token = None
    authorization = (configuration.api_key or {}).get("authorization") or (configuration.api_key or {}).get(
        "BearerToken"
    )
    if authorization:
        token = authorization.removeprefix("Bearer ").strip()
    return Credentials(
        server=configuration.host.rstrip("/"),
        ca_file=configuration.ssl_ca_cert,
        cert_file=configuration.cert_file,
        key_file=configuration.key_file,
        token=token,
        verify=bool(configuration.verify_ssl),
        token_file=token_file,
    )


POOL_WAIT_S = 300.0
"""The longest a call waits for a free connection (and then to connect) before it fails."""


class Kube:
    """The API verbs qmo uses. Create it inside the running event loop (never at import time)."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        timeout: float = 30.0,
        on_request: Callable[[str, str], None] | None = None,
    ) -> None:
        self._credentials = credentials
        context = ssl.create_default_context(cafile=credentials.ca_file)
        if credentials.cert_file and credentials.key_file:
            context.load_cert_chain(credentials.cert_file, credentials.key_file)
        if not credentials.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        headers = {"Accept": "application/json", "User-Agent": "qmo"}
        self._token = credentials.token
        self._session = aiohttp.ClientSession(
            base_url=credentials.server,
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=context, limit=32),
            # The API server's answer is bounded (``timeout`` between reads), not the whole call: a call
            # that waits for one of the 32 connections while a large fleet converges is not a failure, and
            # failing it after 30 s made the reconcile retry and add to the load (1,000 models).
            timeout=aiohttp.ClientTimeout(
                total=None, connect=POOL_WAIT_S, sock_connect=timeout, sock_read=timeout
            ),
        )
        self.requests: Counter[str] = Counter()
        """Requests sent, by verb."""
        self.requests_by_resource: Counter[tuple[str, str]] = Counter()
        """Requests sent, by (verb, resource): what the fleet benchmark breaks requests per model into."""
        self._on_request = on_request
        self.cache: WatchCache | None = None
        """Set by the operator once its watch indexes exist: get and list of the kinds it covers are
        answered from it (``fresh=True`` still asks the API server)."""
        self.cache_reads: Counter[str] = Counter()

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Manifest:
        resource = resource_of(path)
        self.requests[method] += 1
        self.requests_by_resource[method, resource] += 1
        if self._on_request is not None:
            self._on_request(method, resource)
        url = path + (f"?{urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body)
        for attempt in (1, 2):
            headers = {"Content-Type": content_type} if body is not None else {}
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            status, reason, text = await self._send(method, url, data, headers)
            if status == 401 and attempt == 1:
                fresh = self._credentials.current_token()
                if fresh and fresh != self._token:
                    self._token = fresh  # the kubelet rotated the token: retry once with the new one
                    continue
            break
        if status >= 400:
            try:
                error = json.loads(text)
            except json.JSONDecodeError:
                raise ApiError(status, reason, text[:500]) from None
            raise ApiError(status, error.get("reason", ""), _error_message(error, text))
        return json.loads(text) if text else {}

    async def _send(
        self, method: str, url: str, data: str | None, headers: dict[str, str]
    ) -> tuple[int, str, str]:
        try:
            async with self._session.request(method, url, data=data, headers=headers) as response:
                return response.status, response.reason or "", await response.text()
        except (TimeoutError, aiohttp.ClientError) as error:
            raise ApiError(0, "Unreachable", f"{type(error).__name__}: {error}") from error

    async def serves(self, api_version: str) -> bool:
        """Whether the API server serves this group/version (discovery, which every authenticated client may
        read): how an optional API such as LeaderWorkerSet is found installed or not."""
        try:
            await self._request("GET", f"/apis/{api_version}")
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def get(
        self, kind: str, namespace: str | None, name: str, *, fresh: bool = False
    ) -> Manifest | None:
        """The object, or None if it does not exist (from the watch cache unless ``fresh``)."""
        if not fresh and self.cache is not None and self.cache.covers(kind):
            self.cache_reads[kind] += 1
            return self.cache.get(kind, namespace, name)
        try:
            return await self._request("GET", path_for(kind, namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def list(
        self,
        kind: str,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        fresh: bool = False,
        shared: bool = False,
    ) -> list[Manifest]:
        """The objects matching (from the watch cache unless ``fresh`` or a field selector is given).

        ``shared``: the caller only reads them, so the watch cache may answer with its own objects."""
        if not fresh and not field_selector and self.cache is not None and self.cache.covers(kind):
            cached = self.cache.list(kind, namespace, label_selector, shared=shared)
            if cached is not None:
                self.cache_reads[kind] += 1
                return cached
        selectors = {"labelSelector": label_selector, "fieldSelector": field_selector}
        params = {key: value for key, value in selectors.items() if value} or None
        result = await self._request("GET", path_for(kind, namespace), params=params)
        return list(result.get("items", []))

    async def served_resources(self, group_version: str) -> set[str] | None:
        """The resources the API server serves in ``group_version`` (discovery, which every authenticated
        client may read), or None when it serves no such group version."""
        base = f"/apis/{group_version}" if "/" in group_version else f"/api/{group_version}"
        try:
            found = await self._request("GET", base)
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return {str(resource.get("name")) for resource in found.get("resources") or []}

    def _written(self, body: Manifest) -> Manifest:
        """What the API server answered a write with, remembered by the watch cache (read-your-writes)."""
        if self.cache is not None:
            self.cache.remember(body)
        return body

    async def create(self, manifest: Manifest) -> Manifest:
        meta = manifest["metadata"]
        return self._written(
            await self._request("POST", path_for(manifest["kind"], meta.get("namespace")), body=manifest)
        )

    async def apply(self, manifest: Manifest, *, field_manager: str = "qmo") -> Manifest:
        """Server-side apply; qmo owns what it applies and takes it back from anyone who edited it."""
        meta = manifest["metadata"]
        return self._written(
            await self._request(
                "PATCH",
                path_for(manifest["kind"], meta.get("namespace"), meta["name"]),
                body=manifest,
                content_type="application/apply-patch+yaml",
                params={"fieldManager": field_manager, "force": "true"},
            )
        )

    async def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        json_patch: bool = False,
        subresource: str = "",
    ) -> Manifest:
        content_type = "application/json-patch+json" if json_patch else "application/merge-patch+json"
        try:
            return self._written(
                await self._request(
                    "PATCH",
                    path_for(kind, namespace, name, subresource=subresource),
                    body=body,
                    content_type=content_type,
                )
            )
        except ApiError as error:
            guarded = json_patch and any(op.get("op") == "test" for op in body)
            if guarded and error.status == 422 and error.message == FAILED_PATCH_TEST:
                # A failed "test" (the object changed since it was read) is a conflict like a stale
                # resourceVersion in an update: the reconcile is repeated on a fresh read, not an error.
                raise ApiError(409, "Conflict", f"{kind} {name} changed since it was read") from error
            raise

    async def delete(
        self, kind: str, namespace: str | None, name: str, *, uid: str | None = None, grace: int | None = None
    ) -> None:
        body: Manifest = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        if self.cache is not None:
            self.cache.forget(kind, namespace, name)
        try:
            await self._request("DELETE", path_for(kind, namespace, name), body=body)
        except ApiError as error:
            if error.status not in (404, 409):
                raise
