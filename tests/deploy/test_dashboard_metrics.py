"""Every metric (and label value) the alert rules and the Grafana dashboard use is one the worker
exports, and every dashboard query is valid PromQL. Dashboards and rules that name a metric the
worker does not have show nothing and never fire; this catches a rename on either side."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import DASHBOARDS_DIR, rule_groups, run
from prometheus_client import CollectorRegistry

# Series Prometheus itself adds, and the labels it attaches to every scraped series.
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
# Panels the issue asks the dashboard to have, by the metric each one is built on.
REQUIRED_DASHBOARD_METRICS = {
    "anomaly_worker_records_total",  # throughput by outcome
    "anomaly_worker_expected_anomaly_ratio",  # anomaly ratio vs expected
    "anomaly_worker_reconstruction_error_bucket",  # reconstruction-error heatmap
    "anomaly_worker_consumer_lag_records",  # lag per partition
    "anomaly_worker_dead_letters_total",  # dead-letter rate
    "anomaly_worker_batch_duration_seconds_bucket",  # batch latency
    "anomaly_worker_model_info",  # model version
}
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_TOKEN = re.compile(r"(?<![\w:$.])([a-zA-Z_:][a-zA-Z0-9_:]*)")


class Exported:
    """Series names, label names and pre-created label values of the worker's registry."""

    def __init__(self) -> None:
        from worker.metrics import WorkerMetrics

        registry = CollectorRegistry()
        metrics = WorkerMetrics(registry)
        self.series: dict[str, set[str]] = {}  # series name -> label names
        self.values: dict[tuple[str, str], set[str]] = {}  # (series, label) -> values seen
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                    "gauge": [""], "summary": ["_sum", "_count"], "info": ["_info"]}  # fmt: skip
        labelnames = {
            getattr(m, "_name", None): tuple(getattr(m, "_labelnames", ()))
            for m in vars(metrics).values()
        }
        for family in registry.collect():
            labels = set(labelnames.get(family.name) or ())
            for sample in family.samples:
                labels |= set(sample.labels) - {"le"}
            for suffix in suffixes.get(family.type, [""]):
                name = family.name + suffix
                self.series[name] = labels | ({"le"} if suffix == "_bucket" else set())
            for sample in family.samples:
                for label, value in sample.labels.items():
                    self.values.setdefault((sample.name, label), set()).add(value)


@pytest.fixture(scope="module")
def exported() -> Exported:
    return Exported()


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every query of every dashboard, template variables included."""
    out = []
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.name}: {panel['title']}", target["expr"]))
        for var in board.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                out.append((f"{path.name}: ${var['name']}", var["query"]["query"]))
    assert out, "no dashboard queries found"
    return out


def rule_exprs() -> list[tuple[str, str]]:
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in rule_groups()
        for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    return {
        rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule
    }


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, strings and label lists removed)."""
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r'"[^"]*"', " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"label_values\(([^,)]+)(,[^)]*)?\)", r" \1 ", expr)
    names = set()
    for token in _TOKEN.findall(expr):
        if token.startswith("anomaly_worker_") or ":" in token or token in PROMETHEUS_SERIES:
            names.add(token)
    return names


def check_expr(where: str, expr: str, exported: Exported) -> list[str]:
    problems = []
    known = set(exported.series) | recorded_names() | PROMETHEUS_SERIES
    for name in metric_names(expr):
        if name not in known:
            problems.append(f"{where}: {name} is not exported by worker/metrics.py")
    for name, matchers in _SELECTOR.findall(expr):
        if name not in exported.series:
            continue
        for label, op, value in _MATCHER.findall(matchers):
            if label in TARGET_LABELS:
                continue
            if label not in exported.series[name]:
                problems.append(f"{where}: {name} has no label {label}")
                continue
            seen = exported.values.get((name, label))
            if seen and op in {"=", "=~"}:
                for literal in value.split("|"):
                    if literal not in seen:
                        problems.append(f"{where}: {name}{{{label}}} never takes {literal!r}")
    used = [n for n in metric_names(expr) if n in exported.series]
    for labels in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in (s.strip() for s in labels.split(",")):
            ignored = not label or label in TARGET_LABELS | {"le"} or not used
            if not ignored and not any(label in exported.series[n] for n in used):
                problems.append(f"{where}: no metric in the expression has label {label}")
    return problems


def test_rules_use_only_exported_metrics(exported: Exported) -> None:
    problems = [p for where, expr in rule_exprs() for p in check_expr(where, expr, exported)]
    assert not problems, "\n".join(problems)


def test_dashboard_uses_only_exported_metrics(exported: Exported) -> None:
    problems = [p for where, expr in dashboard_exprs() for p in check_expr(where, expr, exported)]
    assert not problems, "\n".join(problems)


def test_dashboard_has_the_required_panels() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_exprs()))
    assert used >= REQUIRED_DASHBOARD_METRICS, REQUIRED_DASHBOARD_METRICS - used
    board = json.loads((DASHBOARDS_DIR / "anomaly-worker.json").read_text())
    kinds = {panel["type"] for panel in board["panels"]}
    assert "heatmap" in kinds
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, f"{panel['title']} is wider than the grid"
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana's variables replaced by sample values)."""
    rules: list[dict[str, Any]] = []
    for i, (_, expr) in enumerate(dashboard_exprs()):
        if expr.startswith("label_values("):
            continue
        concrete = expr.replace("$__rate_interval", "1m").replace("$job", ".*")
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    run([promtool, "check", "rules", str(path)])


def test_metric_name_extraction_sees_what_it_should() -> None:
    names = metric_names(
        'sum by (job) (rate(anomaly_worker_records_total{outcome="anomaly"}[5m])) '
        "/ job:anomaly_worker_anomaly_ratio:rate5m > on (job) up"
    )
    assert names == {
        "anomaly_worker_records_total",
        "job:anomaly_worker_anomaly_ratio:rate5m",
        "up",
    }
