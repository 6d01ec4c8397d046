"""Real vLLM on CPU (the pinned engine, ``make vllm``) serving each method ``qmo quantize`` writes.

Per method: seconds from start to a healthy ``/health``, peak RSS of the whole server (API server, engine
core and worker: the process group), and decode speed in tokens/s for one sequence on a fixed prompt.
The model is the tests' tiny random Llama (2 layers, hidden 256), so the figures are the engine's fixed
costs, not a model's. ``--eager`` adds ``--enforce-eager`` (what the serving tests do to skip compiling).

    .venv/bin/python benchmarks/serving_cpu.py                      # every method, compiled and eager
    .venv/bin/python benchmarks/serving_cpu.py --methods none,gptq --modes eager
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from qmo.commands.serve import cpu_device, engine_command, make_plan, read_model
from qmo.engine.server import EngineServer, engine_python, free_port
from tiny_models import build_tiny_llama, quantize_with_qmo

METHODS = ("none", "gptq", "awq", "w8a8", "fp8-dynamic")
PROMPT = "the quick brown fox jumps over the lazy dog"
DECODE_TOKENS = 64


def group_rss_bytes(pgid: int) -> int:
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ProcessLookupError, ValueError):
            continue
    return total


class PeakRss(threading.Thread):
    def __init__(self, pgid: int) -> None:
        super().__init__(daemon=True)
        self.pgid, self.peak, self.running = pgid, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, group_rss_bytes(self.pgid))
            time.sleep(0.25)


def decode_tokens_per_second(url: str, name: str) -> float:
    body = {
        "model": name,
        "prompt": PROMPT,
        "max_tokens": DECODE_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
    }
    request = urllib.request.Request(
        f"{url}/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=600).read()  # warm: the first request pays one-off costs
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=600) as response:
        tokens = json.loads(response.read())["usage"]["completion_tokens"]
    return float(tokens) / (time.monotonic() - started)


def quantized(source: Path, method: str, work: Path) -> Path:
    return source if method == "none" else quantize_with_qmo(source, method, work / f"tiny-{method}")


def measure(directory: Path, *, eager: bool, python: Path) -> tuple[float, int, float]:
    model = read_model(directory, None)
    result = make_plan(model, cpu_device(1.0))
    port = free_port()
    command = engine_command(
        model,
        result,
        engine="cpu",
        name="bench",
        host="127.0.0.1",
        port=port,
        extra_args=["--enforce-eager"] if eager else [],
    )
    server = EngineServer(command=command, host="127.0.0.1", port=port, executable=python)
    with server:
        assert server.pid is not None
        rss = PeakRss(server.pid)
        rss.start()
        healthy = server.wait_healthy(timeout=900)
        speed = decode_tokens_per_second(server.url, "bench")
        rss.running = False
        rss.join()
    return healthy, rss.peak, speed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--modes", default="compiled,eager", help="compiled, eager, or both")
    args = parser.parse_args()
    python = engine_python()
    rows = []
    with tempfile.TemporaryDirectory(prefix="qmo-bench-serving-") as tmp:
        work = Path(tmp)
        os.environ["TMPDIR"] = tmp
        source = build_tiny_llama(work / "tiny-none", initializer_range=0.1)
        for method in args.methods.split(","):
            directory = quantized(source, method, work)
            for mode in args.modes.split(","):
                healthy, peak, speed = measure(directory, eager=mode == "eager", python=python)
                rows.append((method, mode, healthy, peak, speed))
                print(
                    f"{method:12} {mode:9} healthy {healthy:6.1f} s  peak RSS {peak / 2**30:5.2f} GiB  "
                    f"decode {speed:7.1f} tok/s",
                    flush=True,
                )
    print("\n| method | mode | start to healthy (s) | peak RSS (GiB) | decode (tok/s, 1 sequence) |")
    print("|---|---|---|---|---|")
    for method, mode, healthy, peak, speed in rows:
        print(f"| {method} | {mode} | {healthy:.0f} | {peak / 2**30:.2f} | {speed:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
