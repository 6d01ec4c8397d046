"""``qmo sandbox``: a local Kubernetes control plane with fake GPU nodes, offline, no Docker.

``build`` compiles the pinned binaries once into ~/.cache/qmo; ``up`` starts (or finds running) the
sandbox and prints how to use it; ``down`` stops it and removes its state; ``status`` says what runs;
``kubeconfig`` and ``env`` print what a shell needs; ``demo`` walks through the sandbox step by step.
"""

from __future__ import annotations

import argparse
import sys

from qmo.sandbox import build, nodes
from qmo.sandbox.local import Sandbox
from qmo.sandbox.versions import CachePaths

ACTIONS = ("build", "up", "down", "status", "kubeconfig", "env", "demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="what to do")
    parser.add_argument(
        "--nodes",
        default=None,
        metavar="SPEC",
        help=f"GPU fleet for `up`, as <gpu>:<nodes>x<gpus>,... (default {nodes.DEFAULT_FLEET}, "
        f"or ${nodes.FLEET_ENV}); known GPUs: {', '.join(sorted(nodes.GPU_TYPES))}",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds `up` waits for readiness")


def run(args: argparse.Namespace) -> int:
    paths = CachePaths.default()
    action: str = args.action
    try:
        fleet = nodes.parse_fleet(args.nodes) if args.nodes else nodes.default_fleet()
    except nodes.FleetSpecError as error:
        print(f"qmo sandbox: {error}", file=sys.stderr)
        return 2
    sandbox = Sandbox(paths, fleet=fleet)
    try:
        if action == "build":
            return sandbox.build_command()
        if action == "up":
            return sandbox.up_command(timeout=args.timeout)
        if action == "down":
            return sandbox.down_command()
        if action == "status":
            return sandbox.status_command()
        if action == "kubeconfig":
            return sandbox.kubeconfig_command()
        if action == "env":
            return sandbox.env_command()
        from qmo.sandbox.demo import run_demo

        return run_demo(sandbox, timeout=args.timeout)
    except build.BuildError as error:
        print(f"qmo sandbox: {error}", file=sys.stderr)
        return 1
