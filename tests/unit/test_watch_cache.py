"""The watch cache: reads answered from kopf's indexes, and the operator's own writes until the watch has them."""

from __future__ import annotations

from typing import Any

from qmo.desired.names import LABEL_MODEL
from qmo.reconcile.cache import WATCHED_KINDS, WatchCache, index_entry, index_id, parse_selector


class FakeIndex(dict[Any, list[dict[str, Any]]]):
    """What kopf hands handlers: key -> the values indexed under it, one per object (the last one it gave)."""

    def put(self, body: dict[str, Any]) -> None:
        name = (body["metadata"]["namespace"], body["metadata"]["name"])
        for key in list(self):
            self[key] = [v for v in self[key] if (v["metadata"]["namespace"], v["metadata"]["name"]) != name]
        for key, value in index_entry(body).items():
            self.setdefault(key, []).append(value)


def obj(kind: str, name: str, version: int, **labels: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(version), "labels": labels},
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def cache_with(*bodies: dict[str, Any]) -> tuple[WatchCache, FakeIndex, Clock]:
    index = FakeIndex()
    for body in bodies:
        index.put(body)
    clock = Clock()
    cache = WatchCache(clock=clock)
    cache.bind({index_id("Pod"): index, "unrelated": object()})
    return cache, index, clock


def test_only_bound_kinds_are_answered_here() -> None:
    cache, _, _ = cache_with()
    assert cache.covers("Pod") and not cache.covers("Deployment")
    assert {w.kind for w in WATCHED_KINDS} >= {"ModelArtifact", "Deployment", "Pod", "GPUClass"}


def test_gets_and_lists_by_namespace_and_labels_are_copies() -> None:
    a, b = obj("Pod", "a", 1, app="x"), obj("Pod", "b", 1, app="y")
    cache, _, _ = cache_with(a, b)
    got = cache.get("Pod", "ns", "a")
    assert got == a and got is not a
    got["metadata"]["name"] = "changed"  # a caller's edit never reaches the cache
    assert cache.get("Pod", "ns", "a") == a
    assert [p["metadata"]["name"] for p in cache.list("Pod", "ns", "app=x") or []] == ["a"]
    assert [p["metadata"]["name"] for p in cache.list("Pod", "ns") or []] == ["a", "b"]
    assert cache.list("Pod", "other") == [] and cache.get("Pod", "ns", "c") is None


def test_selectors_other_than_equality_go_to_the_api_server() -> None:
    assert parse_selector("a=b, c=d") == {"a": "b", "c": "d"}
    assert parse_selector("a==b") is None and parse_selector("a!=b") is None and parse_selector("a") is None
    cache, _, _ = cache_with(obj("Pod", "a", 1))
    assert cache.list("Pod", "ns", "tier in (web)") is None


def test_own_writes_are_read_back_until_the_watch_catches_up() -> None:
    cache, index, clock = cache_with(obj("Pod", "a", 5))
    cache.remember(obj("Pod", "a", 7, written="yes"))
    cache.remember(obj("Pod", "new", 8))
    assert (cache.get("Pod", "ns", "a") or {})["metadata"]["resourceVersion"] == "7"
    assert [p["metadata"]["name"] for p in cache.list("Pod", "ns") or []] == ["a", "new"]
    index.put(obj("Pod", "a", 9, later="someone else"))  # the watch delivered a newer version
    assert (cache.get("Pod", "ns", "a") or {})["metadata"]["labels"] == {"later": "someone else"}
    clock.now = 31.0  # never longer than the time-to-live: "new" was deleted meanwhile, say
    assert cache.get("Pod", "ns", "new") is None and cache.written == {}


def test_a_reconcile_takes_the_newest_body_known_over_the_one_it_was_handed() -> None:
    handed = {**obj("Pod", "a", 5), "status": {"phase": "Quantizing"}}
    handed["metadata"]["uid"] = "u1"
    cache, index, _ = cache_with(handed)
    assert cache.latest("Pod", handed) is handed  # nothing newer known
    written = {**obj("Pod", "a", 7), "status": {"phase": "Deploying"}}
    written["metadata"]["uid"] = "u1"
    cache.remember(written)  # the reconcile ahead of this one wrote the status meanwhile
    assert cache.latest("Pod", handed)["status"] == {"phase": "Deploying"}
    newer_handed = {**obj("Pod", "a", 8), "status": {"phase": "Ready"}}
    newer_handed["metadata"]["uid"] = "u1"
    assert cache.latest("Pod", newer_handed) is newer_handed
    replaced = obj("Pod", "a", 9)
    replaced["metadata"]["uid"] = "u2"  # deleted and created again under the same name: another object
    index.put(replaced)
    assert cache.latest("Pod", handed) is handed
    assert cache.latest("Deployment", handed) is handed  # a kind not watched here


def test_an_older_answer_handled_late_does_not_hide_a_newer_one() -> None:
    cache, _, _ = cache_with(obj("Pod", "a", 5))
    cache.remember(obj("Pod", "a", 8, phase="Ready"))
    cache.remember(obj("Pod", "a", 7, phase="Quantizing"))  # a concurrent write's answer, handled later
    assert (cache.get("Pod", "ns", "a") or {})["metadata"]["labels"] == {"phase": "Ready"}


def test_own_writes_are_read_back_however_long_the_watch_lags() -> None:
    cache, index, clock = cache_with(obj("Pod", "a", 5, phase="Quantizing"))
    cache.remember(obj("Pod", "a", 7, phase="Ready"))
    clock.now = 120.0  # the watch is far behind (a fleet converging): its older version is no answer
    assert (cache.get("Pod", "ns", "a") or {})["metadata"]["labels"] == {"phase": "Ready"}
    index.put(obj("Pod", "a", 7, phase="Ready"))
    assert cache.get("Pod", "ns", "a") is not None and cache.written == {}


def test_a_deletion_by_qmo_drops_what_it_wrote() -> None:
    cache, _, _ = cache_with()
    cache.remember(obj("Pod", "gone", 3))
    cache.forget("Pod", "ns", "gone")
    assert cache.get("Pod", "ns", "gone") is None


def test_writes_of_kinds_not_watched_are_not_kept() -> None:
    cache, _, _ = cache_with()
    cache.remember(obj("Secret", "s", 1))
    assert cache.written == {}


def test_a_reader_may_take_the_cache_own_objects_instead_of_copies() -> None:
    cache, _, _ = cache_with(obj("Pod", "a", 1))
    [shared] = cache.list("Pod", "ns", shared=True) or []
    [copied] = cache.list("Pod", "ns") or []
    assert shared is (cache.list("Pod", "ns", shared=True) or [])[0] and copied is not shared
    assert copied == shared


class BucketOnlyIndex(FakeIndex):
    """An index whose full scan fails the test: a list in a namespace must read one bucket."""

    def values(self) -> Any:
        raise AssertionError("a namespaced list scanned every object of the kind")


def test_a_namespaced_list_reads_one_bucket_and_sees_the_operators_relabelled_write() -> None:
    index = BucketOnlyIndex()
    for body in (
        obj("Pod", "a", 1, **{LABEL_MODEL: "m1"}),
        obj("Pod", "b", 1, **{LABEL_MODEL: "m2"}),
        obj("Pod", "q", 1, **{"job-name": "j"}),
    ):
        index.put(body)
    clock = Clock()
    cache = WatchCache(clock=clock)
    cache.bind({index_id("Pod"): index})

    def names(selector: str) -> list[str]:
        return [p["metadata"]["name"] for p in cache.list("Pod", "ns", selector) or []]

    assert names(f"{LABEL_MODEL}=m1") == ["a"] and names("job-name=j") == ["q"]
    assert names("") == ["a", "b", "q"] and names(f"{LABEL_MODEL}=m1,other=x") == []
    cache.remember(obj("Pod", "b", 2, **{LABEL_MODEL: "m1"}))  # qmo moved b; the watch has not seen it
    assert names(f"{LABEL_MODEL}=m1") == ["a", "b"] and names(f"{LABEL_MODEL}=m2") == []
    index.put(obj("Pod", "b", 3, **{LABEL_MODEL: "m2"}))  # someone else moved it back, and the watch has it
    assert names(f"{LABEL_MODEL}=m1") == ["a"] and names(f"{LABEL_MODEL}=m2") == ["b"]
