"""The one error the planner raises: a config or request it cannot plan for, said so a user can fix it."""

from __future__ import annotations


class PlanningError(ValueError):
    """A model config, request or GPU the planner cannot work with; the message names the key or flag.

    ``field`` names the request field at fault (``tensor_parallel_size``, ``max_model_len``, ``gpu_class``,
    ``quantization`` ...) where one is: tools read it from ``qmo plan --output json``'s refusals."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
