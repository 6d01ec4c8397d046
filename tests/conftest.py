"""Shared test configuration: every test is marked with its tier from the folder it lives in, and with the
pytest-xdist group it runs in (``make test`` runs two workers)."""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "cluster", "worker", "serving", "gpu")

# Tests that start a real vLLM (about 4.5 GiB, and most of both cores while it starts) run one after
# another in one group, so one server runs at a time; they are most of the run's time, so they go first.
# Every other test runs beside them, a file at a time per worker: a file's module-scoped fixtures (a
# quantized model, a private sandbox) are made once. The cluster tests mostly wait on the API server and
# the operator, which is the time the other worker uses.
REAL_VLLM = ("tests/serving/", "tests/cluster/test_real_node.py", "tests/cluster/test_sandbox.py")
REAL_VLLM_GROUP = "real-vllm"


def xdist_group(item: pytest.Item) -> str:
    path = item.nodeid.split("::")[0]
    return REAL_VLLM_GROUP if path.startswith(REAL_VLLM) else path


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
    items.sort(key=lambda item: xdist_group(item) != REAL_VLLM_GROUP)
