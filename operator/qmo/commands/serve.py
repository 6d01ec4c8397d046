"""``qmo serve MODEL_DIR``: plan a local checkpoint and serve it with vLLM, as the Deployment would.

The plan comes from the same planner and the command from the same argv builder as the cluster's
Deployment (``qmo.desired.serving``); on a machine without a GPU it runs the pinned CPU engine that
``make vllm`` installs, with the plan's KV pool. ``--print-args`` prints the exact command and exits.

Exit status: 0 after a clean stop (Ctrl-C / SIGTERM), 1 when vLLM fails or the plan does not fit, 2 for
bad input (the message names the flag or file). Nothing is ever written into MODEL_DIR.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from qmo.commands.plan import _positive_float, _positive_int, render_table
from qmo.desired.serving import VLLM_ENV, EngineCommand, cpu_engine_command, serving_args, vllm_serve_args
from qmo.planner import GPUSpec, PlanningError, PlanRequest, ServingPlan, gpu_by_name, plan
from qmo.planner.scheduler import max_num_seqs_for, max_num_seqs_reason
from qmo.quantizer.worker import TOKENIZER_FILES_TEXT, has_tokenizer

MANIFEST = "qmo-manifest.json"
# The planner's device on CPU: weights, overheads and the KV pool must fit this much host memory.
DEFAULT_CPU_MEMORY_GIB = 4.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ServeError(Exception):
    """Bad input found before vLLM starts: the message names the flag or file."""


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {value!r}")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_dir", type=Path, metavar="MODEL_DIR", help="a checkpoint: config.json, weights, tokenizer"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="port to listen on (0 picks a free one)")
    parser.add_argument("--name", help="served model name (default: the directory's name)")
    parser.add_argument(
        "--tokenizer", type=Path, help="a directory with the tokenizer, if MODEL_DIR has none"
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="auto: gpu when nvidia-smi is found, else the local CPU engine (make vllm)",
    )
    parser.add_argument("--gpu-class", default="h100-80gb", help="the GPU to plan for with --engine gpu")
    parser.add_argument(
        "--memory-gib",
        type=_positive_float,
        default=DEFAULT_CPU_MEMORY_GIB,
        help=f"host memory the CPU engine plans for (default {DEFAULT_CPU_MEMORY_GIB:g})",
    )
    parser.add_argument(
        "--max-model-len", type=_positive_int, help="default: the model's max_position_embeddings"
    )
    parser.add_argument(
        "--max-num-seqs",
        type=_positive_int,
        help="vLLM's scheduler ceiling (default: vLLM's 256, raised to --concurrency, never lowered to it)",
    )
    parser.add_argument(
        "--concurrency", type=_positive_int, help="concurrent sequences of max-model-len to hold"
    )
    parser.add_argument(
        "--extra-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="passed to vLLM after the planned flags, like spec.serving.extraArgs "
        "(repeatable; write --extra-arg=--enforce-eager)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=_positive_float,
        default=600.0,
        help="seconds to wait for /health before giving up (default 600)",
    )
    parser.add_argument(
        "--print-args", action="store_true", help="print the plan and the exact command, then exit"
    )


@dataclass(frozen=True)
class LocalModel:
    path: Path
    config: dict[str, Any]
    method: str
    """How it was quantized: the recipe of qmo's manifest, else the config's format, else "none"."""


def read_model(directory: Path, tokenizer: Path | None) -> LocalModel:
    if not directory.is_dir():
        raise ServeError(f"MODEL_DIR {directory} is not a directory")
    config_file = directory / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except OSError:
        raise ServeError(f"MODEL_DIR {directory} has no readable config.json; is it a checkpoint?") from None
    except json.JSONDecodeError as error:
        raise ServeError(f"{config_file} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ServeError(f"{config_file} must hold a JSON object")
    if not has_tokenizer(directory):
        if tokenizer is None:
            raise ServeError(
                f"MODEL_DIR {directory} has no tokenizer (none of {TOKENIZER_FILES_TEXT}); copy the "
                "source model's tokenizer files beside config.json, or pass --tokenizer DIR"
            )
        if not has_tokenizer(tokenizer):
            raise ServeError(f"--tokenizer {tokenizer} has none of {TOKENIZER_FILES_TEXT}")
    return LocalModel(directory.resolve(), config, _method(directory, config))


def _method(directory: Path, config: dict[str, Any]) -> str:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        return str(manifest["recipe"]["method"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    quantization = config.get("quantization_config")
    if isinstance(quantization, dict):
        return "prequantized"
    return "none"


def describe_method(model: LocalModel) -> str:
    """The method as people name it, with the checkpoint format vLLM reads: 'gptq (compressed-tensors ...)'."""
    quantization = model.config.get("quantization_config")
    if not isinstance(quantization, dict):
        return model.method
    fmt = quantization.get("format") or quantization.get("quant_method") or "unknown format"
    return f"{model.method} ({quantization.get('quant_method', '?')} {fmt})"


def served_name(model: LocalModel, name: str | None) -> str:
    if name:
        return name
    # A DNS-1123 label, like a QuantizedModel's name (what the Deployment serves under).
    return re.sub(r"[^a-z0-9-]+", "-", model.path.name.lower()).strip("-") or "model"


def cpu_device(memory_gib: float) -> GPUSpec:
    """The host as the planner's device: one 'GPU' of ``memory_gib``, no fp8 KV, no tensor parallelism."""
    return GPUSpec(
        name="cpu", memory_gib=memory_gib, gpus_per_node=1, fp8=False, interconnect="none", device="cpu"
    )


def pick_engine(requested: str) -> str:
    if requested != "auto":
        return requested
    return "gpu" if shutil.which("nvidia-smi") else "cpu"


def make_plan(
    model: LocalModel,
    device: GPUSpec,
    *,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    concurrency: int | None = None,
) -> ServingPlan:
    """The plan the operator would make for this checkpoint (its own quantization_config decides the format)."""
    request = PlanRequest(
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs_for(max_num_seqs=max_num_seqs, concurrency=concurrency),
        concurrency=concurrency,
    )
    return plan(model.config, request, device)


def engine_command(
    model: LocalModel,
    result: ServingPlan,
    *,
    engine: str,
    name: str,
    host: str,
    port: int,
    extra_args: Sequence[str] = (),
    tokenizer: Path | None = None,
) -> EngineCommand:
    """The command the Deployment would run for this plan, on this machine's engine."""
    extra = list(extra_args)
    if tokenizer is not None:
        extra = [f"--tokenizer={tokenizer.resolve()}", *extra]
    plan_args = serving_args(result.vllm_args, model.method)
    if engine == "cpu":
        return cpu_engine_command(
            model_path=str(model.path),
            served_model_name=name,
            host=host,
            port=port,
            plan_args=plan_args,
            extra_args=extra,
        )
    serve = vllm_serve_args(
        model_path=str(model.path),
        served_model_name=name,
        host=host,
        port=port,
        plan_args=plan_args,
        extra_args=extra,
    )
    # On a GPU machine vLLM's own `vllm serve` runs as installed: the Deployment's command, word for word.
    return EngineCommand(args=("serve", *serve), env=VLLM_ENV, unset_env=())


def gpu_vllm() -> Path:
    from qmo.engine.server import EngineError

    found = shutil.which("vllm")
    if found is None:
        raise EngineError("--engine gpu runs `vllm serve`, and no `vllm` is on PATH")
    return Path(found)


def shell_line(executable: str, command: EngineCommand) -> str:
    words = [*(f"-u {k}" for k in command.unset_env), *(f"{k}={shlex.quote(v)}" for k, v in command.env)]
    prefix = f"env {' '.join(words)} " if words else ""
    return prefix + shlex.join([executable, *command.args])


def run(args: argparse.Namespace) -> int:
    from qmo.engine.install import EnginePaths
    from qmo.engine.server import EngineError, EngineServer, engine_python, free_port

    try:
        model = read_model(args.model_dir, args.tokenizer)
        engine = pick_engine(args.engine)
        device = cpu_device(args.memory_gib) if engine == "cpu" else gpu_by_name(args.gpu_class)
        result = make_plan(
            model,
            device,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            concurrency=args.concurrency,
        )
    except (ServeError, PlanningError) as error:
        print(f"qmo serve: error: {error}", file=sys.stderr)
        return 2
    reason = max_num_seqs_reason(max_num_seqs=args.max_num_seqs, concurrency=args.concurrency)
    print(render_table(result, max_num_seqs_reason=reason))
    if not result.fits:
        return 1
    name = served_name(model, args.name)
    if args.port == 0:
        args.port = free_port(args.host)
    command = engine_command(
        model,
        result,
        engine=engine,
        name=name,
        host=args.host,
        port=args.port,
        extra_args=args.extra_arg,
        tokenizer=args.tokenizer,
    )
    try:
        executable = engine_python() if engine == "cpu" else gpu_vllm()
    except EngineError as error:
        if not args.print_args:
            print(f"qmo serve: error: {error}", file=sys.stderr)
            return 1
        # Where `make vllm` will put it, or the script a GPU machine's vLLM install provides.
        executable = EnginePaths.default().python if engine == "cpu" else Path("vllm")
    if args.print_args:
        print(shell_line(str(executable), command))
        return 0

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        # One stop at a time: a second Ctrl-C must not interrupt the cleanup (stop() escalates to SIGKILL).
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    server = EngineServer(command=command, host=args.host, port=args.port, executable=executable)
    try:
        try:
            server.start()
        except EngineError as error:  # e.g. the port is taken
            print(f"qmo serve: error: {error}", file=sys.stderr)
            return 2
        print(
            f"starting vLLM ({engine} engine, pid {server.pid}) for {name}: {describe_method(model)}",
            flush=True,
        )
        try:
            seconds = server.wait_healthy(timeout=args.startup_timeout)
        except EngineError as error:
            print(f"qmo serve: error: {describe_method(model)} at {model.path}: {error}", file=sys.stderr)
            return 1
        print(f"serving {name} at {server.url} (healthy after {seconds:.0f} s)", flush=True)
        code = server.wait()
        print(f"qmo serve: vLLM exited with status {code}: {server.log_tail(3)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qmo serve: stopping vLLM", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()  # whatever happened above, even mid-start: the whole process group goes
        for sig, handler in previous.items():
            signal.signal(sig, handler)
