"""Fixtures for the cluster tier: one private control plane per test session, a namespace per test.

The control plane is real (etcd, kube-apiserver with RBAC and PodSecurity, controller-manager, scheduler,
kwok with fake GPU nodes), built once into ~/.cache/qmo by ``qmo sandbox build`` and started here on free
loopback ports in a temporary directory, so it never touches the user's ``qmo sandbox``. Its processes
die with the test session, even when the session is killed.

Fixtures: ``cluster`` (a qmo.sandbox.testing.SessionCluster), ``admin_client`` (a kubernetes ApiClient
with cluster-admin rights), ``namespace`` (a fresh namespace name, deleted after the test), ``hub`` (the
Hugging Face stand-in), ``operator`` (one operator process for the session) and ``k`` (kubectl in the
test's namespace, printing the operator's log tail when the test fails). Wait with
``qmo.sandbox.wait.wait_for``, never with sleeps.
"""

from __future__ import annotations

import atexit
import os
import re
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from qmo.sandbox import build, nodes
from qmo.sandbox.cluster import ControlPlane
from qmo.sandbox.harness import (
    EXAMPLE_REPO,
    EXAMPLE_SHA,
    GATED_REPO,
    GATED_SHA,
    GATED_TOKEN,
    HubStandIn,
    OperatorProcess,
    example_config,
    install_crds,
    provisioner,
)
from qmo.sandbox.stages import StageTimings
from qmo.sandbox.testing import Kube, SessionCluster
from qmo.sandbox.versions import CachePaths
from qmo.sandbox.wait import wait_for

__all__ = ["wait_for"]

TEST_NAMESPACE_PREFIX = "qmo-test-"
# Short lifecycles keep the tier quick; tests that need longer ones annotate their pods.
TEST_TIMINGS = StageTimings(
    start_delay_ms=200, run_duration_ms=500, crash_back_off_ms=1000, node_heartbeat_ms=30000
)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionCluster]:
    paths = CachePaths.default()
    result = build.build(paths)  # warm: a stamp check; cold: the full build (run `qmo sandbox build` first)
    plane = ControlPlane(
        tmp_path_factory.mktemp("control-plane"),
        bin_dir=result.bin_dir,
        fleet=nodes.parse_fleet(os.environ.get(nodes.FLEET_ENV, nodes.DEFAULT_FLEET)),
        timings=TEST_TIMINGS,
        ephemeral=True,
        context="qmo-test",
        # The HPA controller re-reads metrics every 2 s (its default 15 s would make autoscaling tests slow).
        hpa_sync_seconds=2,
    )
    atexit.register(plane.stop)
    try:
        plane.start(timeout=120)
        yield SessionCluster.of(plane, result.bin_dir)
    finally:
        plane.stop(remove=True)
        atexit.unregister(plane.stop)


@pytest.fixture(scope="session")
def admin_client(cluster: SessionCluster) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


@pytest.fixture
def namespace(admin_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    core = client.CoreV1Api(admin_client)
    created = core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                generate_name=TEST_NAMESPACE_PREFIX,
                labels={"qmo.dev/test": re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:63].strip("-_.")},
            )
        )
    )
    name = str(created.metadata.name)
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        description=f"the default ServiceAccount in {name}",
    )
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def hub() -> Iterator[HubStandIn]:
    with HubStandIn() as stand_in:
        stand_in.add(EXAMPLE_REPO, example_config(), sha=EXAMPLE_SHA)
        stand_in.add(GATED_REPO, example_config(), sha=GATED_SHA, token=GATED_TOKEN)
        yield stand_in


@pytest.fixture(scope="session")
def operator(
    cluster: SessionCluster, hub: HubStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log_dir = tmp_path_factory.mktemp("operator")
    install_crds(cluster)
    # Jobs on the real node download from the stand-in, as the operator does.
    cluster.plane.set_node_env({"HF_ENDPOINT": hub.url})
    with provisioner(cluster, log_dir):
        # Only the namespaces the ``namespace`` fixture makes: the chart tests run operators of their own
        # (the chart's ServiceAccount, HA replicas) in qmo-chart-* namespaces, which this one must not touch.
        process = OperatorProcess(cluster, hub.url, log_dir, namespaces=[f"{TEST_NAMESPACE_PREFIX}*"])
        process.start()
        try:
            yield process
        finally:
            process.stop()


@pytest.fixture
def k(cluster: SessionCluster, namespace: str, operator: OperatorProcess) -> Iterator[Kube]:
    kube = Kube(cluster, namespace)
    yield kube
    # Captured output is shown only when the test fails: then the operator's log explains why.
    print(f"--- namespace {namespace} ---\n{kube.snapshot()}")
    print(f"--- operator log (tail) ---\n{operator.log_tail()}")
