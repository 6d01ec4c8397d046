"""The hub stand-in serves a real checkpoint to the real huggingface_hub client and to ``qmo quantize``.

The model is a tiny random Llama built in a subprocess (this process stays free of torch); everything
else is real: the HTTP server, huggingface_hub's snapshot_download, and the worker's CLI.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from qmo.reconcile.source import HubClient, SourceError
from qmo.sandbox.harness import HubStandIn

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_models import build_tiny_llama_in_subprocess

PUBLIC = "qmo-test/tiny-llama"
PUBLIC_SHA = "1" * 40
GATED = "qmo-test/tiny-llama-gated"
GATED_SHA = "2" * 40
TOKEN = "hf_stand_in_test_token"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama_in_subprocess(tmp_path_factory.mktemp("tiny-llama"), vocab_size=128)


@pytest.fixture(scope="module")
def hub(model: Path) -> Iterator[HubStandIn]:
    with HubStandIn() as stand_in:
        stand_in.add_directory(PUBLIC, model, sha=PUBLIC_SHA)
        stand_in.add_directory(GATED, model, sha=GATED_SHA, token=TOKEN)
        yield stand_in


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def git_blob_id(path: Path) -> str:
    """What git itself says, so the stand-in's ETags are checked against an independent implementation."""
    return subprocess.run(
        ["git", "hash-object", "--no-filters", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_snapshot_download_gets_every_file_byte_identical_at_the_commit_main_points_to(
    hub: HubStandIn, model: Path, tmp_path: Path
) -> None:
    snapshot = Path(
        snapshot_download(PUBLIC, revision="main", cache_dir=tmp_path, endpoint=hub.url, token=False)
    )

    assert snapshot.name == PUBLIC_SHA
    assert (tmp_path / "models--qmo-test--tiny-llama" / "refs" / "main").read_text() == PUBLIC_SHA
    expected = files_of(model)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= expected.keys()
    assert files_of(snapshot) == expected
    # The weights came the way the hub sends them: a redirect to its CDN.
    weights = hashlib.sha256(expected["model.safetensors"]).hexdigest()
    assert any(r.path == f"/cdn/{weights}" and r.method == "GET" for r in hub.requests)


def test_the_stand_in_answers_metadata_and_misses_as_the_hub_does(
    hub: HubStandIn, model: Path, tmp_path: Path
) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    info = api.model_info(PUBLIC, revision="main")
    assert info.sha == PUBLIC_SHA
    assert sorted(s.rfilename for s in info.siblings or []) == sorted(files_of(model))
    assert api.model_info(PUBLIC, revision=PUBLIC_SHA).sha == PUBLIC_SHA

    config = get_hf_file_metadata(hf_hub_url(PUBLIC, "config.json", revision="main", endpoint=hub.url))
    assert (config.commit_hash, config.etag) == (PUBLIC_SHA, git_blob_id(model / "config.json"))
    assert config.size == (model / "config.json").stat().st_size
    weights = get_hf_file_metadata(
        hf_hub_url(PUBLIC, "model.safetensors", revision=PUBLIC_SHA, endpoint=hub.url)
    )
    assert weights.commit_hash == PUBLIC_SHA
    assert weights.etag == hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    assert weights.size == (model / "model.safetensors").stat().st_size
    assert weights.location.startswith(f"{hub.cdn_url}/cdn/")

    with pytest.raises(RevisionNotFoundError):
        api.model_info(PUBLIC, revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("qmo-test/absent")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(
            PUBLIC, "absent.json", revision="main", cache_dir=tmp_path, endpoint=hub.url, token=False
        )


def test_a_config_only_repo_still_serves_the_operators_hub_client() -> None:
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096}

    async def read(hub: HubStandIn, repo: str, token: str | None) -> tuple[str, dict[str, object]]:
        client = HubClient(endpoint=hub.url)
        sha = await client.resolve(repo, "v1.0", token)
        return sha, await client.config(repo, sha, token)

    with HubStandIn() as hub:
        hub.add(PUBLIC, config, sha=PUBLIC_SHA)
        hub.add(GATED, config, sha=GATED_SHA, token=TOKEN)
        assert asyncio.run(read(hub, PUBLIC, None)) == (PUBLIC_SHA, config)
        assert asyncio.run(read(hub, GATED, TOKEN)) == (GATED_SHA, config)
        with pytest.raises(SourceError) as refused:
            asyncio.run(read(hub, GATED, None))
        assert refused.value.reason == "SourceUnauthorized"


def test_a_gated_repo_refuses_without_its_token_and_serves_with_it(
    hub: HubStandIn, model: Path, tmp_path: Path
) -> None:
    with pytest.raises(GatedRepoError) as anonymous:
        snapshot_download(GATED, cache_dir=tmp_path / "anonymous", endpoint=hub.url, token=False)
    assert anonymous.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as wrong:
        snapshot_download(GATED, cache_dir=tmp_path / "wrong", endpoint=hub.url, token="hf_wrong")
    assert wrong.value.response.status_code == 403

    before = len(hub.requests)
    snapshot = Path(snapshot_download(GATED, cache_dir=tmp_path / "granted", endpoint=hub.url, token=TOKEN))
    assert snapshot.name == GATED_SHA
    assert files_of(snapshot) == files_of(model)
    granted = hub.requests[before:]
    to_hub = [
        r for r in granted if r.path.startswith(f"/{GATED}/") or r.path.startswith(f"/api/models/{GATED}/")
    ]
    to_cdn = [r for r in granted if r.path.startswith("/cdn/")]
    assert to_hub and all(r.authorization == f"Bearer {TOKEN}" for r in to_hub)
    # Like the real hub's CDN, the weights' download URL works without the token, and gets none.
    assert to_cdn and all(r.authorization is None for r in to_cdn)


def quantize_from_hub(
    hub: HubStandIn, tmp_path: Path, out: Path, token: str | None
) -> subprocess.CompletedProcess[str]:
    """``qmo quantize`` as the Job runs it: HF_ENDPOINT and HF_TOKEN from the environment, a fresh cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / f"hf-home-{out.name}")}
    if token:
        env["HF_TOKEN"] = token
    command = [sys.executable, "-m", "qmo", "quantize", "--hf-repo", GATED, "--revision", GATED_SHA]
    command += [
        "--method",
        "none",
        "--out",
        str(out),
        "--termination-log",
        str(tmp_path / f"{out.name}.json"),
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_quantize_worker_downloads_a_gated_model_from_the_stand_in(
    hub: HubStandIn, model: Path, tmp_path: Path
) -> None:
    refused = quantize_from_hub(hub, tmp_path, tmp_path / "refused", token=None)
    assert refused.returncode != 0
    assert "GatedRepoError" in refused.stderr
    assert not (tmp_path / "refused").exists()

    done = quantize_from_hub(hub, tmp_path, tmp_path / "copied", token=TOKEN)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "copied"
    manifest = json.loads((out / "qmo-manifest.json").read_text())
    assert manifest["source"] == {"repo": GATED, "revision": GATED_SHA}
    assert manifest["recipe"]["method"] == "none"
    source = files_of(model)
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == {
        path: (len(data), hashlib.sha256(data).hexdigest()) for path, data in source.items()
    }
    assert {path: data for path, data in files_of(out).items() if path != "qmo-manifest.json"} == source
    assert json.loads((tmp_path / "copied.json").read_text())["method"] == "none"
