"""What counts as a cached build of the control plane and of helm (no Go here: stamps and files only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qmo.sandbox import build, versions
from qmo.sandbox.versions import CachePaths


def fake_binaries(paths: CachePaths, names: tuple[str, ...]) -> None:
    paths.bin_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        (paths.bin_dir / name).write_text("#!/bin/sh\n")
        (paths.bin_dir / name).chmod(0o755)


def test_the_control_plane_is_complete_without_helm_and_helm_has_its_own_stamp(tmp_path: Path) -> None:
    paths = CachePaths(tmp_path)
    assert "helm" not in versions.BINARIES  # a fresh `make demo` does not wait for it
    fake_binaries(paths, versions.BINARIES)
    paths.stamp.write_text(json.dumps({"key": versions.versions_key(), "seconds": 500.0}))
    assert build.read_stamp(paths) is not None
    assert build.read_helm_stamp(paths) is None

    paths.helm_stamp.write_text(json.dumps({"key": versions.versions_key(), "seconds": 120.0}))
    assert build.read_helm_stamp(paths) is None  # stamped but no binary: not built
    fake_binaries(paths, ("helm",))
    result = build.build_helm(paths)
    assert (result.built, result.bin_dir) == (False, paths.bin_dir)


def test_the_build_entry_point_reports_a_warm_helm_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QMO_CACHE_DIR", str(tmp_path))
    paths = CachePaths(tmp_path)
    fake_binaries(paths, ("helm",))
    paths.helm_stamp.write_text(json.dumps({"key": versions.versions_key(), "seconds": 120.0}))
    assert build.main(["--helm"]) == 0
    assert "cached; the cold build took 120 s" in capsys.readouterr().out


def test_without_go_a_cold_helm_build_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(build.BuildError, match="helm is built from Go modules, but `go` is not on PATH"):
        build.build_helm(CachePaths(tmp_path))
