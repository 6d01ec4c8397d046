"""``qmo eval SOURCE ARTIFACT``: how far a quantized checkpoint is from its source.

Perplexity of both over the same tokens, mean per-token KL(source || quantized) and top-1 agreement, on
the built-in public-domain English text or ``--eval-dir``/``--eval-jsonl``/``--eval-dataset``. The same
numbers the quantize Job writes to ``quality.json``. Exit 0 with the figures, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qmo.commands.quantize import add_evaluation_arguments, evaluation_texts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", type=Path, metavar="SOURCE", help="the unquantized model directory")
    parser.add_argument("artifact", type=Path, metavar="ARTIFACT", help="the quantized model directory")
    add_evaluation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    for name, path in (("SOURCE", args.source), ("ARTIFACT", args.artifact)):
        if not (path / "config.json").is_file():
            print(f"qmo eval: error: {name} {path} has no config.json", file=sys.stderr)
            return 2
    if args.eval_tokens < 2:
        print(f"qmo eval: error: --eval-tokens must be at least 2, got {args.eval_tokens}", file=sys.stderr)
        return 2
    from qmo.quantizer.evaluate import BUILTIN_DATASET, evaluate

    try:
        texts, dataset = evaluation_texts(args)
        quality = evaluate(
            args.source,
            args.artifact,
            texts=texts,
            dataset=dataset or BUILTIN_DATASET,
            budget=args.eval_tokens,
        )
    except ValueError as error:
        print(f"qmo eval: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(quality.as_dict(), indent=2, sort_keys=True))
    return 0
