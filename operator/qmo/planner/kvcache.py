"""KV-cache bytes per token and vLLM's block accounting, including its hybrid allocator.

vLLM (v1) gives every attention layer a page of ``block_size`` tokens. Layers of one kind (full attention,
or sliding window of one width) form KV-cache groups of equal size; the groups share ``group_size``
memory pools, so ``num_blocks = available // (page_bytes * group_size)``. It reports ``num_blocks //
num_groups * block_size`` tokens, and a request needs ``cdiv(max_model_len, block)`` blocks in a full
group but only ``cdiv(min(window - 1 + max_num_batched_tokens, max_model_len), block) + 1`` in a sliding
one. Block 0 is the allocator's null block and never holds data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from qmo.planner.architecture import Architecture, Attention

BLOCK_SIZE = 16
KV_CACHE_DTYPES = ("auto", "fp8", "bfloat16", "float16")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def kv_heads_per_gpu(num_kv_heads: int, tp: int) -> int:
    """KV heads one rank stores: split when tp <= heads, else each head replicated on tp/heads ranks."""
    return max(1, num_kv_heads // tp)


def layer_bytes_per_token(layer: Attention, tp: int, dtype_bytes: int) -> int:
    if layer.kind == "mla":
        # MLA caches the compressed latent (kv_lora_rank) plus the shared RoPE key: one "head", on every rank.
        return layer.head_dim_k * dtype_bytes
    return kv_heads_per_gpu(layer.num_kv_heads, tp) * (layer.head_dim_k + layer.head_dim_v) * dtype_bytes


def kv_bytes_per_token(arch: Architecture, tp: int, dtype_bytes: int) -> int:
    """Sum over attention layers of the bytes one token occupies on one rank."""
    return sum(layer_bytes_per_token(layer, tp, dtype_bytes) for layer in arch.attention)


@dataclass(frozen=True)
class KVGroup:
    kind: str
    sliding_window: int | None
    layers: int


@dataclass(frozen=True)
class KVLayout:
    """How vLLM lays the KV cache of one rank out in blocks."""

    page_bytes: int
    """Bytes of one block of one layer."""
    group_size: int
    groups: tuple[KVGroup, ...]
    kv_bytes_per_token: int

    @property
    def block_bytes(self) -> int:
        """Memory one block id costs across the shared pools."""
        return self.page_bytes * self.group_size

    def blocks_per_request(self, max_model_len: int, max_num_batched_tokens: int) -> int:
        """Block ids one request of max_model_len tokens holds at its peak (vLLM's max memory usage)."""
        total = 0
        for group in self.groups:
            if group.kind == "sliding" and group.sliding_window is not None:
                tokens = min(group.sliding_window - 1 + max_num_batched_tokens, max_model_len)
                total += _ceil_div(tokens, BLOCK_SIZE) + 1
            else:
                total += _ceil_div(max_model_len, BLOCK_SIZE)
        return total


def kv_layout(arch: Architecture, tp: int, dtype_bytes: int) -> KVLayout:
    per_layer = {layer_bytes_per_token(layer, tp, dtype_bytes) for layer in arch.attention}
    page = max(per_layer) * BLOCK_SIZE
    kinds = Counter(
        ("sliding", layer.sliding_window) if layer.kind == "sliding" else ("full", None)
        for layer in arch.attention
    )
    counts = list(kinds.values())
    group_size = min(counts)
    if max(counts) < group_size * 1.5:
        group_size = max(counts)
    groups: list[KVGroup] = []
    for (kind, window), layers in kinds.items():
        for _ in range(_ceil_div(layers, group_size)):
            groups.append(KVGroup(kind, window, group_size))
    return KVLayout(page, group_size, tuple(groups), kv_bytes_per_token(arch, tp, dtype_bytes))


def _group_members(arch: Architecture) -> list[tuple[KVGroup, tuple[int, ...]]]:
    """The model-wide KV-cache groups and the layer indices in each, as vLLM forms them
    (``_get_kv_cache_groups_uniform_page_size``): layers of one kind, in model order, dealt round-robin over
    that kind's groups (``layers[i::num_groups]``), so every pipeline stage gets a share of each group."""
    by_kind: dict[tuple[str, int | None], list[int]] = {}
    for index, layer in enumerate(arch.attention):
        spec = ("sliding", layer.sliding_window) if layer.kind == "sliding" else ("full", None)
        by_kind.setdefault(spec, []).append(index)
    counts = [len(indices) for indices in by_kind.values()]
    group_size = min(counts)
    if max(counts) < group_size * 1.5:
        group_size = max(counts)
    members: list[tuple[KVGroup, tuple[int, ...]]] = []
    for (kind, window), indices in by_kind.items():
        num_groups = _ceil_div(len(indices), group_size)
        for i in range(num_groups):
            members.append((KVGroup(kind, window, group_size), tuple(indices[i::num_groups])))
    return members


def stage_kv_layout(arch: Architecture, tp: int, dtype_bytes: int, layers: range) -> KVLayout:
    """The KV layout of one pipeline stage that holds decoder ``layers`` (vLLM's ``get_kv_cache_configs``).

    vLLM forms the groups over the whole model and projects them onto each worker
    (``_project_kv_cache_groups_to_worker``); a worker has as many pools as its largest projected group
    (``get_kv_cache_config_from_groups``). The groups, and so the blocks a request needs and the tokens a
    block id stands for, stay the model's; the page size is the model's too (one spec per layer kind)."""
    members = _group_members(arch)
    stage_group_size = max(sum(1 for index in indices if index in layers) for _, indices in members)
    per_layer = {layer_bytes_per_token(layer, tp, dtype_bytes) for layer in arch.attention}
    stage_bytes_per_token = sum(
        layer_bytes_per_token(arch.attention[index], tp, dtype_bytes) for index in layers
    )
    return KVLayout(
        max(per_layer) * BLOCK_SIZE,
        stage_group_size,
        tuple(group for group, _ in members),
        stage_bytes_per_token,
    )


@dataclass(frozen=True)
class KVCapacity:
    num_blocks: int
    tokens: int
    """Tokens vLLM reports ("GPU KV cache size")."""
    max_concurrency: float
    """Requests of max_model_len tokens that fit at once, as vLLM reports it."""
    usable_requests: int
    """Whole requests of max_model_len that fit next to the null block."""


def kv_capacity(
    layout: KVLayout, available_bytes: int, max_model_len: int, max_num_batched_tokens: int
) -> KVCapacity:
    blocks = max(0, available_bytes // layout.block_bytes)
    per_request = layout.blocks_per_request(max_model_len, max_num_batched_tokens)
    return KVCapacity(
        num_blocks=blocks,
        tokens=blocks // len(layout.groups) * BLOCK_SIZE,
        max_concurrency=blocks / per_request,
        usable_requests=max(0, blocks - 1) // per_request,
    )
