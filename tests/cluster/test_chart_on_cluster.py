"""The Helm chart on the real control plane: lint, server-side dry-run, install, and its RBAC at work.

The operator image cannot run here (kwok only pretends the chart's pod runs), so the operator runs as a
local process with the chart's ServiceAccount token: a model going to Ready and away again under that
token proves the chart grants enough; ``kubectl auth can-i`` proves it grants no more than that.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qmo.sandbox import build
from qmo.sandbox.harness import HubStandIn, OperatorProcess, example_config, provisioner, quantized_model
from qmo.sandbox.testing import SessionCluster
from qmo.sandbox.wait import StopWaiting, WaitTimeout, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "quantized-model-operator"
GATED_REPO = "meta-llama/Llama-3.1-8B-Gated"
GATED_TOKEN = "hf_chart_test_token"
SHA = "c" * 40
# Everything that is not the monitoring stack's CRDs (absent from the test cluster).
MONITORING = {"ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="module", autouse=True)
def helm_built(cluster: SessionCluster) -> None:
    """helm is built apart from the control plane (make test builds it first; this is a stamp check then)."""
    assert build.build_helm().bin_dir == cluster.bin_dir


def helm(cluster: SessionCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(cluster.bin_dir / "helm"), *args],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def set_args(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def chart_crds(cluster: SessionCluster) -> None:
    """The chart's crds/ folder applied as Helm would (qmo's three and kopf's peering CRDs)."""
    cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    for path in sorted((CHART / "crds").glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


@pytest.fixture
def make_namespace(cluster: SessionCluster) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = f"qmo-chart-{secrets.token_hex(4)}"
        cluster.kubectl("create", "namespace", name)
        made.append(name)
        return name

    yield make
    for name in made:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def hub() -> Iterator[HubStandIn]:
    with HubStandIn() as stand_in:
        stand_in.add(GATED_REPO, example_config(), sha=SHA, token=GATED_TOKEN)
        yield stand_in


def service_account_kubeconfig(cluster: SessionCluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a bound token, like the pod would get)."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca_cert)},
            }
        ],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "test", "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def can_i(
    cluster: SessionCluster, account: str, verb: str, resource: str, namespace: str | None, *, name: str = ""
) -> bool:
    """Whether ``account`` may ``verb`` ``resource[/subresource][.group]`` (one object when ``name`` is
    given): a SubjectAccessReview, as the API server decides it. (``kubectl auth can-i`` answers "no" for a
    kind whose CRD is not installed, such as LeaderWorkerSet or KEDA's ScaledObject, though it is granted.)"""
    resources, _, group = resource.partition(".")
    plural, _, subresource = resources.partition("/")
    attributes = {
        "verb": verb,
        "resource": plural,
        "subresource": subresource,
        "group": group,
        "namespace": namespace or "",
        "name": name,
    }
    groups = ["system:authenticated"]
    if account.startswith("system:serviceaccount:"):  # what impersonating the account would add
        groups += ["system:serviceaccounts", f"system:serviceaccounts:{account.split(':')[2]}"]
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": account, "groups": groups, "resourceAttributes": attributes},
    }
    result = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review))
    return bool(json.loads(result.stdout)["status"].get("allowed"))


def granted_rules(*sections: str) -> list[tuple[str, str]]:
    """(verb, resource.group) pairs the chart's rules grant, for can-i."""
    rules = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    pairs = []
    for section in sections:
        entries = rules[section] if isinstance(rules[section], list) else [rules[section]]
        for rule in entries:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        pairs.append((verb, f"{resource}.{group}" if group else resource))
    return pairs


def model(name: str, **serving: Any) -> dict[str, Any]:
    return {
        "apiVersion": "qmo.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": name},
        "spec": {
            "source": {"huggingface": {"repo": GATED_REPO, "tokenSecretRef": {"name": "hf-token"}}},
            "quantization": {"method": "awq"},
            "serving": {"gpuClass": "h100-80gb", "maxModelLen": 8192, **serving},
        },
    }


class Models:
    """kubectl in one namespace, JSON in and out (as the admin: the user, not the operator)."""

    def __init__(self, cluster: SessionCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    def apply(self, manifest: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(manifest))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.cluster.kubectl("get", kind, name, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def list(self, kind: str) -> list[dict[str, Any]]:
        return list(
            json.loads(self.cluster.kubectl("get", kind, "-n", self.namespace, "-o", "json").stdout)["items"]
        )

    def delete(self, kind: str, name: str) -> None:
        self.cluster.kubectl("delete", kind, name, "-n", self.namespace, "--wait=false")

    def wait_ready(self, name: str, timeout: float = 90) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            current = self.get("qm", name)
            phase = (current or {}).get("status", {}).get("phase")
            if phase == "Failed":
                raise StopWaiting(f"{name} failed: {current['status'].get('message')}")  # type: ignore[index]
            return current if phase == "Ready" else None

        try:
            return wait_for(ready, timeout=timeout, description=f"QuantizedModel {name} to be Ready")
        except WaitTimeout as error:
            seen = self.cluster.kubectl(
                "get", "qm,ma,jobs,pods,pvc", "-n", self.namespace, "-o", "wide", check=False
            ).stdout
            status = json.dumps((self.get("qm", name) or {}).get("status"))
            raise AssertionError(f"{error}\n{seen}\n{status}") from error


def assert_no_permission_trouble(operator: OperatorProcess) -> None:
    """The operator did the work itself and the API server refused it nothing."""
    log = operator.log_tail(100000)
    # Not a bare "403": log timestamps have milliseconds (",403").
    for refusal in ("403 Forbidden", "status=403", "Forbidden", "forbidden", "Not enough permissions"):
        assert refusal not in log, f"the operator was refused something ({refusal!r}):\n{operator.log_tail()}"
    errors = [
        line for line in operator.metrics().splitlines() if line.startswith("qmo_reconcile_errors_total{")
    ]
    # The labelled lines name the kind and the exception, which the log tail alone did not (a rare flake).
    assert operator.metric_value("qmo_reconcile_errors_total") == 0, "\n".join([*errors, operator.log_tail()])
    assert operator.metric_value("qmo_api_requests_total", verb="POST") > 0
    assert operator.metric_value("qmo_reconcile_duration_seconds_count", kind="QuantizedModel") > 0


# --- lint and render ---------------------------------------------------------------------------------------

OPTIONS = {
    "default": {},
    "namespaced-ha-monitored": {
        "peering.enabled": "true",
        "prometheusRule.enabled": "true",
        "metrics.serviceMonitor.enabled": "true",
        "watchNamespaces": "{team-a,team-b}",
        "rbac.tokenSecretNames": "{hf-token}",
    },
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_helm_lint_is_clean(cluster: SessionCluster, options: dict[str, str]) -> None:
    result = helm(cluster, "lint", str(CHART), "--strict", *set_args(options))
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_chart_refuses_more_than_one_replica_without_peering(cluster: SessionCluster) -> None:
    result = helm(cluster, "template", "qmo", str(CHART), "--set", "replicas=2", check=False)
    assert result.returncode != 0
    assert "replicas > 1 needs peering.enabled=true" in result.stderr


def test_chart_runs_replicas_with_peering_and_its_lifetime(cluster: SessionCluster) -> None:
    options = {"replicas": "3", "peering.enabled": "true", "peering.lifetimeSeconds": "20"}
    rendered = helm(cluster, "template", "qmo", str(CHART), *set_args(options)).stdout
    [deployment] = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--peering") + 1] == "qmo"
    assert args[args.index("--peering-lifetime") + 1] == "20"
    refused = helm(
        cluster,
        "template",
        "qmo",
        str(CHART),
        *set_args({**options, "peering.lifetimeSeconds": "5"}),
        check=False,
    )
    assert refused.returncode != 0 and "lifetimeSeconds" in refused.stderr


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_rendered_chart_passes_server_side_dry_run(
    cluster: SessionCluster, chart_crds: None, make_namespace: Callable[[], str], mode: str
) -> None:
    release_namespace = make_namespace()
    options = {"peering.enabled": "true"}
    if mode == "namespaced":
        options["watchNamespaces"] = "{" + f"{make_namespace()},{make_namespace()}" + "}"
    rendered = helm(
        cluster, "template", "qmo", str(CHART), "-n", release_namespace, *set_args(options)
    ).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {d["kind"] for d in documents}
    assert "Deployment" in kinds and not kinds & MONITORING
    assert ("Role" in kinds) == (mode == "namespaced")
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(documents), result.stdout


def test_monitoring_objects_render_valid_promql_names(cluster: SessionCluster) -> None:
    rendered = helm(
        cluster,
        "template",
        "qmo",
        str(CHART),
        "--show-only",
        "templates/prometheusrule.yaml",
        "--set",
        "prometheusRule.enabled=true",
    ).stdout
    rule = yaml.safe_load(rendered)
    documented = yaml.safe_load((REPO / "docs" / "grafana" / "prometheus-rules.yaml").read_text())
    assert rule["spec"] == documented, "docs/grafana/prometheus-rules.yaml differs from the chart's rules"


# --- installed, with the operator running under the chart's ServiceAccount -----------------------------


def test_chart_service_account_takes_models_to_ready_and_back(
    cluster: SessionCluster,
    chart_crds: None,
    make_namespace: Callable[[], str],
    hub: HubStandIn,
    tmp_path: Path,
) -> None:
    system = make_namespace()
    # The operator's own pod must pass the restricted Pod Security Standard.
    cluster.kubectl("label", "namespace", system, "pod-security.kubernetes.io/enforce=restricted")
    helm(cluster, "install", "qmo", str(CHART), "-n", system, "--wait", "--timeout", "90s")
    try:
        deployment = json.loads(
            cluster.kubectl(
                "get", "deployment", "qmo-quantized-model-operator", "-n", system, "-o", "json"
            ).stdout
        )
        assert deployment["status"].get("readyReplicas") == 1, "the chart's pod was not admitted or scheduled"
        gpu_classes = json.loads(cluster.kubectl("get", "gpuclasses", "-o", "json").stdout)["items"]
        assert {"h100-80gb", "h200", "a100-80gb", "a100-40gb", "l40s", "l4", "a10g"} <= {
            g["metadata"]["name"] for g in gpu_classes
        }

        team = make_namespace()
        k = Models(cluster, team)
        k.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "hf-token"},
                "stringData": {"token": GATED_TOKEN},
            }
        )
        kubeconfig = service_account_kubeconfig(
            cluster, system, "qmo-quantized-model-operator", tmp_path / "sa.yaml"
        )
        with provisioner(cluster, tmp_path):
            operator = OperatorProcess(cluster, hub.url, tmp_path, kubeconfig=kubeconfig)
            operator.start()
            try:
                # Two models share one artifact: create, JSON-patch its ownerReferences, Jobs, pods, SSA.
                k.apply(model("one"))
                k.apply(model("two", maxModelLen=4096))
                one, two = k.wait_ready("one"), k.wait_ready("two")
                [shared] = k.list("modelartifacts")
                assert {r["uid"] for r in shared["metadata"]["ownerReferences"]} == {
                    one["metadata"]["uid"],
                    two["metadata"]["uid"],
                }
                for kind in ("deployment", "service", "pdb"):
                    assert k.get(kind, "two-vllm") is not None

                # The last user moves to new weights: qmo deletes the old artifact, which evicts its files.
                k.delete("qm", "one")
                wait_for(
                    lambda: (
                        len((k.get("ma", shared["metadata"]["name"]) or {})["metadata"]["ownerReferences"])
                        == 1
                    ),
                    timeout=60,
                    description="the garbage collector to drop the deleted model's ownerReference",
                )
                changed = model("two", maxModelLen=4096)
                changed["spec"]["quantization"] = {"method": "gptq", "bits": 8}
                k.apply(changed)
                wait_for(
                    lambda: k.get("ma", shared["metadata"]["name"]) is None,
                    timeout=120,
                    description="the released artifact to be evicted and deleted by qmo",
                )
                k.wait_ready("two")
                k.delete("qm", "two")
                wait_for(
                    lambda: not k.list("modelartifacts"), timeout=90, description="the last artifact to go"
                )
                assert_no_permission_trouble(operator)
            finally:
                operator.stop()
    finally:
        helm(cluster, "uninstall", "qmo", "-n", system, "--wait", check=False)


def test_namespaced_mode_grants_only_the_watched_namespaces(
    cluster: SessionCluster,
    chart_crds: None,
    make_namespace: Callable[[], str],
    hub: HubStandIn,
    tmp_path: Path,
) -> None:
    system, team, other = make_namespace(), make_namespace(), make_namespace()
    helm(
        cluster,
        "install",
        "qmo-ns",
        str(CHART),
        "-n",
        system,
        *set_args(
            {
                "watchNamespaces": "{" + team + "}",
                "rbac.tokenSecretNames": "{hf-token}",
                "rbac.readNodes": "false",  # the locked-down choice: plans trust the GPUClasses
                "gpuClasses.create": "false",
                "replicas": "0",
            }
        ),
    )
    account = "qmo-ns-quantized-model-operator"
    subject = f"system:serviceaccount:{system}:{account}"
    try:
        for verb, resource in granted_rules("namespaced"):
            assert can_i(cluster, subject, verb, resource, team), f"{verb} {resource} in {team}"
            assert not can_i(cluster, subject, verb, resource, other), f"{verb} {resource} in {other}"
        # rbac.tokenSecretNames narrows Secrets to the named token.
        assert can_i(cluster, subject, "get", "secrets", team, name="hf-token")
        assert not can_i(cluster, subject, "get", "secrets", team, name="other")
        assert not can_i(cluster, subject, "get", "secrets", other, name="hf-token")
        for verb, resource in granted_rules("cluster", "namespacedMode"):
            assert can_i(cluster, subject, verb, resource, None), f"{verb} {resource}"
        assert not can_i(cluster, subject, "list", "quantizedmodels.qmo.dev", None), "cluster-wide list"
        assert not can_i(cluster, subject, "list", "nodes", None), "rbac.readNodes=false still lists nodes"
        assert not can_i(cluster, subject, "get", "secrets", "kube-system")

        k = Models(cluster, team)
        k.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "hf-token"},
                "stringData": {"token": GATED_TOKEN},
            }
        )
        kubeconfig = service_account_kubeconfig(cluster, system, account, tmp_path / "sa.yaml")
        with provisioner(cluster, tmp_path):
            operator = OperatorProcess(cluster, hub.url, tmp_path, kubeconfig=kubeconfig, namespaces=[team])
            operator.start()
            try:
                k.apply(model("solo"))
                k.wait_ready("solo")
                assert_no_permission_trouble(operator)
            finally:
                operator.stop()
    finally:
        helm(cluster, "uninstall", "qmo-ns", "-n", system, "--wait", check=False)


def test_cluster_wide_mode_grants_nothing_beyond_need(
    cluster: SessionCluster, make_namespace: Callable[[], str]
) -> None:
    system = make_namespace()
    helm(
        cluster,
        "install",
        "qmo-rbac",
        str(CHART),
        "-n",
        system,
        *set_args({"gpuClasses.create": "false", "replicas": "0"}),
    )
    subject = f"system:serviceaccount:{system}:qmo-rbac-quantized-model-operator"
    try:
        for verb, resource in granted_rules("namespaced", "tokenSecrets", "cluster", "nodes"):
            assert can_i(cluster, subject, verb, resource, "default"), f"{verb} {resource}"
        refused = [
            # (delete deployments and services is granted: a model moving between one node and several
            # deletes the shape it leaves; desired/multinode.py)
            ("update", "deployments.apps"),
            ("update", "statefulsets.apps"),
            ("list", "leaderworkersets.leaderworkerset.x-k8s.io"),  # read by name only: the CRD may go
            ("list", "scaledobjects.keda.sh"),
            ("list", "secrets"),
            ("watch", "secrets"),
            ("create", "pods"),
            ("delete", "pods"),
            ("get", "nodes"),  # nodes: list (their GPU counts), nothing more
            ("watch", "nodes"),
            ("patch", "nodes"),
            ("list", "namespaces"),
            ("update", "quantizedmodels.qmo.dev"),
            ("delete", "quantizedmodels.qmo.dev"),
            ("create", "gpuclasses.qmo.dev"),
            ("patch", "gpuclasses.qmo.dev"),
            ("create", "roles.rbac.authorization.k8s.io"),
            ("create", "serviceaccounts/token"),
            ("delete", "persistentvolumeclaims"),
            ("*", "*"),
            ("get", "clusterkopfpeerings.kopf.dev"),
        ]
        for verb, resource in refused:
            assert not can_i(cluster, subject, verb, resource, "default"), f"{verb} {resource} is granted"
    finally:
        helm(cluster, "uninstall", "qmo-rbac", "-n", system, "--wait", check=False)


HA_LIFETIME = 12  # seconds; the chart's default is 15


def test_ha_replicas_one_acts_and_a_killed_leader_hands_over_within_the_peering_lifetime(
    cluster: SessionCluster,
    chart_crds: None,
    make_namespace: Callable[[], str],
    hub: HubStandIn,
    tmp_path: Path,
) -> None:
    """Replicas as the chart runs them (its ServiceAccount, namespaced peering): the oldest acts, a newer one
    stands by; SIGKILL the leader and the standby resumes once the leader's keep-alive expires; a clean
    exit hands over at once."""
    system, watched = make_namespace(), make_namespace()
    options = {
        "peering.enabled": "true",
        "peering.name": "qmo-ha",
        "peering.lifetimeSeconds": str(HA_LIFETIME),
        "watchNamespaces[0]": watched,
        "gpuClasses.create": "false",
        "replicas": "0",  # the replicas are processes here, started below with the chart's identity
    }
    helm(cluster, "install", "qmo-ha", str(CHART), "-n", system, *set_args(options))
    try:
        kubeconfig = service_account_kubeconfig(
            cluster, system, "qmo-ha-quantized-model-operator", tmp_path / "sa.yaml"
        )

        def replica(name: str) -> OperatorProcess:
            (tmp_path / name).mkdir()
            return OperatorProcess(
                cluster,
                hub.url,
                tmp_path / name,
                kubeconfig=kubeconfig,
                namespaces=[watched],
                peering="qmo-ha",
                extra_args=("--peering-lifetime", str(HA_LIFETIME)),
            )

        def reconciles(operator: OperatorProcess) -> float:
            return operator.metric_value("qmo_reconcile_duration_seconds_count")

        def log(operator: OperatorProcess) -> str:
            return operator.log_tail(100000)

        def peers() -> int:
            peering = json.loads(
                cluster.kubectl("get", "kopfpeering", "qmo-ha", "-n", watched, "-o", "json").stdout
            )
            return len(peering.get("status") or {})

        for index in range(3):
            cluster.kubectl(
                "apply", "-n", watched, "-f", "-", input=json.dumps(quantized_model(f"ha-{index}"))
            )
        leader, standby, late = replica("leader"), replica("standby"), replica("late")
        try:
            leader.start()
            wait_for(lambda: reconciles(leader) >= 3, timeout=60, description="the leader reconciling")
            standby.start()
            # kopf starts paused and resumes only when no peer outranks it, so a standby says nothing.
            wait_for(lambda: peers() == 2, timeout=30, description="both replicas' keep-alives")
            # Both run; only the leader acts (three more resyncs of its own, none of the standby's).
            floor = reconciles(leader)
            wait_for(lambda: reconciles(leader) >= floor + 3, timeout=60, description="more resyncs")
            assert reconciles(standby) == 0
            assert "Pausing" not in log(leader)

            leader.kill()
            killed = time.monotonic()
            wait_for(
                lambda: "Resuming operations" in log(standby),
                timeout=HA_LIFETIME + 15,
                interval=0.1,
                description="the standby to take over from the killed leader",
            )
            resumed = time.monotonic() - killed
            wait_for(lambda: reconciles(standby) > 0, timeout=30, interval=0.1, description="standby acting")
            acting = time.monotonic() - killed

            # A clean exit says goodbye in the peering object: the next standby resumes at once.
            late.start()
            wait_for(lambda: peers() == 2, timeout=30, description="the late replica's keep-alive")
            assert reconciles(late) == 0
            stopped = time.monotonic()
            standby.stop()  # SIGTERM; returns once the process has exited
            wait_for(
                lambda: reconciles(late) > 0, timeout=30, interval=0.1, description="the late replica acting"
            )
            clean = time.monotonic() - stopped
            print(
                f"HA handover (peering lifetime {HA_LIFETIME} s): SIGKILLed leader -> standby resumed "
                f"{resumed:.1f} s, first reconcile {acting:.1f} s; clean exit -> next acting {clean:.1f} s"
            )
            for operator in (leader, standby, late):
                assert "orbidden" not in log(operator), log(operator)
        finally:
            for operator in (late, standby, leader):
                operator.stop()
    finally:
        helm(cluster, "uninstall", "qmo-ha", "-n", system, "--wait", check=False)
