"""GPTQ and AWQ with GPTQModel, AutoGPTQ's maintained successor, in its own pinned environment (DESIGN §11).

AutoGPTQ refuses to quantize without CUDA and AutoAWQ is archived; GPTQModel 7.7 quantizes both methods on
CPU and writes the *native* formats (``quant_method: gptq`` / ``awq`` GEMM in config.json), which vLLM loads
with its GPTQ/AWQ kernels rather than compressed-tensors. Its stack (torch >= 2.14.1, transformers >= 5.20)
is not llm-compressor's, so ``qmo quantize --backend gptqmodel`` runs this module inside that environment;
everything heavy is imported inside :func:`quantize`, and the module itself needs only the standard library.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

METHODS = ("gptq", "awq")


def _number(value: Any) -> float | str:
    """A module's loss; GPTQModel logs some (AWQ's) as "not applicable"."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


@contextlib.contextmanager
def _private_working_directory() -> Iterator[Path]:
    """GPTQModel writes ``./logs`` (and nothing else we want) relative to the working directory: give it a
    temporary one, so it never writes into the source, the cache volume or wherever the Job started.
    ``chdir`` is process-wide; the quantize worker is a single-threaded CLI, so nothing else is affected."""
    previous = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="qmo-gptqmodel-") as scratch:
        os.chdir(scratch)
        try:
            yield Path(scratch)
        finally:
            os.chdir(previous)


def quantize(
    source: Path,
    partial: Path,
    *,
    method: str,
    bits: int,
    group_size: int,
    symmetric: bool,
    act_order: bool,
    dampening: float,
    calibration: list[list[int]],
) -> dict[str, Any]:
    """Quantize ``source`` with GPTQModel into ``partial`` (weights, native config.json and the tokenizer
    GPTQModel saves; ``legacy.quantize_with`` copies any tokenizer file it leaves out, for every backend).

    ``calibration`` holds token-id lists already cut to the sequence length. Returns what is worth
    recording: library versions, timings and GPTQModel's per-module losses.
    """
    if method not in METHODS:
        raise ValueError(f"--backend gptqmodel quantizes {' or '.join(METHODS)}, not {method!r}")
    if not calibration:
        raise ValueError("--backend gptqmodel needs calibration samples; none were given")
    source = source.resolve()  # relative paths would break once the working directory changes
    partial = partial.resolve()
    # Read when GPTQModel builds its worker pool (at import and load); without it, it uses half the cores.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    timings: dict[str, float] = {}
    with _private_working_directory() as scratch:
        started = time.monotonic()
        import gptqmodel
        import torch
        import transformers
        from gptqmodel import AWQConfig, GPTQConfig, GPTQModel

        common: dict[str, Any] = {
            "bits": bits,
            "group_size": group_size,
            "sym": symmetric,
            "desc_act": act_order,
            "device": "cpu",
            # Its default offload directory is recorded in the saved config's meta; keep it in scratch.
            "offload_to_disk_path": str(scratch / "offload"),
            # The default ("auto" -> "block" on CPU) JIT-compiles a C++ packer on first use: 76 s on two
            # cores, a compiler in the image, and a writable ~/.cache. The original packer is plain torch.
            "pack_impl": "original",
        }
        if method == "gptq":
            # act_group_aware, GPTQModel's default, is its cheaper stand-in for desc_act (static groups,
            # no g_idx reordering at inference) and refuses to run together with it.
            ordering = {"act_group_aware": False} if act_order else {}
            config = GPTQConfig(**common, damp_percent=dampening, **ordering)
        else:
            config = AWQConfig(**common)
        model = GPTQModel.load(str(source), config)
        timings["load_s"] = round(time.monotonic() - started, 3)

        started = time.monotonic()
        samples = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calibration]
        # calibration_data_min_length: GPTQModel silently drops samples of <= 10 tokens by default.
        model.quantize(samples, batch_size=1, calibration_data_min_length=0)
        timings["quantize_s"] = round(time.monotonic() - started, 3)

        started = time.monotonic()
        model.save(str(partial))
        timings["save_s"] = round(time.monotonic() - started, 3)
        losses = [
            {"layer": entry.get("layer"), "module": entry.get("module"), "loss": _number(entry["loss"])}
            for entry in getattr(model, "quant_log", [])
            if entry.get("loss") is not None
        ]
    return {
        "backend": "gptqmodel",
        "versions": {
            "gptqmodel": gptqmodel.__version__,
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
        },
        "timings": timings,
        "losses": losses,
    }
