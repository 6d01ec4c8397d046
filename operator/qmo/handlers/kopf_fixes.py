"""A fix to kopf 1.45 that the operator installs before kopf starts.

kopf runs no handler until every watched (resource, namespace) pair has listed its objects once: each
watcher holds a toggle in ``operator_indexed`` that its first listing drops. When a namespace the operator
watches by pattern (``--namespace 'team-*'``) goes away before its watchers' first listing ends, kopf stops
those watchers but keeps their toggles, and from then on no handler runs for any object, ever. The cluster
tests met it (test namespaces come and go while the operator starts); a fleet whose namespaces churn would
too. The fix drops the stopped watchers' toggles with them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from kopf._core.reactor import orchestration  # the one private module used: the fix must wrap its function

_FIXED = "_qmo_drops_stopped_watchers_toggles"


def watcher_toggle_name(key: Any) -> str:
    """The name kopf gives a watcher's readiness toggle (orchestration.spawn_missing_watchers)."""
    return f"{key.resource}@{key.namespace}"


def install() -> None:
    """Wrap orchestration.terminate_redundancies (adjust_tasks looks it up at each call); idempotent."""
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
