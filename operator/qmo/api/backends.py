"""Which backend quantizes which method, and the format each writes: one table for the API's admission
rules, the planner's weight layouts and the worker. Standard library only (the worker environments of the
legacy backends import it and carry no pydantic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OutputFormat = Literal["compressed-tensors", "awq", "gptq"]


@dataclass(frozen=True)
class Backend:
    name: str
    methods: tuple[str, ...]
    """The methods it quantizes; the copy-only ones (none, prequantized) need no backend at all."""
    formats: dict[str, OutputFormat]
    """method -> the checkpoint format it writes (quantization_config.quant_method)."""
    needs_gpu: bool = False
    """Refuses to quantize without CUDA (AutoGPTQ 0.7.1)."""
    environment: str | None = None
    """Its locked environment (qmo.quantizer.environments), or None for llm-compressor in .venv / the image."""


BACKENDS: dict[str, Backend] = {
    "llm-compressor": Backend(
        "llm-compressor",
        ("awq", "gptq", "w8a8", "fp8", "fp8-dynamic", "nvfp4", "none", "prequantized", "bitsandbytes-nf4"),
        {},
    ),
    "autoawq": Backend("autoawq", ("awq",), {"awq": "awq"}, environment="autoawq"),
    "autogptq": Backend("autogptq", ("gptq",), {"gptq": "gptq"}, needs_gpu=True, environment="autogptq"),
    "gptqmodel": Backend(
        "gptqmodel", ("gptq", "awq"), {"gptq": "gptq", "awq": "awq"}, environment="gptqmodel"
    ),
}
DEFAULT_BACKEND = "llm-compressor"
WORKER_IMAGE_REPOSITORY = "ghcr.io/qmo-dev/quantizer"
WORKER_IMAGE_TAG = "0.1.0"


def worker_image(backend: str) -> str:
    """The quantize Job's default image: each backend's image holds exactly its locked environment
    (images/quantizer, images/quantizer-<backend>)."""
    suffix = "" if backend == DEFAULT_BACKEND else f"-{backend}"
    return f"{WORKER_IMAGE_REPOSITORY}{suffix}:{WORKER_IMAGE_TAG}"


def output_format(backend: str, method: str) -> OutputFormat:
    """What the Job's checkpoint will be: llm-compressor writes compressed-tensors for every method."""
    return BACKENDS[backend].formats.get(method, "compressed-tensors")


def valid_pairs() -> str:
    """The pairs in words, for error messages."""
    parts = []
    for backend in BACKENDS.values():
        if backend.name == DEFAULT_BACKEND:
            parts.append(f"{backend.name} with any method")
        else:
            parts.append(f"{backend.name} with {' or '.join(backend.methods)}")
    return "; ".join(parts)


def backend_problem(backend: str, method: str, group_size: int = 128) -> str | None:
    """Why this backend cannot quantize this method (and group size), or None when it can."""
    if backend not in BACKENDS:
        return f"backend {backend!r} is not one of {', '.join(BACKENDS)}"
    if method not in BACKENDS[backend].methods:
        return f"backend {backend} does not quantize method {method}; valid pairs: {valid_pairs()}"
    if backend != DEFAULT_BACKEND and group_size == -1:
        # AutoAWQ, AutoGPTQ and GPTQModel group along the input; one scale per channel is llm-compressor's.
        return f"backend {backend} does not quantize per channel (group size -1); use 32, 64 or 128"
    return None


def admission_rule() -> str:
    """The CEL rule the CRD enforces (the API server refuses before qmo sees the object)."""
    legacy = [
        f"(self.backend == '{b.name}' && self.method in [{', '.join(repr(m) for m in b.methods)}])"
        for b in BACKENDS.values()
        if b.name != DEFAULT_BACKEND
    ]
    return " || ".join([f"self.backend == '{DEFAULT_BACKEND}'", *legacy])


PER_CHANNEL_RULE = f"self.backend == '{DEFAULT_BACKEND}' || !has(self.groupSize) || self.groupSize != -1"
"""The CEL rule for the group size: per channel (-1) is llm-compressor's alone."""
