"""The user's sandbox keeps its volumes' data (the model cache's quantized weights) across `down`."""

from __future__ import annotations

from pathlib import Path

import pytest

from qmo.sandbox.kubelet import PROVISIONED_ROOT, Environments, ProcessKubelet
from qmo.sandbox.local import Sandbox
from qmo.sandbox.versions import CachePaths


def test_provisioned_volumes_map_into_the_volumes_directory_and_other_host_paths_stay(tmp_path: Path) -> None:
    environments = Environments(worker_bin=tmp_path, engine_python=None)
    kubelet = ProcessKubelet(None, tmp_path / "node", environments, {}, volumes_dir=tmp_path / "kept")  # type: ignore[arg-type]
    assert kubelet.host_path(f"{PROVISIONED_ROOT}/demo/qmo-cache") == tmp_path / "kept" / "demo" / "qmo-cache"
    assert kubelet.host_path("/data/models") == Path("/data/models")
    default = ProcessKubelet(None, tmp_path / "node", environments, {})  # type: ignore[arg-type]
    assert default.host_path(f"{PROVISIONED_ROOT}/ns/c") == tmp_path / "node" / "volumes" / "ns" / "c"


def test_down_keeps_the_volumes_and_purge_removes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox = Sandbox(CachePaths(tmp_path), ephemeral=True)
    weights = sandbox.control_plane.volumes_dir / "demo" / "qmo-cache" / "tiny" / "model.safetensors"
    assert sandbox.control_plane.volumes_dir == tmp_path / "sandbox-volumes"
    assert not sandbox.control_plane.volumes_dir.is_relative_to(
        sandbox.paths.sandbox_dir
    )  # `down` removes that
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    source = sandbox.paths.sandbox_hub_dir / "qmo-sandbox" / "tiny-llama" / "config.json"
    source.parent.mkdir(parents=True)
    source.write_text("{}")

    assert sandbox.down_command() == 0
    assert weights.read_bytes() == b"weights" and source.read_text() == "{}"
    said = capsys.readouterr().out
    assert "kept for the next demo" in said and str(sandbox.paths.sandbox_hub_dir) in said

    assert sandbox.down_command(purge=True) == 0
    assert not sandbox.control_plane.volumes_dir.exists() and not sandbox.paths.sandbox_hub_dir.exists()
    assert "removed: " in capsys.readouterr().out
    assert sandbox.down_command() == 0  # nothing left to keep or purge: no word about it
    assert "kept" not in capsys.readouterr().out
