"""Which llm-compressor recipe a quantization request becomes, and which requests are refused at once.

Pure up to ``build_modifiers`` (which imports llm-compressor lazily): the validation runs before any
model is loaded, so a bad combination fails in a second with a message naming the flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qmo.api.backends import BACKENDS as BACKEND_TABLE
from qmo.api.backends import backend_problem

METHODS = ("none", "prequantized", "awq", "gptq", "w8a8", "fp8", "fp8-dynamic", "nvfp4")
BACKENDS = tuple(BACKEND_TABLE)
COPY_ONLY = frozenset({"none", "prequantized"})
CALIBRATED = frozenset({"awq", "gptq", "w8a8", "fp8", "nvfp4"})


class RecipeError(ValueError):
    """The request cannot be quantized as asked; the message names the flag and what would be valid."""


@dataclass(frozen=True)
class Recipe:
    method: str
    bits: int | None = None
    group_size: int = 128
    symmetric: bool | None = None
    act_order: bool = False
    dampening: float = 0.01
    backend: str = "llm-compressor"
    ignore: tuple[str, ...] = ("lm_head",)
    calibration_samples: int = 256
    calibration_seq_len: int = 2048
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_calibration(self) -> bool:
        return self.method in CALIBRATED

    def effective_bits(self) -> int | None:
        if self.bits is not None:
            return self.bits
        return {"awq": 4, "gptq": 4, "w8a8": 8}.get(self.method)

    def effective_symmetric(self) -> bool:
        if self.symmetric is not None:
            return self.symmetric
        return self.method != "awq"  # AWQ's strength is its zero points; GPTQ and int8 are symmetric

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "bits": self.effective_bits(),
            "group_size": self.group_size,
            "symmetric": self.effective_symmetric(),
            "act_order": self.act_order,
            "dampening": self.dampening,
            "backend": self.backend,
            "ignore": list(self.ignore),
        }


def validate(recipe: Recipe) -> None:
    """Refuse what cannot work, before anything heavy is loaded."""
    if recipe.method == "bitsandbytes-nf4":
        raise RecipeError(
            "--method bitsandbytes-nf4 needs no quantize Job: vLLM quantizes while loading; use --method none"
            " to cache the 16-bit weights"
        )
    if recipe.method not in METHODS:
        raise RecipeError(f"--method {recipe.method!r} is not one of {', '.join(METHODS)}")
    if (problem := backend_problem(recipe.backend, recipe.method, recipe.group_size)) is not None:
        raise RecipeError(f"--{problem}")
    bits = recipe.effective_bits()
    if recipe.method == "awq" and bits != 4:
        raise RecipeError(f"--bits {bits} is not valid for awq: 4")
    if recipe.method == "gptq" and bits not in (4, 8):
        raise RecipeError(f"--bits {bits} is not valid for gptq: 4 or 8")
    if recipe.method == "w8a8" and bits != 8:
        raise RecipeError(f"--bits {bits} is not valid for w8a8: 8")
    if recipe.bits is not None and recipe.method in ("fp8", "fp8-dynamic", "nvfp4", "none", "prequantized"):
        raise RecipeError(f"--bits does not apply to --method {recipe.method}")
    if recipe.group_size not in (-1, 32, 64, 128):
        raise RecipeError(f"--group-size {recipe.group_size} is not valid: -1 (per channel), 32, 64 or 128")
    if recipe.act_order and recipe.method not in ("gptq", "w8a8"):
        raise RecipeError("--act-order applies to gptq and w8a8 only")
    if not 0 < recipe.dampening <= 1:
        raise RecipeError(f"--dampening {recipe.dampening} must be in (0, 1]")


def _weight_args(recipe: Recipe) -> dict[str, Any]:
    group = recipe.group_size
    args: dict[str, Any] = {
        "num_bits": recipe.effective_bits(),
        "type": "int",
        "symmetric": recipe.effective_symmetric(),
        "strategy": "group" if group > 0 else "channel",
    }
    if group > 0:
        args["group_size"] = group
    if recipe.act_order:
        args["actorder"] = "group" if group > 0 else "weight"
    return args


def build_modifiers(recipe: Recipe) -> list[Any]:
    """The llm-compressor modifiers for the recipe (imports llm-compressor)."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    ignore = list(recipe.ignore)
    weights = _weight_args(recipe) if recipe.method in ("awq", "gptq", "w8a8") else {}
    if recipe.method == "gptq":
        return [
            GPTQModifier(
                config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
                ignore=ignore,
                dampening_frac=recipe.dampening,
            )
        ]
    if recipe.method == "awq":
        # AWQ is a transform: it only rescales channels, and the QuantizationModifier after it
        # quantizes. (The one-modifier AWQ of older releases is a deprecated shim in 0.14.)
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [
            AWQModifier(),
            QuantizationModifier(
                config_groups={"group_0": {"targets": ["Linear"], "weights": weights}}, ignore=ignore
            ),
        ]
    if recipe.method == "w8a8":
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        activations = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}
        weights = {**weights, "strategy": "channel"}
        weights.pop("group_size", None)
        return [
            SmoothQuantModifier(smoothing_strength=0.8),
            GPTQModifier(
                config_groups={
                    "group_0": {"targets": ["Linear"], "weights": weights, "input_activations": activations}
                },
                ignore=ignore,
                dampening_frac=recipe.dampening,
            ),
        ]
    scheme = {"fp8": "FP8", "fp8-dynamic": "FP8_DYNAMIC", "nvfp4": "NVFP4"}[recipe.method]
    return [QuantizationModifier(targets="Linear", scheme=scheme, ignore=ignore)]
