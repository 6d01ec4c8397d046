"""The opt-in KEDA build's pure parts (its scratch go.mod, the stamp that says a build is complete) and the
Prometheus stand-in KEDA's scaler queries in the cluster test. No ``go`` and no cluster here."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from qmo.commands.sandbox import keda_command
from qmo.sandbox import build, keda, versions
from qmo.sandbox.local import Sandbox
from qmo.sandbox.prometheus import PrometheusStandIn
from qmo.sandbox.versions import CachePaths
from qmo.sandbox.wait import StoppedHolding, holds


def test_the_scratch_module_repeats_kedas_replace_and_exclude() -> None:
    """A requiring module ignores KEDA's own replace/exclude lines: without them the graph does not resolve."""
    text = build.keda_go_mod_text()
    assert f"require github.com/kedacore/keda/v2 {versions.KEDA_VERSION}\n" in text
    assert (
        "replace github.com/nexus-rpc/nexus-proto-annotations v0.1.0 => "
        "github.com/nexus-rpc/nexus-proto-annotations v0.1.1-0.20260629224316-835bd8d49cb4\n"
    ) in text
    assert "exclude github.com/go-chi/chi/v5 v5.2.3\n" in text
    assert "go 1.26.0\n" in text
    assert f"version.Version={versions.KEDA_VERSION.lstrip('v')}" in build.keda_ldflags()


def test_keda_has_its_own_cache_directory_keyed_by_its_version(tmp_path: Path) -> None:
    paths = CachePaths(tmp_path)
    assert paths.keda_bin_dir == tmp_path / "bin" / f"keda-{versions.KEDA_VERSION}"
    assert paths.keda_bin_dir != paths.bin_dir
    assert paths.keda_stamp.parent == paths.keda_bin_dir


def fake_build(paths: CachePaths, *, key: str = versions.keda_key()) -> None:
    paths.keda_bin_dir.mkdir(parents=True)
    for name in versions.KEDA_COMMANDS:
        binary = paths.keda_bin_dir / name
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    crds = paths.keda_config_dir / "crd" / "bases"
    crds.mkdir(parents=True)
    (crds / "keda.sh_scaledobjects.yaml").write_text("kind: CustomResourceDefinition\n")
    paths.keda_stamp.write_text(json.dumps({"key": key, "seconds": 300.0}))


def test_a_build_counts_only_with_its_stamp_binaries_and_crds(tmp_path: Path) -> None:
    paths = CachePaths(tmp_path)
    assert build.read_keda_stamp(paths) is None
    fake_build(paths)
    assert build.read_keda_stamp(paths) == {"key": versions.keda_key(), "seconds": 300.0}
    # A warm call never runs go (there is none on this PATH).
    result = build.build_keda(paths)
    assert not result.built and result.bin_dir == paths.keda_bin_dir

    (paths.keda_bin_dir / "keda-adapter").unlink()
    assert build.read_keda_stamp(paths) is None


@pytest.mark.parametrize("broken", ["other version", "no crds"])
def test_a_stamp_of_another_version_or_without_crds_is_no_build(tmp_path: Path, broken: str) -> None:
    paths = CachePaths(tmp_path)
    fake_build(paths, key="keda-v0.0.0" if broken == "other version" else versions.keda_key())
    if broken == "no crds":
        (paths.keda_config_dir / "crd" / "bases" / "keda.sh_scaledobjects.yaml").unlink()
    assert build.read_keda_stamp(paths) is None


def test_without_go_a_cold_build_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(build.BuildError, match="`go` is not on PATH"):
        build.build_keda(CachePaths(tmp_path))


def test_crd_names_come_from_kedas_file_names(tmp_path: Path) -> None:
    bases = tmp_path / "crd" / "bases"
    bases.mkdir(parents=True)
    for file in ("keda.sh_scaledobjects.yaml", "eventing.keda.sh_cloudeventsources.yaml"):
        (bases / file).write_text("")
    assert keda.crd_names(tmp_path) == ["cloudeventsources.eventing.keda.sh", "scaledobjects.keda.sh"]


def test_the_apiservice_reaches_the_adapter_on_loopback() -> None:
    service, apiservice = keda.apiservice_manifests(port=6443, ca_bundle=b"CA")
    assert service["spec"] == {"type": "ExternalName", "externalName": "localhost"}
    assert apiservice["metadata"]["name"] == "v1beta1.external.metrics.k8s.io"
    assert apiservice["spec"]["service"] == {
        "namespace": "keda",
        "name": service["metadata"]["name"],
        "port": 6443,
    }
    assert apiservice["spec"]["caBundle"] == "Q0E="


def query(stand_in: PrometheusStandIn, promql: str) -> dict[str, object]:
    url = f"{stand_in.url}/api/v1/query?query={urllib.parse.quote(promql)}&time=2026-12-07T00:00:00Z"
    with urllib.request.urlopen(url, timeout=5) as response:
        return dict(json.loads(response.read()))


def test_the_prometheus_stand_in_answers_what_the_test_set_and_nothing_else() -> None:
    promql = 'sum(vllm:num_requests_running{namespace="ns",model_name="m"})'
    with PrometheusStandIn() as stand_in:
        # Unknown: an empty vector, as Prometheus answers for a series that does not exist.
        assert query(stand_in, promql) == {
            "status": "success",
            "data": {"resultType": "vector", "result": []},
        }
        stand_in.set(promql, 12)
        result = query(stand_in, promql)["data"]["result"]  # type: ignore[index]
        assert [sample["value"][1] for sample in result] == ["12"]
        stand_in.set(promql, 0.25)
        assert query(stand_in, promql)["data"]["result"][0]["value"][1] == "0.25"  # type: ignore[index]
        assert stand_in.times_asked(promql) == 3


def test_holds_fails_as_soon_as_the_condition_breaks() -> None:
    values = iter([True, True, False, True])
    with pytest.raises(StoppedHolding, match="replicas stopped holding"):
        holds(lambda: next(values), seconds=10, interval=0, description="replicas")
    assert holds(lambda: 3, seconds=0, description="three") == 3


def test_the_build_entry_point_reports_a_warm_keda_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QMO_CACHE_DIR", str(tmp_path))
    fake_build(CachePaths(tmp_path))
    assert build.main(["--keda"]) == 0
    assert "cached; the cold build took 300 s" in capsys.readouterr().out


def test_qmo_sandbox_build_keda_and_qmo_sandbox_keda_without_a_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox = Sandbox(CachePaths(tmp_path))
    # Without a build, `qmo sandbox keda` says how to get one before it looks for a sandbox.
    assert keda_command(sandbox) == 1
    assert "`make keda`" in capsys.readouterr().err
    fake_build(sandbox.paths)
    assert sandbox.build_command(keda=True) == 0
    assert "cached; the cold build took 300 s" in capsys.readouterr().out
    assert keda_command(sandbox) == 1
    assert "the sandbox is not running" in capsys.readouterr().err
