"""``qmo sandbox``: a local Kubernetes control plane with fake GPU nodes, offline, no Docker.

``build`` compiles the pinned binaries once into ~/.cache/qmo (``build --keda``: KEDA, opt-in); ``up``
starts (or finds running) the sandbox and prints how to use it; ``down`` stops it and removes its state
but keeps its volumes' data (``--purge`` removes that too);
``status`` says what runs; ``kubeconfig`` and ``env`` print what a shell needs; ``demo`` walks through the
sandbox step by step; ``keda`` runs KEDA (once built) against the running sandbox until Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys

from qmo.sandbox import build, nodes, versions
from qmo.sandbox.ask import AskError, ask, container_log
from qmo.sandbox.keda import Keda
from qmo.sandbox.local import Sandbox
from qmo.sandbox.testing import SessionCluster
from qmo.sandbox.versions import CachePaths

ACTIONS = ("build", "up", "down", "status", "kubeconfig", "env", "demo", "ask", "logs", "keda")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="what to do")
    parser.add_argument(
        "--nodes",
        default=None,
        metavar="SPEC",
        help=f"GPU fleet for `up`, as <gpu>:<nodes>x<gpus>,... (default {nodes.DEFAULT_FLEET}, "
        f"or ${nodes.FLEET_ENV}); known GPUs: {', '.join(sorted(nodes.GPU_TYPES))}",
    )
    parser.add_argument(
        "--purge",
        action="store_true",
        help="down: also delete the volumes' data (quantized weights), which `down` keeps for the next up",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds `up` waits for readiness")
    parser.add_argument(
        "--keda",
        action="store_true",
        help="build: KEDA's operator and metrics adapter instead (opt-in, minutes; same as `make keda`)",
    )
    parser.add_argument(
        "words",
        nargs="*",
        metavar="ARG",
        help="ask: NAME PROMPT (a QuantizedModel); logs: POD (on the real node)",
    )
    parser.add_argument("-n", "--namespace", default="default", help="ask, logs: the namespace")
    parser.add_argument(
        "-c", "--container", default=None, help="logs: the container (when the pod has several)"
    )
    parser.add_argument("--max-tokens", type=int, default=16, help="ask: tokens to generate")


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
            return sandbox.build_command(keda=args.keda)
        if action == "up":
            return sandbox.up_command(timeout=args.timeout)
        if action == "down":
            return sandbox.down_command(purge=args.purge)
        if action == "status":
            return sandbox.status_command()
        if action == "kubeconfig":
            return sandbox.kubeconfig_command()
        if action == "env":
            return sandbox.env_command()
        if action in ("ask", "logs"):
            return node_command(sandbox, args)
        if action == "keda":
            return keda_command(sandbox)
        from qmo.sandbox.demo import run_demo

        return run_demo(sandbox, timeout=args.timeout)
    except (build.BuildError, AskError) as error:
        print(f"qmo sandbox: {error}", file=sys.stderr)
        return 1


def node_command(sandbox: Sandbox, args: argparse.Namespace) -> int:
    """``ask NAME PROMPT`` and ``logs POD`` against the running sandbox (never starts one)."""
    expected = 2 if args.action == "ask" else 1
    if len(args.words) != expected:
        usage = (
            "ask NAME PROMPT [-n NAMESPACE]"
            if args.action == "ask"
            else "logs POD [-n NAMESPACE] [-c CONTAINER]"
        )
        print(f"usage: qmo sandbox {usage}", file=sys.stderr)
        return 2
    plane = sandbox.control_plane
    if args.action == "logs":
        print(
            container_log(
                plane.node_dir, args.words[0], namespace=args.namespace, container=args.container
            ).read_text(errors="replace"),
            end="",
        )
        return 0
    if not plane.attach():
        raise AskError("the sandbox is not running (`qmo sandbox up`, or `make demo`)")
    answer = ask(
        SessionCluster.of(plane, sandbox.paths.bin_dir),
        args.words[0],
        args.words[1],
        namespace=args.namespace,
        max_tokens=args.max_tokens,
    )
    print(answer.text.strip())
    return 0


def keda_command(sandbox: Sandbox) -> int:
    """``keda``: KEDA's operator and metrics adapter against the running sandbox, in the foreground; Ctrl-C
    (or SIGTERM) stops them and uninstalls KEDA (its CRDs with every ScaledObject)."""
    paths = sandbox.paths
    if build.read_keda_stamp(paths) is None:
        print(
            "qmo sandbox keda: KEDA is not built: `make keda` (or `qmo sandbox build --keda`)",
            file=sys.stderr,
        )
        return 1
    plane = sandbox.control_plane
    if not plane.attach():
        print("qmo sandbox keda: the sandbox is not running (`qmo sandbox up`)", file=sys.stderr)
        return 1
    # Under the sandbox's directory, so `qmo sandbox down` removes what is left of it.
    keda = Keda(SessionCluster.of(plane, paths.bin_dir), paths.keda_bin_dir, plane.directory / "keda")
    print(f"starting KEDA {versions.KEDA_VERSION} (logs in {keda.directory}) ...")
    with keda:
        print(
            "KEDA is running; ScaledObjects scale now. qmo renders them when it has a Prometheus address: "
            "qmo run --prometheus-url URL. Ctrl-C stops and uninstalls KEDA."
        )
        # SIGTERM stops it as Ctrl-C does (a backgrounded shell job ignores SIGINT).
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            exited = keda.wait()
        except KeyboardInterrupt:
            print("stopping KEDA ...")
            return 0
    print(f"qmo sandbox keda: {exited} exited:\n{keda.log_tail(exited)}", file=sys.stderr)
    return 1
