"""Dequantization of native AWQ GEMM and GPTQ tensors, checked against packers written here.

The reference packers below follow the writers (AutoAWQ's WQLinear_GEMM.from_linear, GPTQModel's and
AutoGPTQ's pack) with explicit Python-int shifts, independent of the vectorised code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from qmo.quantizer.packing import dequantize_awq_gemm, dequantize_gptq, dequantized_state_dict

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ: nibble i of a word holds column AWQ_ORDER[i] of its 8


def as_int32(word: int) -> int:
    return word - (1 << 32) if word >= 1 << 31 else word


def awq_pack(values: list[list[int]]) -> torch.Tensor:
    """[rows][cols] 4-bit values -> int32 [rows, cols/8], AutoAWQ's GEMM order."""
    packed = []
    for row in values:
        words = []
        for base in range(0, len(row), 8):
            word = 0
            for nibble, column in enumerate(AWQ_ORDER):
                word |= row[base + column] << (4 * nibble)
            words.append(as_int32(word))
        packed.append(words)
    return torch.tensor(packed, dtype=torch.int32)


def gptq_pack_columns(values: list[list[int]], bits: int, *, minus_one: bool = False) -> torch.Tensor:
    """[rows][cols] -> int32 [rows, cols*bits/32], consecutive columns low bits first (GPTQ qzeros).
    ``minus_one``: the v1 writer's whole-word ``qzeros -= 0x1111...`` (borrows included)."""
    per_word = 32 // bits
    ones = sum(1 << (bits * field) for field in range(per_word))
    packed = []
    for row in values:
        words = []
        for base in range(0, len(row), per_word):
            word = 0
            for field in range(per_word):
                word |= row[base + field] << (bits * field)
            if minus_one:
                word = (word - ones) % (1 << 32)
            words.append(as_int32(word))
        packed.append(words)
    return torch.tensor(packed, dtype=torch.int32)


def gptq_pack_rows(values: list[list[int]], bits: int) -> torch.Tensor:
    """[in][out] -> int32 [in*bits/32, out], consecutive input rows low bits first (GPTQ qweight)."""
    transposed = [list(column) for column in zip(*values, strict=True)]
    return gptq_pack_columns(transposed, bits).t().contiguous()


def random_ints(rows: int, cols: int, bits: int, generator: torch.Generator) -> list[list[int]]:
    return torch.randint(0, 1 << bits, (rows, cols), generator=generator).tolist()


def reference_weight(
    values: list[list[int]], zeros: list[list[int]], scales: torch.Tensor, groups: list[int]
) -> torch.Tensor:
    """w[o, i] = (q[i][o] - z[g(i)][o]) * s[g(i), o], computed element by element."""
    in_features, out_features = len(values), len(values[0])
    weight = torch.empty(out_features, in_features, dtype=torch.float32)
    scales32 = scales.to(torch.float32)
    for i in range(in_features):
        g = groups[i]
        difference = torch.tensor(
            [values[i][o] - zeros[g][o] for o in range(out_features)], dtype=torch.float32
        )
        weight[:, i] = difference * scales32[g]
    return weight


@pytest.mark.parametrize("group_size", [32, 128])
def test_awq_gemm_matches_reference_packer(group_size: int) -> None:
    generator = torch.Generator().manual_seed(group_size)
    in_features, out_features = 256, 64
    values = random_ints(in_features, out_features, 4, generator)
    zeros = random_ints(in_features // group_size, out_features, 4, generator)
    scales = (torch.rand(in_features // group_size, out_features, generator=generator) + 0.01).to(
        torch.float16
    )
    weight = dequantize_awq_gemm(awq_pack(values), awq_pack(zeros), scales, bits=4, group_size=group_size)
    expected = reference_weight(values, zeros, scales, [i // group_size for i in range(in_features)])
    assert weight.dtype == torch.float32
    assert weight.shape == (out_features, in_features)
    assert torch.equal(weight, expected)


def test_awq_nibble_order_is_interleaved() -> None:
    # Nibble i holds value i: AWQ's order puts nibbles 0..7 into columns 0,2,4,6,1,3,5,7, so reading the
    # columns back gives 0,4,1,5,2,6,3,7. A sequential (GPTQ-like) reading would give 0..7.
    word = torch.tensor([[0x76543210]], dtype=torch.int32)
    weight = dequantize_awq_gemm(
        word,
        torch.zeros(1, 1, dtype=torch.int32),
        torch.ones(1, 8, dtype=torch.float16),
        bits=4,
        group_size=1,
    )
    assert weight[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_awq_without_zero_point_uses_the_midpoint() -> None:
    weight = dequantize_awq_gemm(
        awq_pack([[8] * 8, [15] * 8]),
        None,
        torch.full((1, 8), 0.5, dtype=torch.float16),
        bits=4,
        group_size=2,
    )
    assert weight.t().tolist() == [[0.0] * 8, [3.5] * 8]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
def test_gptq_matches_reference_packer(bits: int, group_size: int, checkpoint_format: str) -> None:
    generator = torch.Generator().manual_seed(bits * 1000 + group_size)
    in_features, out_features = 256, 32
    groups = 1 if group_size == -1 else in_features // group_size
    values = random_ints(in_features, out_features, bits, generator)
    # Asymmetric zeros include 0, where the v1 writer's subtraction borrows from the next field.
    zeros = random_ints(groups, out_features, bits, generator)
    zeros[0][0] = 0
    scales = (torch.rand(groups, out_features, generator=generator) + 0.01).to(torch.float16)
    qzeros = gptq_pack_columns(zeros, bits, minus_one=checkpoint_format == "gptq")
    weight = dequantize_gptq(
        gptq_pack_rows(values, bits),
        qzeros,
        scales,
        None,
        bits=bits,
        group_size=group_size,
        checkpoint_format=checkpoint_format,
    )
    group_of = [0 if group_size == -1 else i // group_size for i in range(in_features)]
    assert weight.shape == (out_features, in_features)
    assert torch.equal(weight, reference_weight(values, zeros, scales, group_of))


def test_gptq_act_order_follows_g_idx() -> None:
    generator = torch.Generator().manual_seed(7)
    in_features, out_features, group_size = 128, 16, 32
    values = random_ints(in_features, out_features, 4, generator)
    zeros = random_ints(in_features // group_size, out_features, 4, generator)
    scales = (torch.rand(in_features // group_size, out_features, generator=generator) + 0.01).to(
        torch.float16
    )
    # desc_act: groups follow the activation order, so g_idx is a permuted i // group_size.
    order = torch.randperm(in_features, generator=generator)
    g_idx = torch.empty(in_features, dtype=torch.int32)
    g_idx[order] = (torch.arange(in_features) // group_size).to(torch.int32)
    weight = dequantize_gptq(
        gptq_pack_rows(values, 4),
        gptq_pack_columns(zeros, 4, minus_one=True),
        scales,
        g_idx,
        bits=4,
        group_size=group_size,
    )
    assert torch.equal(weight, reference_weight(values, zeros, scales, g_idx.tolist()))


def test_gptq_v1_stores_symmetric_zero_minus_one() -> None:
    # Symmetric 4-bit GPTQ has zero 8 everywhere; v1 checkpoints store 7 (0x77777777), v2 store 8.
    qweight = torch.full((1, 8), as_int32(0x88888888), dtype=torch.int32)  # eight inputs, all q = 8
    scales = torch.ones(1, 8, dtype=torch.float16)
    v1 = dequantize_gptq(qweight, torch.full((1, 1), 0x77777777, dtype=torch.int32), scales, None, bits=4)
    v2 = dequantize_gptq(
        qweight,
        torch.full((1, 1), as_int32(0x88888888), dtype=torch.int32),
        scales,
        None,
        bits=4,
        checkpoint_format="gptq_v2",
    )
    assert torch.equal(v1, torch.zeros(8, 8))
    assert torch.equal(v2, torch.zeros(8, 8))


def write_checkpoint(
    directory: Path, quantization: dict[str, object], tensors: dict[str, torch.Tensor]
) -> Path:
    directory.mkdir()
    (directory / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "quantization_config": quantization})
    )
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def test_state_dict_turns_packed_linears_into_weights(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    values = random_ints(64, 16, 4, generator)
    zeros = random_ints(2, 16, 4, generator)
    scales = (torch.rand(2, 16, generator=generator) + 0.01).to(torch.float16)
    norm = torch.rand(64, generator=generator).to(torch.bfloat16)
    checkpoint = write_checkpoint(
        tmp_path / "awq",
        {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"},
        {
            "model.layers.0.mlp.up_proj.qweight": awq_pack(values),
            "model.layers.0.mlp.up_proj.qzeros": awq_pack(zeros),
            "model.layers.0.mlp.up_proj.scales": scales,
            "model.layers.0.input_layernorm.weight": norm,
        },
    )
    state = dequantized_state_dict(checkpoint)
    assert sorted(state) == ["model.layers.0.input_layernorm.weight", "model.layers.0.mlp.up_proj.weight"]
    assert state["model.layers.0.input_layernorm.weight"].dtype == torch.float32
    assert torch.equal(state["model.layers.0.input_layernorm.weight"], norm.to(torch.float32))
    expected = reference_weight(values, zeros, scales, [i // 32 for i in range(64)])
    assert torch.equal(state["model.layers.0.mlp.up_proj.weight"], expected)


def test_state_dict_reads_gptqmodel_config(tmp_path: Path) -> None:
    # What GPTQModel 7.7 writes: "format" and its alias "checkpoint_format", both "gptq" (v1 zeros).
    generator = torch.Generator().manual_seed(4)
    values = random_ints(64, 16, 8, generator)
    zeros = random_ints(1, 16, 8, generator)
    scales = (torch.rand(1, 16, generator=generator) + 0.01).to(torch.float16)
    checkpoint = write_checkpoint(
        tmp_path / "gptq",
        {
            "quant_method": "gptq",
            "bits": 8,
            "group_size": -1,
            "sym": False,
            "desc_act": False,
            "format": "gptq",
            "checkpoint_format": "gptq",
            "pack_dtype": "int32",
        },
        {
            "lm_head.qweight": gptq_pack_rows(values, 8),
            "lm_head.qzeros": gptq_pack_columns(zeros, 8, minus_one=True),
            "lm_head.scales": scales,
            "lm_head.g_idx": torch.zeros(64, dtype=torch.int32),
        },
    )
    state = dequantized_state_dict(checkpoint)
    assert list(state) == ["lm_head.weight"]
    assert torch.equal(state["lm_head.weight"], reference_weight(values, zeros, scales, [0] * 64))


@pytest.mark.parametrize(
    ("quantization", "field"),
    [
        ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}, "version"),
        ({"quant_method": "awq", "bits": 8, "group_size": 128, "version": "gemm"}, "bits"),
        ({"quant_method": "gptq", "bits": 3, "group_size": 128}, "bits"),
        (
            {"quant_method": "gptq", "bits": 4, "group_size": 128, "checkpoint_format": "marlin"},
            "checkpoint_format",
        ),
        ({"quant_method": "gptq", "bits": 4, "group_size": 128, "pack_dtype": "int16"}, "pack_dtype"),
        ({"quant_method": "gptq", "bits": 4}, "group_size"),
        ({"quant_method": "fp8", "bits": 8, "group_size": 128}, "quant_method"),
    ],
)
def test_unsupported_configs_name_the_field(
    tmp_path: Path, quantization: dict[str, object], field: str
) -> None:
    checkpoint = write_checkpoint(tmp_path / "bad", quantization, {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match=rf"quantization_config\.{field}\b"):
        dequantized_state_dict(checkpoint)


def test_a_qweight_without_its_zeros_is_refused(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(
        tmp_path / "partial",
        {"quant_method": "gptq", "bits": 4, "group_size": 8},
        {
            "a.qweight": torch.zeros(1, 8, dtype=torch.int32),
            "a.scales": torch.ones(1, 8, dtype=torch.float16),
        },
    )
    with pytest.raises(ValueError, match="a has a qweight but no qzeros"):
        dequantized_state_dict(checkpoint)
