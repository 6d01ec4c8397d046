"""The Grafana dashboard and the alert rules query only metrics that exist.

The operator's metric names come from the ``Metrics`` class itself, instantiated on a private registry;
the few names from other exporters (kubelet volume stats, Prometheus' own ``up``) are an explicit
allowlist. Every PromQL expression is reduced to the identifiers it names as metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from qmo.reconcile.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "docs" / "grafana" / "qmo-dashboard.json"
RULES = REPO / "docs" / "grafana" / "prometheus-rules.yaml"

# Metrics other exporters provide, which the dashboard and alerts rely on.
EXTERNAL_METRICS = {
    # kubelet (its /metrics, scraped by every kube-prometheus install): the cache claim's fill level.
    "kubelet_volume_stats_used_bytes",
    "kubelet_volume_stats_capacity_bytes",
    # Prometheus itself: whether the operator's endpoint answers scrapes.
    "up",
}

PROMQL_WORDS = {
    # aggregations and their modifiers
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless",
    # functions used in qmo's dashboards and alerts (a new one must be added here on purpose)
    "rate", "irate", "increase", "histogram_quantile", "label_values", "absent", "clamp_min", "clamp_max",
    "max_over_time", "min_over_time", "avg_over_time", "time", "vector", "scalar", "abs",
}  # fmt: skip

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def exported_metric_names() -> set[str]:
    """Every sample name the operator's metrics produce, from a fresh registry (labelled or not)."""
    registry = CollectorRegistry()
    Metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    """The identifiers an expression uses as metric names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\$\w+|\$\{\w+\}", "", text)  # Grafana variables
    identifiers = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    numbers = {i for i in identifiers if re.fullmatch(r"e\d*|inf|nan|Inf|NaN", i)}
    return identifiers - PROMQL_WORDS - numbers


def dashboard_queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                yield value["query"]
            else:
                yield from dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_queries(item)


def rule_queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_metric_name_parser_finds_names_and_ignores_promql() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, kind) (rate(qmo_x_bucket{kind=~"a|b"}[5m]))) / on(pod) up'
    assert metric_names(expr) == {"qmo_x_bucket", "up"}
    grafana = 'max by (namespace, model) (qmo_plan_gpus{namespace=~"$namespace"}) == 1'
    assert metric_names(grafana) == {"qmo_plan_gpus"}
    misspelled = metric_names("sum(rate(qmo_reconcile_erors_total[5m])) > 1e3")
    assert misspelled == {"qmo_reconcile_erors_total"}
    assert not misspelled <= exported_metric_names()


def test_the_operator_exports_what_the_docs_say() -> None:
    names = exported_metric_names()
    assert {"qmo_model_phase", "qmo_reconcile_errors_total", "qmo_reconcile_duration_seconds_bucket"} <= names


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "qmo-overview"
    assert dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}


def test_dashboard_queries_name_only_real_metrics() -> None:
    known = exported_metric_names() | EXTERNAL_METRICS
    queries = list(dashboard_queries(json.loads(DASHBOARD.read_text())))
    assert len(queries) > 10
    for expr in queries:
        if expr.startswith("label_values("):
            expr = expr.removeprefix("label_values(").rsplit(",", 1)[0]
        unknown = metric_names(expr) - known
        assert not unknown, f"{expr!r} names metrics nobody exports: {unknown}"


@pytest.mark.parametrize("expr", rule_queries())
def test_alert_rules_name_only_real_metrics(expr: str) -> None:
    unknown = metric_names(expr) - exported_metric_names() - EXTERNAL_METRICS
    assert not unknown, f"{expr!r} names metrics nobody exports: {unknown}"


def test_alerts_cover_what_an_sre_pages_on() -> None:
    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {
        "QuantizedModelNotReady",
        "QuantizedModelFailed",
        "ModelArtifactQuantizationFailed",
        "QmoArtifactCacheNearlyFull",
        "QmoReconcileErrors",
    } <= set(alerts)
    assert "qmo-cache" in alerts["QmoArtifactCacheNearlyFull"]["expr"]
    for rule in alerts.values():
        assert rule["annotations"]["runbook_url"].split("#")[0].endswith("docs/operations.md")
        assert rule["labels"]["severity"] in ("warning", "critical")
