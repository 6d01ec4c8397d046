"""The legacy backends: AutoAWQ (awq), AutoGPTQ (gptq, GPU only) and GPTQModel (gptq, awq).

Each runs in its own locked environment (``qmo.quantizer.environments``; the backend's image holds exactly
that environment): ``qmo quantize --backend X`` in an interpreter without X re-runs itself there
(``worker_command``), installing the environment once if it is missing. Inside it, ``quantize_with`` turns
the recipe into the backend's own calls and writes the backend's native format (``quant_method: awq`` or
``gptq`` in config.json), which vLLM serves with its AWQ/GPTQ kernels.

Only the standard library at import: the operator's image and ``.venv`` import this module too.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qmo.api.backends import BACKENDS
from qmo.quantizer.recipes import RecipeError

if TYPE_CHECKING:
    from qmo.quantizer.worker import Options

log = logging.getLogger("qmo.quantizer")

MODULES = {"autoawq": "awq", "autogptq": "auto_gptq", "gptqmodel": "gptqmodel"}
# Set in the re-run worker: a backend still missing there is a broken environment, never a reason to
# re-run again.
INSIDE_ENVIRONMENT = "QMO_WORKER_ENVIRONMENT"
# What vLLM and transformers need beside the weights, copied from the source when a backend saves none.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "generation_config.json",
)


def worker_command(backend: str, argv: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """(argv, environment) that runs ``qmo quantize argv`` inside the backend's environment, or None when
    this interpreter can run the backend itself (its image, or its environment already)."""
    environment_name = BACKENDS[backend].environment
    if environment_name is None or importlib.util.find_spec(MODULES[backend]) is not None:
        return None
    if os.environ.get(INSIDE_ENVIRONMENT) == backend:
        raise RecipeError(
            f"--backend {backend}: the {MODULES[backend]!r} package is missing from its own environment"
            f" ({sys.prefix}); reinstall it with `qmo engine install {environment_name}`"
        )
    from qmo.engine.install import install
    from qmo.quantizer.environments import WORKER_ENVIRONMENTS

    environment = WORKER_ENVIRONMENTS[environment_name]
    paths = environment.paths()
    install(paths, environment=environment, out=sys.stderr)  # once; a warm cache only reads its stamp
    # The environment holds the backend's stack, not qmo: qmo runs there from this very source tree.
    source_root = str(Path(__file__).resolve().parents[2])
    python_path = os.pathsep.join(p for p in (source_root, os.environ.get("PYTHONPATH", "")) if p)
    variables = {**os.environ, "PYTHONPATH": python_path, INSIDE_ENVIRONMENT: backend}
    return [str(paths.python), "-m", "qmo", "quantize", *argv], variables


def require_runnable(backend: str) -> None:
    """Refuse, before any download or load, what this machine cannot run."""
    if BACKENDS[backend].needs_gpu:
        import torch

        if not torch.cuda.is_available():
            raise RecipeError(
                f"--backend {backend} quantizes only on a CUDA GPU (AutoGPTQ 0.7.1 refuses without one) and"
                " this machine has none: run it in the quantize Job on a GPU class, or use --backend"
                " gptqmodel, which writes the same gptq format on CPU"
            )
    if importlib.util.find_spec(MODULES[backend]) is None:
        raise RecipeError(
            f"--backend {backend} needs the {MODULES[backend]!r} package, which its worker image"
            f" (images/quantizer-{backend}) and `qmo engine install {BACKENDS[backend].environment}` provide"
        )


def load_tokenizer(directory: Path) -> Any:
    """The source's tokenizer. A tokenizer saved by transformers 5 names a class ("TokenizersBackend")
    that the archived backends' transformers 4.51 does not know; its tokenizer.json loads as the generic
    fast tokenizer there, with the same vocabulary and special tokens."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(directory)
    except ValueError as error:
        if "does not exist or is not currently imported" not in str(error):
            raise
        if not (directory / "tokenizer.json").is_file():
            raise
        log.info("tokenizer class unknown to this transformers; loading tokenizer.json as a fast tokenizer")
        return PreTrainedTokenizerFast.from_pretrained(directory)


def calibration_ids(tokenizer: Any, texts: list[str], seq_len: int) -> list[list[int]]:
    """Each text's token ids, cut to the sequence length (AutoAWQ skips longer samples outright)."""
    samples = [list(tokenizer(text)["input_ids"])[:seq_len] for text in texts]
    samples = [ids for ids in samples if len(ids) > 1]
    if not samples:
        raise RecipeError("the calibration text gives no sample of two tokens or more")
    return samples


def quantize_with(backend: str, source: Path, partial: Path, options: Options) -> tuple[Any, dict[str, Any]]:
    """Quantize ``source`` into ``partial`` with the backend; returns (tokenizer, what to record)."""
    from qmo.quantizer.worker import calibration_texts

    recipe = options.recipe
    tokenizer = load_tokenizer(source)
    samples = calibration_ids(tokenizer, calibration_texts(options), recipe.calibration_seq_len)
    bits = recipe.effective_bits() or 4
    if backend == "autoawq":
        recorded = _autoawq(source, partial, options, tokenizer, samples, bits)
    elif backend == "autogptq":
        recorded = _autogptq(source, partial, options, samples, bits)
    else:
        from qmo.quantizer import gptqmodel_backend

        recorded = gptqmodel_backend.quantize(
            source,
            partial,
            method=recipe.method,
            bits=bits,
            group_size=recipe.group_size,
            symmetric=recipe.effective_symmetric(),
            act_order=recipe.act_order,
            dampening=recipe.dampening,
            calibration=samples,
        )
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and not (partial / name).exists():
            shutil.copy2(source / name, partial / name)
    return tokenizer, recorded


def _autoawq(
    source: Path, partial: Path, options: Options, tokenizer: Any, samples: list[list[int]], bits: int
) -> dict[str, Any]:
    from awq import AutoAWQForCausalLM

    from qmo.quantizer.worker import _Timer

    recipe = options.recipe
    with _Timer(options.timings, "load"):
        # On CPU unmodified (DESIGN §11); on a GPU AutoAWQ moves each layer there as it quantizes it.
        model = AutoAWQForCausalLM.from_pretrained(str(source), device_map="cpu")
    quant_config: dict[str, Any] = {
        "zero_point": not recipe.effective_symmetric(),
        "q_group_size": recipe.group_size,
        "w_bit": bits,
        "version": "GEMM",
    }
    # AutoAWQ never quantizes lm_head; other names to keep are matched inside each decoder layer.
    kept = [name for name in recipe.ignore if name != "lm_head"]
    if kept:
        quant_config["modules_to_not_convert"] = kept
    with _Timer(options.timings, "quantize"):
        model.quantize(
            tokenizer,
            quant_config=quant_config,
            calib_data=samples,
            max_calib_samples=len(samples),
            max_calib_seq_len=recipe.calibration_seq_len,
        )
    with _Timer(options.timings, "save"):
        model.save_quantized(str(partial))
        tokenizer.save_pretrained(str(partial))
    return {"quant_config": quant_config}


def autogptq_quantize_config(options: Options, bits: int) -> Any:
    """The recipe as AutoGPTQ's BaseQuantizeConfig (its names: desc_act, sym, damp_percent)."""
    from auto_gptq import BaseQuantizeConfig

    recipe = options.recipe
    return BaseQuantizeConfig(
        bits=bits,
        group_size=recipe.group_size,
        desc_act=recipe.act_order,
        sym=recipe.effective_symmetric(),
        damp_percent=recipe.dampening,
    )


def _autogptq(
    source: Path, partial: Path, options: Options, samples: list[list[int]], bits: int
) -> dict[str, Any]:
    import torch
    from auto_gptq import AutoGPTQForCausalLM

    from qmo.quantizer.worker import _Timer

    config = autogptq_quantize_config(options, bits)
    with _Timer(options.timings, "load"):
        model = AutoGPTQForCausalLM.from_pretrained(str(source), config)
    examples = [
        {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        for ids in samples
    ]
    with _Timer(options.timings, "quantize"):
        model.quantize(examples)
    with _Timer(options.timings, "save"):
        model.save_quantized(str(partial), use_safetensors=True)
    return {"quantize_config": config.to_dict()}
