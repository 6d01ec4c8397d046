"""Time ``make demo`` as a new user meets it on a fresh machine: nothing cached, nothing installed.

Clones this repository's HEAD into a temporary directory and runs ``make demo`` there with every cache
pointed at empty directories (qmo's control-plane binaries, Go module and build caches, the vLLM engine,
uv's and pip's download caches, Hugging Face's), so it pays every download, install and build a first run
pays. Prints the wall time of the whole command and when each milestone was reached; then times a warm
``make demo`` twice (with the sandbox still running, and after ``qmo sandbox down``), stops the sandbox
and checks that no vLLM or worker process of the clone is left. Only the system packages (Python,
Go) are shared with this machine. Standard library only: run it with the system Python.

    python3.11 benchmarks/fresh_machine.py            # about 12 minutes on 2 cores, ~15 GB of downloads
    python3.11 benchmarks/fresh_machine.py --keep     # keep the clone and its caches to look at
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 12 * 60
WARM_BUDGET_S = 90
REPOSITORY = Path(__file__).resolve().parent.parent

# (label, a text the milestone's output line contains)
MILESTONES = (
    ("control plane built", "sandbox build: all binaries built"),
    ("vLLM CPU engine installed", "CPU engine ready in"),
    (".venv installed", "touch .venv/.installed-"),
    ("sandbox started", "started a fresh sandbox"),
    ("H100 example planned", "vLLM runs with: "),
    ("tiny model answered", "the quick brown fox ->"),  # the demo prints its prompt, "->", the answer
)


def leftover_processes(clone: Path) -> list[str]:
    """Command lines of processes still running from the clone (its engine, its .venv, its sandbox)."""
    found = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=False).stdout
    me = str(os.getpid())
    return [
        line.strip() for line in found.splitlines() if str(clone) in line and not line.strip().startswith(me)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="keep the clone and its caches")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="qmo-fresh-"))
    clone, caches = root / "qmo", root / "caches"
    subprocess.run(["git", "clone", "--quiet", str(REPOSITORY), str(clone)], check=True)
    commit = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = dict(
        os.environ,
        QMO_CACHE_DIR=str(caches / "qmo"),
        UV_CACHE_DIR=str(caches / "uv"),
        PIP_CACHE_DIR=str(caches / "pip"),
        HF_HOME=str(caches / "huggingface"),
        XDG_CACHE_HOME=str(caches / "xdg"),
        GOPATH=str(caches / "gopath"),
    )
    print(f"make demo on a fresh clone of {commit} in {clone} (caches under {caches})", flush=True)
    reached: dict[str, float] = {}
    log = root / "make-demo.log"
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["make", "demo"], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:
            elapsed = time.monotonic() - started
            out.write(f"[{elapsed:7.1f}] {line}")
            out.flush()
            for label, marker in MILESTONES:
                if label not in reached and marker in line:
                    reached[label] = elapsed
                    print(f"[{elapsed:6.0f} s] {label}: {line.strip()[:160]}", flush=True)
        returncode = process.wait()
    total = time.monotonic() - started
    down = [str(clone / ".venv" / "bin" / "python"), "-m", "qmo", "sandbox", "down"]
    warm: dict[str, float] = {}
    if returncode == 0:
        # Warm: every cache filled. Again with the sandbox still up (the model stays Ready), then from a
        # stopped sandbox (a new control plane, and the tiny model quantized and served again).
        for label in ("again, sandbox running", "after `qmo sandbox down`"):
            if label.startswith("after"):
                subprocess.run(down, cwd=clone, env=env, capture_output=True, check=False)
            again = time.monotonic()
            result = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True)
            warm[label] = time.monotonic() - again
            with open(log, "a") as out:
                out.write(
                    f"== warm make demo, {label}: exit {result.returncode}\n{result.stdout}{result.stderr}"
                )
            print(f"warm make demo, {label}: {warm[label]:.0f} s, exit {result.returncode}", flush=True)
    subprocess.run(down, cwd=clone, env=env, capture_output=True, check=False)
    left = leftover_processes(clone)
    print(
        f"make demo on a fresh machine: {total:.0f} s ({total / 60:.1f} min; budget {BUDGET_S // 60} min), "
        f"exit {returncode}; log {log}"
    )
    for label, seconds in warm.items():
        print(f"warm make demo, {label}: {seconds:.0f} s (budget {WARM_BUDGET_S} s)")
    print(f"processes left after `qmo sandbox down`: {len(left)}")
    for line in left:
        print(f"  {line[:200]}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if returncode == 0 and not left else 1


if __name__ == "__main__":
    sys.exit(main())
