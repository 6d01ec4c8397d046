"""Pipeline parallelism across nodes: vLLM's layer split, what each stage holds, the most constrained stage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmo.planner import GPUSpec, PlanningError, PlanRequest, gpu_by_name, plan
from qmo.planner.architecture import parse_architecture
from qmo.planner.kvcache import kv_layout, stage_kv_layout
from qmo.planner.overheads import overheads
from qmo.planner.parallel import pipeline_layers, stage_architecture
from qmo.planner.weights import resident_bytes_per_gpu, resolve_format

CONFIGS = Path(__file__).parent / "configs"
H100 = gpu_by_name("h100-80gb")
GIB = 2**30


def load(name: str) -> dict[str, Any]:
    return json.loads((CONFIGS / f"{name}.json").read_text())


LLAMA_405B = load("llama-3.1-405b")
ALL_CONFIGS = sorted(path.stem for path in CONFIGS.glob("*.json"))


def sizes(num_layers: int, stages: int) -> list[int]:
    return [len(layers) for layers in pipeline_layers(num_layers, stages)]


# --- vLLM's get_pp_indices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_layers", "stages", "expected"),
    [
        (126, 2, [63, 63]),
        # 126 = 4 x 31 + 2: the remainder goes to the second-to-last stage, then the one before it.
        (126, 4, [31, 32, 32, 31]),
        (126, 5, [25, 25, 25, 26, 25]),
        (32, 3, [11, 11, 10]),
        (61, 4, [15, 15, 16, 15]),
        (63, 4, [16, 16, 16, 15]),  # remainder pp - 1: every stage but the last
        (80, 16, [5] * 16),
    ],
)
def test_layer_split_matches_vllm_get_pp_indices(num_layers: int, stages: int, expected: list[int]) -> None:
    assert sizes(num_layers, stages) == expected


def get_pp_indices(num_hidden_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    """vLLM 0.25.1's vllm/distributed/utils.py ``get_pp_indices`` without the env override, transcribed."""
    layers_per_partition = num_hidden_layers // pp_size
    partitions = [layers_per_partition for _ in range(pp_size)]
    if remaining_layers := num_hidden_layers % pp_size:
        for i in range(2, remaining_layers + 2):
            partitions[-i] += 1
    start_layer = sum(partitions[:pp_rank])
    return start_layer, start_layer + partitions[pp_rank]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=4096), st.integers(min_value=1, max_value=64))
def test_layer_split_covers_every_layer_once_in_near_equal_stages(num_layers: int, stages: int) -> None:
    stages = min(stages, num_layers)
    split = pipeline_layers(num_layers, stages)
    assert [index for layers in split for index in layers] == list(range(num_layers))
    lengths = [len(layers) for layers in split]
    assert max(lengths) - min(lengths) <= 1
    assert [(layers.start, layers.stop) for layers in split] == [
        get_pp_indices(num_layers, rank, stages) for rank in range(stages)
    ]


# --- what each stage holds ------------------------------------------------------------------------------


def test_embedding_on_the_first_stage_lm_head_and_norm_on_the_last() -> None:
    arch = parse_architecture(LLAMA_405B)
    first, middle, last = (
        stage_architecture(arch, layers, first=rank == 0, last=rank == 2)
        for rank, layers in enumerate(pipeline_layers(arch.num_layers, 3))
    )
    names = [{part.name for part in (*stage.linears, *stage.tensors)} for stage in (first, middle, last)]
    assert "embed_tokens" in names[0] and "embed_tokens" not in names[1] | names[2]
    assert {"lm_head", "norm"} <= names[2] and not {"lm_head", "norm"} & (names[0] | names[1])
    assert [len(stage.attention) for stage in (first, middle, last)] == [42, 42, 42]
    # Every decoder weight lands on exactly one stage.
    total = {linear.name: linear.count for linear in arch.linears}
    for name, count in total.items():
        if name != "lm_head":
            assert (
                sum(next(x.count for x in s.linears if x.name == name) for s in (first, middle, last))
                == count
            )


def test_families_that_build_heads_on_every_stage_keep_them_there() -> None:
    arch = parse_architecture(load("mixtral-8x7b"))
    middle = stage_architecture(arch, range(10, 20), first=False, last=False)
    assert {"embed_tokens", "norm"} <= {t.name for t in middle.tensors}
    assert "lm_head" in {linear.name for linear in middle.linears}


def test_a_tied_lm_head_is_the_embedding_on_the_last_stage() -> None:
    arch = parse_architecture(load("qwen2.5-7b-instruct") | {"tie_word_embeddings": True})
    last = stage_architecture(arch, range(14, 28), first=False, last=True)
    assert "embed_tokens" in {t.name for t in last.tensors}


def test_moe_layers_are_placed_by_index() -> None:
    # DeepSeek-V2-Lite: layer 0 is dense, 1..26 are MoE; the first stage holds the only dense MLP.
    arch = parse_architecture(load("deepseek-v2-lite"))
    first, second = (
        stage_architecture(arch, layers, first=rank == 0, last=rank == 1)
        for rank, layers in enumerate(pipeline_layers(arch.num_layers, 2))
    )
    assert "mlp.gate_proj" in {x.name for x in first.linears}
    assert "mlp.gate_proj" not in {x.name for x in second.linears}
    router = {
        s: next(x.count for x in stage.linears if x.name == "router")
        for s, stage in enumerate((first, second))
    }
    assert router == {0: 13, 1: 13}


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_a_single_stage_is_the_whole_model(name: str) -> None:
    arch = parse_architecture(load(name))
    assert stage_architecture(arch, range(arch.num_layers), first=True, last=True) is arch
    # The projected layout of all layers is the single-node layout (the groups vLLM forms don't depend on
    # which worker asks).
    assert stage_kv_layout(arch, 1, 2, range(arch.num_layers)) == kv_layout(arch, 1, 2)


def test_hybrid_groups_are_projected_onto_each_stage() -> None:
    # Gemma 3 27B: 52 sliding + 10 full layers, 7 groups of 10 layers model-wide (vLLM pads sliding ones).
    arch = parse_architecture(load("gemma-3-27b-it"))
    whole = kv_layout(arch, 1, 2)
    stages = [stage_kv_layout(arch, 1, 2, layers) for layers in pipeline_layers(arch.num_layers, 2)]
    assert all(layout.groups == whole.groups for layout in stages)  # a request needs the same blocks
    assert [layout.group_size for layout in stages] == [5, 5]  # round-robin groups split evenly
    assert sum(layout.kv_bytes_per_token for layout in stages) == whole.kv_bytes_per_token


def test_only_the_last_stage_samples_and_later_stages_receive_hidden_states() -> None:
    arch = parse_architecture(LLAMA_405B)
    shape = {"tp": 8, "max_num_batched_tokens": 8192, "max_num_seqs": 256}
    single = overheads(arch, **shape)
    first, last = (overheads(arch, **shape, pipeline_rank=rank, pipeline_size=2) for rank in (0, 1))
    assert first.sampler == 0 and last.sampler == single.sampler
    assert first.stage_input == 0 and last.stage_input == 2 * 8192 * 16384 * 2
    assert first.forward == last.forward == single.forward and first.cudagraph == single.cudagraph
    # Unsharded, 405B's lm_head (3.9 GiB) is above the calibrated floor: only the last stage runs it.
    unsharded = {**shape, "tp": 1}
    floors = [overheads(arch, **unsharded, pipeline_rank=rank, pipeline_size=2).floor for rank in (0, 1)]
    assert floors[0] < floors[1] == overheads(arch, **unsharded).floor


# --- the plan -------------------------------------------------------------------------------------------


def test_llama_405b_bf16_on_two_h100_nodes_is_tp8_by_pp2() -> None:
    result = plan(LLAMA_405B, PlanRequest(max_nodes=2), H100)
    assert result.fits
    assert (result.tensor_parallel_size, result.pipeline_parallel_size, result.gpus) == (8, 2, 16)
    assert result.kv_cache_dtype == "auto" and result.max_model_len == 131072
    assert "--pipeline-parallel-size=2" in result.vllm_args
    assert result.vllm_args[:2] == ("--tensor-parallel-size=8", "--pipeline-parallel-size=2")
    assert [(s.first_layer, s.num_layers) for s in result.pipeline_stages] == [(0, 63), (63, 63)]
    # Per-GPU weights are the most loaded stage's: about a sixteenth of 405B bf16.
    assert result.weights_gib_per_gpu == max(s.weights_gib_per_gpu for s in result.pipeline_stages)
    assert 46 < result.weights_gib_per_gpu < 48
    # The last stage (sampler, receive buffer) has room for the fewest blocks: vLLM gives every stage those.
    rooms = [s.kv_cache_blocks_room for s in result.pipeline_stages]
    assert result.kv_cache_blocks == min(rooms) == rooms[1] < rooms[0]
    assert result.kv_cache_tokens == result.kv_cache_blocks * 16
    for stage in result.pipeline_stages:
        used = (
            stage.weights_gib_per_gpu
            + stage.activation_gib_per_gpu
            + stage.non_torch_gib_per_gpu
            + stage.cudagraph_gib_per_gpu
            + stage.kv_cache_gib_per_gpu
        )
        assert used <= result.budget_gib_per_gpu + 1e-3


def test_llama_405b_on_one_node_is_refused_naming_the_nodes_it_needs() -> None:
    result = plan(LLAMA_405B, PlanRequest(), H100)
    assert not result.fits and result.pipeline_parallel_size == 1 and result.pipeline_stages == ()
    assert result.reason is not None
    assert (
        "needs 2 nodes of 8x h100-80gb (tensor-parallel-size 8 x pipeline-parallel-size 2), max_nodes allows 1"
        in (result.reason)
    )


def test_too_few_nodes_is_refused_with_the_deepest_pipeline_allowed() -> None:
    request = PlanRequest(max_nodes=2, max_model_len=131072, concurrency=48)
    result = plan(LLAMA_405B, request, H100)
    assert not result.fits and result.pipeline_parallel_size == 2 and result.reason is not None
    assert "tensor-parallel-size 8 x pipeline-parallel-size 2 (stage 1, layers 63-125)" in result.reason
    assert "nodes of 8x h100-80gb" in result.reason and "max_nodes allows 2" in result.reason


def test_an_explicit_pipeline_beyond_max_nodes_is_refused_exactly() -> None:
    with pytest.raises(PlanningError, match="needs 3 nodes of 8x h100-80gb, max_nodes allows 2") as error:
        plan(LLAMA_405B, PlanRequest(max_nodes=2, pipeline_parallel_size=3), H100)
    assert error.value.field == "pipeline_parallel_size"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (PlanRequest(max_nodes=0), "max_nodes"),
        (PlanRequest(pipeline_parallel_size=0), "pipeline_parallel_size"),
        (PlanRequest(max_nodes=200, pipeline_parallel_size=127), "pipeline_parallel_size"),
    ],
)
def test_bad_pipeline_requests_name_their_field(request_: PlanRequest, field: str) -> None:
    with pytest.raises(PlanningError) as error:
        plan(LLAMA_405B, request_, H100)
    assert error.value.field == field


def test_an_explicit_pipeline_is_planned_as_asked() -> None:
    result = plan(load("llama-3.1-8b"), PlanRequest(max_nodes=4, pipeline_parallel_size=4), H100)
    assert result.fits and (result.tensor_parallel_size, result.pipeline_parallel_size) == (8, 4)
    assert [s.num_layers for s in result.pipeline_stages] == [8, 8, 8, 8]


def test_a_model_that_fits_one_node_stays_on_one_node() -> None:
    config = load("llama-3.1-8b")
    one = plan(config, PlanRequest(max_model_len=8192), H100)
    many = plan(config, PlanRequest(max_model_len=8192, max_nodes=4), H100)
    assert many == one and many.pipeline_parallel_size == 1
    assert not any(arg.startswith("--pipeline-parallel-size") for arg in one.vllm_args)


def test_the_json_has_pipeline_parallel_size_beside_tensor_parallel_size() -> None:
    data = plan(LLAMA_405B, PlanRequest(max_nodes=2), H100).to_dict()
    assert (data["tensor_parallel_size"], data["pipeline_parallel_size"], data["gpus"]) == (8, 2, 16)
    assert [stage["first_layer"] for stage in data["pipeline_stages"]] == [0, 63]
    assert json.loads(json.dumps(data)) == data
    single = plan(load("llama-3.1-8b"), PlanRequest(max_model_len=8192), H100).to_dict()
    assert (single["pipeline_parallel_size"], single["pipeline_stages"]) == (1, [])


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(["llama-3.1-405b", "llama-3.1-8b", "mixtral-8x7b", "gemma-2-9b", "deepseek-v2-lite"]),
    st.floats(min_value=8.0, max_value=100.0, allow_nan=False),
    st.sampled_from([4096, 32768]),
    st.integers(min_value=1, max_value=3),
)
def test_more_nodes_never_give_fewer_kv_tokens(name: str, memory: float, max_len: int, nodes: int) -> None:
    gpu = GPUSpec(name="test", memory_gib=memory, gpus_per_node=8, fp8=True)
    config = load(name)
    request = PlanRequest(max_model_len=min(max_len, parse_architecture(config).max_position_embeddings))
    fewer = plan(config, dataclasses.replace(request, max_nodes=nodes), gpu)
    more = plan(config, dataclasses.replace(request, max_nodes=nodes + 1), gpu)
    assert more.kv_cache_tokens >= fewer.kv_cache_tokens
    if fewer.fits:  # the fewest nodes that fit win: allowing more changes nothing
        assert more == fewer


def test_stage_weights_add_up_to_the_single_node_weights_plus_the_repeated_parts() -> None:
    arch = parse_architecture(LLAMA_405B)
    fmt = resolve_format(arch, quantization="none")
    stages = [
        resident_bytes_per_gpu(stage_architecture(arch, layers, first=rank == 0, last=rank == 3), fmt, 1)
        for rank, layers in enumerate(pipeline_layers(arch.num_layers, 4))
    ]
    rope_cache = arch.max_position_embeddings * arch.rotary_dim * 4  # every stage builds its own
    assert sum(stages) == resident_bytes_per_gpu(arch, fmt, 1) + 3 * rope_cache
    assert GIB * 180 < max(stages) < GIB * 200
