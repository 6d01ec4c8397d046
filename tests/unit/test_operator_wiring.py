"""The kopf wiring (handlers/operator.py): what kopf is told about each handler."""

from __future__ import annotations

from qmo.handlers.operator import OperatorConfig, build_registry


def test_resync_timers_first_tick_one_interval_after_the_object_is_seen() -> None:
    # At once, a timer reconciles beside the create/resume handler: two first reconciles per object, one of
    # them refused as it raced kopf's finalizer patch.
    registry = build_registry(OperatorConfig(resync_seconds=7))
    timers = {handler.id: handler for handler in registry._spawning.get_all_handlers()}
    assert set(timers) == {"resync-model", "resync-artifact"}
    for timer in timers.values():
        assert (timer.interval, timer.initial_delay) == (7, 7)
