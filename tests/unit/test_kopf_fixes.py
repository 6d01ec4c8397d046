"""kopf keeps running handlers after a watched namespace disappears before its watchers' first listing."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.structs import references
from kopf._core.reactor import orchestration

from qmo.handlers import kopf_fixes

MODELS = references.Resource(group="qmo.dev", version="v1alpha1", plural="quantizedmodels", namespaced=True)


def test_a_namespace_gone_before_its_first_listing_no_longer_blocks_every_handler() -> None:
    kopf_fixes.install()
    kopf_fixes.install()  # idempotent: the registry may be built more than once in a process

    async def scenario() -> tuple[bool, bool]:
        indexed = aiotoggles.ToggleSet(all)
        ensemble = orchestration.Ensemble(
            operator_indexed=indexed,
            operator_paused=aiotoggles.ToggleSet(any),
            peering_missing=aiotoggles.Toggle(),
        )
        # Two namespaces matched the pattern; "a" listed (its toggle dropped), "b" had not yet when it went.
        for namespace in ("qmo-test-a", "qmo-test-b"):
            key = orchestration.EnsembleKey(resource=MODELS, namespace=namespace)
            ensemble.watcher_tasks[key] = asyncio.create_task(asyncio.sleep(3600))
        await indexed.make_toggle(name=kopf_fixes.watcher_toggle_name(key))  # b's, still off
        blocked = indexed.is_on()
        await orchestration.terminate_redundancies(
            remaining_resources={MODELS}, remaining_namespaces={"qmo-test-a", None}, ensemble=ensemble
        )
        for task in ensemble.watcher_tasks.values():
            task.cancel()
        return blocked, indexed.is_on()

    blocked, after = asyncio.run(scenario())
    assert not blocked  # b's unfinished listing held every handler
    assert after  # b's watcher stopped with the namespace, and its toggle went with it


def test_a_namespace_being_deleted_stays_watched_until_it_is_gone() -> None:
    from kopf._core.reactor import observation

    kopf_fixes.install()
    insights = references.Insights()
    patterns: list[references.NamespacePattern] = ["qmo-test-*"]

    def namespace_event(kind: str | None, deleting: bool) -> dict[str, object]:
        metadata: dict[str, object] = {"name": "qmo-test-a"}
        if deleting:
            metadata["deletionTimestamp"] = "2026-12-07T20:25:10Z"
        # The namespace controller's first pass: conditions, none True yet.
        conditions = [{"type": "NamespaceContentRemaining", "status": "False"}] if deleting else []
        return {"type": kind, "object": {"metadata": metadata, "status": {"conditions": conditions}}}

    observation.revise_namespaces(
        insights=insights, namespaces=patterns, raw_events=[namespace_event(None, False)]
    )
    assert insights.namespaces == {"qmo-test-a"}
    # Marked for deletion: its QuantizedModels still hold qmo's finalizer, so it must stay watched.
    observation.revise_namespaces(
        insights=insights, namespaces=patterns, raw_events=[namespace_event("MODIFIED", True)]
    )
    assert insights.namespaces == {"qmo-test-a"}
    observation.revise_namespaces(
        insights=insights, namespaces=patterns, raw_events=[namespace_event("DELETED", True)]
    )
    assert insights.namespaces == set()
