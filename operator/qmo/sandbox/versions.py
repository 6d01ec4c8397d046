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

# KEDA (opt-in, `make keda`): its operator and metrics adapter, built from its Go module like the rest.
# v2.21.1 needs Go 1.27.4; v2.21.0 builds with the sandbox's Go 1.26.
KEDA_VERSION = "v2.21.0"
KEDA_MODULE = "github.com/kedacore/keda/v2"
# replace and exclude apply only in the main module, so a module that requires KEDA repeats KEDA's own:
# temporal's SDK needs a licensed nexus-proto-annotations, and chi v5.2.3 is kept out of the graph.
KEDA_REPLACES = (
    "github.com/nexus-rpc/nexus-proto-annotations v0.1.0 => "
    "github.com/nexus-rpc/nexus-proto-annotations v0.1.1-0.20260629224316-835bd8d49cb4",
)
KEDA_EXCLUDES = ("github.com/go-chi/chi/v5 v5.2.3",)
# binary name -> KEDA's package (its images call them keda and keda-adapter; here both say what they are).
KEDA_COMMANDS = {"keda-operator": "cmd/operator", "keda-adapter": "cmd/adapter"}

KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# The control plane, what `make demo` needs; helm (the chart tests') is built apart (build.build_helm).
BINARIES = (*KUBERNETES_COMMANDS, "etcd", "kwok")


def versions_key() -> str:
    """The cache directory name: every pinned version, so a bump never reuses an old binary."""
    return f"k8s-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}_helm-{HELM_VERSION}"


def keda_key() -> str:
    """KEDA's cache directory name: a build of its own, beside the control plane's."""
    return f"keda-{KEDA_VERSION}"


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
    def helm_stamp(self) -> Path:
        return self.bin_dir / "helm-stamp.json"

    @property
    def sandbox_dir(self) -> Path:
        return self.root / "sandbox"

    @property
    def sandbox_volumes_dir(self) -> Path:
        """The user's sandbox volumes (the model cache PVC's weights): kept by `down`, removed by `--purge`."""
        return self.root / "sandbox-volumes"

    @property
    def sandbox_hub_dir(self) -> Path:
        """Models the demo offers through its Hugging Face stand-in: kept by `down`, removed by `--purge`."""
        return self.root / "sandbox-hub"

    @property
    def keda_bin_dir(self) -> Path:
        """KEDA's binaries, its ``config/`` (CRDs, RBAC) copied from the module, and its stamp."""
        return self.root / "bin" / keda_key()

    @property
    def keda_src_dir(self) -> Path:
        return self.root / "src" / keda_key()

    @property
    def keda_stamp(self) -> Path:
        return self.keda_bin_dir / "build-stamp.json"

    @property
    def keda_build_log(self) -> Path:
        return self.keda_bin_dir.parent / f"{keda_key()}.build.log"

    @property
    def keda_config_dir(self) -> Path:
        return self.keda_bin_dir / "config"
