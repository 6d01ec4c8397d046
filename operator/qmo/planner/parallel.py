"""Pipeline parallelism across nodes: which decoder layers, embeddings and heads each stage holds.

When no tensor-parallel size inside one node fits, the planner follows vLLM's guidance for multi-node
serving (``docs/serving/parallelism_scaling.md``): tensor parallelism inside a node, pipeline parallelism
across nodes, one stage per node. Every stage's workers load only their share of the model and profile
their own memory; the KV pool is then cut to the smallest number of blocks any worker has room for
(``get_kv_cache_configs`` in vllm/v1/core/kv_cache_utils.py), so the most constrained stage decides the
capacity. Followed from vLLM 0.25.1:

- decoder layers per stage: ``get_pp_indices`` (vllm/distributed/utils.py), used by ``make_layers``
  (vllm/model_executor/models/utils.py). The ``VLLM_PP_LAYER_PARTITION`` override is not modelled;
- embeddings, final norm and lm_head: each model's constructor (``LlamaModel``, ``Qwen2Model``,
  ``DeepseekV2Model`` place them by ``get_pp_group().is_first_rank`` / ``is_last_rank``; ``MixtralModel``,
  ``Qwen3MoeModel``, ``Gemma2Model`` and ``Gemma3Model`` build them on every stage);
- the per-stage overheads (sampler on the last stage, the receive buffer of later stages): overheads.py;
- the per-stage KV layout: ``kvcache.stage_kv_layout``.

The search (plan.py) weighs candidates as a ``Setting``: one ``StageMemory`` per stage (a single-node
candidate has one), combined as vLLM combines its workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from qmo.planner.architecture import Architecture, Linear, Tensor
from qmo.planner.kvcache import KVCapacity
from qmo.planner.overheads import GIB

MAX_PIPELINE_STAGES = 16
"""The deepest pipeline a refusal looks for when it says how many nodes would fit."""

# Model types whose vLLM implementation builds the embedding, final norm and lm_head on every stage rather
# than on the first / last one only (MixtralModel, Qwen3MoeModel, Gemma2Model, Gemma3Model and their
# ForCausalLM wrappers in vLLM 0.25.1 check no pipeline rank for them).
_HEADS_ON_EVERY_STAGE = frozenset({"mixtral", "qwen3_moe", "gemma2", "gemma3", "gemma3_text"})


def pipeline_layers(num_layers: int, pipeline_size: int) -> tuple[range, ...]:
    """The decoder layers of each stage, as vLLM's ``get_pp_indices`` splits them.

    Every stage gets ``num_layers // pipeline_size``; the remainder goes one layer each to the stages before
    the last, counting back from the second-to-last (``partitions[-i] += 1`` for i = 2 .. remainder + 1):
    the last stage carries the final norm and lm_head, and vLLM keeps it a layer lighter."""
    partitions = [num_layers // pipeline_size] * pipeline_size
    for i in range(2, num_layers % pipeline_size + 2):
        partitions[-i] += 1
    stages: list[range] = []
    start = 0
    for size in partitions:
        stages.append(range(start, start + size))
        start += size
    return tuple(stages)


def _outside_layers_on_stage(name: str, arch: Architecture, *, first: bool, last: bool) -> bool:
    """Whether a stage holds a part that lives outside the decoder layers."""
    if arch.model_type in _HEADS_ON_EVERY_STAGE:
        return True
    if name == "embed_tokens":
        # LlamaModel / Qwen2Model also build it on the last stage when lm_head is tied to it.
        return first or (last and arch.tie_word_embeddings)
    if name in ("norm", "lm_head"):
        return last
    return True  # a vision tower and its projector (Gemma3ForConditionalGeneration) are on every stage


def _share(count: int, held: frozenset[int], layers: range) -> int:
    """The instances of a group spread evenly over ``held`` layers that fall in ``layers``."""
    return count // len(held) * sum(1 for index in held if index in layers)


def stage_architecture(arch: Architecture, layers: range, *, first: bool, last: bool) -> Architecture:
    """The part of ``arch`` one pipeline stage holds: its decoder layers (weights and attention) and the
    embeddings and heads vLLM builds on it. A single stage (first and last, every layer) is ``arch`` itself."""
    if first and last and layers == range(arch.num_layers):
        return arch

    def kept_linear(linear: Linear) -> Linear | None:
        if linear.layers is None:
            return linear if _outside_layers_on_stage(linear.name, arch, first=first, last=last) else None
        count = _share(linear.count, linear.layers, layers)
        return (
            dataclasses.replace(linear, count=count, layers=linear.layers & frozenset(layers))
            if count
            else None
        )

    def kept_tensor(tensor: Tensor) -> Tensor | None:
        if tensor.layers is None:
            return tensor if _outside_layers_on_stage(tensor.name, arch, first=first, last=last) else None
        count = _share(tensor.count, tensor.layers, layers)
        return (
            dataclasses.replace(tensor, count=count, layers=tensor.layers & frozenset(layers))
            if count
            else None
        )

    return dataclasses.replace(
        arch,
        linears=tuple(kept for kept in map(kept_linear, arch.linears) if kept is not None),
        tensors=tuple(kept for kept in map(kept_tensor, arch.tensors) if kept is not None),
        attention=arch.attention[layers.start : layers.stop],
    )


@dataclass(frozen=True)
class PipelineStage:
    """One stage (one node) of a multi-node plan: its decoder layers and the memory of each of its GPUs
    (GiB = 2**30 bytes)."""

    rank: int
    first_layer: int
    num_layers: int
    weights_gib_per_gpu: float
    activation_gib_per_gpu: float
    non_torch_gib_per_gpu: float
    cudagraph_gib_per_gpu: float
    kv_cache_gib_per_gpu: float
    """The pool this stage allocates: the plan's blocks (the fewest any stage has room for) at its layers."""
    kv_cache_bytes_per_gpu: int
    kv_cache_blocks_room: int
    """Blocks this stage alone would have room for; the smallest of these is the plan's."""
    overhead_terms_gib: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def layers(self) -> str:
        """``0-62``: the decoder layers, both ends included."""
        return f"{self.first_layer}-{self.first_layer + self.num_layers - 1}"


@dataclass(frozen=True)
class StageMemory:
    """One GPU of one pipeline stage (a single-node plan has one stage) with everything computed for it."""

    rank: int
    layers: range
    weights: int
    activation: int
    non_torch: int
    cudagraph: int
    residual: int
    terms: tuple[tuple[str, int], ...]
    budget: int
    capacity: KVCapacity
    """What this stage alone has room for."""
    kv_bytes_per_token: int
    block_bytes: int

    @property
    def non_kv(self) -> int:
        return self.weights + self.activation + self.non_torch + self.cudagraph + self.residual

    def needed_bytes(self, requests: int, blocks_per_request: int) -> int:
        return self.non_kv + (requests * blocks_per_request + 1) * self.block_bytes


@dataclass(frozen=True)
class Setting:
    """One candidate (tensor-parallel size, pipeline stages, KV dtype) with everything computed for it.

    Per-GPU terms are the most any stage holds (a single stage's own); the KV capacity is the most
    constrained stage's: vLLM gives every stage the fewest blocks any of them has room for
    (``get_kv_cache_configs``)."""

    tp: int
    pp: int
    kv_cache_dtype: str
    dtype: str
    stages: tuple[StageMemory, ...]
    blocks_per_request: int

    @property
    def constraining(self) -> StageMemory:
        return min(self.stages, key=lambda stage: stage.capacity.num_blocks)

    @property
    def blocks(self) -> int:
        return self.constraining.capacity.num_blocks

    @property
    def tokens(self) -> int:
        return self.constraining.capacity.tokens

    @property
    def max_concurrency(self) -> float:
        return self.constraining.capacity.max_concurrency

    @property
    def usable_requests(self) -> int:
        return self.constraining.capacity.usable_requests

    @property
    def weights(self) -> int:
        return max(stage.weights for stage in self.stages)

    @property
    def activation(self) -> int:
        return max(stage.activation for stage in self.stages)

    @property
    def non_torch(self) -> int:
        return max(stage.non_torch for stage in self.stages)

    @property
    def cudagraph(self) -> int:
        return max(stage.cudagraph for stage in self.stages)

    @property
    def residual(self) -> int:
        return max(stage.residual for stage in self.stages)

    @property
    def budget(self) -> int:
        return self.stages[0].budget

    @property
    def kv_bytes(self) -> int:
        """The largest pool a GPU allocates: the plan's blocks at the stage whose blocks are largest."""
        return max(self.blocks * stage.block_bytes for stage in self.stages)

    @property
    def kv_bytes_per_token(self) -> int:
        return max(stage.kv_bytes_per_token for stage in self.stages)

    @property
    def block_bytes(self) -> int:
        return self.constraining.block_bytes

    @property
    def terms(self) -> tuple[tuple[str, int], ...]:
        names = dict.fromkeys(name for stage in self.stages for name, _ in stage.terms)
        return tuple((name, max(dict(stage.terms).get(name, 0) for stage in self.stages)) for name in names)

    def neediest(self, requests: int) -> StageMemory:
        """The stage that needs the most memory for ``requests`` sequences."""
        return max(self.stages, key=lambda stage: stage.needed_bytes(requests, self.blocks_per_request))


def _gib(value: int) -> float:
    return round(value / GIB, 4)


def pipeline_stages(s: Setting) -> tuple[PipelineStage, ...]:
    """Each stage's figures for the plan; every stage's pool holds the plan's (the fewest) blocks."""
    return tuple(
        PipelineStage(
            rank=stage.rank,
            first_layer=stage.layers.start,
            num_layers=len(stage.layers),
            weights_gib_per_gpu=_gib(stage.weights),
            activation_gib_per_gpu=_gib(stage.activation),
            non_torch_gib_per_gpu=_gib(stage.non_torch),
            cudagraph_gib_per_gpu=_gib(stage.cudagraph),
            kv_cache_gib_per_gpu=_gib(s.blocks * stage.block_bytes),
            kv_cache_bytes_per_gpu=s.blocks * stage.block_bytes,
            kv_cache_blocks_room=stage.capacity.num_blocks,
            overhead_terms_gib={name: _gib(value) for name, value in stage.terms},
        )
        for stage in s.stages
    )
