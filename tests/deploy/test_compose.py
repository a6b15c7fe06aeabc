"""The Compose stack validates against the Compose specification and is wired together: the
files it mounts exist, one-shot jobs gate the workers, Prometheus scrapes every replica."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import COMPOSE_FILE, DEPLOY, require_tool, run

SERVICES = {"kafka", "kafka-init", "trainer", "worker", "producer", "prometheus", "alertmanager",
            "grafana"}  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_file_matches_the_compose_specification() -> None:
    checker = require_tool("check-jsonschema", "pip install check-jsonschema (a dev dependency)")
    run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)])


def test_stack_has_every_service_with_pinned_images(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services.keys() >= SERVICES
    assert services["kafka"]["image"].startswith("apache/kafka:")
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"


def test_bind_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).resolve().exists(), f"{name}: {source}"
    build = compose["services"]["worker"]["build"]
    assert (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).exists()


def test_workers_start_after_topics_and_model_and_scale(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["worker"]
    assert worker["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert worker["deploy"]["replicas"] >= 2
    assert "ports" not in worker, "a fixed host port would stop `--scale worker=N`"
    assert worker["read_only"] is True and "/tmp" in worker["tmpfs"]
    env = worker["environment"]
    assert env["ANOMALY_METRICS_PORT"] == "8000"
    # Models travel through the model topic: only the trainer has a model volume; each worker
    # follows the topic and caches it on its own writable tmpfs.
    trainer = services["trainer"]
    assert "models:/models" in trainer["volumes"]
    assert "volumes" not in worker, "worker replicas need no shared volume"
    assert env["ANOMALY_MODEL_TOPIC"] == trainer["environment"]["MODEL_TOPIC"]
    assert env["ANOMALY_MODEL_DIR"].startswith("/tmp/")
    assert trainer["command"][-1].startswith("test -f /models/CURRENT ||")
    assert "anomaly-trainer fit" in trainer["command"][-1]
    assert "--publish-topic" in trainer["command"][-1]
    assert trainer["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    init_env = services["kafka-init"]["environment"]
    assert init_env["MODEL_TOPIC"] == env["ANOMALY_MODEL_TOPIC"]
    assert "cleanup.policy=compact" in services["kafka-init"]["command"][-1]
    assert services["producer"]["command"][:3] == ["python", "-m", "scripts.demo_producer"]
    # The topic job makes as many input partitions as the worker replicas can usefully use.
    init = services["kafka-init"]
    partitions = int(str(init["environment"]["INPUT_PARTITIONS"]).split(":-")[-1].rstrip("}"))
    assert partitions >= worker["deploy"]["replicas"]


def test_prometheus_scrapes_worker_replicas_and_loads_rules(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_sd = jobs["anomaly-worker"]["dns_sd_configs"][0]
    assert worker_sd["names"] == ["worker"] and worker_sd["port"] == 8000
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "../prometheus:/etc/prometheus:ro" in mounts
    assert config["rule_files"] == ["rules/*.yml"]


def test_grafana_provisions_datasource_and_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = (COMPOSE_FILE.parent / "../grafana/provisioning").resolve()
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    ds = datasources["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "anomaly-worker.yaml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert mounts["../grafana/dashboards"] == path
    host_dir = (COMPOSE_FILE.parent / "../grafana/dashboards").resolve()
    dashboards = list(Path(host_dir).glob("*.json"))
    assert dashboards, "no dashboard to provision"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path) and (host_dir / Path(home).name).exists()


def test_commands_use_flags_the_programs_accept(compose: dict[str, Any]) -> None:
    """The producer's and the trainer's flags in the stack exist in their --help."""
    services = compose["services"]
    producer_help = run([sys.executable, "-m", "scripts.demo_producer", "--help"]).stdout
    for flag in (a for a in services["producer"]["command"] if a.startswith("--")):
        assert flag in producer_help, f"scripts.demo_producer has no {flag}"
    trainer = Path(sys.executable).parent / "anomaly-trainer"
    fit_help = run([str(trainer), "fit", "--help"]).stdout
    for flag in re.findall(r"--[a-z][a-z-]+", services["trainer"]["command"][-1]):
        assert flag in fit_help, f"anomaly-trainer fit has no {flag}"


def test_each_service_runs_the_image_target_it_needs(compose: dict[str, Any]) -> None:
    """The worker's image has no TensorFlow; the trainer and the demo producer (synthetic data
    from trainer code) use the trainer's."""
    services = compose["services"]
    targets = {
        name: services[name]["build"]["target"] for name in ("worker", "trainer", "producer")
    }
    assert targets == {"worker": "worker", "trainer": "trainer", "producer": "trainer"}
    assert services["worker"]["image"].startswith("kafka-anomaly-worker:")
    assert services["trainer"]["image"].startswith("kafka-anomaly-trainer:")
