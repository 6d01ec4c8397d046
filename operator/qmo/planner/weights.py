"""Weight bytes per quantization format: on disk (the checkpoint, to size the cache volume) and in GPU memory
as vLLM holds them, per tensor-parallel rank.

Every quantized linear of shape [out, in] is stored as the tensors its format writes, e.g. AutoAWQ GEMM:
``qweight`` int32 [in, out*bits/32], ``qzeros`` int32 [in/g, out*bits/32], ``scales`` fp16 [in/g, out];
llm-compressor 0.14 pack-quantized W4A16: ``weight_packed`` int32 [out, in*bits/32], ``weight_scale``
[out, in/g] in the model dtype, ``weight_zero_point`` int32 [out*bits/32, in/g] when asymmetric and
``weight_shape`` int64 [2]. Embeddings, lm_head, norms and MoE routers always stay 16-bit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from qmo.api.backends import BACKENDS, DEFAULT_BACKEND, output_format
from qmo.planner.architecture import VOCAB_PADDING, Architecture, Linear, Tensor
from qmo.planner.errors import PlanningError

METHODS = ("none", "awq", "gptq", "w8a8", "fp8", "fp8-dynamic", "nvfp4", "bitsandbytes-nf4", "prequantized")

Layout = Literal[
    "dense",  # 16-bit (or the checkpoint's float dtype)
    "autoawq",  # AutoAWQ GEMM: qweight/qzeros/scales, weights packed along the output dimension
    "autogptq",  # AutoGPTQ: qweight packed along the input dimension, qzeros, scales, g_idx
    "ct-pack",  # compressed-tensors pack-quantized: int4/int8 weight-only (GPTQ/AWQ by llm-compressor)
    "ct-int8",  # compressed-tensors int-quantized W8A8
    "ct-fp8",  # compressed-tensors float-quantized fp8 (static: per-tensor; dynamic: per-channel)
    "ct-nvfp4",  # compressed-tensors nvfp4-pack-quantized
    "fp8-block",  # native fp8 with 128x128 block scales (DeepSeek-V3's own checkpoint)
    "bnb-nf4",  # bitsandbytes NF4, quantized by vLLM while loading a 16-bit checkpoint
    "bnb-nf4-prequantized",
]

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

# Where transformers names each linear, for matching a quantization_config's ignore list.
_MODULE_PATHS: dict[str, tuple[str, ...]] = {
    "q_proj": ("self_attn.q_proj",),
    "k_proj": ("self_attn.k_proj",),
    "v_proj": ("self_attn.v_proj",),
    "qkv_proj": ("self_attn.qkv_proj",),
    "o_proj": ("self_attn.o_proj",),
    "q_a_proj": ("self_attn.q_a_proj",),
    "q_b_proj": ("self_attn.q_b_proj",),
    "kv_a_proj_with_mqa": ("self_attn.kv_a_proj_with_mqa",),
    "kv_b_proj": ("self_attn.kv_b_proj",),
    "mlp.gate_proj": ("mlp.gate_proj",),
    "mlp.up_proj": ("mlp.up_proj",),
    "mlp.down_proj": ("mlp.down_proj",),
    "mlp.gate_up_proj": ("mlp.gate_up_proj",),
    "shared_experts.gate_proj": ("mlp.shared_experts.gate_proj",),
    "shared_experts.up_proj": ("mlp.shared_experts.up_proj",),
    "shared_experts.down_proj": ("mlp.shared_experts.down_proj",),
    "experts.gate_proj": ("mlp.experts.0.gate_proj", "block_sparse_moe.experts.0.w1"),
    "experts.up_proj": ("mlp.experts.0.up_proj", "block_sparse_moe.experts.0.w3"),
    "experts.down_proj": ("mlp.experts.0.down_proj", "block_sparse_moe.experts.0.w2"),
}


@dataclass(frozen=True)
class WeightFormat:
    """How the quantized linears of one checkpoint are stored and served."""

    method: str
    """The request's method (``prequantized`` when the config carries a quantization_config)."""
    layout: Layout
    bits: int
    group_size: int | None
    """Input elements per scale; None = one scale per output channel (or per tensor)."""
    symmetric: bool
    checkpoint_dtype_bytes: int
    """Bytes of every unquantized tensor in the checkpoint (and of scales stored in the model dtype)."""
    act_order: bool = False
    """The checkpoint carries g_idx (GPTQ desc_act / actorder=group)."""
    static_fp8: bool = False
    ignore: tuple[str, ...] = ()
    vllm_quantization: str | None = None
    """The ``--quantization`` value vLLM needs, or None where vLLM reads it from the config."""
    checkpoint_dtype: str | None = None
    """The float dtype of the checkpoint's unquantized tensors as written in the config (``float16`` for
    AutoAWQ), which vLLM's ``--dtype auto`` follows."""

    @property
    def quantized(self) -> bool:
        return self.layout != "dense"

    @property
    def marlin_like(self) -> bool:
        """Weight-only int4/int8 served by vLLM's Marlin/Machete kernels (tile constraints on shards)."""
        return self.layout in ("autoawq", "autogptq", "ct-pack")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def resolve_format(
    arch: Architecture,
    *,
    quantization: str,
    bits: int | None = None,
    group_size: int | None = None,
    symmetric: bool | None = None,
    backend: str = DEFAULT_BACKEND,
) -> WeightFormat:
    """The format the served checkpoint will have: the config's own quantization_config wins; otherwise
    what ``backend`` writes for the method (llm-compressor: compressed-tensors; AutoAWQ and GPTQModel's
    awq: the AutoAWQ GEMM layout; AutoGPTQ and GPTQModel's gptq: the GPTQ layout)."""
    ckpt = DTYPE_BYTES[arch.torch_dtype]
    if arch.quantization_config is not None:
        return _from_quantization_config(arch.quantization_config, ckpt)
    if quantization == "prequantized":
        raise PlanningError(
            "quantization 'prequantized' needs a quantization_config in config.json; none was found",
            field="quantization",
        )
    if quantization not in METHODS:
        raise PlanningError(
            f"quantization {quantization!r} is not supported; supported: {', '.join(METHODS)}",
            field="quantization",
        )
    if group_size is not None and group_size != -1 and group_size < 1:
        raise PlanningError(
            f"group_size must be a positive integer or -1, got {group_size}", field="group_size"
        )
    group = None if group_size == -1 else group_size
    if quantization == "none":
        return WeightFormat("none", "dense", 16, None, True, ckpt)
    if quantization in ("awq", "gptq"):
        b = 4 if bits is None else bits
        if b not in (4, 8):
            raise PlanningError(f"bits must be 4 or 8 for {quantization}, got {b}", field="bits")
        # Every backend's defaults: GPTQ is W4A16 (symmetric), AWQ is W4A16_ASYM (zero points).
        sym = (quantization == "gptq") if symmetric is None else symmetric
        group = 128 if group_size is None else group
        if backend not in BACKENDS:
            raise PlanningError(
                f"backend {backend!r} is not supported; supported: {', '.join(BACKENDS)}", field="backend"
            )
        written = output_format(backend, quantization)
        if written == "compressed-tensors":
            return WeightFormat(quantization, "ct-pack", b, group, sym, ckpt)
        # The native formats are served in float16, as a checkpoint that arrives with them (below).
        layout: Layout = "autoawq" if written == "awq" else "autogptq"
        return WeightFormat(quantization, layout, b, group, sym, ckpt, checkpoint_dtype="float16")
    if bits is not None and quantization != "bitsandbytes-nf4" and bits != {"nvfp4": 4}.get(quantization, 8):
        raise PlanningError(f"bits {bits} does not apply to quantization {quantization!r}", field="bits")
    if quantization == "w8a8":
        return WeightFormat("w8a8", "ct-int8", 8, None, True if symmetric is None else symmetric, ckpt)
    if quantization == "fp8":
        return WeightFormat("fp8", "ct-fp8", 8, None, True, ckpt, static_fp8=True)
    if quantization == "fp8-dynamic":
        return WeightFormat("fp8-dynamic", "ct-fp8", 8, None, True, ckpt)
    if quantization == "nvfp4":
        return WeightFormat("nvfp4", "ct-nvfp4", 4, 16, True, ckpt)
    return WeightFormat("bitsandbytes-nf4", "bnb-nf4", 4, 64, True, ckpt, vllm_quantization="bitsandbytes")


def _qc_int(qc: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = qc.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanningError(f"config.json key '{where}.{key}' must be an integer, got {value!r}")
    return value


def _qc_ignore(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
        raise PlanningError(f"config.json key '{where}' must be a list of strings, got {value!r}")
    return tuple(value)


def _from_quantization_config(qc: Mapping[str, Any], ckpt: int) -> WeightFormat:
    where = "quantization_config"
    if not isinstance(qc, Mapping):
        raise PlanningError(f"config.json key '{where}' must be an object")
    method = qc.get("quant_method")
    if method == "awq":
        bits = _qc_int(qc, "bits", _qc_int(qc, "w_bit", 4, where), where)
        group = _qc_int(qc, "group_size", _qc_int(qc, "q_group_size", 128, where), where)
        zero_point = qc.get("zero_point", True)
        return WeightFormat(
            "prequantized",
            "autoawq",
            bits,
            None if group == -1 else group,
            not bool(zero_point),
            ckpt,
            ignore=_qc_ignore(qc.get("modules_to_not_convert"), f"{where}.modules_to_not_convert"),
            checkpoint_dtype="float16",
        )
    if method == "gptq":
        bits = _qc_int(qc, "bits", 4, where)
        group = _qc_int(qc, "group_size", 128, where)
        return WeightFormat(
            "prequantized",
            "autogptq",
            bits,
            None if group == -1 else group,
            bool(qc.get("sym", True)),
            ckpt,
            act_order=bool(qc.get("desc_act", False)),
            ignore=_qc_ignore(qc.get("modules_to_not_convert"), f"{where}.modules_to_not_convert"),
            checkpoint_dtype="float16",
        )
    if method == "fp8":
        block = qc.get("weight_block_size")
        if block is not None:
            return WeightFormat("prequantized", "fp8-block", 8, 128, True, ckpt)
        return WeightFormat(
            "prequantized", "ct-fp8", 8, None, True, ckpt, static_fp8=qc.get("activation_scheme") == "static"
        )
    if method == "bitsandbytes":
        if not qc.get("load_in_4bit", False):
            raise PlanningError("quantization_config: only 4-bit bitsandbytes checkpoints are supported")
        return WeightFormat("prequantized", "bnb-nf4-prequantized", 4, 64, True, ckpt)
    if method == "compressed-tensors":
        return _from_compressed_tensors(qc, ckpt)
    raise PlanningError(
        f"quantization_config.quant_method {method!r} is not supported; "
        "supported: awq, gptq, compressed-tensors, fp8, bitsandbytes"
    )


def _from_compressed_tensors(qc: Mapping[str, Any], ckpt: int) -> WeightFormat:
    where = "quantization_config.config_groups"
    groups = qc.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise PlanningError(f"config.json key '{where}' is missing or empty")
    group = next(iter(groups.values()))
    if not isinstance(group, Mapping) or not isinstance(group.get("weights"), Mapping):
        raise PlanningError(f"config.json key '{where}.*.weights' is missing")
    weights: Mapping[str, Any] = group["weights"]
    inputs = group.get("input_activations")
    bits = _qc_int(weights, "num_bits", 8, f"{where}.*.weights")
    kind = weights.get("type", "int")
    strategy = weights.get("strategy", "tensor")
    gsize = weights.get("group_size") if strategy in ("group", "tensor_group") else None
    if gsize is not None and (isinstance(gsize, bool) or not isinstance(gsize, int)):
        raise PlanningError(
            f"config.json key '{where}.*.weights.group_size' must be an integer, got {gsize!r}"
        )
    symmetric = bool(weights.get("symmetric", True))
    ignore = _qc_ignore(qc.get("ignore"), "quantization_config.ignore")
    act_order = weights.get("actorder") == "group"
    if kind == "float" and bits == 4:
        return WeightFormat("prequantized", "ct-nvfp4", 4, gsize or 16, True, ckpt, ignore=ignore)
    if kind == "float":
        static = isinstance(inputs, Mapping) and not inputs.get("dynamic", True)
        if strategy == "block":
            return WeightFormat("prequantized", "fp8-block", 8, 128, True, ckpt, ignore=ignore)
        return WeightFormat(
            "prequantized",
            "ct-fp8",
            8,
            None,
            True,
            ckpt,
            static_fp8=static and strategy == "tensor",
            ignore=ignore,
        )
    if kind != "int":
        raise PlanningError(f"config.json key '{where}.*.weights.type' is {kind!r}; supported: int, float")
    if inputs is not None:
        return WeightFormat("prequantized", "ct-int8", bits, None, symmetric, ckpt, ignore=ignore)
    return WeightFormat(
        "prequantized", "ct-pack", bits, gsize, symmetric, ckpt, act_order=act_order, ignore=ignore
    )


def _ignored(linear: Linear, patterns: Iterable[str]) -> bool:
    paths = [f"model.layers.0.{p}" for p in _MODULE_PATHS.get(linear.name, (linear.name,))]
    leaf = linear.name.rsplit(".", 1)[-1]
    for pattern in patterns:
        if pattern.startswith("re:"):
            if any(re.match(pattern[3:], p) for p in paths):
                return True
        elif any(
            p.endswith(pattern) or (pattern.endswith(leaf) and pattern.split(".")[-2:] == p.split(".")[-2:])
            for p in paths
        ):
            return True
    return False


def is_quantized(linear: Linear, fmt: WeightFormat) -> bool:
    return fmt.quantized and linear.quantizable and not _ignored(linear, fmt.ignore)


@dataclass(frozen=True)
class LinearBytes:
    """Bytes of one [out, in] linear: on disk and in vLLM's memory (whole, before sharding)."""

    checkpoint: int
    resident: int


def linear_bytes(linear: Linear, fmt: WeightFormat, *, quantized: bool) -> LinearBytes:
    """Bytes of all ``linear.count`` instances."""
    one = _one_linear_bytes(linear, fmt, quantized=quantized)
    return LinearBytes(one.checkpoint * linear.count, one.resident * linear.count)


def _one_linear_bytes(linear: Linear, fmt: WeightFormat, *, quantized: bool) -> LinearBytes:
    k, n = linear.in_features, linear.out_features
    ckpt_b = fmt.checkpoint_dtype_bytes
    bias_ckpt = n * ckpt_b if linear.bias else 0
    bias_res = n * 2 if linear.bias else 0
    if not quantized:
        return LinearBytes(n * k * ckpt_b + bias_ckpt, n * k * 2 + bias_res)
    bits = fmt.bits
    groups = 1 if fmt.group_size is None else _ceil_div(k, fmt.group_size)
    packed = n * k * bits // 8
    zeros_packed = groups * _ceil_div(n * bits, 32) * 4
    layout = fmt.layout
    if layout == "autoawq":
        ckpt = packed + zeros_packed + groups * n * 2
        # vLLM's mixed-precision GEMMs on Hopper hold AWQ zero points as one 16-bit value per group and
        # output channel for dense layers (the fused-MoE Marlin kernel keeps them packed). Counting them
        # that way is the conservative side and matches the measured Llama-3.1-8B AWQ footprint.
        zeros_res = zeros_packed if linear.expert else groups * n * 2
        res = packed + groups * n * 2 + (0 if fmt.symmetric else zeros_res)
        return LinearBytes(ckpt + bias_ckpt, res + bias_res)
    if layout == "autogptq":
        ckpt = packed + zeros_packed + groups * n * 2 + k * 4
        res = (
            packed + groups * n * 2 + (0 if fmt.symmetric else zeros_packed) + (8 * k if fmt.act_order else 0)
        )
        return LinearBytes(ckpt + bias_ckpt, res + bias_res)
    if layout == "ct-pack":
        rows_packed = _ceil_div(k * bits, 32) * 4 * n
        scales = groups * n * ckpt_b
        zp = 0 if fmt.symmetric else _ceil_div(n * bits, 32) * 4 * groups
        g_idx = 4 * k if fmt.act_order else 0
        ckpt = rows_packed + scales + zp + g_idx + 16  # + weight_shape int64[2]
        # Zero points held as 16-bit per group for dense layers, as for AutoAWQ above.
        zp_res = 0 if fmt.symmetric else (zp if linear.expert else groups * n * 2)
        res = rows_packed + groups * n * 2 + zp_res + (8 * k if fmt.act_order else 0)
        return LinearBytes(ckpt + bias_ckpt, res + bias_res)
    if layout == "ct-int8":
        zp = 0 if fmt.symmetric else n
        return LinearBytes(n * k + n * ckpt_b + zp + bias_ckpt, n * k + n * 4 + zp + bias_res)
    if layout == "ct-fp8":
        if fmt.static_fp8:
            # One weight scale and one input scale per tensor, in the model dtype on disk, float32 in vLLM.
            return LinearBytes(n * k + 2 * ckpt_b + bias_ckpt, n * k + 8 + bias_res)
        return LinearBytes(n * k + n * ckpt_b + bias_ckpt, n * k + n * 4 + bias_res)
    if layout == "ct-nvfp4":
        scales = n * _ceil_div(k, 16)
        return LinearBytes(n * k // 2 + scales + 8 + bias_ckpt, n * k // 2 + scales + 8 + bias_res)
    if layout == "fp8-block":
        scales = _ceil_div(n, 128) * _ceil_div(k, 128) * 4
        return LinearBytes(n * k + scales + bias_ckpt, n * k + scales + bias_res)
    absmax = _ceil_div(n * k, 64) * 4
    if layout == "bnb-nf4":
        return LinearBytes(n * k * ckpt_b + bias_ckpt, n * k // 2 + absmax + bias_res)
    return LinearBytes(n * k // 2 + absmax + bias_ckpt, n * k // 2 + absmax + bias_res)


def _padded_vocab(vocab: int) -> int:
    return _ceil_div(vocab, VOCAB_PADDING) * VOCAB_PADDING


def _tensor_bytes(tensor: Tensor, dtype_bytes: int) -> int:
    return tensor.params * (4 if tensor.float32 else dtype_bytes)


def checkpoint_bytes(arch: Architecture, fmt: WeightFormat) -> int:
    """Tensor bytes of the safetensors files (a tied lm_head is stored once)."""
    total = sum(_tensor_bytes(t, fmt.checkpoint_dtype_bytes) for t in arch.tensors)
    for linear in arch.linears:
        total += linear_bytes(linear, fmt, quantized=is_quantized(linear, fmt)).checkpoint
    return total


def _rotary_cache_bytes(arch: Architecture) -> int:
    # vLLM keeps one cos/sin cache [max_position, rotary_dim] per distinct RoPE (Gemma 3 has a local and a
    # global one); counted in float32, the larger of the dtypes vLLM builds it in.
    ropes = 2 if arch.model_type in ("gemma3", "gemma3_text") else 1
    return ropes * arch.max_position_embeddings * arch.rotary_dim * 4


def resident_bytes_per_gpu(arch: Architecture, fmt: WeightFormat, tp: int) -> int:
    """Bytes vLLM holds for the weights on one tensor-parallel rank (what it logs as model loading)."""
    total = _rotary_cache_bytes(arch)
    for tensor in arch.tensors:
        if tensor.sharding == "vocab":
            rows = _ceil_div(_padded_vocab(arch.vocab_size), tp)
            total += rows * tensor.numel // arch.vocab_size * 2
        else:
            total += _tensor_bytes(tensor, 2)
    for linear in arch.linears:
        size = linear_bytes(linear, fmt, quantized=is_quantized(linear, fmt)).resident
        if linear.sharding == "replicated":
            total += size
        elif linear.sharding == "vocab":
            total += _ceil_div(_padded_vocab(arch.vocab_size), tp) * linear.in_features * 2
        else:
            total += _ceil_div(size, tp)
    return total


def tp_problems(arch: Architecture, fmt: WeightFormat, tp: int) -> list[str]:
    """Why ``tp`` cannot shard this model in this format (empty when it can)."""
    problems: list[str] = []
    heads, kv_heads = arch.num_attention_heads, arch.num_kv_heads
    if heads % tp:
        problems.append(f"{heads} attention heads are not divisible by tensor-parallel-size {tp}")
    if not arch.uses_mla and (kv_heads % tp if tp <= kv_heads else tp % kv_heads):
        problems.append(f"{kv_heads} KV heads cannot be split or replicated evenly over {tp} GPUs")
    for linear in arch.linears:
        if linear.sharding not in ("row", "column"):
            continue
        dim = linear.in_features if linear.sharding == "row" else linear.out_features
        if dim % tp:
            problems.append(f"{linear.name} ({dim}) is not divisible by tensor-parallel-size {tp}")
            continue
        shard = dim // tp
        if not is_quantized(linear, fmt):
            continue
        if (
            linear.sharding == "row"
            and fmt.group_size is not None
            and fmt.layout != "bnb-nf4"
            and shard % fmt.group_size
        ):
            problems.append(
                f"{linear.name} input shard {shard} is not a multiple of group size {fmt.group_size} at "
                f"tensor-parallel-size {tp}"
            )
        elif fmt.marlin_like and not linear.expert and shard % 64:
            problems.append(
                f"{linear.name} shard {shard} is not a multiple of 64 (Marlin tile) at tensor-parallel-size {tp}"
            )
    return problems
