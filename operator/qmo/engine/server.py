"""Run one vLLM server as a child process group: start, wait for ``/health``, stop with everything it spawned.

vLLM starts an engine-core process and workers beside its API server, so it runs in a session of its own
and is stopped by process group (SIGTERM, then SIGKILL after a grace period): no orphan keeps the port or
4 GiB of memory after a failed test or a Ctrl-C. Its temp files (``vllm_dist_*``, torch-inductor caches)
go to a private TMPDIR that is removed with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from qmo.desired.serving import EngineCommand
from qmo.engine.install import EnginePaths, read_stamp

# Where vLLM says why it stopped: "ValueError: ...", "safetensors...SafetensorError: ...". The wrappers
# the engine core and its workers raise afterwards ("... See root cause above.") name no cause, and warnings
# may quote an exception name in passing: both are skipped, and the first real one is the root cause.
_ERROR_LINE = re.compile(r"\b([A-Za-z_.]*(?:Error|Exception)): (.+)$")
_GENERIC_ERRORS = ("See root cause", "See stack trace", "initialization failed", "EngineDeadError")
_NOT_ERRORS = (" INFO ", " WARNING ", " DEBUG ")
STOP_GRACE_SECONDS = 20.0
# vLLM puts its ZeroMQ IPC sockets in TMPDIR as <TMPDIR>/<uuid4>, and a Unix socket path has at most 107
# bytes: with the private "qmo-vllm-xxxxxxxx" level and "ipc://", a base longer than this fails at start.
MAX_TMP_BASE_LENGTH = 48
_PR_SET_PDEATHSIG = 1


class EngineError(RuntimeError):
    """The engine could not be found, started, or it stopped; the message is what a user can act on."""


class EngineNotInstalled(EngineError):
    pass


def _die_with_parent() -> None:
    """Linux: vLLM's API server gets SIGTERM if whoever started it dies without stopping it (SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def engine_python() -> Path:
    """The CPU engine's interpreter: ``$QMO_VLLM_PYTHON``, else the one ``make vllm`` installed."""
    override = os.environ.get("QMO_VLLM_PYTHON")
    if override:
        if not Path(override).exists():
            raise EngineNotInstalled(f"QMO_VLLM_PYTHON={override} does not exist")
        return Path(override)
    paths = EnginePaths.default()
    if read_stamp(paths) is None:
        raise EngineNotInstalled(
            f"the local vLLM engine is not installed ({paths.root}); run `make vllm` once (a few minutes)"
        )
    return paths.python


def private_tmp_base(base: str) -> str:
    """Where the server's private TMPDIR goes: ``base`` (the caller's TMPDIR) unless too long for sockets."""
    return base if len(base) <= MAX_TMP_BASE_LENGTH else "/tmp"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def error_line(log_text: str) -> str | None:
    """vLLM's own reason for stopping, from its log: the root-cause exception line, else None."""
    found: list[str] = []
    for line in log_text.splitlines():
        if any(level in line for level in _NOT_ERRORS):
            continue
        match = _ERROR_LINE.search(line)
        if match:
            found.append(f"{match.group(1)}: {match.group(2).strip()}")
    specific = [line for line in found if not any(generic in line for generic in _GENERIC_ERRORS)]
    if specific:
        return specific[0]
    return found[-1] if found else None


@dataclass
class EngineServer:
    """One vLLM server. Use as a context manager: whatever happens inside, the process group is stopped."""

    command: EngineCommand
    host: str
    port: int
    executable: Path
    """The engine's interpreter (CPU engine) or vLLM's own ``vllm`` script (a GPU machine)."""
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _tmpdir: Path | None = field(default=None, init=False)
    _log_file: Path | None = field(default=None, init=False)
    _final_log: str = field(default="", init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def argv(self) -> list[str]:
        return [str(self.executable), *self.command.args]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in self.command.unset_env}
        env.update(dict(self.command.env))
        return env

    def start(self) -> None:
        if port_in_use(self.host, self.port):
            raise EngineError(f"port {self.port} on {self.host} is in use; choose another with --port")
        base = private_tmp_base(tempfile.gettempdir())
        self._tmpdir = Path(tempfile.mkdtemp(prefix="qmo-vllm-", dir=base))
        self._log_file = self._tmpdir / "vllm.log"
        env = self.environment()
        env["TMPDIR"] = str(self._tmpdir)
        with open(self._log_file, "wb") as log:
            self._process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._tmpdir,
                start_new_session=True,  # its own process group: stopped as a whole
                preexec_fn=_die_with_parent,
            )

    def log_text(self) -> str:
        if self._log_file is None or not self._log_file.exists():
            return self._final_log
        return self._log_file.read_text(errors="replace")

    def wait_healthy(self, *, timeout: float) -> float:
        """Seconds until ``/health`` answered 200; EngineError with vLLM's reason if it exited or timed out."""
        assert self._process is not None, "start() first"
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                reason = error_line(self.log_text()) or self.log_tail(5)
                raise EngineError(f"vLLM exited with status {code} before it was healthy: {reason}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise EngineError(f"vLLM was not healthy within {timeout:.0f} s; last output: {self.log_tail(3)}")

    def log_tail(self, lines: int) -> str:
        return " | ".join(self.log_text().strip().splitlines()[-lines:])

    def wait(self) -> int:
        assert self._process is not None, "start() first"
        return self._process.wait()

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL what is left after the grace period; then remove TMPDIR."""
        process = self._process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_GRACE_SECONDS)
            # The API server may be gone while its engine core still runs: the group is what counts.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            self._process = None
        if self._tmpdir is not None:
            self._final_log = self.log_text()  # the log may live in TMPDIR: keep it for the error message
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> EngineServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (tests check that stop() left nothing)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
