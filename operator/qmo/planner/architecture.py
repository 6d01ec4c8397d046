"""Model architecture from a Hugging Face ``config.json``: every weight tensor, how vLLM shards it, and the
attention layers the KV cache serves.

The model is described as a flat list of weight groups rather than per-family formulas, so weight bytes per
quantization format, per-GPU sharding and parameter counts all come from one description. The parameter
count of each family equals transformers' own count for the same config (tests build the models on the
meta device).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from qmo.planner.errors import PlanningError

Sharding = Literal["column", "row", "replicated", "vocab"]
"""How vLLM splits a tensor across tensor-parallel ranks: column/row-parallel linears split the output/input
dimension, vocab-parallel embeddings split the (64-padded) vocabulary, replicated tensors are whole on
every rank."""

VOCAB_PADDING = 64  # vLLM pads vocab-parallel embeddings to a multiple of 64 rows.


@dataclass(frozen=True)
class Linear:
    """``count`` linear layers of shape [out_features, in_features], with how vLLM shards them."""

    name: str
    in_features: int
    out_features: int
    count: int
    sharding: Sharding
    bias: bool = False
    quantizable: bool = True
    """False for layers every quantization recipe keeps in 16-bit (MoE routers, lm_head)."""
    expert: bool = False
    """A routed MoE expert (vLLM's fused-MoE kernels hold these)."""
    layers: frozenset[int] | None = None
    """The decoder layers holding these linears, ``count`` spread evenly over them; None outside the layer
    stack. Pipeline parallelism places each decoder layer on one stage (vLLM's ``make_layers``)."""

    @property
    def params(self) -> int:
        return self.count * (self.in_features * self.out_features + (self.out_features if self.bias else 0))


@dataclass(frozen=True)
class Tensor:
    """``count`` tensors of ``numel`` elements that are never quantized: embeddings, norms, small biases."""

    name: str
    numel: int
    count: int
    sharding: Sharding = "replicated"
    float32: bool = False
    """Held in float32 by vLLM and the checkpoint (e.g. DeepSeek-V3's router score-correction bias)."""
    layers: frozenset[int] | None = None
    """As ``Linear.layers``: the decoder layers holding these tensors; None for embeddings, the final norm
    and a vision tower."""

    @property
    def params(self) -> int:
        return self.numel * self.count


@dataclass(frozen=True)
class Attention:
    """What one attention layer stores per token in the KV cache."""

    kind: Literal["full", "sliding", "mla"]
    num_kv_heads: int
    head_dim_k: int
    head_dim_v: int
    sliding_window: int | None = None


@dataclass(frozen=True)
class Architecture:
    """A decoder-only model as the planner sees it."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    vocab_size: int
    max_position_embeddings: int
    intermediate_size: int
    """The largest dense MLP width (for activation memory); 0 when every layer is MoE."""
    rotary_dim: int
    torch_dtype: str
    tie_word_embeddings: bool
    linears: tuple[Linear, ...]
    tensors: tuple[Tensor, ...]
    attention: tuple[Attention, ...]
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    quantization_config: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def param_count(self) -> int:
        """Parameters as transformers counts them (a tied lm_head counts once)."""
        return sum(linear.params for linear in self.linears) + sum(t.params for t in self.tensors)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def uses_mla(self) -> bool:
        return any(layer.kind == "mla" for layer in self.attention)


SUPPORTED_MODEL_TYPES = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "phi3",
    "deepseek_v2",
    "deepseek_v3",
)


# Ceilings far above any real checkpoint. The planner builds one entry per layer, so a hostile
# config.json with 6e16 layers would otherwise exhaust the operator's memory instead of failing.
# Kept per key here, not at each read, so every builder that reads a key gets the same ceiling.
_MAX_CONFIG_INT = 2**31 - 1
_MAX_BY_KEY = {"num_hidden_layers": 4096}


class _Config:
    """Typed access to config.json keys; every problem becomes a PlanningError naming the key."""

    def __init__(self, data: Mapping[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix

    def _where(self, key: str) -> str:
        return f"config.json key {self.prefix}{key!r}"

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get_int(self, key: str, default: int | None = None, *, minimum: int = 1) -> int:
        value = self.data.get(key)
        if value is None:
            if default is None:
                raise PlanningError(f"{self._where(key)} is missing")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise PlanningError(f"{self._where(key)} must be an integer, got {value!r}")
        if value < minimum:
            raise PlanningError(f"{self._where(key)} must be >= {minimum}, got {value}")
        maximum = _MAX_BY_KEY.get(key, _MAX_CONFIG_INT)
        if value > maximum:
            raise PlanningError(f"{self._where(key)} must be <= {maximum}, got {value}")
        return value

    def optional_int(self, key: str, *, minimum: int = 1) -> int | None:
        return self.get_int(key, minimum=minimum) if self.has(key) else None

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise PlanningError(f"{self._where(key)} must be true or false, got {value!r}")
        return value

    def get_float(self, key: str, default: float) -> float:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PlanningError(f"{self._where(key)} must be a number, got {value!r}")
        return float(value)

    def get_str(self, key: str, default: str) -> str:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise PlanningError(f"{self._where(key)} must be a string, got {value!r}")
        return value

    def int_list(self, key: str) -> list[int]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise PlanningError(f"{self._where(key)} must be a list of integers, got {value!r}")
        return list(value)

    def str_list(self, key: str) -> list[str] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
            raise PlanningError(f"{self._where(key)} must be a list of strings, got {value!r}")
        return list(value)

    def mapping(self, key: str) -> Mapping[str, Any] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise PlanningError(f"{self._where(key)} must be an object, got {type(value).__name__}")
        return value


def _dtype(cfg: _Config) -> str:
    # transformers 5 writes "dtype"; older configs "torch_dtype".
    raw = cfg.data.get("dtype") or cfg.data.get("torch_dtype") or "bfloat16"
    if not isinstance(raw, str):
        raise PlanningError(f"{cfg._where('torch_dtype')} must be a string, got {raw!r}")
    aliases = {
        "bf16": "bfloat16",
        "fp16": "float16",
        "half": "float16",
        "fp32": "float32",
        "float": "float32",
    }
    value = aliases.get(raw.lower(), raw.lower())
    if value not in ("bfloat16", "float16", "float32"):
        raise PlanningError(f"{cfg._where('torch_dtype')} is {raw!r}; supported: bfloat16, float16, float32")
    return value


def parse_architecture(config: Mapping[str, Any]) -> Architecture:
    """Read a ``config.json`` dict; a PlanningError names the unsupported type or the bad key."""
    if not isinstance(config, Mapping):
        raise PlanningError(f"config.json must be a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise PlanningError(
            f"config.json key 'model_type' is missing or not a string; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    builder = _BUILDERS.get(model_type)
    if builder is None:
        raise PlanningError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return builder(_Config(config))


@dataclass(frozen=True)
class _Dims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int


def _dims(cfg: _Config, *, default_max_positions: int = 4096) -> _Dims:
    hidden = cfg.get_int("hidden_size")
    heads = cfg.get_int("num_attention_heads")
    kv_heads = cfg.get_int("num_key_value_heads", heads)
    if heads % kv_heads:
        raise PlanningError(
            f"{cfg._where('num_attention_heads')} ({heads}) is not a multiple of "
            f"{cfg._where('num_key_value_heads')} ({kv_heads})"
        )
    head_dim = cfg.get_int("head_dim") if cfg.has("head_dim") else hidden // heads
    if head_dim < 1:
        raise PlanningError(
            f"{cfg._where('num_attention_heads')} ({heads}) is larger than {cfg._where('hidden_size')} ({hidden})"
        )
    return _Dims(
        hidden=hidden,
        layers=cfg.get_int("num_hidden_layers"),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=cfg.get_int("vocab_size"),
        max_positions=cfg.get_int("max_position_embeddings", default_max_positions),
    )


def _embeddings(d: _Dims, tie: bool) -> list[Linear | Tensor]:
    parts: list[Linear | Tensor] = [Tensor("embed_tokens", d.vocab * d.hidden, 1, "vocab")]
    if not tie:
        parts.append(Linear("lm_head", d.hidden, d.vocab, 1, "vocab", quantizable=False))
    return parts


def _gqa_attention(
    d: _Dims, layers: frozenset[int], *, qkv_bias: bool, o_bias: bool, fused: bool = False
) -> list[Linear]:
    q_out, kv_out = d.heads * d.head_dim, d.kv_heads * d.head_dim
    count = len(layers)
    if fused:
        qkv = [
            Linear("qkv_proj", d.hidden, q_out + 2 * kv_out, count, "column", bias=qkv_bias, layers=layers)
        ]
    else:
        qkv = [
            Linear("q_proj", d.hidden, q_out, count, "column", bias=qkv_bias, layers=layers),
            Linear("k_proj", d.hidden, kv_out, count, "column", bias=qkv_bias, layers=layers),
            Linear("v_proj", d.hidden, kv_out, count, "column", bias=qkv_bias, layers=layers),
        ]
    return [*qkv, Linear("o_proj", q_out, d.hidden, count, "row", bias=o_bias, layers=layers)]


def _mlp(
    name: str, hidden: int, inter: int, layers: frozenset[int], *, bias: bool = False, fused: bool = False
) -> list[Linear]:
    count = len(layers)
    if count == 0:
        return []
    up = (
        [Linear(f"{name}.gate_up_proj", hidden, 2 * inter, count, "column", bias=bias, layers=layers)]
        if fused
        else [
            Linear(f"{name}.gate_proj", hidden, inter, count, "column", bias=bias, layers=layers),
            Linear(f"{name}.up_proj", hidden, inter, count, "column", bias=bias, layers=layers),
        ]
    )
    return [*up, Linear(f"{name}.down_proj", inter, hidden, count, "row", bias=bias, layers=layers)]


def _experts(hidden: int, inter: int, experts: int, layers: frozenset[int]) -> list[Linear]:
    if not layers:
        return []
    n = experts * len(layers)
    return [
        Linear("experts.gate_proj", hidden, inter, n, "column", expert=True, layers=layers),
        Linear("experts.up_proj", hidden, inter, n, "column", expert=True, layers=layers),
        Linear("experts.down_proj", inter, hidden, n, "row", expert=True, layers=layers),
    ]


def _full_layers(d: _Dims) -> tuple[Attention, ...]:
    return tuple(Attention("full", d.kv_heads, d.head_dim, d.head_dim) for _ in range(d.layers))


def _rotary_dim(cfg: _Config, head_dim: int) -> int:
    return int(head_dim * cfg.get_float("partial_rotary_factor", 1.0))


def _split(parts: list[Linear | Tensor]) -> tuple[tuple[Linear, ...], tuple[Tensor, ...]]:
    return (
        tuple(p for p in parts if isinstance(p, Linear) and p.count),
        tuple(p for p in parts if isinstance(p, Tensor) and p.count),
    )


def _build_llama_like(cfg: _Config) -> Architecture:
    """Llama 2/3.x, Mistral, Mixtral, Qwen2/2.5, Qwen3, Qwen3-MoE and Phi-3: one residual block shape."""
    model_type = cfg.get_str("model_type", "")
    d = _dims(cfg)
    tie = cfg.get_bool("tie_word_embeddings", False)
    inter = cfg.get_int("intermediate_size")
    n = d.layers
    every = frozenset(range(n))
    parts: list[Linear | Tensor] = [*_embeddings(d, tie), Tensor("norm", d.hidden, 1)]
    parts.append(Tensor("layernorms", d.hidden, 2 * n, layers=every))
    experts = top_k = moe_inter = 0
    moe = frozenset[int]()
    if model_type == "phi3":
        parts += _gqa_attention(d, every, qkv_bias=False, o_bias=False, fused=True)
        parts += _mlp("mlp", d.hidden, inter, every, fused=True)
    else:
        if model_type in ("llama", "qwen3", "qwen3_moe"):
            bias = cfg.get_bool("attention_bias", False)
            parts += _gqa_attention(d, every, qkv_bias=bias, o_bias=bias)
        else:  # qwen2 always has q/k/v biases; mistral and mixtral never have any.
            parts += _gqa_attention(d, every, qkv_bias=model_type == "qwen2", o_bias=False)
        if model_type in ("qwen3", "qwen3_moe"):
            parts.append(Tensor("q_norm+k_norm", d.head_dim, 2 * n, layers=every))
        if model_type == "mixtral":
            experts, top_k, moe_inter = (
                cfg.get_int("num_local_experts"),
                cfg.get_int("num_experts_per_tok"),
                inter,
            )
            moe = every
        elif model_type == "qwen3_moe":
            experts, top_k = cfg.get_int("num_experts"), cfg.get_int("num_experts_per_tok")
            moe_inter = cfg.get_int("moe_intermediate_size")
            step = cfg.get_int("decoder_sparse_step", 1)
            dense_only = set(cfg.int_list("mlp_only_layers"))
            moe = frozenset(i for i in range(n) if i not in dense_only and (i + 1) % step == 0)
        parts += _mlp("mlp", d.hidden, inter, every - moe, bias=cfg.get_bool("mlp_bias", False))
        if moe:
            parts.append(
                Linear("router", d.hidden, experts, len(moe), "replicated", quantizable=False, layers=moe)
            )
            parts += _experts(d.hidden, moe_inter, experts, moe)
    moe_layers = len(moe)
    attention = _full_layers(d)
    window = cfg.optional_int("sliding_window") if model_type in ("mistral", "mixtral") else None
    if window is not None:
        attention = tuple(Attention("sliding", d.kv_heads, d.head_dim, d.head_dim, window) for _ in range(n))
    linears, tensors = _split(parts)
    return Architecture(
        model_type=model_type,
        hidden_size=d.hidden,
        num_layers=n,
        num_attention_heads=d.heads,
        num_kv_heads=d.kv_heads,
        vocab_size=d.vocab,
        max_position_embeddings=d.max_positions,
        intermediate_size=inter if moe_layers < n else 0,
        rotary_dim=_rotary_dim(cfg, d.head_dim),
        torch_dtype=_dtype(cfg),
        tie_word_embeddings=tie,
        linears=linears,
        tensors=tensors,
        attention=attention,
        num_experts=experts if moe_layers else 0,
        experts_per_token=top_k if moe_layers else 0,
        moe_intermediate_size=moe_inter if moe_layers else 0,
        quantization_config=cfg.mapping("quantization_config"),
    )


def _gemma_sliding(cfg: _Config, layers: int, model_type: str) -> list[bool]:
    types = cfg.str_list("layer_types")
    if types is not None:
        if len(types) != layers:
            raise PlanningError(
                f"{cfg._where('layer_types')} has {len(types)} entries, num_hidden_layers is {layers}"
            )
        return [t == "sliding_attention" for t in types]
    if model_type == "gemma2":
        return [i % 2 == 0 for i in range(layers)]
    pattern = cfg.get_int("sliding_window_pattern", 6)
    return [(i + 1) % pattern != 0 for i in range(layers)]


def _vision_tower(cfg: _Config) -> list[Linear | Tensor]:
    """SigLIP vision encoder + Gemma3 projector, kept 16-bit and replicated (conservative) on every rank."""
    hidden = cfg.get_int("hidden_size")
    layers = cfg.get_int("num_hidden_layers")
    inter = cfg.get_int("intermediate_size")
    patch = cfg.get_int("patch_size")
    image = cfg.get_int("image_size")
    channels = cfg.get_int("num_channels", 3)
    patches = (image // patch) ** 2
    return [
        Tensor("vision.patch_embedding", channels * patch * patch * hidden + hidden, 1),
        Tensor("vision.position_embedding", patches * hidden, 1),
        Tensor(
            "vision.layers",
            4 * (hidden * hidden + hidden) + 2 * (hidden * inter) + inter + hidden + 4 * hidden,
            layers,
        ),
        Tensor("vision.post_layernorm", 2 * hidden, 1),
        # SigLIP's attention-pooling head (probe, attention, norm, MLP); Gemma 3 checkpoints turn it off.
        Tensor(
            "vision.head",
            hidden + 4 * (hidden * hidden + hidden) + 2 * hidden + 2 * hidden * inter + inter + hidden,
            1 if cfg.get_bool("vision_use_head", True) else 0,
        ),
    ]


def _build_gemma(cfg: _Config) -> Architecture:
    """Gemma 2 and Gemma 3: sandwich norms, tied embeddings, interleaved sliding-window layers."""
    model_type = cfg.get_str("model_type", "")
    outer = cfg
    vision: list[Linear | Tensor] = []
    if model_type == "gemma3":
        text = cfg.mapping("text_config")
        if text is None:
            raise PlanningError("config.json key 'text_config' is missing (model_type gemma3)")
        cfg = _Config(text, prefix="text_config.")
        vision_config = outer.mapping("vision_config")
        if vision_config is not None:
            vcfg = _Config(vision_config, prefix="vision_config.")
            vision = _vision_tower(vcfg)
            text_hidden = cfg.get_int("hidden_size")
            vision.append(Tensor("multi_modal_projector", vcfg.get_int("hidden_size") * (text_hidden + 1), 1))
    d = _dims(cfg, default_max_positions=8192 if model_type == "gemma2" else 131072)
    n = d.layers
    inter = cfg.get_int("intermediate_size")
    bias = cfg.get_bool("attention_bias", False)
    tie = outer.get_bool("tie_word_embeddings", cfg.get_bool("tie_word_embeddings", True))
    parts: list[Linear | Tensor] = [*_embeddings(d, tie), Tensor("norm", d.hidden, 1), *vision]
    every = frozenset(range(n))
    parts.append(Tensor("layernorms", d.hidden, 4 * n, layers=every))
    parts += _gqa_attention(d, every, qkv_bias=bias, o_bias=bias)
    parts += _mlp("mlp", d.hidden, inter, every)
    if model_type != "gemma2":
        parts.append(Tensor("q_norm+k_norm", d.head_dim, 2 * n, layers=every))
    window = cfg.get_int("sliding_window", 4096)
    attention = tuple(
        Attention("sliding", d.kv_heads, d.head_dim, d.head_dim, window)
        if sliding
        else Attention("full", d.kv_heads, d.head_dim, d.head_dim)
        for sliding in _gemma_sliding(cfg, n, "gemma2" if model_type == "gemma2" else "gemma3")
    )
    linears, tensors = _split(parts)
    return Architecture(
        model_type=model_type,
        hidden_size=d.hidden,
        num_layers=n,
        num_attention_heads=d.heads,
        num_kv_heads=d.kv_heads,
        vocab_size=d.vocab,
        max_position_embeddings=d.max_positions,
        intermediate_size=inter,
        rotary_dim=d.head_dim,
        torch_dtype=_dtype(outer if (outer.has("torch_dtype") or outer.has("dtype")) else cfg),
        tie_word_embeddings=tie,
        linears=linears,
        tensors=tensors,
        attention=attention,
        quantization_config=outer.mapping("quantization_config") or cfg.mapping("quantization_config"),
    )


def _build_deepseek(cfg: _Config) -> Architecture:
    """DeepSeek-V2/V3: multi-head latent attention (MLA) and MoE with shared experts."""
    model_type = cfg.get_str("model_type", "")
    hidden = cfg.get_int("hidden_size")
    heads = cfg.get_int("num_attention_heads")
    n = cfg.get_int("num_hidden_layers")
    vocab = cfg.get_int("vocab_size")
    inter = cfg.get_int("intermediate_size")
    kv_lora = cfg.get_int("kv_lora_rank")
    q_lora = cfg.optional_int("q_lora_rank")
    nope = cfg.get_int("qk_nope_head_dim")
    rope = cfg.get_int("qk_rope_head_dim")
    v_dim = cfg.get_int("v_head_dim")
    bias = cfg.get_bool("attention_bias", False)
    tie = cfg.get_bool("tie_word_embeddings", False)
    d = _Dims(hidden, n, heads, heads, nope + rope, vocab, cfg.get_int("max_position_embeddings", 4096))
    every = frozenset(range(n))
    parts: list[Linear | Tensor] = [
        *_embeddings(d, tie),
        Tensor("norm", hidden, 1),
        Tensor("layernorms", hidden, 2 * n, layers=every),
    ]
    qk_dim = nope + rope
    if q_lora is None:
        parts.append(Linear("q_proj", hidden, heads * qk_dim, n, "column", layers=every))
    else:
        parts += [
            Linear("q_a_proj", hidden, q_lora, n, "replicated", bias=bias, layers=every),
            Tensor("q_a_layernorm", q_lora, n, layers=every),
            Linear("q_b_proj", q_lora, heads * qk_dim, n, "column", layers=every),
        ]
    parts += [
        Linear("kv_a_proj_with_mqa", hidden, kv_lora + rope, n, "replicated", bias=bias, layers=every),
        Tensor("kv_a_layernorm", kv_lora, n, layers=every),
        Linear("kv_b_proj", kv_lora, heads * (nope + v_dim), n, "column", layers=every),
        Linear("o_proj", heads * v_dim, hidden, n, "row", bias=bias, layers=every),
    ]
    experts = cfg.get_int("n_routed_experts", 0, minimum=0)
    first_dense = cfg.get_int("first_k_dense_replace", 0, minimum=0)
    freq = cfg.get_int("moe_layer_freq", 1)
    moe = frozenset(i for i in range(n) if experts and i >= first_dense and i % freq == 0)
    moe_layers = len(moe)
    moe_inter = cfg.get_int("moe_intermediate_size") if moe_layers else 0
    shared = cfg.get_int("n_shared_experts", 0, minimum=0) if moe_layers else 0
    top_k = cfg.get_int("num_experts_per_tok") if moe_layers else 0
    parts += _mlp("mlp", hidden, inter, every - moe)
    if moe_layers:
        parts.append(
            Linear("router", hidden, experts, moe_layers, "replicated", quantizable=False, layers=moe)
        )
        if model_type == "deepseek_v3":
            # transformers keeps e_score_correction_bias as a buffer (not counted); vLLM and the checkpoint
            # hold it in float32.
            parts.append(Tensor("e_score_correction_bias", experts, moe_layers, float32=True, layers=moe))
        parts += _experts(hidden, moe_inter, experts, moe)
        if shared:
            parts += _mlp("shared_experts", hidden, moe_inter * shared, moe)
    linears, tensors = _split(parts)
    return Architecture(
        model_type=model_type,
        hidden_size=hidden,
        num_layers=n,
        num_attention_heads=heads,
        num_kv_heads=1,
        vocab_size=vocab,
        max_position_embeddings=d.max_positions,
        intermediate_size=inter if moe_layers < n else 0,
        rotary_dim=rope,
        torch_dtype=_dtype(cfg),
        tie_word_embeddings=tie,
        linears=linears,
        tensors=tensors,
        attention=tuple(Attention("mla", 1, kv_lora + rope, 0) for _ in range(n)),
        num_experts=experts if moe_layers else 0,
        experts_per_token=top_k,
        moe_intermediate_size=moe_inter,
        shared_expert_intermediate_size=moe_inter * shared,
        quantization_config=cfg.mapping("quantization_config"),
        extra={
            "kv_lora_rank": kv_lora,
            "qk_rope_head_dim": rope,
            "qk_nope_head_dim": nope,
            "v_head_dim": v_dim,
        },
    )


_BUILDERS = {
    "llama": _build_llama_like,
    "mistral": _build_llama_like,
    "mixtral": _build_llama_like,
    "qwen2": _build_llama_like,
    "qwen3": _build_llama_like,
    "qwen3_moe": _build_llama_like,
    "phi3": _build_llama_like,
    "gemma2": _build_gemma,
    "gemma3": _build_gemma,
    "gemma3_text": _build_gemma,
    "deepseek_v2": _build_deepseek,
    "deepseek_v3": _build_deepseek,
}


def trainable_param_count(arch: Architecture) -> int:
    """Parameters transformers registers (excludes float32 buffers such as e_score_correction_bias)."""
    return arch.param_count - sum(t.params for t in arch.tensors if t.float32)
