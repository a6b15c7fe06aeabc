"""The kustomize base and example overlay render, the built-in kinds validate against the
Kubernetes schemas, and the custom resources (ServiceMonitor, PrometheusRule, ScaledObject,
TriggerAuthentication) hold together with the objects they point at."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_helpers import rule_groups

# Oldest Kubernetes we support (CronJob timeZone is GA since 1.27) and the newest schemas we have.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject",
                "TriggerAuthentication"}  # fmt: skip


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for d in docs:
        if d["kind"] in {"Deployment", "Job"}:
            specs.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
        elif d["kind"] == "CronJob":
            specs.append(
                (d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"])
            )
    return specs


@pytest.fixture(params=["base", "overlay"])
def rendered(
    request: pytest.FixtureRequest,
    k8s_base: list[dict[str, Any]],
    k8s_overlay: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    return k8s_base if request.param == "base" else k8s_overlay


def test_builtin_kinds_validate_strictly(rendered: list[dict[str, Any]]) -> None:
    builtin = [d for d in rendered if d["kind"] not in CUSTOM_KINDS]
    assert {"Deployment", "Service", "PodDisruptionBudget", "Job", "CronJob", "ConfigMap",
            "PersistentVolumeClaim", "ServiceAccount"} <= {d["kind"] for d in builtin}  # fmt: skip
    for version in K8S_VERSIONS:
        for doc in builtin:
            kubernetes_validate.validate(doc, version, strict=True)


def test_worker_deployment_is_production_shaped(rendered: list[dict[str, Any]]) -> None:
    deployment = one(rendered, "Deployment", "anomaly-worker")
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)
    (container,) = pod["containers"]
    assert container["command"] == ["anomaly-worker"]
    assert container["image"].split(":")[0].endswith("kafka-anomaly-worker"), "no TensorFlow"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    assert port == 8000
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "TF import + warm-up"
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001, "the image's numeric user"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "writable /tmp on a read-only root"
    # Models come from the model topic: the model directory is a private, writable cache.
    config_name = container["envFrom"][0]["configMapRef"]["name"]
    config = one(rendered, "ConfigMap", config_name)["data"]
    assert config["ANOMALY_MODEL_TOPIC"]
    cache = mounts[config["ANOMALY_MODEL_DIR"]]
    assert "emptyDir" in volumes[cache["name"]] and not cache.get("readOnly")
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v], "no shared volume"
    assert pod["terminationGracePeriodSeconds"] > 10, "the worker drains within 10 s"


def test_config_and_secret_references_resolve(rendered: list[dict[str, Any]]) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    for workload, pod in pod_specs(rendered):
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in names, workload
                if "secretRef" in source and not source["secretRef"].get("optional"):
                    assert ("Secret", source["secretRef"]["name"]) in names, workload
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names, workload


def test_worker_configmap_holds_only_real_settings(rendered: list[dict[str, Any]]) -> None:
    from worker.settings import WorkerSettings

    known = {f"ANOMALY_{name.upper()}" for name in WorkerSettings.model_fields}
    deployment = one(rendered, "Deployment", "anomaly-worker")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    config_name = container["envFrom"][0]["configMapRef"]["name"]
    data = one(rendered, "ConfigMap", config_name)["data"]
    assert set(data) <= known, f"not worker settings: {sorted(set(data) - known)}"
    for secret_key in ("ANOMALY_SASL_PASSWORD", "ANOMALY_SSL_PASSWORD"):
        assert secret_key not in data, "secrets belong in a Secret"
    if data.get("ANOMALY_SSL_CAFILE"):
        ca_dir = data["ANOMALY_SSL_CAFILE"].rsplit("/", 1)[0]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert ca_dir in mounts, "the CA file is mounted where the setting points"


def test_service_pdb_and_trainer_select_the_right_pods(rendered: list[dict[str, Any]]) -> None:
    deployment = one(rendered, "Deployment", "anomaly-worker")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(rendered, "Service", "anomaly-worker")
    assert matches(service["spec"]["selector"], pod_labels)
    assert {p["name"] for p in service["spec"]["ports"]} == {"metrics"}
    pdb = one(rendered, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    job = one(rendered, "Job")
    cron = one(rendered, "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    worker_selector = deployment["spec"]["selector"]["matchLabels"]
    for template in (job["spec"]["template"], cron["spec"]["jobTemplate"]["spec"]["template"]):
        (container,) = template["spec"]["containers"]
        assert container["image"].split(":")[0].endswith("kafka-anomaly-trainer")
        assert "anomaly-trainer" in " ".join(container["command"] + container.get("args", []))
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/models", "/tmp"}
        command = " ".join(container["command"] + container.get("args", []))
        assert "--publish-topic" in command and "MODEL_TOPIC_URL" in command
        # Trainer pods are neither worker replicas nor disrupted by the worker's budget.
        assert not matches(worker_selector, template["metadata"]["labels"])
        assert not matches(pdb["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])


def test_overlay_custom_resources_hold_together(k8s_overlay: list[dict[str, Any]]) -> None:
    docs = k8s_overlay
    namespace = one(docs, "Namespace")["metadata"]["name"]
    assert all(
        d["metadata"].get("namespace") == namespace for d in docs if d["kind"] != "Namespace"
    )
    deployment = one(docs, "Deployment", "anomaly-worker")
    service = one(docs, "Service", "anomaly-worker")

    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }
    assert all(e.get("path", "/metrics") == "/metrics" for e in monitor["spec"]["endpoints"])
    # The rules select job="anomaly-worker": the monitor must produce that job label.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "anomaly-worker"

    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == rule_groups(), "PrometheusRule differs from deploy/prometheus"

    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    partitions = int(scaled["metadata"]["annotations"]["kafka-anomaly/input-topic-partitions"])
    spec = scaled["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    config_name = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]
    config = one(docs, "ConfigMap", config_name["configMapRef"]["name"])["data"]
    assert meta["consumerGroup"] == config["ANOMALY_GROUP_ID"]
    assert meta["topic"] == config["ANOMALY_INPUT_TOPIC"]
    assert meta["bootstrapServers"] == config["ANOMALY_BOOTSTRAP_SERVERS"]
    assert meta["allowIdleConsumers"] == "false", "KEDA must never exceed the partition count"
    assert int(meta["lagThreshold"]) > 0

    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in {"username", "password", "ca", "cert", "key", "sasl", "tls"}
        secret = secrets[ref["name"]]
        assert ref["key"] in {**secret.get("data", {}), **secret.get("stringData", {})}
    if config.get("ANOMALY_SECURITY_PROTOCOL") == "SASL_SSL":
        assert meta["tls"] == "enable"
        assert meta["sasl"] == config["ANOMALY_SASL_MECHANISM"].lower().replace("-sha-", "_sha")


def test_base_needs_no_custom_resource_definitions(k8s_base: list[dict[str, Any]]) -> None:
    assert not [d["kind"] for d in k8s_base if d["kind"] in CUSTOM_KINDS]
    assert yaml.safe_dump(k8s_base)  # renders to plain YAML


def test_trainer_publishes_to_the_topic_the_workers_follow(rendered: list[dict[str, Any]]) -> None:
    from anomaly_contract.model_topic_format import parse_topic_url

    deployment = one(rendered, "Deployment", "anomaly-worker")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    worker = one(rendered, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]
    job = one(rendered, "Job")
    (trainer,) = job["spec"]["template"]["spec"]["containers"]
    config = one(rendered, "ConfigMap", trainer["envFrom"][0]["configMapRef"]["name"])["data"]
    bootstrap, topic = parse_topic_url(config["MODEL_TOPIC_URL"])
    assert topic == worker["ANOMALY_MODEL_TOPIC"]
    assert bootstrap == worker["ANOMALY_BOOTSTRAP_SERVERS"]
