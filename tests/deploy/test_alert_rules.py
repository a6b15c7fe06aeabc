"""The alert rules load in Prometheus, and each alert has promtool unit tests that see it fire
and see it stay quiet."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import yaml
from deploy_helpers import DEPLOY, RULE_TESTS_DIR, alert_rules, rule_files, run

# What the issue asks the rules to cover, by alert name.
REQUIRED_ALERTS = {
    "AnomalyRatioHigh",  # anomaly ratio well above the expected ratio for some minutes
    "AnomalyWorkerDown",  # a worker down
    "ConsumerLagHigh",  # consumer lag high and growing
    "DeadLettersArriving",  # dead letters arriving
    "NoRecordsScored",  # no records scored
    "ModelReloadFailing",  # model reloads failing
    "EndToEndLatencyHigh",  # latency above its objective
}


def _rule_test_files() -> list[Path]:
    files = sorted(RULE_TESTS_DIR.glob("*.test.yml"))
    assert files, f"no promtool test files in {RULE_TESTS_DIR}"
    return files


def test_rule_files_are_valid(promtool: str) -> None:
    out = run([promtool, "check", "rules", *map(str, rule_files())]).stdout
    assert "SUCCESS" in out


def test_promtool_unit_tests_pass(promtool: str) -> None:
    out = run([promtool, "test", "rules", *map(str, _rule_test_files())]).stdout
    assert "SUCCESS" in out and "FAILED" not in out


def test_compose_prometheus_config_is_valid(promtool: str) -> None:
    """prometheus.yml parses and its rule_files glob finds the rules."""
    out = run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")]).stdout
    for path in rule_files():
        assert path.name in out, f"prometheus.yml does not load {path.name}"


def test_required_alerts_exist_with_severity_and_runbook() -> None:
    alerts = {rule["alert"]: rule for rule in alert_rules()}
    assert alerts.keys() >= REQUIRED_ALERTS, REQUIRED_ALERTS - alerts.keys()
    runbook = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text().lower()
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys(), name
        anchor = rule["annotations"]["runbook_url"].split("#")[1]
        assert anchor == name.lower(), f"{name}: runbook anchor {anchor!r}"
        assert f"### {name.lower()}" in runbook, f"docs/operations.md has no runbook for {name}"


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    firing: dict[str, int] = defaultdict(int)
    quiet: dict[str, int] = defaultdict(int)
    for path in _rule_test_files():
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    firing[check["alertname"]] += 1
                else:
                    quiet[check["alertname"]] += 1
    names = {rule["alert"] for rule in alert_rules()}
    assert not names - firing.keys(), f"alerts never tested firing: {sorted(names - firing.keys())}"
    assert not names - quiet.keys(), f"alerts never tested quiet: {sorted(names - quiet.keys())}"
    assert not (firing.keys() | quiet.keys()) - names, "tests name alerts that do not exist"


def test_alertmanager_config_routes_to_declared_receivers() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        assert route.get("receiver", config["route"]["receiver"]) in receivers
    alert_names = {rule["alert"] for rule in alert_rules()}
    for rule in config.get("inhibit_rules", []):
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            value = matcher.split("=", 1)[1].strip('~"')
            for name in value.split("|"):
                assert name in alert_names, f"inhibit rule names unknown alert {name}"


def test_kubernetes_prometheusrule_is_rendered_from_these_rules() -> None:
    run([sys.executable, str(DEPLOY / "tools" / "render-prometheusrule.py"), "--check"])
