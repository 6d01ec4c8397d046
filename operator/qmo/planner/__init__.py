"""The memory-budget planner. Pure: from a model's ``config.json``, a quantization format, a GPU class and
serving targets, predict what vLLM does with the memory and choose the cheapest configuration that fits.

See docs/planner.md for the maths and the constants."""

from qmo.planner.errors import PlanningError
from qmo.planner.gpus import BUILTIN_GPUS, GPUSpec, gpu_by_name
from qmo.planner.plan import PlanRequest, ServingPlan, plan, predict_checkpoint_bytes

__all__ = [
    "BUILTIN_GPUS",
    "GPUSpec",
    "PlanRequest",
    "PlanningError",
    "ServingPlan",
    "gpu_by_name",
    "plan",
    "predict_checkpoint_bytes",
]
