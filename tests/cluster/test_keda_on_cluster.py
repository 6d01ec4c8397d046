"""Autoscaling on vLLM's load with real KEDA: its operator and metrics adapter (built by ``make keda``) run
against the real control plane, and kube-controller-manager's HPA controller acts on the HPA KEDA makes.

The chain is the production one, with kwok's pods and a Prometheus stand-in in place of vLLM and its
scrape: qmo renders a ScaledObject whose Prometheus triggers point at the stand-in; KEDA's operator polls
them (activation, scale to and from zero) and creates ``keda-hpa-<name>``; the HPA controller reads the
load through kube-apiserver's aggregation layer from KEDA's adapter (``external.metrics.k8s.io``), which
asks KEDA's operator over gRPC, which queries the stand-in. The test sets the load the stand-in answers.

CI does not build KEDA (about 320 modules): without the build the test is skipped and says how to build it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from kubernetes import client

from qmo.desired.autoscaling import KEDA_POLLING_SECONDS, VLLM_METRICS, activity_query, load_query
from qmo.sandbox import build, versions
from qmo.sandbox.harness import HubStandIn, OperatorProcess
from qmo.sandbox.harness import quantized_model as model
from qmo.sandbox.keda import EXTERNAL_METRICS_GROUP, Keda
from qmo.sandbox.prometheus import PrometheusStandIn
from qmo.sandbox.testing import Kube, SessionCluster, replica_owners
from qmo.sandbox.versions import CachePaths
from qmo.sandbox.wait import holds, wait_for

PATHS = CachePaths.default()
pytestmark = pytest.mark.skipif(
    build.read_keda_stamp(PATHS) is None,
    reason=f"KEDA {versions.KEDA_VERSION} is not built in {PATHS.keda_bin_dir}: run `make keda` once "
    "(Go modules, several minutes on 2 cores) to run the autoscaling test against real KEDA",
)

# Short enough for a test, long enough to see the window hold: KEDA counts the cooldown from the last poll
# that saw load, so a replica may go as early as IDLE_SECONDS - KEDA_POLLING_SECONDS after the load does.
IDLE_SECONDS = 30
MAX_REPLICAS = 3
TARGET = 2  # running requests per replica


@pytest.fixture(scope="module")
def keda(cluster: SessionCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keda]:
    with Keda(cluster, PATHS.keda_bin_dir, tmp_path_factory.mktemp("keda")) as running:
        yield running


@pytest.fixture
def keda_model(
    keda: Keda,
    cluster: SessionCluster,
    hub: HubStandIn,
    operator: OperatorProcess,
    admin_client: client.ApiClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Kube, PrometheusStandIn, OperatorProcess]]:
    """A namespace, the Prometheus stand-in, and an operator of its own for that namespace (the session
    operator has no Prometheus address) that knows the stand-in's URL; everything removed afterwards."""
    core = client.CoreV1Api(admin_client)
    namespace = core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(generate_name="qmo-keda-real-"))
    ).metadata.name
    monkeypatch.setenv("QMO_DISCOVERY_SECONDS", "1")
    kube = Kube(cluster, namespace)
    with PrometheusStandIn() as prometheus:
        process = OperatorProcess(
            cluster,
            hub.url,
            tmp_path,
            namespaces=[namespace],
            extra_args=["--prometheus-url", prometheus.url],
        )
        process.start()
        try:
            yield kube, prometheus, process
        finally:
            print(f"--- namespace {namespace} ---\n{kube.snapshot()}")
            autoscalers = cluster.kubectl(
                "get", "hpa,scaledobject", "-n", namespace, "-o", "yaml", check=False
            )
            print(f"--- autoscalers ---\n{autoscalers.stdout}")
            print(f"--- operator ---\n{process.log_tail()}")
            for name in keda.processes:
                print(f"--- {name} ---\n{keda.log_tail(name)}")
            # Deleted while qmo and KEDA run: the model's and the ScaledObject's finalizers need them. The
            # namespace controller also walks every served API, KEDA's external metrics included, which
            # is slow on a busy machine; a namespace left terminating would keep the session's operator
            # busy in the tests after this one, so wait until it is gone.
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
            wait_for(
                lambda: cluster.kubectl("get", "namespace", namespace, check=False).returncode != 0,
                timeout=240,
                interval=1,
                description=f"namespace {namespace} to be deleted",
            )
            process.stop()


def replicas(k: Kube, name: str) -> int | None:
    deployment = k.get("deployment", f"{name}-vllm")
    return None if deployment is None else deployment["spec"].get("replicas")


def condition(found: dict[str, Any] | None, kind: str) -> str | None:
    conditions = ((found or {}).get("status") or {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == kind), None)


def test_keda_scales_on_vllm_load_to_zero_and_back_and_qmo_never_fights_it(
    keda_model: tuple[Kube, PrometheusStandIn, OperatorProcess],
) -> None:
    k, prometheus, _ = keda_model
    name = "keda-real"
    scaled_object, keda_hpa = f"{name}-vllm", f"keda-hpa-{name}-vllm"
    running = load_query(VLLM_METRICS["runningRequests"], namespace=k.namespace, model=name)
    activity = activity_query(namespace=k.namespace, model=name)
    wake = f'sum(gateway_pending_requests{{namespace="{k.namespace}",backend="{name}"}})'

    def set_running(value: float) -> None:
        prometheus.set(running, value)
        prometheus.set(activity, value)  # nothing waits: running + waiting == running

    # Some load from the start: an idle new ScaledObject goes to zero at once (KEDA's initialCooldownPeriod
    # is 0), and this test shows 1 -> N first.
    set_running(TARGET)
    prometheus.set(wake, 0)
    autoscaling = {
        "maxReplicas": MAX_REPLICAS,
        "target": TARGET,
        "scaleToZero": True,
        "idleSeconds": IDLE_SECONDS,
        "wakeQuery": wake,
    }
    k.apply(model(name, serving={"autoscaling": autoscaling}))
    k.wait_phase(name, "Ready", timeout=120)

    # qmo saw KEDA's CRDs and rendered a ScaledObject; KEDA made it Ready, active, and made its HPA.
    found = wait_for(
        lambda: (s := k.get("scaledobject", scaled_object)) and condition(s, "Ready") == "True" and s,
        timeout=60,
        description="KEDA to make the ScaledObject Ready",
    )
    assert [t["metadata"]["serverAddress"] for t in found["spec"]["triggers"]] == [prometheus.url] * 3
    hpa = wait_for(lambda: k.get("hpa", keda_hpa), timeout=60, description="KEDA's HPA")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, MAX_REPLICAS)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == IDLE_SECONDS
    assert all(metric["type"] == "External" for metric in hpa["spec"]["metrics"])
    wait_for(
        lambda: condition(k.get("scaledobject", scaled_object), "Active") == "True",
        timeout=KEDA_POLLING_SECONDS + 30,
        description="the ScaledObject to be Active under load",
    )
    assert replicas(k, name) == 1
    assert prometheus.times_asked(running) > 0

    # Load up: 12 running requests at 2 per replica want 6; maxReplicas caps it at 3. The HPA controller
    # reads it through the aggregation layer, KEDA's adapter and operator, from the stand-in.
    set_running(6 * TARGET)
    wait_for(lambda: replicas(k, name) == MAX_REPLICAS, timeout=60, description="the HPA to scale 1 -> 3")
    status = wait_for(
        lambda: (
            (s := (k.get("qm", name) or {}).get("status", {})).get("autoscaling", {}).get("desiredReplicas")
            == MAX_REPLICAS
            and s.get("ready") == f"{MAX_REPLICAS}/{MAX_REPLICAS}"
            and s
        ),
        timeout=60,
        description="status to report KEDA's 3 replicas, all ready",
    )
    assert status["phase"] == "Ready"
    assert status["autoscaling"]["autoscaler"] == "ScaledObject" and status["autoscaling"]["minReplicas"] == 0
    # What the HPA controller reads, asked the same way: the load trigger's value, through the adapter.
    load_metric = hpa["spec"]["metrics"][0]["external"]["metric"]
    selector = ",".join(f"{key}={value}" for key, value in load_metric["selector"]["matchLabels"].items())
    external = k.cluster.kubectl(
        "get", "--raw",
        f"/apis/{EXTERNAL_METRICS_GROUP}/v1beta1/namespaces/{k.namespace}/{load_metric['name']}"
        f"?labelSelector={quote(selector)}",
    )  # fmt: skip
    assert json.loads(external.stdout)["items"][0]["value"] in (str(6 * TARGET), f"{6 * TARGET * 1000}m")

    # qmo never writes the count: a new template (a pod annotation) is applied and the operator resyncs
    # (every 3 s) while the load holds steady, and the 3 stay, written by nobody (the generation holds too).
    k.apply(model(name, serving={"autoscaling": autoscaling, "podAnnotations": {"a": "b"}}))

    def rolled_with_annotation() -> dict[str, Any] | None:
        found = k.get("deployment", f"{name}-vllm") or {}
        annotations = found.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
        return found if annotations.get("a") == "b" else None

    rolled = wait_for(rolled_with_annotation, timeout=60, description="qmo to apply the new template")
    assert rolled["spec"]["replicas"] == MAX_REPLICAS
    generation = rolled["metadata"]["generation"]
    holds(
        lambda: (
            (d := k.get("deployment", f"{name}-vllm"))
            and d["spec"]["replicas"] == MAX_REPLICAS
            and d["metadata"]["generation"] == generation
        ),
        seconds=12,
        description="3 replicas, no write to the Deployment, under steady load",
    )
    # qmo's apply never claims the field (its managedFields entry has no spec.replicas). The scales came
    # through the /scale subresource, after which kube-apiserver 1.37 lists no manager for spec.replicas.
    deployment = k.get_with_managed_fields("deployment", f"{name}-vllm")
    assert "qmo" not in replica_owners(deployment), json.dumps(deployment["metadata"]["managedFields"])

    # Load gone: the count holds through the cooldown, then KEDA (and the HPA's scale-down window) take the
    # model to zero.
    set_running(0)
    dropped = time.monotonic()
    holds(
        lambda: replicas(k, name) == MAX_REPLICAS,
        seconds=IDLE_SECONDS - KEDA_POLLING_SECONDS - 2,
        description="3 replicas within the cooldown",
    )
    wait_for(
        lambda: replicas(k, name) == 0,
        timeout=IDLE_SECONDS + 2 * KEDA_POLLING_SECONDS + 30,
        description="KEDA to scale the idle model to zero",
    )
    to_zero = time.monotonic() - dropped
    assert to_zero >= IDLE_SECONDS - KEDA_POLLING_SECONDS, to_zero
    wait_for(
        lambda: condition(k.get("scaledobject", scaled_object), "Active") == "False",
        timeout=KEDA_POLLING_SECONDS + 30,
        description="the ScaledObject to be inactive",
    )
    # Ready at zero once the pods are gone (Deploying while they terminate).
    wait_for(
        lambda: (
            (s := (k.get("qm", name) or {}).get("status", {})).get("autoscaling", {}).get("desiredReplicas")
            == 0
            and s.get("ready") == "0/0"
            and s.get("phase") == "Ready"
        ),
        timeout=60,
        description="status to report zero replicas, Ready",
    )
    holds(lambda: replicas(k, name) == 0, seconds=5, description="zero replicas while idle")
    assert "qmo" not in replica_owners(k.get_with_managed_fields("deployment", f"{name}-vllm"))

    # A request waits at the gateway: the wake query brings the model back from zero.
    prometheus.set(wake, 1)
    woken = time.monotonic()
    wait_for(
        lambda: (replicas(k, name) or 0) >= 1,
        timeout=KEDA_POLLING_SECONDS + 30,
        description="KEDA to wake the model from zero",
    )
    print(
        f"to zero {to_zero:.0f} s after the load went; woken {time.monotonic() - woken:.0f} s after a request"
    )
