"""``qmo engine``: the local vLLM CPU engine (``install`` once, ``python`` prints its interpreter).

``make vllm`` runs ``qmo engine install``; ``qmo serve`` and the serving tests find the engine without flags.
"""

from __future__ import annotations

import argparse
import sys

from qmo.engine.install import EngineInstallError, EnginePaths, install, read_stamp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("install", "python", "status"), help="what to do")


def run(args: argparse.Namespace) -> int:
    paths = EnginePaths.default()
    if args.action == "install":
        try:
            stamp, installed = install(paths)
        except EngineInstallError as error:
            print(f"qmo engine: {error}", file=sys.stderr)
            return 1
        if not installed:
            print(f"vLLM {stamp['vllm']} CPU engine already installed: {paths.root}")
        return 0
    found = read_stamp(paths)
    if found is None:
        print(f"qmo engine: not installed ({paths.root}); run `make vllm`", file=sys.stderr)
        return 1
    if args.action == "python":
        print(paths.python)
    else:
        print(
            f"vLLM {stamp['vllm']} ({stamp['distribution']}) at {paths.root}, installed in {stamp['seconds']} s"
        )
    return 0
