"""Reads answered from the operator's watch streams (kopf indexes) instead of the API server.

A reconcile reads its model's artifact, Deployment (or multi-node StatefulSets), Service, PodDisruptionBudget, NetworkPolicy, GPU class
and pods. Asking the API server for each costs a request per object per reconcile, which is what limited a
fleet (55 to 73 requests per model between apply and Ready). kopf already keeps one watch stream per kind;
an index over each kind keeps the latest body of every object it sees, and kopf starts no handler before
every index is filled, so a read from it is as current as the watch.

What the cache does not hold is read from the API server as before (Secrets, PVCs, ConfigMaps, nodes). A
read that must be exact, such as the object itself before a conflict retry, asks ``Kube.get(...,
fresh=True)``. Writes always go to the API server; a stale read costs at most one idempotent write (the
hash annotation differs, the same apply goes out) or a conflict the reconcile retries.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from qmo.desired.names import LABEL_MODEL

Manifest = dict[str, Any]
ObjectKey = tuple[str, str]
"""(namespace, name); namespace is "" for cluster-scoped kinds."""

# Pods and Jobs are watched only when qmo manages them (the label every qmo child carries).
MANAGED_LABELS = {"app.kubernetes.io/managed-by": "qmo"}


@dataclass(frozen=True)
class WatchedKind:
    kind: str
    group: str
    version: str
    plural: str
    managed_only: bool = False
    """Only objects with MANAGED_LABELS are watched: a read of one without them is not answered here."""


WATCHED_KINDS: tuple[WatchedKind, ...] = (
    WatchedKind("QuantizedModel", "qmo.dev", "v1alpha1", "quantizedmodels"),
    WatchedKind("ModelArtifact", "qmo.dev", "v1alpha1", "modelartifacts"),
    WatchedKind("GPUClass", "qmo.dev", "v1alpha1", "gpuclasses"),
    WatchedKind("Deployment", "apps", "v1", "deployments", managed_only=True),
    WatchedKind("StatefulSet", "apps", "v1", "statefulsets", managed_only=True),
    WatchedKind("Service", "", "v1", "services", managed_only=True),
    WatchedKind("PodDisruptionBudget", "policy", "v1", "poddisruptionbudgets", managed_only=True),
    WatchedKind("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", managed_only=True),
    WatchedKind(
        "HorizontalPodAutoscaler", "autoscaling", "v2", "horizontalpodautoscalers", managed_only=True
    ),
    WatchedKind("Job", "batch", "v1", "jobs", managed_only=True),
    WatchedKind("Pod", "", "v1", "pods", managed_only=True),
)


def index_id(kind: str) -> str:
    """The kopf index's name for a kind (kopf passes it to handlers as a kwarg of that name)."""
    return f"watched_{kind.lower()}"


# Besides its own key, every object is indexed under its namespace, and under the value of each of these
# labels in its namespace: a list reads the objects of one bucket, not every object of the kind (a model's
# pod list scanned every pod of the fleet, and a fleet of 1,000 models lists pods thousands of times).
BUCKET_LABELS = (LABEL_MODEL, "job-name")

IndexKey = ObjectKey | tuple[str] | tuple[str, str, str]
"""(namespace, name) for one object; (namespace,) and (namespace, label, value) for buckets."""


def index_entry(body: Mapping[str, Any]) -> dict[IndexKey, Manifest]:
    """What a kopf indexing function returns for one object: a copy of its body under its own key and its
    buckets' (the same copy: kopf keeps one value per object and key)."""
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    stored = copy.deepcopy(dict(body))
    entry: dict[IndexKey, Manifest] = {(namespace, str(meta["name"])): stored, (namespace,): stored}
    labels = meta.get("labels") or {}
    for label in BUCKET_LABELS:
        if label in labels:
            entry[namespace, label, str(labels[label])] = stored
    return entry


def bucket_of(namespace: str | None, wanted: Mapping[str, str]) -> IndexKey | None:
    """The smallest bucket holding every object a list wants; None: every object of the kind."""
    if namespace is None:
        return None
    for label in BUCKET_LABELS:
        if label in wanted:
            return (namespace, label, wanted[label])
    return (namespace,)


class Index(Protocol):
    """What qmo uses of a ``kopf.Index``: key -> the values indexed under it."""

    def get(self, key: IndexKey, default: Any = None) -> Iterable[Manifest] | None: ...

    def values(self) -> Iterable[Iterable[Manifest]]: ...


def parse_selector(selector: str) -> dict[str, str] | None:
    """An equality label selector (``a=b,c=d``) as a dict; None for anything else (not answered here)."""
    labels: dict[str, str] = {}
    for term in filter(None, (part.strip() for part in selector.split(","))):
        key, sep, value = term.partition("=")
        if not sep or key.endswith("!") or value.startswith("="):
            return None
        labels[key.strip()] = value.strip()
    return labels


def newer(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether object ``a`` is a later version than ``b`` of the same object. resourceVersions are etcd
    revisions, integers in every API server qmo supports; anything else counts as not newer."""
    try:
        return int(a["metadata"]["resourceVersion"]) > int(b["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return False


@dataclass
class WatchCache:
    """The kopf indexes, bound once at operator start; empty (answers nothing) until then.

    Plus what the operator itself last wrote (``remember``): kopf updates an object's index entry in that
    object's worker, which lags while a fleet converges, and a read just after one's own write must not see
    the object as it was before (a status decided from it is refused with a conflict, an artifact this model
    already joined would be joined again). A written object is answered until the index has caught up with
    it; one the index has not seen at all for ``written_ttl`` seconds is dropped (a deletion by someone else
    is never masked for longer).
    """

    indexes: dict[str, Index] = field(default_factory=dict)
    kinds: dict[str, WatchedKind] = field(default_factory=lambda: {w.kind: w for w in WATCHED_KINDS})
    written_ttl: float = 30.0
    clock: Callable[[], float] = time.monotonic
    written: dict[tuple[str, str, str], tuple[float, Manifest]] = field(default_factory=dict)

    def bind(self, handler_kwargs: Mapping[str, Any]) -> None:
        """Take the indexes from a kopf handler's kwargs (kopf hands every handler all of them)."""
        for kind in self.kinds:
            index = handler_kwargs.get(index_id(kind))
            if index is not None:
                self.indexes[kind] = index

    def covers(self, kind: str) -> bool:
        """Whether reads of this kind are answered here. For a managed-only kind every object qmo reads
        is one it made (serving and Job pods carry the label too); an unmanaged one of the same name reads
        as missing, and qmo's server-side apply takes it over as it would after reading it."""
        return kind in self.indexes

    def remember(self, body: Mapping[str, Any]) -> None:
        """An object as the API server answered one of qmo's own writes."""
        kind, meta = body.get("kind"), body.get("metadata") or {}
        if kind in self.indexes and meta.get("name") and meta.get("resourceVersion"):
            key = (str(kind), str(meta.get("namespace") or ""), str(meta["name"]))
            earlier = self.written.get(key)
            if earlier is not None and newer(earlier[1], body):
                # Answers of concurrent writes can be handled out of order (an artifact's user joining, its
                # status turning Ready): the older answer must not hide the newer one.
                return
            self.written[key] = (self.clock(), copy.deepcopy(dict(body)))

    def forget(self, kind: str, namespace: str | None, name: str) -> None:
        """qmo deleted it: never answer what it wrote before."""
        self.written.pop((kind, namespace or "", name), None)

    def _current(self, kind: str, indexed: Manifest | None, key: tuple[str, str, str]) -> Manifest | None:
        entry = self.written.get(key)
        if entry is None:
            return indexed
        at, body = entry
        if indexed is not None and not newer(body, indexed):
            del self.written[key]  # the watch has caught up (or is as new): it answers from now on
            return indexed
        if indexed is None and self.clock() - at > self.written_ttl:
            del self.written[key]  # never seen by the watch since: deleted by someone else, presumably
            return None
        # The watch still lags behind qmo's write, however long ago: its older version is no truth to fall
        # back to (at 1,000 models the indexes lagged over 30 s, and models saw their artifact, Ready a
        # moment before, as Quantizing again: a status write back and forth for each).
        return body

    def get(self, kind: str, namespace: str | None, name: str) -> Manifest | None:
        found = next(iter(self.indexes[kind].get((namespace or "", name)) or ()), None)
        current = self._current(kind, found, (kind, namespace or "", name))
        return copy.deepcopy(current) if current is not None else None

    def latest(self, kind: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """``body``, or the newer version of the same object this cache holds.

        A reconcile is handed its body before it waits for the object's lock (a wake by a child's event, a
        timer, kopf's own handler): while it waits, the reconcile ahead of it may write the status. Decided
        from the body it was handed, its status write would be refused (409) and cost a fresh read and a
        second decision; at 1,000 models most status writes went that way."""
        if kind not in self.indexes:
            return body
        meta = body.get("metadata") or {}
        cached = self.get(kind, meta.get("namespace"), str(meta.get("name")))
        if cached is None or cached["metadata"].get("uid") != meta.get("uid") or not newer(cached, body):
            return body
        return cached

    def list(
        self, kind: str, namespace: str | None, label_selector: str = "", *, shared: bool = False
    ) -> list[Manifest] | None:
        """The objects matching, or None when the selector is not one this cache can answer.

        ``shared``: the cache's own objects, not copies, for a caller that only reads them. Copying every
        ModelArtifact of a namespace on every model's reconcile was most of the operator's CPU at 1,000
        models (100 artifacts, each with its users' references)."""
        wanted = parse_selector(label_selector)
        if wanted is None:
            return None
        index = self.indexes[kind]
        bucket = bucket_of(namespace, wanted)
        stores = index.values() if bucket is None else [index.get(bucket) or ()]
        bodies: dict[tuple[str, str, str], Manifest | None] = {}
        for stored in stores:
            for body in stored:
                meta = body.get("metadata") or {}
                bodies[kind, str(meta.get("namespace") or ""), str(meta["name"])] = body
        for key in [key for key in self.written if key[0] == kind and key not in bodies]:
            # Written by qmo and not in the bucket: not yet seen by the watch (None), or the watch has it
            # under other labels than the write (the watch's own entry decides which is newer).
            bodies[key] = next(iter(index.get((key[1], key[2])) or ()), None)
        matches: list[Manifest] = []
        for key, indexed in bodies.items():
            current = self._current(kind, indexed, key)
            if current is None:
                continue
            meta = current.get("metadata") or {}
            if namespace is not None and meta.get("namespace") != namespace:
                continue
            labels = meta.get("labels") or {}
            if all(labels.get(label) == value for label, value in wanted.items()):
                matches.append(current if shared else copy.deepcopy(current))
        return sorted(matches, key=lambda body: body["metadata"]["name"])
