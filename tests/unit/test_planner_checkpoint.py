"""predict_checkpoint_bytes equals what compressed-tensors (llm-compressor 0.14's writer) saves.

A tiny random Llama gets each preset scheme applied, is compressed in the format llm-compressor picks and
saved with save_pretrained; the safetensors' tensor bytes must equal the prediction exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qmo.planner import predict_checkpoint_bytes

BASE: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

PRESETS = [
    ("W4A16", "gptq", "pack-quantized"),
    ("W4A16_ASYM", "awq", "pack-quantized"),
    ("W8A8", "w8a8", "int-quantized"),
    ("FP8", "fp8", "float-quantized"),
    ("FP8_DYNAMIC", "fp8-dynamic", "float-quantized"),
    ("NVFP4", "nvfp4", "nvfp4-pack-quantized"),
]


def _saved_tensor_bytes(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = handle.get_tensor(key)
                total += tensor.numel() * tensor.element_size()
    return total


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize(("preset", "method", "fmt"), PRESETS)
def test_prediction_equals_compressed_tensors_output(
    tmp_path: Path, preset: str, method: str, fmt: str, tied: bool
) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    quantization = pytest.importorskip("compressed_tensors.quantization")
    compressors = pytest.importorskip("compressed_tensors.compressors")

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**BASE, tie_word_embeddings=tied)).to(
        torch.bfloat16
    )
    scheme = quantization.preset_name_to_scheme(preset, ["Linear"])
    quantization.apply_quantization_config(
        model, quantization.QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"])
    )
    for module in model.modules():
        for name in ("weight_scale", "input_scale", "weight_global_scale", "input_global_scale"):
            if hasattr(module, name):
                getattr(module, name).data.fill_(1.0 if "global" in name else 0.01)
        if hasattr(module, "quantization_status"):
            module.quantization_status = quantization.QuantizationStatus.FROZEN
    compressor = compressors.ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    compressor.compress_model(model)
    model.save_pretrained(tmp_path)

    config = {**BASE, "model_type": "llama", "torch_dtype": "bfloat16", "tie_word_embeddings": tied}
    assert predict_checkpoint_bytes(config, quantization=method) == _saved_tensor_bytes(tmp_path)
