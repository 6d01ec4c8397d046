"""Two fixes to kopf 1.45 for an operator that watches namespaces by name or pattern, installed before
kopf starts. Both were met in the cluster tests, where test namespaces come and go; a fleet whose
namespaces churn (``--namespace 'team-*'``, the chart's namespaced mode) would meet them too.

1. kopf runs no handler until every watched (resource, namespace) pair has listed its objects once: each
   watcher holds a toggle in ``operator_indexed`` that its first listing drops. When a namespace goes away
   before its watchers' first listing ends, kopf stops those watchers but keeps their toggles, and from
   then on no handler runs for any object, ever. The fix drops the stopped watchers' toggles with them.
2. kopf stops watching a namespace as soon as it is marked for deletion and carries conditions, none of
   them True yet (the namespace controller's first pass): its QuantizedModels then never reach the
   deletion handler, keep qmo's finalizer, and the namespace stays Terminating for good. The fix keeps a
   namespace watched until it is really gone (its DELETED event), so its objects are finalized first.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from kopf._core.reactor import observation, orchestration  # private: each fix replaces one function

_FIXED = "_qmo_fixed"


def watcher_toggle_name(key: Any) -> str:
    """The name kopf gives a watcher's readiness toggle (orchestration.spawn_missing_watchers)."""
    return f"{key.resource}@{key.namespace}"


def namespace_is_gone(raw_event: Any) -> bool:
    """A watched namespace stops being watched when it is deleted, not when its deletion starts."""
    return bool(raw_event["type"] == "DELETED")


def install() -> None:
    """Replace the two functions (kopf looks each up at every call); idempotent."""
    if not getattr(observation.is_deleted, _FIXED, False):
        setattr(namespace_is_gone, _FIXED, True)
        observation.is_deleted = namespace_is_gone
    original = orchestration.terminate_redundancies
    if getattr(original, _FIXED, False):
        return

    async def terminate_redundancies(
        *,
        remaining_resources: Collection[Any],
        remaining_namespaces: Collection[Any],
        ensemble: orchestration.Ensemble,
    ) -> None:
        stopping = {
            watcher_toggle_name(key)
            for key in ensemble.watcher_tasks
            if key.namespace not in remaining_namespaces or key.resource not in remaining_resources
        }
        await original(
            remaining_resources=remaining_resources,
            remaining_namespaces=remaining_namespaces,
            ensemble=ensemble,
        )
        stale = [toggle for toggle in ensemble.operator_indexed if toggle.name in stopping]
        await ensemble.operator_indexed.drop_toggles(stale)

    setattr(terminate_redundancies, _FIXED, True)
    orchestration.terminate_redundancies = terminate_redundancies
