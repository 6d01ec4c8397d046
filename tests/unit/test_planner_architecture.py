"""Parameter counts of every supported family equal transformers' own count (models built on meta)."""

from __future__ import annotations

from typing import Any

import pytest

from qmo.planner import PlanningError
from qmo.planner.architecture import parse_architecture, trainable_param_count

BASE: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "max_position_embeddings": 2048,
    "torch_dtype": "bfloat16",
}

SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {**BASE, "model_type": "llama", "tie_word_embeddings": False},
    "llama-tied-bias": {
        **BASE,
        "model_type": "llama",
        "tie_word_embeddings": True,
        "attention_bias": True,
        "mlp_bias": True,
    },
    "mistral": {**BASE, "model_type": "mistral", "head_dim": 64, "sliding_window": 4096},
    "mixtral": {**BASE, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2": {**BASE, "model_type": "qwen2", "tie_word_embeddings": True},
    "qwen3": {**BASE, "model_type": "qwen3", "head_dim": 48, "tie_word_embeddings": False},
    "qwen3_moe": {
        **BASE,
        "model_type": "qwen3_moe",
        "head_dim": 32,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 128,
        "decoder_sparse_step": 2,
        "mlp_only_layers": [0],
    },
    "gemma2": {**BASE, "model_type": "gemma2", "head_dim": 64, "sliding_window": 128},
    "gemma3_text": {
        **BASE,
        "model_type": "gemma3_text",
        "head_dim": 64,
        "sliding_window": 128,
        "num_hidden_layers": 6,
    },
    "phi3": {**BASE, "model_type": "phi3", "num_key_value_heads": 8},
    "deepseek_v2_lite": {
        **BASE,
        "model_type": "deepseek_v2",
        "num_key_value_heads": 8,
        "q_lora_rank": None,
        "kv_lora_rank": 64,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "v_head_dim": 32,
        "n_routed_experts": 8,
        "n_shared_experts": 2,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "first_k_dense_replace": 1,
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
    },
    "deepseek_v3": {
        **BASE,
        "model_type": "deepseek_v3",
        "num_key_value_heads": 8,
        "q_lora_rank": 96,
        "kv_lora_rank": 64,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "v_head_dim": 32,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "first_k_dense_replace": 2,
        "n_group": 2,
        "topk_group": 1,
    },
    "gemma3": {
        "model_type": "gemma3",
        "text_config": {
            **BASE,
            "model_type": "gemma3_text",
            "head_dim": 64,
            "sliding_window": 128,
            "num_hidden_layers": 6,
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "patch_size": 14,
            "image_size": 56,
            "vision_use_head": False,
        },
        "mm_tokens_per_image": 4,
        "boi_token_index": 5,
        "eoi_token_index": 6,
        "image_token_index": 7,
    },
}


def _transformers_count(config: dict[str, Any]) -> int:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **kwargs)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_param_count_equals_transformers(name: str) -> None:
    config = SMALL_CONFIGS[name]
    assert trainable_param_count(parse_architecture(config)) == _transformers_count(config)


def test_unknown_model_type_names_the_supported_ones() -> None:
    with pytest.raises(PlanningError, match=r"'gpt2' is not supported; supported: llama"):
        parse_architecture({**BASE, "model_type": "gpt2"})


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"hidden_size": None}, r"'hidden_size' is missing"),
        ({"num_attention_heads": "8"}, r"'num_attention_heads' must be an integer"),
        ({"tie_word_embeddings": "yes"}, r"'tie_word_embeddings' must be true or false"),
        ({"num_key_value_heads": 3}, r"not a multiple"),
        ({"num_hidden_layers": 0}, r"'num_hidden_layers' must be >= 1"),
        ({"num_hidden_layers": 6.08e16}, r"'num_hidden_layers' must be <= 4096"),
        ({"vocab_size": 2**40}, r"'vocab_size' must be <= 2147483647"),
    ],
)
def test_bad_keys_are_named(patch: dict[str, Any], message: str) -> None:
    config = {**SMALL_CONFIGS["llama"], **patch}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(PlanningError, match=message):
        parse_architecture(config)
