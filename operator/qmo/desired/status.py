"""Pure helpers for status: conditions shaped like metav1.Condition and change detection."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

Status = dict[str, Any]


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def condition(
    previous: list[dict[str, Any]],
    *,
    type_: str,
    status: bool | None,
    reason: str,
    message: str = "",
    generation: int | None,
    now: str,
) -> dict[str, Any]:
    """A condition; its lastTransitionTime moves only when its status changes (as kubectl expects)."""
    status_text = "Unknown" if status is None else ("True" if status else "False")
    old = next((c for c in previous if c.get("type") == type_), None)
    transition = old["lastTransitionTime"] if old and old.get("status") == status_text else now
    result = {
        "type": type_,
        "status": status_text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        result["observedGeneration"] = generation
    return result


def merge_patch_for(old: Status, new: Status) -> Status | None:
    """The JSON merge patch turning ``old`` status into ``new``, or None when nothing changed.

    Keys present before and absent now are nulled, so stale fields (a cleared message) disappear.
    """
    if old == new:
        return None
    patch: Status = {key: value for key, value in new.items() if old.get(key) != value}
    for key in old:
        if key not in new:
            patch[key] = None
    return patch or None


def status_write(meta: Mapping[str, Any], patch: Status) -> dict[str, Any]:
    """The status merge patch, valid only against the resourceVersion it was computed from.

    A body can be seconds old when the operator is busy (kopf hands timers the last body its worker got
    to); a status computed from it would undo newer facts, such as a user the artifact gained since. With
    the resourceVersion in the patch the API server answers 409 instead, and the object is re-read.
    """
    return {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch}


def comparable_as_sent(value: Any) -> bool:
    """Whether the API server sees ``value`` exactly as qmo sends it in a JSON patch ``test``.

    The server compares scalars by their JSON text (evanphx/json-patch v4), written by Go: Go writes
    small and huge floats in other notation than Python (0.00001 against 1e-05), escapes <, > and & and
    writes non-ASCII raw. A value holding any of those would fail the test forever, so it is not tested.
    """
    if isinstance(value, Mapping):
        return all(comparable_as_sent(k) and comparable_as_sent(v) for k, v in value.items())
    if isinstance(value, list):
        return all(comparable_as_sent(item) for item in value)
    if isinstance(value, str):
        return all(c in "\n\t" or (" " <= c <= "~" and c not in "<>&") for c in value)
    if isinstance(value, float):
        return not value.is_integer() and 1e-4 <= abs(value) < 1e15
    return value is None or isinstance(value, bool | int)


def _pointer(key: str) -> str:
    return "/status/" + key.replace("~", "~0").replace("/", "~1")


def guarded_status_write(
    meta: Mapping[str, Any], old: Status, patch: Status
) -> tuple[dict[str, Any] | list[dict[str, Any]], bool]:
    """The status write for a status decided from ``old`` (and the spec of ``meta``'s generation), and
    whether it is a JSON patch.

    When the status the decision started from can be compared on the server, the write is a JSON patch
    that tests that status and the generation are still those, then sets the changed fields: exactly the
    inputs the decision read from the object. Guarded by the resourceVersion instead (``status_write``),
    every write to the object's metadata in between also refused it: kopf's annotations after each
    handler, a label from Argo CD. At 1,000 models about one status write per model was refused that way
    and cost a fresh read and a second decision. An empty or non-comparable ``old`` keeps the
    resourceVersion guard."""
    if not old or not comparable_as_sent(old) or meta.get("generation") is None:
        return status_write(meta, patch), False
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/generation", "value": meta["generation"]},
        {"op": "test", "path": "/status", "value": old},
    ]
    for key, value in patch.items():
        if value is None:
            ops.append({"op": "remove", "path": _pointer(key)})
        else:
            ops.append({"op": "add", "path": _pointer(key), "value": value})
    return ops, True


def format_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    """'spec.serving.replicas: Input should be greater than or equal to 0' for each problem."""
    parts = []
    for problem in error.errors():
        path = ".".join([prefix, *(str(p) for p in problem["loc"])])
        parts.append(f"{path}: {problem['msg']}")
    return "; ".join(parts)


def deployment_rollout(deployment: Mapping[str, Any] | None, replicas: int) -> tuple[bool, int, str]:
    """(rolled out, ready replicas, reason) of a Deployment as its controller last reported it."""
    if deployment is None:
        return False, 0, "NotCreated"
    status = deployment.get("status", {})
    ready = int(status.get("readyReplicas", 0))
    generation = deployment.get("metadata", {}).get("generation", 0)
    if status.get("observedGeneration", 0) < generation:
        return False, ready, "RolloutPending"
    for cond in status.get("conditions", []):
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return False, ready, "ProgressDeadlineExceeded"
    updated = int(status.get("updatedReplicas", 0))
    total = int(status.get("replicas", 0))
    available = int(status.get("availableReplicas", 0))
    rolled = updated >= replicas and total == replicas and available >= replicas
    return rolled, ready, "RolledOut" if rolled else "RollingOut"
