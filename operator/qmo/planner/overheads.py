"""What vLLM takes from the budget besides weights and KV cache, per GPU.

vLLM (>= 0.21) sizes the KV cache as ``total * gpu_memory_utilization - weights - torch_peak_increase -
non_torch_increase - cudagraph_estimate``, all measured in a profiling run (``Worker.determine_available_
memory``). We model each term from the shapes that produce it, with three constants fitted to the
measured H100 points in DESIGN §6 (see docs/planner.md for the derivation):

- activation peak: the larger of the forward pass over ``max_num_batched_tokens`` tokens (the MLP or fused
  MoE working set of one layer dominates) and the dummy sampler run over ``max_num_seqs`` rows of logits;
- non-torch memory: CUDA context growth, cuBLAS/attention workspaces, and NCCL/custom all-reduce buffers
  once tensor parallelism is on;
- CUDA graphs: the graph pool, proportional to the per-token working set times the largest captured
  batch (``min(2 * max_num_seqs, 512)``, vLLM's default capture limit).
"""

from __future__ import annotations

from dataclasses import dataclass

from qmo.planner.architecture import VOCAB_PADDING, Architecture

GIB = 1 << 30

NON_TORCH_BYTES = int(0.15 * GIB)
"""Single-GPU non-torch growth during profiling (public vLLM logs on H100: 0.13-0.14 GiB), rounded up."""
NON_TORCH_TP_BYTES = int(0.45 * GIB)
"""Extra per GPU once tensor-parallel > 1: NCCL communicators and custom all-reduce buffers (public logs
show 0.54-0.55 GiB in total at TP=2)."""
SAMPLER_BYTES_PER_LOGIT = 27
"""Peak bytes per (sequence, vocab entry) in vLLM's dummy sampler run: bf16 logits, their float32 copy,
probabilities and the sort (values + int64 indices) of top-k/top-p, partly overlapped. Fitted on the dense
Llama-3.1-8B point (the sampler is its largest transient)."""
CUDAGRAPH_WORKING_SETS = 8.5
"""CUDA-graph pool estimate in units of "per-token working set x largest captured batch". Fitted on the
Mixtral point, where the fused-MoE working set dominates."""
MAX_CUDAGRAPH_CAPTURE = 512


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def default_max_num_batched_tokens(gpu_memory_gib: float, gpu_name: str, max_num_seqs: int) -> int:
    """vLLM's default for the OpenAI server: 8192 on >= 70 GiB GPUs other than A100, else 2048."""
    big = gpu_memory_gib >= 70 and not gpu_name.lower().startswith("a100")
    return max(8192 if big else 2048, max_num_seqs)


def forward_bytes_per_token(arch: Architecture, tp: int, act_bytes: int = 2) -> int:
    """Live activation bytes per token at the peak of one decoder layer on one rank."""
    h = arch.hidden_size
    residual = 2 * h  # residual stream + normed input
    mlp = 3 * _ceil_div(arch.intermediate_size, tp) if arch.intermediate_size else 0
    if arch.is_moe:
        # fused MoE: gate_up output (2I), activation output (I) and expert output (H) per routed copy.
        routed = arch.experts_per_token * (3 * _ceil_div(arch.moe_intermediate_size, tp) + h)
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
    return (residual + max(mlp, attention)) * act_bytes


@dataclass(frozen=True)
class Overheads:
    activation: int
    non_torch: int
    cudagraph: int

    @property
    def total(self) -> int:
        return self.activation + self.non_torch + self.cudagraph


def overheads(arch: Architecture, *, tp: int, max_num_batched_tokens: int, max_num_seqs: int) -> Overheads:
    per_token = forward_bytes_per_token(arch, tp)
    vocab = _ceil_div(arch.vocab_size, VOCAB_PADDING) * VOCAB_PADDING
    sampler = min(max_num_seqs, max_num_batched_tokens) * vocab * SAMPLER_BYTES_PER_LOGIT
    activation = max(max_num_batched_tokens * per_token, sampler)
    capture = min(MAX_CUDAGRAPH_CAPTURE, 2 * max_num_seqs)
    cudagraph = int(CUDAGRAPH_WORKING_SETS * per_token * capture)
    non_torch = NON_TORCH_BYTES + (NON_TORCH_TP_BYTES if tp > 1 else 0)
    return Overheads(activation=activation, non_torch=non_torch, cudagraph=cudagraph)
