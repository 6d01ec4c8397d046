"""``qmo quantize``: the quantize Job's entry point (DESIGN §7). Heavy libraries load only when it runs.

Flags are a contract with the operator (operator/qmo/desired/artifact.py builds them):
``--method --out --key --termination-log``, the source (``--source PATH`` or ``--hf-repo R --revision SHA``),
the recipe (``--backend --bits --group-size --symmetric/--asymmetric --act-order --dampening --ignore``) and
calibration (``--calibration-dir | --calibration-jsonl | --calibration-dataset``, ``--calibration-samples``,
``--calibration-seq-len``) and evaluation (``--eval-dir | --eval-jsonl | --eval-dataset``, ``--eval-tokens``,
``--no-eval``). Exit 0: done (or already done); 2: refused before any work (a bad flag, a source without
config.json or tokenizer); 1: failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from qmo.quantizer.recipes import BACKENDS

    parser.add_argument(
        "--method", required=True, help="awq | gptq | w8a8 | fp8 | fp8-dynamic | nvfp4 | none | prequantized"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory, e.g. /cache/<key>")
    parser.add_argument("--key", help="the artifact's content key, recorded in the manifest")
    parser.add_argument(
        "--source", type=Path, help="a local directory (or mounted PVC path) holding the model"
    )
    parser.add_argument("--hf-repo", help="Hugging Face repository (token from $HF_TOKEN)")
    parser.add_argument("--revision", help="commit sha (or branch) of --hf-repo")
    parser.add_argument("--backend", default="llm-compressor", choices=BACKENDS)
    parser.add_argument("--bits", type=int)
    parser.add_argument("--group-size", type=int, default=128)
    symmetric = parser.add_mutually_exclusive_group()
    symmetric.add_argument("--symmetric", dest="symmetric", action="store_true", default=None)
    symmetric.add_argument("--asymmetric", dest="symmetric", action="store_false")
    parser.add_argument("--act-order", action="store_true")
    parser.add_argument("--dampening", type=float, default=0.01)
    parser.add_argument(
        "--ignore", action="append", default=None, help="module kept in full precision (repeatable)"
    )
    calibration = parser.add_mutually_exclusive_group()
    calibration.add_argument(
        "--calibration-dir", type=Path, help="a directory of text files (a mounted ConfigMap)"
    )
    calibration.add_argument("--calibration-jsonl", type=Path, help='a JSONL file of {"text": ...} lines')
    calibration.add_argument("--calibration-dataset", help="a Hugging Face dataset with a 'text' column")
    parser.add_argument("--calibration-samples", type=int, default=256)
    parser.add_argument("--calibration-seq-len", type=int, default=2048)
    parser.add_argument("--termination-log", type=Path, default=None, help="where the JSON summary goes")
    add_evaluation_arguments(parser)
    parser.add_argument(
        "--no-eval", dest="evaluate", action="store_false", help="skip the quality evaluation (quality.json)"
    )


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation text and budget: shared by ``qmo quantize`` and ``qmo eval``."""
    text = parser.add_mutually_exclusive_group()
    text.add_argument(
        "--eval-dir", type=Path, help="evaluate on the text files in this directory (a ConfigMap)"
    )
    text.add_argument("--eval-jsonl", type=Path, help='evaluate on a JSONL file of {"text": ...} lines')
    text.add_argument(
        "--eval-dataset", help="evaluate on a Hugging Face dataset's 'text' column (train split, streamed)"
    )
    parser.add_argument(
        "--eval-tokens", type=int, default=2048, help="tokens of evaluation text to score (default 2048)"
    )


def evaluation_texts(args: argparse.Namespace) -> tuple[Iterable[str] | None, str | None]:
    """(texts, dataset name) from --eval-dir/--eval-jsonl/--eval-dataset; (None, None) means the built-in
    corpus. A dataset is opened here, so a wrong id fails before any work, and streamed as it is scored.
    Raises ValueError for a source that cannot be read."""
    if args.eval_dir is not None:
        files = sorted(p for p in args.eval_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        return [p.read_text() for p in files], f"dir:{args.eval_dir.name}"
    if args.eval_jsonl is not None:
        texts = [
            str(json.loads(line)["text"]) for line in args.eval_jsonl.read_text().splitlines() if line.strip()
        ]
        return texts, f"jsonl:{args.eval_jsonl.name}"
    if args.eval_dataset is not None:
        from qmo.quantizer.evaluate import dataset_texts

        return dataset_texts(args.eval_dataset), f"hf:{args.eval_dataset}"
    return None, None


def run(args: argparse.Namespace) -> int:
    from qmo.engine.install import EngineInstallError
    from qmo.quantizer.legacy import worker_command
    from qmo.quantizer.recipes import Recipe, RecipeError, validate
    from qmo.quantizer.worker import Options, SourceError, WorkerError
    from qmo.quantizer.worker import run as run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = Recipe(
        method=args.method,
        bits=args.bits,
        group_size=args.group_size,
        symmetric=args.symmetric,
        act_order=args.act_order,
        dampening=args.dampening,
        backend=args.backend,
        ignore=tuple(args.ignore if args.ignore is not None else ["lm_head"]),
        calibration_samples=args.calibration_samples,
        calibration_seq_len=args.calibration_seq_len,
    )
    options = Options(
        recipe=recipe,
        out=args.out,
        source=args.source,
        hf_repo=args.hf_repo,
        revision=args.revision,
        key=args.key,
        calibration_dir=args.calibration_dir,
        calibration_jsonl=args.calibration_jsonl,
        calibration_dataset=args.calibration_dataset,
        termination_log=args.termination_log,
        evaluate=args.evaluate,
        eval_tokens=args.eval_tokens,
    )
    try:
        validate(recipe)
        command = worker_command(recipe.backend, list(args.qmo_argv))
    except RecipeError as error:
        return _fail(args.termination_log, error, 2)
    except EngineInstallError as error:
        return _fail(args.termination_log, error, 1)
    if command is not None:
        argv, environment = command
        logging.getLogger("qmo.quantizer").info("running the %s worker in %s", recipe.backend, argv[0])
        sys.stdout.flush()
        sys.stderr.flush()
        # exec, not a child: the Job's signals (and its exit code) reach the worker itself.
        os.execve(argv[0], argv, environment)
    if args.evaluate:
        try:
            options.eval_texts, options.eval_dataset = evaluation_texts(args)
        except (OSError, ValueError) as error:
            return _fail(args.termination_log, error, 2)
    try:
        summary = run_worker(options)
    except (RecipeError, SourceError) as error:
        return _fail(args.termination_log, error, 2)
    except WorkerError as error:
        return _fail(args.termination_log, error, 1)
    print(json.dumps(summary, indent=2))
    return 0


def _fail(path: Path | None, error: Exception, code: int) -> int:
    """Say why on stderr and in the termination message (which the operator copies into status); ``code``
    is the exit status: 2 refused before any work, 1 failed."""
    print(f"qmo quantize: {error}", file=sys.stderr)
    if path is not None:
        with contextlib.suppress(OSError):
            path.write_text(str(error)[:4000])
    return code
