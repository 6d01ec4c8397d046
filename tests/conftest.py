"""Shared test configuration: every test is marked with its tier from the folder it lives in, and ``make
test``'s two pytest-xdist workers are handed whole files, the real-vLLM files together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

TIERS = ("unit", "cluster", "worker", "serving", "gpu")

# Tests that start a real vLLM (about 4.5 GiB, and most of both cores while it starts) run one after
# another on one worker, so one server runs at a time; they are most of the run's time, so they go first.
# Every other file runs beside them, a whole file per worker: a file's module-scoped fixtures (a
# quantized model, a private sandbox) are made once. The cluster tests mostly wait on the API server and
# the operator, which is the time the other worker uses.
REAL_VLLM = ("tests/serving/", "tests/cluster/test_real_node.py", "tests/cluster/test_sandbox.py")
REAL_VLLM_SCOPE = "real-vllm"


def scope_of(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return REAL_VLLM_SCOPE if path.startswith(REAL_VLLM) else path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    # xdist's own --dist loadgroup marks items by rewriting their node ids, which pytest 9.2 no longer
    # reads; a scheduler that scopes by file is xdist's supported hook for this.
    from xdist.scheduler import LoadScopeScheduling

    class ByFileRealVllmTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ByFileRealVllmTogether(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
    # xdist hands out scopes in the order their first test was collected: the longest first.
    items.sort(key=lambda item: scope_of(item.nodeid) != REAL_VLLM_SCOPE)
