"""What a reconcile decided, and the exceptions that end one early with a reason for status."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qmo.desired.common import Event

__all__ = ["Event", "Outcome", "PermanentFailure", "RetryLater", "Waiting"]


@dataclass
class Outcome:
    """What one reconcile decided: the status patch it wrote (None: nothing changed) and its Events."""

    phase: str
    status_patch: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    retry_after: float | None = None


class Waiting(Exception):
    """Planning waits for something it started (reading a PVC model's config.json): say so in status."""


class RetryLater(Exception):
    """Something is on its way (an artifact being evicted, a retry started): reconcile again soon."""


class PermanentFailure(Exception):
    """The spec (or something it names) is wrong: report Failed with this reason until the user fixes it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
