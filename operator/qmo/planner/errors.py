"""The one error the planner raises: a config or request it cannot plan for, said so a user can fix it."""

from __future__ import annotations


class PlanningError(ValueError):
    """A model config, request or GPU the planner cannot work with; the message names the key or flag."""
