"""Running qmo against a sandbox: the CRDs, a Hugging Face stand-in, the volume provisioner, and the
operator as a real process that can be killed. Shared by the demo, the cluster tests and the benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from qmo.sandbox.testing import SessionCluster
from qmo.sandbox.wait import StopWaiting, wait_for

EXAMPLES = Path(__file__).parent / "examples"
# What the cluster tier's hub stand-in serves: a public model and a gated one behind a token.
EXAMPLE_REPO = "meta-llama/Llama-3.1-8B"
EXAMPLE_SHA = "a" * 40
GATED_REPO = "meta-llama/Llama-3.1-8B-Gated"
GATED_SHA = "b" * 40
GATED_TOKEN = "hf_sandbox_secret_token_value"


def example_config(name: str = "llama-3.1-8b") -> dict[str, Any]:
    """A public model's config.json, shipped with qmo so the sandbox needs no hub."""
    config: dict[str, Any] = json.loads((EXAMPLES / f"{name}.config.json").read_text())
    return config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Files the hub stores in Git LFS by default (its .gitattributes): weights and the like. The hub answers a
# resolve of one with a redirect to its CDN, which serves the bytes by content hash and without the token.
LFS_SUFFIXES = (
    ".bin",
    ".ckpt",
    ".gguf",
    ".h5",
    ".model",
    ".msgpack",
    ".npy",
    ".onnx",
    ".pt",
    ".pth",
    ".safetensors",
)
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _git_blob_id(content: bytes) -> str:
    """The id git gives a file's content: the ETag the hub sends for a file stored in git."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class HubFile:
    """One file of a stand-in repo and the ids the hub gives it (a commit's files never change)."""

    path: str
    """Relative to the repo root, '/'-separated."""
    content: bytes | Path
    """The bytes, or the local file they are streamed from."""
    size: int
    git_id: str
    """The git blob id: of the content, or of the LFS pointer for an LFS file."""
    sha256: str | None
    """Set for an LFS file: its ETag and its name on the CDN."""

    @classmethod
    def of(cls, path: str, content: bytes | Path) -> HubFile:
        size = len(content) if isinstance(content, bytes) else content.stat().st_size
        lfs = path.endswith(LFS_SUFFIXES)
        digest = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
        if isinstance(content, bytes):
            digest.update(content)
        else:
            with content.open("rb") as source:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
        if not lfs:
            return cls(path, content, size, digest.hexdigest(), None)
        file = cls(path, content, size, "", digest.hexdigest())
        return replace(file, git_id=_git_blob_id(file.pointer()))

    @property
    def etag(self) -> str:
        return self.sha256 or self.git_id

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.git_id, "size": self.size, "path": self.path}
        if self.sha256:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer())}
        return entry

    def sibling(self, *, blobs: bool) -> dict[str, Any]:
        """The file in a repo info's ``siblings`` (with ``?blobs=True``: its size and ids too)."""
        if not blobs:
            return {"rfilename": self.path}
        entry: dict[str, Any] = {"rfilename": self.path, "size": self.size, "blobId": self.git_id}
        if self.sha256:
            entry["lfs"] = {"sha256": self.sha256, "size": self.size, "pointerSize": len(self.pointer())}
        return entry

    def pointer(self) -> bytes:
        """What git stores for an LFS file in its place."""
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()


@dataclass(frozen=True)
class HubRepo:
    sha: str
    token: str | None
    files: dict[str, HubFile]
    branches: frozenset[str] | None
    """The revision names that point at ``sha``; None: every name does (what ``add`` serves)."""

    def commit(self, revision: str) -> str | None:
        if revision == self.sha:
            return self.sha
        if _COMMIT.fullmatch(revision):
            return None
        return self.sha if self.branches is None or revision in self.branches else None


class HubRequest(NamedTuple):
    path: str
    authorization: str | None
    method: str


@dataclass(frozen=True)
class HubReply:
    status: int
    headers: dict[str, str]
    body: bytes | Path = b""
    size: int = 0

    @classmethod
    def of_json(cls, status: int, body: Any, **headers: str) -> HubReply:
        payload = json.dumps(body).encode()
        return cls(status, {"Content-Type": "application/json", **headers}, payload, len(payload))

    @classmethod
    def of_file(cls, file: HubFile, **headers: str) -> HubReply:
        return cls(200, headers, file.content, file.size)

    @classmethod
    def error(cls, status: int, code: str, message: str, **headers: str) -> HubReply:
        # huggingface_hub tells RepoNotFound, GatedRepo, RevisionNotFound and EntryNotFound apart by this header.
        return cls.of_json(
            status, {"error": message}, **{"X-Error-Code": code, "X-Error-Message": message}, **headers
        )


class HubStandIn:
    """The Hugging Face hub's download API, served on 127.0.0.1: what the operator calls (a revision's
    commit, a commit's config.json) and what huggingface_hub's ``snapshot_download`` calls in the
    quantize worker (repo info with siblings, the recursive tree, HEAD and GET on resolve, the CDN
    redirect of LFS files). No Xet headers are sent, so clients download over plain HTTP.

    A repo given a token is gated: without an Authorization header it answers 401, with another token 403.
    """

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[HubRequest] = []
        self._blobs: dict[str, HubFile] = {}
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.reply(send_body=True)

            def do_HEAD(self) -> None:
                self.reply(send_body=False)

            def reply(self, *, send_body: bool) -> None:
                auth = self.headers.get("Authorization")
                hub.record(HubRequest(self.path, auth, self.command))
                reply = hub.respond(self.path, auth)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(reply.size))
                self.end_headers()
                if not send_body:
                    return
                try:
                    if isinstance(reply.body, bytes):
                        self.wfile.write(reply.body)
                    else:
                        with reply.body.open("rb") as source:
                            shutil.copyfileobj(source, self.wfile, 1 << 20)
                except ConnectionError:
                    pass  # the client went away mid-download; it retries or fails on its side

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        # The same server under another host name, so clients treat LFS redirects as leaving the hub
        # (and drop the token) as they do for the real CDN.
        self.cdn_url = f"http://localhost:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, repo: str, config: dict[str, Any], *, sha: str, token: str | None = None) -> None:
        """A repo holding only ``config.json``; every revision name resolves to ``sha``."""
        self._register(
            repo,
            HubRepo(
                sha, token, {"config.json": HubFile.of("config.json", json.dumps(config).encode())}, None
            ),
        )

    def add_directory(
        self,
        repo: str,
        directory: Path,
        *,
        sha: str,
        token: str | None = None,
        branches: Sequence[str] = ("main",),
    ) -> list[HubFile]:
        """A repo holding every file under ``directory`` (read now, as one commit ``sha``; it must not
        change while served) at ``branches`` and ``sha``. Returns the files, sorted by path."""
        if not _COMMIT.fullmatch(sha):
            raise ValueError(f"sha must be a 40-character lowercase hex commit id, got {sha!r}")
        paths = sorted(
            p for p in directory.rglob("*") if p.is_file() and ".git" not in p.relative_to(directory).parts
        )
        if not paths:
            raise ValueError(f"{directory} holds no files")
        files = {f.path: f for f in (HubFile.of(p.relative_to(directory).as_posix(), p) for p in paths)}
        self._register(repo, HubRepo(sha, token, files, frozenset(branches)))
        return list(files.values())

    def _register(self, name: str, repo: HubRepo) -> None:
        with self._lock:
            self.repos[name] = repo
            self._blobs.update({f.sha256: f for f in repo.files.values() if f.sha256})

    def record(self, request: HubRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def respond(self, target: str, auth: str | None) -> HubReply:
        """The hub's answer to a GET of ``target`` (path and query, as sent); a HEAD gets its headers."""
        split = urlsplit(target)
        path, query = split.path, parse_qs(split.query)
        if path.startswith("/cdn/"):
            with self._lock:
                blob = self._blobs.get(path.removeprefix("/cdn/"))
            if blob is None:
                return HubReply.error(404, "EntryNotFound", "no such blob")
            return HubReply.of_file(
                blob, **{"Content-Type": "application/octet-stream", "ETag": f'"{blob.etag}"'}
            )
        if path == "/api/agent-harnesses":
            # huggingface_hub >= 1.x fetches this registry for its user agent; an empty one detects nothing.
            return HubReply.of_json(200, {"standardEnvVars": [], "harnesses": {}})
        api = path.startswith("/api/models/")
        prefix = "/api/models/" if api else "/"
        with self._lock:
            known = [
                name for name in self.repos if path == prefix + name or path.startswith(f"{prefix}{name}/")
            ]
            name = max(known, key=len, default=None)
            repo = self.repos[name] if name else None
        if name is None or repo is None:
            return HubReply.error(404, "RepoNotFound", "Repository not found")
        if repo.token and auth != f"Bearer {repo.token}":
            status = 401 if auth is None else 403
            return HubReply.error(status, "GatedRepo", f"Access to model {name} is restricted")
        kind, _, rest = path[len(prefix + name) + 1 :].partition("/")
        if api and kind in ("", "revision"):
            return self._info(name, repo, unquote(rest) if kind else "main", query)
        if api and kind == "tree":
            revision, _, folder = rest.partition("/")
            return self._tree(repo, unquote(revision), unquote(folder), query)
        if not api and kind == "resolve":
            revision, _, filename = rest.partition("/")
            return self._resolve(repo, unquote(revision), unquote(filename))
        return HubReply.of_json(404, {"error": f"no such endpoint: {path}"})

    def _info(self, name: str, repo: HubRepo, revision: str, query: dict[str, list[str]]) -> HubReply:
        sha = repo.commit(revision)
        if sha is None:
            return HubReply.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        blobs = query.get("blobs", [""])[0].lower() == "true"
        siblings = [f.sibling(blobs=blobs) for f in repo.files.values()]
        return HubReply.of_json(
            200,
            {
                "id": name,
                "modelId": name,
                "sha": sha,
                "private": False,
                "gated": "manual" if repo.token else False,
                "siblings": siblings,
            },
        )

    def _tree(self, repo: HubRepo, revision: str, folder: str, query: dict[str, list[str]]) -> HubReply:
        if repo.commit(revision) is None:
            return HubReply.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        base = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for file in repo.files.values():
            if not file.path.startswith(base):
                continue
            parts = file.path[len(base) :].split("/")
            for depth in range(1, len(parts)):
                directory = base + "/".join(parts[:depth])
                if recursive or depth == 1:
                    # A stand-in id: nothing downloads a folder by its git tree id.
                    oid = hashlib.sha1(directory.encode(), usedforsecurity=False).hexdigest()
                    entries.setdefault(
                        directory, {"type": "directory", "oid": oid, "size": 0, "path": directory}
                    )
            if recursive or len(parts) == 1:
                entries[file.path] = file.tree_entry()
        if base and not entries:
            return HubReply.error(404, "EntryNotFound", f"{folder} does not exist")
        return HubReply.of_json(200, [entries[p] for p in sorted(entries)])

    def _resolve(self, repo: HubRepo, revision: str, filename: str) -> HubReply:
        sha = repo.commit(revision)
        if sha is None:
            return HubReply.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        file = repo.files.get(filename)
        if file is None:
            # The commit rides along even on a 404: huggingface_hub caches that the file does not exist there.
            return HubReply.error(
                404, "EntryNotFound", f"{filename} does not exist", **{"X-Repo-Commit": sha}
            )
        headers = {"X-Repo-Commit": sha, "ETag": f'"{file.git_id}"'}
        if file.sha256:
            headers |= {
                "Location": f"{self.cdn_url}/cdn/{file.sha256}",
                "X-Linked-Etag": f'"{file.sha256}"',
                "X-Linked-Size": str(file.size),
            }
            return HubReply(302, headers)
        content_type = "application/json" if filename.endswith(".json") else "application/octet-stream"
        return HubReply.of_file(file, **{"Content-Type": content_type}, **headers)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


class OperatorProcess:
    """``qmo run`` as a subprocess against the test cluster: started, SIGKILLed and restarted at will.

    ``kubeconfig`` runs it with other credentials than the cluster admin's (e.g. a ServiceAccount token,
    to prove the chart's RBAC suffices); ``namespaces`` watches only those (``qmo run --namespace``);
    ``peering`` joins that kopf peering (``qmo run --peering``) instead of running standalone.
    """

    def __init__(
        self,
        cluster: SessionCluster,
        hub_url: str,
        log_dir: Path,
        *,
        resync_seconds: float = 3,
        kubeconfig: Path | None = None,
        namespaces: Sequence[str] = (),
        peering: str = "",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.cluster = cluster
        self.extra_args = tuple(extra_args)
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.namespaces = tuple(namespaces)
        self.peering = peering
        self.hub_url = hub_url
        self.log_dir = log_dir
        self.resync_seconds = resync_seconds
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.metrics_port = free_port()
        env = dict(self.cluster.env(), HF_ENDPOINT=self.hub_url, PYTHONUNBUFFERED="1")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "qmo",
                    "run",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--metrics-host",
                    "127.0.0.1",
                    "--metrics-port",
                    str(self.metrics_port),
                    "--liveness",
                    "",
                    "--resync-seconds",
                    str(self.resync_seconds),
                    *(arg for namespace in self.namespaces for arg in ("--namespace", namespace)),
                    *(("--peering", self.peering) if self.peering else ()),
                    *self.extra_args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._metrics_up, timeout=60, description="the operator's metrics endpoint")

    def _metrics_up(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise StopWaiting(f"the operator exited early:\n{self.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=0.5):
                return True
        except OSError:
            return False

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def metric_value(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        """SIGKILL: no cleanup handlers, no final status writes, exactly like an OOM kill."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@contextmanager
def provisioner(cluster: SessionCluster, log_dir: Path) -> Iterator[None]:
    with (log_dir / "provisioner.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "qmo.sandbox.provisioner", "--kubeconfig", str(cluster.kubeconfig)],
            env=cluster.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def install_crds(cluster: SessionCluster) -> None:
    from qmo.api.crds import render_crds

    cluster.kubectl("apply", "--server-side", "-f", "-", input="---\n".join(render_crds().values()))
    for crd in ("quantizedmodels.qmo.dev", "modelartifacts.qmo.dev", "gpuclasses.qmo.dev"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")


def quantized_model(
    name: str,
    *,
    repo: str = EXAMPLE_REPO,
    method: str = "awq",
    serving: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
    quantize_job: dict[str, Any] | None = None,
    token_secret: str | None = None,
) -> dict[str, Any]:
    source: dict[str, Any] = {"repo": repo}
    if token_secret:
        source["tokenSecretRef"] = {"name": token_secret}
    spec: dict[str, Any] = {
        "source": {"huggingface": source},
        "quantization": {"method": method, **(quantization or {})},
        "serving": {"gpuClass": "h100-80gb", "maxModelLen": 8192, **(serving or {})},
    }
    if quantize_job:
        spec["quantizeJob"] = quantize_job
    return {
        "apiVersion": "qmo.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": name},
        "spec": spec,
    }
