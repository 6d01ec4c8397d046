"""``qmo crds``: write the generated CRDs into a folder, or ``--check`` that the folder is up to date."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qmo.api.crds import render_crds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        action="append",
        default=None,
        help="folder to write (repeatable; default: crds and the Helm chart's crds)",
    )
    parser.add_argument("--check", action="store_true", help="fail if the folder differs from the models")
    parser.add_argument("--stdout", action="store_true", help="print all CRDs as one YAML stream")


DEFAULT_FOLDERS = (Path("crds"), Path("charts/quantized-model-operator/crds"))


def run(args: argparse.Namespace) -> int:
    rendered = render_crds()
    folders = args.out or list(DEFAULT_FOLDERS)
    if args.stdout:
        sys.stdout.write("---\n".join(rendered.values()))
        return 0
    if args.check:
        stale = [
            str(folder / name)
            for folder in folders
            for name, text in rendered.items()
            if _read(folder / name) != text
        ]
        if stale:
            print(f"out of date: {', '.join(stale)}; run `qmo crds`", file=sys.stderr)
            return 1
        return 0
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (folder / name).write_text(text)
            print(f"wrote {folder / name}")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None
