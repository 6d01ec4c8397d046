"""Deterministic names and labels for everything qmo creates.

Names are derived, never stored: a restarted operator computes the same names and finds its children.
Kubernetes limits names to 63 characters where they become labels or DNS labels (Services, Jobs); a
long name is cut and suffixed with a hash of the whole, so two long names never collide.
"""

from __future__ import annotations

import hashlib
import re

MAX_DNS_LABEL = 63
LABEL_PREFIX = "qmo.dev"
MANAGED_BY = "qmo"

LABEL_MODEL = f"{LABEL_PREFIX}/model"
LABEL_ARTIFACT_KEY = f"{LABEL_PREFIX}/artifact-key"
LABEL_ARTIFACT = f"{LABEL_PREFIX}/artifact"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# A hash of the manifest qmo applied: an unchanged child is recognised without a write.
DESIRED_HASH_ANNOTATION = f"{LABEL_PREFIX}/desired-hash"

CACHE_CLAIM_NAME = "qmo-cache"
CACHE_MOUNT_PATH = "/cache"

_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def dns_label(*parts: str, limit: int = MAX_DNS_LABEL) -> str:
    """Join parts into a valid DNS-1035 label (a letter first) of at most ``limit`` characters.

    A name that is already valid and short enough is kept as it is, for people reading ``kubectl get``.
    Any other is cleaned, cut, and suffixed with a hash of the original, so that distinct inputs stay
    distinct after shortening (``a.b`` and ``a_b`` both clean to ``a-b``; their hashes differ).
    """
    raw = "-".join(part for part in parts if part)
    if len(raw) <= limit and _DNS_1035.fullmatch(raw):
        return raw
    suffix = short_hash(raw)
    cleaned = re.sub(r"-{2,}", "-", _NOT_DNS.sub("-", raw.lower())).strip("-")
    if not cleaned[:1].isalpha():
        cleaned = "q-" + cleaned
    head = cleaned[: limit - len(suffix) - 1].rstrip("-")
    return f"{head}-{suffix}"


def artifact_name(source_slug: str, method: str, key: str) -> str:
    """ModelArtifact name: readable model and method, then the key prefix that makes it unique.

    The slug is cleaned here (``Llama-3.1-8B`` -> ``llama-3-1-8b``) rather than hashed by dns_label:
    the key prefix already makes the name unique.
    """
    slug = re.sub(r"-{2,}", "-", _NOT_DNS.sub("-", source_slug.lower()))[:30].strip("-")
    return dns_label(slug, method, key[:10])


def quantize_job_name(artifact: str) -> str:
    return dns_label(artifact, "quantize")


def evict_job_name(artifact: str) -> str:
    return dns_label(artifact, "evict")


def inspect_job_name(model: str, claim: str, path: str) -> str:
    """One inspect Job per (model, claim, path): pointing the model elsewhere inspects again."""
    return dns_label(model, "inspect", short_hash(f"{claim}:{path}"))


def serving_name(model: str) -> str:
    """Deployment, Service and PDB of a model share one name: the model's own, suffixed."""
    return dns_label(model, "vllm")


def key_label(key: str) -> str:
    # A sha256 is 64 hex characters; label values allow 63. 32 hex characters are 128 bits: unique enough.
    return key[:32]


def common_labels(*, component: str, instance: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "qmo",
        "app.kubernetes.io/instance": instance,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
    }
