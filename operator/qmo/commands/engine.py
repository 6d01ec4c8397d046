"""``qmo engine``: the locked environments qmo runs apart from ``.venv``: the local vLLM CPU engine and the
legacy quantize workers (``install`` once, ``python`` prints an interpreter, ``status``).

``make vllm`` runs ``qmo engine install``, ``make worker-envs`` runs ``qmo engine install autoawq autogptq
gptqmodel``; ``qmo serve``, ``qmo quantize --backend X`` and the tests find them without flags.
"""

from __future__ import annotations

import argparse
import sys

from qmo.engine.install import VLLM_ENGINE, EngineInstallError, LockedEnvironment, install, read_stamp


def environments() -> dict[str, LockedEnvironment]:
    from qmo.quantizer.environments import WORKER_ENVIRONMENTS

    return {"vllm": VLLM_ENGINE, **WORKER_ENVIRONMENTS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("install", "python", "status"), help="what to do")
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"which environments (default vllm): {', '.join(environments())}",
    )


def run(args: argparse.Namespace) -> int:
    known = environments()
    names = args.names or ["vllm"]
    unknown = [name for name in names if name not in known]
    if unknown:
        print(
            f"qmo engine: unknown environment {', '.join(unknown)}; known: {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    failed = 0
    for name in names:
        environment = known[name]
        paths = environment.paths()
        if args.action == "install":
            try:
                _, installed = install(paths, environment=environment)
            except EngineInstallError as error:
                print(f"qmo engine: {error}", file=sys.stderr)
                failed = 1
                continue
            if not installed:
                print(f"{environment.title} already installed: {paths.root}")
            continue
        stamp = read_stamp(paths)
        if stamp is None:
            install_hint = "make vllm" if name == "vllm" else f"qmo engine install {name}"
            print(
                f"qmo engine: {environment.title} not installed ({paths.root}); run `{install_hint}`",
                file=sys.stderr,
            )
            failed = 1
        elif args.action == "python":
            print(paths.python)
        else:
            print(f"{environment.title} at {paths.root}, installed in {stamp['seconds']} s")
    return failed
