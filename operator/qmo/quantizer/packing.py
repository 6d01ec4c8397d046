"""Unpack native AWQ (GEMM) and GPTQ checkpoints into plain float32 weights, with torch alone.

The legacy backends write formats that only their own kernels (or vLLM's) read, and reloading them on a
CPU goes through IPEX, which changes the numbers. Validating a legacy output therefore dequantizes it here
instead: the result is an ordinary ``nn.Linear`` state dict that the source architecture loads, so its
logits can be compared with the source's. Only torch (2.6 in the AutoAWQ environment, 2.14+ elsewhere)
and safetensors are used; no transformers, no backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PACK_BITS = 32  # both formats pack into int32 words
# AutoAWQ's GEMM packer puts output column ``AWQ_PACK_ORDER[i]`` of each group of 8 into nibble i
# (WQLinear_GEMM.from_linear), so that its CUDA kernel can unpack with one shift-and-mask per pair.
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_BITS = (4,)
# 3-bit GPTQ spills fields across word boundaries; nothing qmo writes uses it.
GPTQ_BITS = (2, 4, 8)
# "gptq" (v1) stores every zero point minus one, an AutoGPTQ quirk kept for compatibility; "gptq_v2"
# stores them as they are.
GPTQ_FORMATS = ("gptq", "gptq_v2")


def _unpack_words(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., n] int32 -> [..., n, 32/bits] fields, low bits first, as non-negative int64."""
    words = packed.to(torch.int64) & 0xFFFFFFFF  # int32 words are two's complement: read them unsigned
    shifts = torch.arange(0, PACK_BITS, bits, dtype=torch.int64)
    return (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)


def _awq_unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[rows, cols/8] AWQ GEMM words -> [rows, cols] values in column order."""
    fields = _unpack_words(packed, bits)  # [rows, words, 8]; field i is column AWQ_PACK_ORDER[i]
    columns = torch.empty_like(fields)
    columns[..., list(AWQ_PACK_ORDER)] = fields
    return columns.reshape(packed.shape[0], -1)


def dequantize_awq_gemm(
    qweight: torch.Tensor,
    qzeros: torch.Tensor | None,
    scales: torch.Tensor,
    *,
    bits: int,
    group_size: int,
) -> torch.Tensor:
    """AutoAWQ GEMM tensors -> float32 ``[out, in]``; ``w = (q - z) * s`` per input-channel group.

    qweight is int32 ``[in, out*bits/32]``, qzeros int32 ``[in/g, out*bits/32]``, scales ``[in/g, out]``.
    ``qzeros=None`` means a checkpoint without zero points (``zero_point: false``): the zero is the
    midpoint ``2**(bits-1)``, as vLLM's AWQ kernels assume for it.
    """
    if bits not in AWQ_BITS:
        raise ValueError(f"quantization_config.bits: AWQ GEMM packs {AWQ_BITS} bits, not {bits}")
    values = _awq_unpack(qweight, bits)  # [in, out]
    in_features = values.shape[0]
    group = in_features if group_size == -1 else group_size
    if in_features % group:
        raise ValueError(f"quantization_config.group_size: {group_size} does not divide {in_features} inputs")
    groups = torch.arange(in_features) // group
    zeros = torch.full_like(values, 1 << (bits - 1)) if qzeros is None else _awq_unpack(qzeros, bits)[groups]
    weight = (values - zeros).to(torch.float32) * scales.to(torch.float32)[groups]
    return weight.t().contiguous()


def _gptq_v1_zeros_fix(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    """Undo the v1 writer's ``qzeros -= 0x11111111`` (4 bits; one 1 per field in general).

    The writer subtracts from whole words, so a zero point of 0 borrows from its neighbour; adding the
    same constant back to whole words, modulo 2**32, is its exact inverse. (Readers that add 1 per
    field after unpacking agree everywhere except next to such a zero, which only asymmetric
    quantization produces.)
    """
    ones = sum(1 << shift for shift in range(0, PACK_BITS, bits))
    return ((qzeros.to(torch.int64) & 0xFFFFFFFF) + ones) & 0xFFFFFFFF


def dequantize_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor | None,
    *,
    bits: int,
    group_size: int = -1,
    checkpoint_format: str = "gptq",
) -> torch.Tensor:
    """GPTQ tensors -> float32 ``[out, in]``; ``w[o, i] = (q[i, o] - z[g, o]) * s[g, o]``, ``g = g_idx[i]``.

    qweight packs along the input dimension, int32 ``[in*bits/32, out]``, low bits first; qzeros packs
    along the output dimension, ``[groups, out*bits/32]``; scales are ``[groups, out]``. Without g_idx
    the group of input i is ``i // group_size`` (one group when group_size is -1). With act-order
    (desc_act) g_idx is not monotonic but qweight rows are still in input order, so the same formula
    holds. ``checkpoint_format`` is quantization_config's ``checkpoint_format``/``format``: GPTQModel
    7.7 writes ``"gptq"`` (v1, zeros stored minus one; vLLM's GPTQ kernels add the one back) unless
    asked for ``"gptq_v2"``; AutoGPTQ wrote v1 and no field, hence the default.
    """
    if bits not in GPTQ_BITS:
        raise ValueError(
            f"quantization_config.bits: GPTQ dequantization handles {GPTQ_BITS} bits, not {bits}"
        )
    if checkpoint_format not in GPTQ_FORMATS:
        raise ValueError(
            f"quantization_config.checkpoint_format: {checkpoint_format!r} is not one of {GPTQ_FORMATS}"
        )
    values = _unpack_words(qweight.t(), bits).reshape(qweight.shape[1], -1).t()  # [in, out]
    in_features = values.shape[0]
    if g_idx is None:
        group = in_features if group_size == -1 else group_size
        if in_features % group:
            raise ValueError(
                f"quantization_config.group_size: {group_size} does not divide {in_features} inputs"
            )
        groups = torch.arange(in_features) // group
    else:
        groups = g_idx.to(torch.int64)
    if checkpoint_format == "gptq":
        qzeros = _gptq_v1_zeros_fix(qzeros, bits)
    zeros = _unpack_words(qzeros, bits).reshape(qzeros.shape[0], -1)  # [groups, out]
    weight = (values - zeros[groups]).to(torch.float32) * scales.to(torch.float32)[groups]
    return weight.t().contiguous()


def _quantization_config(checkpoint_dir: Path) -> dict[str, Any]:
    config = json.loads((checkpoint_dir / "config.json").read_text())
    quantization = config.get("quantization_config")
    if not isinstance(quantization, dict):
        raise ValueError(f"{checkpoint_dir / 'config.json'} has no quantization_config")
    return quantization


def _int_field(quantization: dict[str, Any], name: str) -> int:
    value = quantization.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"quantization_config.{name}: expected an integer, got {value!r}")
    return value


Dequantizer = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def _dequantizer(quantization: dict[str, Any]) -> tuple[tuple[str, ...], Dequantizer]:
    """Check quantization_config once; return the tensors each packed linear needs and how to turn them
    into its weight."""
    method = quantization.get("quant_method")
    bits = _int_field(quantization, "bits")
    group_size = _int_field(quantization, "group_size")
    if method == "awq":
        version = str(quantization.get("version", "gemm")).lower()
        if version != "gemm":
            raise ValueError(
                f"quantization_config.version: only AWQ 'gemm' packing is handled, not {version!r}"
            )
        zero_point = quantization.get("zero_point", True)
        if bits not in AWQ_BITS:
            raise ValueError(f"quantization_config.bits: AWQ GEMM packs {AWQ_BITS} bits, not {bits}")

        def awq(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
            zeros = tensors["qzeros"] if zero_point else None
            return dequantize_awq_gemm(
                tensors["qweight"], zeros, tensors["scales"], bits=bits, group_size=group_size
            )

        return ("qweight", "scales", "qzeros") if zero_point else ("qweight", "scales"), awq
    if method == "gptq":
        # GPTQModel writes both names ("checkpoint_format" is its deprecated alias of "format").
        checkpoint_format = str(quantization.get("checkpoint_format") or quantization.get("format") or "gptq")
        if checkpoint_format not in GPTQ_FORMATS:
            raise ValueError(
                f"quantization_config.checkpoint_format: {checkpoint_format!r} is not one of {GPTQ_FORMATS}"
            )
        pack_dtype = quantization.get("pack_dtype", "int32")
        if pack_dtype != "int32":
            raise ValueError(
                f"quantization_config.pack_dtype: only int32 packing is handled, not {pack_dtype!r}"
            )
        if bits not in GPTQ_BITS:
            raise ValueError(
                f"quantization_config.bits: GPTQ dequantization handles {GPTQ_BITS} bits, not {bits}"
            )

        def gptq(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
            return dequantize_gptq(
                tensors["qweight"],
                tensors["qzeros"],
                tensors["scales"],
                tensors.get("g_idx"),
                bits=bits,
                group_size=group_size,
                checkpoint_format=checkpoint_format,
            )

        return ("qweight", "scales", "qzeros"), gptq
    raise ValueError(f"quantization_config.quant_method: {method!r} is neither 'awq' nor 'gptq'")


PACKED_PARTS = ("qweight", "qzeros", "scales", "g_idx")


def dequantized_state_dict(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a native AWQ/GPTQ checkpoint, each packed linear turned into ``<prefix>.weight``.

    Floating tensors come back as float32; others (rare: integer buffers) unchanged.
    """
    from safetensors.torch import load_file

    required, dequantize = _dequantizer(_quantization_config(checkpoint_dir))
    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{checkpoint_dir} has no *.safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    packed: dict[str, dict[str, torch.Tensor]] = {}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        prefix, _, part = name.rpartition(".")
        if part in PACKED_PARTS and f"{prefix}.qweight" in tensors:
            packed.setdefault(prefix, {})[part] = tensor
        else:
            state[name] = tensor.to(torch.float32) if tensor.is_floating_point() else tensor
    for prefix, parts in packed.items():
        missing = [part for part in required if part not in parts]
        if missing:
            raise ValueError(f"{checkpoint_dir}: {prefix} has a qweight but no {', '.join(missing)}")
        state[f"{prefix}.weight"] = dequantize(parts)
    return state
