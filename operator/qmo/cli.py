"""The ``qmo`` command line: ``qmo run | plan | explain | quantize | eval | serve | crds | sandbox | version``.

Each subcommand lives in ``qmo.commands.<name>`` and is imported only when chosen: the planner must not
pay for kopf, and the operator must never import the quantizer's torch stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from qmo import __version__

# name -> one-line help; the module qmo.commands.<module> provides add_arguments() and run().
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "run the operator against the current kubeconfig"),
    "plan": ("plan", "plan GPU memory for a model config and print the vLLM arguments"),
    "explain": ("explain", "one QuantizedModel's story: plan, artifact, conditions, events, what to do next"),
    "quantize": ("quantize", "quantize a model into the cache (runs inside the quantize Job)"),
    "eval": ("eval", "measure a quantized checkpoint against its source: perplexity, KL, top-1"),
    "crds": ("crds", "generate or check the CRD YAML from the API models"),
    "engine": ("engine", "the local vLLM CPU engine: install | python | status"),
    "serve": ("serve", "plan a local checkpoint and serve it with vLLM (the CPU engine without a GPU)"),
    "sandbox": ("sandbox", "a local control plane with fake GPU nodes: up | down | status | kubeconfig"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qmo", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"qmo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.add_parser("version", help="print the version")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text)
        sub.set_defaults(_module=module_name)
        # Arguments are added lazily in main() once the subcommand is known; this keeps `qmo --help` cheap.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help", "--version"):
        parser.parse_args(argv or ["--help"])
        return 0
    command = argv[0]
    if command == "version":
        print(__version__)
        return 0
    if command not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints the usage error and exits 2
        return 2
    module_name, help_text = SUBCOMMANDS[command]
    module = importlib.import_module(f"qmo.commands.{module_name}")
    sub_parser = argparse.ArgumentParser(prog=f"qmo {command}", description=help_text)
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    args.qmo_argv = argv[1:]  # as given: `qmo quantize` re-runs itself with them in a backend's environment
    return int(module.run(args))


if __name__ == "__main__":
    sys.exit(main())
