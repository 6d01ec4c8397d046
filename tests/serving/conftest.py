"""Real vLLM (the pinned CPU engine, ``make vllm``) serving what ``qmo quantize`` writes, through ``qmo serve``.

One server at a time (about 4.5 GiB each), on 127.0.0.1; every server is stopped by its process group in
a ``finally``, so a failing test leaves nothing running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from tiny_models import build_tiny_llama, quantize_with_qmo

# What the CPU engine serves, label -> (backend, method): llm-compressor's compressed-tensors outputs (CPU
# WNA16 for gptq/awq, int8 scaled-mm for w8a8) and the legacy backends' native awq/gptq (vLLM's AWQ and
# GPTQ methods, on the same CPU kernel).
ARTIFACTS = {
    "gptq": ("llm-compressor", "gptq"),
    "awq": ("llm-compressor", "awq"),
    "w8a8": ("llm-compressor", "w8a8"),
    "fp8-dynamic": ("llm-compressor", "fp8-dynamic"),
    "autoawq-awq": ("autoawq", "awq"),
    "gptqmodel-gptq": ("gptqmodel", "gptq"),
    "gptqmodel-awq": ("gptqmodel", "awq"),
}
QUANTIZED_METHODS = tuple(ARTIFACTS)
STARTUP_DEADLINE_S = 600.0
_SERVING_LINE = re.compile(r"^serving (\S+) at (http://\S+) ")
_PID_LINE = re.compile(r"pid (\d+)\)")


@pytest.fixture(scope="session")
def engine_python() -> Path:
    from qmo.engine.server import EngineError
    from qmo.engine.server import engine_python as find

    try:
        return find()
    except EngineError as error:
        pytest.fail(f"tests/serving needs the local vLLM engine: {error}")


@pytest.fixture(scope="session")
def serving_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="session")
def tiny_source(serving_tmp: Path) -> Path:
    return build_tiny_llama(serving_tmp / "tiny-llama", initializer_range=0.1)


@pytest.fixture(scope="session")
def artifacts(tiny_source: Path, serving_tmp: Path) -> dict[str, Path]:
    """Every artifact, one ``qmo quantize`` at a time (two at once oversubscribe the cores with torch's
    spinning threads: the whole test run took 5 minutes longer), without the quality evaluation nothing
    here reads."""
    return {
        label: quantize_with_qmo(
            tiny_source, method, serving_tmp / f"tiny-llama-{label}", backend=backend, evaluate=False
        )
        for label, (backend, method) in ARTIFACTS.items()
    }


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory`` with its size and mtime: what "nothing was written" compares."""
    return {
        str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
    }


@dataclass
class Served:
    name: str
    url: str
    serve_pid: int
    engine_pid: int
    output: list[str]

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=60) as response:
            return bytes(response.read())

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_group(pgid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def wait_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.2)
    return not group_alive(pgid)


@contextmanager
def qmo_serve(model_dir: Path, *args: str, tmp: Path) -> Iterator[Served]:
    """``qmo serve MODEL_DIR --port 0 ...`` until it prints where it serves; stopped with SIGTERM afterwards.

    Whatever happens, both process groups (qmo serve's and vLLM's) are gone when this returns.
    """
    log = tmp / f"qmo-serve-{model_dir.name}-{time.monotonic_ns()}.log"
    # On CPUs with AMX, vLLM 0.25.1 serves int4 checkpoints (gptq, awq) as W4A8 unless told otherwise: it
    # quantizes activations to int8 at run time, an error of its own (measured 0.047/0.053 nats per token
    # against transformers on this tier's model, where W4A16 gives 0.013/0.016). This tier checks that vLLM
    # reads qmo's artifacts exactly as written, so it asks for the weight-only kernel on every machine.
    env = {**os.environ, "TMPDIR": str(tmp), "VLLM_CPU_INT4_W4A8": "0"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qmo",
                "serve",
                str(model_dir),
                "--port",
                "0",
                "--startup-timeout",
                str(STARTUP_DEADLINE_S),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    engine_pid = 0
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S + 60
        while time.monotonic() < deadline:
            text = log.read_text()
            if not engine_pid and (found := _PID_LINE.search(text)):
                engine_pid = int(found.group(1))
            served = next((m for line in text.splitlines() if (m := _SERVING_LINE.match(line))), None)
            if served:
                yield Served(served.group(1), served.group(2), process.pid, engine_pid, text.splitlines())
                break
            if process.poll() is not None:
                pytest.fail(f"qmo serve exited {process.returncode} before serving:\n{text[-4000:]}")
            time.sleep(0.5)
        else:
            pytest.fail(f"qmo serve did not serve within the deadline:\n{log.read_text()[-4000:]}")
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)  # reaped: a zombie leader would still count as its group
            stopped = wait_gone(process.pid, 5) and (not engine_pid or wait_gone(engine_pid, 30))
        except subprocess.TimeoutExpired:
            stopped = False
        kill_group(process.pid)
        if engine_pid:
            kill_group(engine_pid)
        process.wait(timeout=10)
        assert stopped, f"qmo serve left processes behind after SIGTERM:\n{log.read_text()[-2000:]}"
        leftovers = sorted(p.name for p in tmp.glob("qmo-vllm-*"))
        assert not leftovers, f"qmo serve left its temp files: {leftovers}"
