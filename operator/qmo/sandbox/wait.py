"""Wait for a condition with a deadline, never a fixed sleep.

Used by the sandbox itself (is the apiserver ready?) and by every cluster test (is the Job Complete?).
A timeout fails with what was awaited and the last thing seen, so a red test explains itself. ``holds`` is
the opposite check: something stays true for a whole observation window (an autoscaler does not flap).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class StopWaiting(Exception):
    """Raised by a predicate when waiting longer cannot help (a process died): ends the wait at once."""


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline (an AssertionError, so pytest reports it as a failure)."""


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    description: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; raise WaitTimeout otherwise.

    Exceptions raised by the predicate count as "not yet" (the API may still be coming up) and the last one
    is reported on timeout; a StopWaiting propagates at once.
    """
    deadline = time.monotonic() + timeout
    last_value: object = None
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except StopWaiting:
            raise
        except Exception as error:
            last_error = error
        else:
            if value:
                return value
            last_value, last_error = value, None
        if time.monotonic() >= deadline:
            seen = f"last error: {last_error!r}" if last_error is not None else f"last value: {last_value!r}"
            raise WaitTimeout(f"timed out after {timeout:.1f} s waiting for {description} ({seen})")
        time.sleep(interval)


class StoppedHolding(AssertionError):
    """The condition stopped holding within the observation window."""


def holds(predicate: Callable[[], T], *, seconds: float, interval: float = 0.5, description: str) -> T:
    """Check that ``predicate`` stays truthy for ``seconds`` (an observation window, not a wait); return
    its last value, or raise StoppedHolding with the value that broke it and when."""
    started = time.monotonic()
    while True:
        value = predicate()
        if not value:
            raise StoppedHolding(
                f"{description} stopped holding after {time.monotonic() - started:.1f} s of {seconds:.0f} "
                f"(value: {value!r})"
            )
        if time.monotonic() - started >= seconds:
            return value
        time.sleep(interval)
