"""The archived backends (AutoAWQ 0.2.9, AutoGPTQ 0.7.1) live only in the legacy image.

Their last working stacks (torch 2.6, transformers 4.51) conflict with llm-compressor's, so the main image
cannot carry them; here we only check they are importable and fail clearly where they are not.
"""

from __future__ import annotations

import importlib.util

from qmo.quantizer.recipes import RecipeError

MODULES = {"autoawq": "awq", "autogptq": "auto_gptq"}


def require_legacy_backend(backend: str) -> None:
    module = MODULES[backend]
    if importlib.util.find_spec(module) is None:
        raise RecipeError(
            f"--backend {backend} needs the {module!r} package, which only the quantizer-legacy image"
            " carries (images/quantizer-legacy); use the default --backend llm-compressor or that image"
        )
    raise RecipeError(
        f"--backend {backend} is installed but not wired in this build: use --backend llm-compressor"
    )
