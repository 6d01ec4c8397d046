"""vLLM's scheduler ceiling (``--max-num-seqs``) beside the planner's concurrency target.

``concurrency`` is a capacity target: the planner sizes the KV cache to hold that many sequences of
max_model_len at once. ``--max-num-seqs`` is vLLM's scheduler ceiling: how many sequences run in one step,
whatever their length. Requests are mostly shorter than max_model_len, so the same cache holds more of them
than the target; a ceiling at the target would leave that cache idle, one below it would make the target
unreachable. So the ceiling is the one asked for, else vLLM's default raised to the target, never lowered
to it, and every plan says which (``qmo plan``, the Planned condition).
"""

from __future__ import annotations

VLLM_DEFAULT_MAX_NUM_SEQS = 256
"""vLLM's own --max-num-seqs default."""


def max_num_seqs_for(*, max_num_seqs: int | None, concurrency: int | None) -> int:
    """The --max-num-seqs a plan runs vLLM with: the one asked for, else vLLM's default raised to the
    concurrency target but never lowered to it (``max_num_seqs_reason`` says why)."""
    return max_num_seqs or max(concurrency or 0, VLLM_DEFAULT_MAX_NUM_SEQS)


def max_num_seqs_reason(*, max_num_seqs: int | None, concurrency: int | None) -> str:
    """Why the plan's --max-num-seqs is what it is, in one phrase (the plan table, the Planned condition)."""
    if max_num_seqs:
        if concurrency is not None and max_num_seqs < concurrency:
            return f"as set, below concurrency {concurrency}: vLLM never runs that many sequences at once"
        return "as set"
    if concurrency is None:
        return "vLLM's default"
    if concurrency > VLLM_DEFAULT_MAX_NUM_SEQS:
        return (
            f"vLLM's default {VLLM_DEFAULT_MAX_NUM_SEQS} raised to concurrency {concurrency}, so the scheduler"
            " may run every sequence the KV cache holds"
        )
    return (
        f"vLLM's default; concurrency {concurrency} is what the KV cache holds at max-model-len, not a cap:"
        " shorter sequences fit more"
    )
