"""Pinned versions of the control-plane components, and where their build lives.

Everything the sandbox runs is built from the Go module proxy at exactly these versions, so a test run is
reproducible and the cache can be keyed by them: a version bump is a new cache directory, never a stale
binary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
# The staging modules (k8s.io/api, k8s.io/apiserver, ...) are published as v0.<minor>.<patch>.
STAGING_VERSION = "v0.37.2"
# The etcd that k8s.io/kubernetes v1.37.2 itself pins in its go.mod, so the server and the apiserver's
# client share one dependency graph and one build.
ETCD_VERSION = "v3.7.0"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"

# k8s.io/kubernetes replaces these with ./staging/src/k8s.io/<name>; a dependent module must replace them
# with the published versions. sample-cli-plugin and sample-controller are left out: nothing requires them
# and the proxy does not serve them for this release.
STAGING_MODULES = (
    "api",
    "apiextensions-apiserver",
    "apimachinery",
    "apiserver",
    "cli-runtime",
    "client-go",
    "cloud-provider",
    "cluster-bootstrap",
    "code-generator",
    "component-base",
    "component-helpers",
    "controller-manager",
    "cri-api",
    "cri-client",
    "cri-streaming",
    "csi-translation-lib",
    "dynamic-resource-allocation",
    "endpointslice",
    "externaljwt",
    "kms",
    "kube-aggregator",
    "kube-controller-manager",
    "kube-proxy",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "metrics",
    "mount-utils",
    "pod-security-admission",
    "sample-apiserver",
    "streaming",
)

KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
BINARIES = (*KUBERNETES_COMMANDS, "etcd", "kwok", "helm")


def versions_key() -> str:
    """The cache directory name: every pinned version, so a bump never reuses an old binary."""
    return f"k8s-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}_helm-{HELM_VERSION}"


@dataclass(frozen=True)
class CachePaths:
    """Where the sandbox keeps builds and state (``QMO_CACHE_DIR`` overrides ``~/.cache/qmo``)."""

    root: Path

    @classmethod
    def default(cls) -> CachePaths:
        env = os.environ.get("QMO_CACHE_DIR")
        return cls(Path(env) if env else Path.home() / ".cache" / "qmo")

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin" / versions_key()

    @property
    def src_dir(self) -> Path:
        return self.root / "src" / versions_key()

    @property
    def gomodcache(self) -> Path:
        return self.root / "go" / "mod"

    @property
    def gocache(self) -> Path:
        return self.root / "go" / "build"

    @property
    def stamp(self) -> Path:
        return self.bin_dir / "build-stamp.json"

    @property
    def build_log(self) -> Path:
        return self.bin_dir.parent / f"{versions_key()}.build.log"

    @property
    def sandbox_dir(self) -> Path:
        return self.root / "sandbox"
