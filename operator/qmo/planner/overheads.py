"""What vLLM takes from the budget besides weights and KV cache, per GPU, term by term from its code.

vLLM 0.25.1 sizes the KV pool in ``Worker.determine_available_memory`` (vllm/v1/worker/gpu_worker.py):
``requested - (weights + torch_peak_increase + non_torch_increase) - cudagraph_memory_estimate``.

- ``torch_peak_increase`` is the torch allocator's peak over ``GPUModelRunner.profile_run`` above what was
  allocated before it. ``profile_run`` first runs ``_dummy_run(max_num_batched_tokens)`` (the forward pass;
  its result ``hidden_states`` stays alive), then ``_dummy_sampler_run`` on ``min(max_num_seqs, tokens)``
  rows: the two are sequential, so the peak is the larger of the two phases, never their sum;
- ``non_torch_increase`` is memory outside torch that grew since the worker's first snapshot, taken after
  NCCL is initialised (``MemoryProfilingResult``, vllm/utils/mem_utils.py);
- ``profile_cudagraph_memory`` (gpu_model_runner.py) captures the largest and the second-largest batch of
  each CUDA-graph mode and estimates ``first capture + per-graph x (graphs - 1)``, per-graph at least 1 MiB;
  the capture sizes are ``VllmConfig._set_cudagraph_sizes`` (vllm/config/vllm.py).

On vLLM's CPU backend (``device="cpu"``) the worker profiles nothing: the KV pool is the bytes it is given
(``--kv-cache-memory-bytes``), and the CUDA-only terms (the profile floor, a CUDA caching-allocator
transient; non-torch CUDA workspaces; graph captures) do not exist there. Only the forward and sampler
working sets, which the CPU engine allocates the same way, share the budget with weights and KV.

With pipeline parallelism every stage's worker profiles its own model shard (``Worker.determine_available_memory``
on each): ``profile_run`` runs the sampler only on the last stage (``get_pp_group().is_last_rank``), and
``_dummy_run`` gives every stage but the first a persistent buffer for the hidden states and residual it
receives (``GPUModelRunner.intermediate_tensors``, ``make_empty_intermediate_tensors`` over
``max_num_batched_tokens`` rows), alive through every phase of the profile.

Each function below cites what it models; the bytes that code does not fix statically come from a
``Calibration`` of one vLLM version (planner/calibration.py). docs/planner.md derives every term.
"""

from __future__ import annotations

from dataclasses import dataclass

from qmo.planner.architecture import VOCAB_PADDING, Architecture
from qmo.planner.calibration import CALIBRATED_VERSION, CALIBRATIONS, Calibration

GIB = 1 << 30
MAX_CUDAGRAPH_CAPTURE = 512


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def default_max_num_batched_tokens(gpu_memory_gib: float, gpu_name: str, max_num_seqs: int) -> int:
    """vLLM's default for the OpenAI server (``EngineArgs.get_batch_defaults``): 8192 on >= 70 GiB GPUs
    other than A100, else 2048."""
    big = gpu_memory_gib >= 70 and not gpu_name.lower().startswith("a100")
    return max(8192 if big else 2048, max_num_seqs)


def forward_bytes_per_token(arch: Architecture, tp: int, act_bytes: int = 2) -> int:
    """Live activation bytes per token at the peak of one decoder layer on one rank (``_dummy_run``).

    Dense MLP: the residual stream (H), the layer's hidden buffer (H), the gate/up output (2 I) and the
    activation output (I) are alive together; the normed input is dead once the gate/up GEMM ran. Fused
    MoE: the modular kernel's workspaces (``FusedMoEModularKernel._allocate_buffers``: topk x max(I, H)
    and topk x max(2 I, H) per token) plus the residual, the MoE input and its output. Attention in the profile run has no metadata,
    so only the q/k/v projections and the output buffer count."""
    h = arch.hidden_size
    mlp = h + 3 * _ceil_div(arch.intermediate_size, tp) if arch.intermediate_size else 0
    if arch.is_moe:
        inter = _ceil_div(arch.moe_intermediate_size, tp)
        routed = arch.experts_per_token * (max(inter, h) + max(2 * inter, h)) + 2 * h
        shared = 3 * _ceil_div(arch.shared_expert_intermediate_size, tp)
        mlp = max(mlp, routed + shared)
    heads = _ceil_div(arch.num_attention_heads, tp)
    if arch.uses_mla:
        # MLA prefill expands the latent per head: q and k (nope + rope), the kv_b output (nope + v), v.
        nope, rope, v = (
            int(arch.extra[key]) for key in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        )
        attention = heads * (2 * (nope + rope) + (nope + v) + 2 * v) + int(arch.extra["kv_lora_rank"]) + rope
    else:
        layer = arch.attention[0]
        kv = max(1, arch.num_kv_heads // tp) * (layer.head_dim_k + layer.head_dim_v)
        attention = 2 * heads * layer.head_dim_k + kv
    return (h + max(mlp, attention)) * act_bytes


def padded_vocab(arch: Architecture, tp: int) -> int:
    """Vocab rows of the lm_head on one rank (``VocabParallelEmbedding`` pads to 64, then splits)."""
    return _ceil_div(_ceil_div(arch.vocab_size, VOCAB_PADDING) * VOCAB_PADDING, tp)


def sampler_peak_bytes(
    arch: Architecture,
    cal: Calibration,
    *,
    tp: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    act_bytes: int,
) -> int:
    """``profile_run``'s second phase: ``_dummy_sampler_run`` over ``min(max_num_seqs, tokens)`` rows.

    Alive at its peak: the forward's ``hidden_states`` [tokens, H]; the logits in the model dtype
    [rows, vocab] (``LogitsProcessor``, gathered to the full vocab on every rank); the sampler's float32
    copies (``Sampler.forward``'s ``logits.to(float32)``, then ``forward_native``'s softmax and the
    exponential noise of ``random_sample``); and the Triton top-k/top-p scratch buffer of
    ``min(next_pow2(rows), SMs)`` vocab rows (``apply_top_k_top_p_triton``, cached, so it stays)."""
    rows = min(max_num_seqs, max_num_batched_tokens)
    vocab = padded_vocab(arch, 1)
    hidden = max_num_batched_tokens * arch.hidden_size * act_bytes
    logits = rows * vocab * act_bytes
    fp32 = rows * arch.vocab_size * cal.sampler_fp32_bytes_per_logit
    programs = min(_next_power_of_2(min(cal.sampler_programs, rows)), cal.sampler_programs)
    triton = programs * arch.vocab_size * 4 if rows >= 8 else 0
    del tp  # the logits are gathered whole on every rank before sampling
    return hidden + logits + fp32 + triton


def profile_floor_bytes(
    arch: Architecture, cal: Calibration, *, tp: int, act_bytes: int, computes_logits: bool = True
) -> int:
    """The least the profile run's torch peak reaches: the calibrated floor, or the lm_head shard on one rank
    when that is larger (the 0.25.1 floor measured on Llama-3.1-8B equals its lm_head, 0.98 GiB).

    ``computes_logits``: False on a pipeline stage before the last, which never runs the lm_head in its
    profile (``profile_run`` samples on the last stage only); it keeps the calibrated floor, not measured
    for such a stage and assumed unchanged."""
    lm_head = padded_vocab(arch, tp) * arch.hidden_size * act_bytes if computes_logits else 0
    return max(cal.profile_floor_bytes, lm_head)


def stage_input_bytes(arch: Architecture, *, max_num_batched_tokens: int, act_bytes: int) -> int:
    """A later pipeline stage's receive buffer: ``hidden_states`` and ``residual`` of
    ``max_num_batched_tokens`` rows in the model dtype (``GPUModelRunner._dummy_run`` allocates
    ``self.intermediate_tensors`` with ``make_empty_intermediate_tensors_factory(["hidden_states",
    "residual"], hidden_size)``; it is kept for the worker's life)."""
    return 2 * max_num_batched_tokens * arch.hidden_size * act_bytes


def cudagraph_capture_sizes(max_num_seqs: int, max_num_batched_tokens: int) -> list[int]:
    """vLLM's default capture sizes (``VllmConfig._set_cudagraph_sizes``): up to min(2 S, 512, T); 1, 2, 4,
    then steps of 8 below 256 and of 16 from 256; T itself when it is below the limit."""
    limit = min(2 * max_num_seqs, MAX_CUDAGRAPH_CAPTURE, max_num_batched_tokens)
    sizes = [size for size in (1, 2, 4) if size <= limit]
    if limit >= 8:
        sizes += list(range(8, min(limit + 1, 256), 8))
    if limit >= 256:
        sizes += list(range(256, limit + 1, 16))
    if max_num_batched_tokens <= limit:
        sizes.append(max_num_batched_tokens)
    return sorted(set(sizes))


def cudagraph_bytes(
    arch: Architecture,
    cal: Calibration,
    *,
    tp: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    act_bytes: int,
) -> int:
    """``profile_cudagraph_memory`` with the default FULL_AND_PIECEWISE mode: PIECEWISE graphs for every
    capture size, FULL graphs for uniform decode batches up to max_num_seqs (``CudagraphDispatcher``). The
    estimate is the larger first capture (the largest batch: its forward working set, re-allocated after
    ``empty_cache``, plus a fixed part) plus the per-graph estimate for every other graph."""
    sizes = cudagraph_capture_sizes(max_num_seqs, max_num_batched_tokens)
    piecewise = len(sizes)
    full = len([size for size in sizes if size <= max_num_seqs])
    per_token = forward_bytes_per_token(arch, tp, act_bytes)
    first = cal.cudagraph_first_capture_bytes + sizes[-1] * per_token
    moe = int(cal.moe_cudagraph_working_sets * per_token * sizes[-1]) if arch.is_moe else 0
    further = (piecewise - 1 + max(0, full - 1)) * cal.cudagraph_per_graph_bytes
    return first + further + moe


@dataclass(frozen=True)
class Overheads:
    """The non-KV, non-weight terms on one GPU, in bytes."""

    forward: int
    """``_dummy_run(max_num_batched_tokens)``'s activation peak."""
    sampler: int
    """``_dummy_sampler_run``'s peak."""
    floor: int
    """The profile run's least torch peak."""
    non_torch: int
    cudagraph: int
    stage_input: int = 0
    """A later pipeline stage's receive buffer, alive under every phase (0 on the first stage)."""

    @property
    def activation(self) -> int:
        """``torch_peak_increase``: the profile run's peak, the largest of its phases (plus the receive
        buffer of a later pipeline stage, allocated before them and never freed)."""
        return max(self.forward, self.sampler, self.floor) + self.stage_input

    @property
    def total(self) -> int:
        return self.activation + self.non_torch + self.cudagraph


def overheads(
    arch: Architecture,
    *,
    tp: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    act_bytes: int = 2,
    calibration: Calibration | None = None,
    device: str = "gpu",
    pipeline_rank: int = 0,
    pipeline_size: int = 1,
) -> Overheads:
    """The overheads on one GPU of pipeline stage ``pipeline_rank`` of ``pipeline_size`` (1: one node).

    The forward working set and the CUDA graphs are the same on every stage: each runs the same layer shapes
    over ``max_num_batched_tokens`` (the model's widest layer is assumed on every stage) and captures the
    same batch sizes."""
    cal = calibration or CALIBRATIONS[CALIBRATED_VERSION]
    shape = {"tp": tp, "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens}
    first, last = pipeline_rank == 0, pipeline_rank == pipeline_size - 1
    forward = max_num_batched_tokens * forward_bytes_per_token(arch, tp, act_bytes)
    sampler = sampler_peak_bytes(arch, cal, act_bytes=act_bytes, **shape) if last else 0
    stage_input = (
        0
        if first
        else stage_input_bytes(arch, max_num_batched_tokens=max_num_batched_tokens, act_bytes=act_bytes)
    )
    if device == "cpu":
        return Overheads(
            forward=forward, sampler=sampler, floor=0, non_torch=0, cudagraph=0, stage_input=stage_input
        )
    # The pipeline's own NCCL communicator (send/recv between stages) is assumed to cost what the
    # tensor-parallel one does: not measured for pipeline stages.
    communicates = tp > 1 or pipeline_size > 1
    return Overheads(
        forward=forward,
        sampler=sampler,
        floor=profile_floor_bytes(arch, cal, tp=tp, act_bytes=act_bytes, computes_logits=last),
        non_torch=cal.non_torch_bytes + (cal.non_torch_tp_bytes if communicates else 0),
        cudagraph=cudagraph_bytes(arch, cal, act_bytes=act_bytes, **shape),
        stage_input=stage_input,
    )
