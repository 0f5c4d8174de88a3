"""The deployment artefacts agree with the code and with each other (no broker, no Docker).

Every YAML and JSON file under deploy/ parses; every ``mqcast_*`` series that a dashboard panel or
an alert reads is one the service exports; the compose file, the Kubernetes manifests and the
Dockerfile use commands, flags, variables, paths and ports that exist. Where ``promtool`` or
``kubectl`` is installed, the rules are checked and unit-tested and the kustomization is built.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream.cli import build_parser, parse_command_line
from stream.config import service_config_from_args
from stream.metrics import ServiceMetrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "mqcast.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
K8S = DEPLOY / "k8s"

METRIC_RE = re.compile(r"\bmqcast_[A-Za-z0-9_:]+")

# Sample names a metric family of each type exposes (prometheus_client's exposition).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}


# -- helpers ----------------------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed JSON / YAML tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def referenced_metrics(texts: Iterator[str] | list[str]) -> set[str]:
    """The ``mqcast_*`` names mentioned in some texts (expressions, descriptions, queries)."""
    return {m for text in texts for m in METRIC_RE.findall(text)}


def exported_series() -> set[str]:
    """Every sample name the service's metrics expose, derived from each family's type.

    Labelled metrics have no samples until a label set is used, so the names come from the
    families rather than from a scrape.
    """
    registry = CollectorRegistry()
    ServiceMetrics(registry, (0.1, 0.5, 0.9))
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def _compose() -> dict:
    return _yaml(COMPOSE)


def _k8s() -> dict[str, dict]:
    """The kustomization's resources by kind (one object of each kind here)."""
    kustomization = _yaml(K8S / "kustomization.yaml")
    objects: dict[str, dict] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")):
            assert doc["kind"] not in objects, f"two {doc['kind']} objects; the tests assume one"
            objects[doc["kind"]] = doc
    return objects


def _configmap_env() -> dict[str, str]:
    return _k8s()["ConfigMap"]["data"]


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return capsys.readouterr().out


def _known_env(capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The MQCAST_* variables that serve, topics and replay read (their --help names each)."""
    text = "".join(_help(cmd, capsys) for cmd in ("serve", "topics", "replay"))
    return set(re.findall(r"MQCAST_[A-Z0-9_]+", text))


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


# -- every file parses ------------------------------------------------------------------------------


def test_every_yaml_and_json_file_under_deploy_parses():
    yamls = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
    jsons = sorted(DEPLOY.rglob("*.json"))
    for path in yamls:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        assert docs and all(doc is not None for doc in docs), f"{path} has an empty document"
    for path in jsons:
        json.loads(path.read_text(encoding="utf-8"))
    names = {p.relative_to(DEPLOY).as_posix() for p in [*yamls, *jsons]}
    for expected in (
        "docker-compose.yml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/mqcast.yml",
        "grafana/dashboards/mqcast.json",
        "k8s/kustomization.yaml",
    ):
        assert expected in names


# -- metrics: what is read is what is exported ------------------------------------------------------


def test_exported_series_follow_the_exposition_format():
    names = exported_series()
    assert {"mqcast_events_consumed_total", "mqcast_batch_size_bucket", "mqcast_model_info"} <= names
    assert "mqcast_events_consumed" not in names  # counters are exposed with _total only
    assert referenced_metrics(["rate(mqcast_nope_total[5m]) + mqcast_ready"]) == {
        "mqcast_nope_total",
        "mqcast_ready",
    }


def test_dashboard_reads_only_exported_metrics():
    used = referenced_metrics(_strings(_dashboard()))
    missing = used - exported_series()
    assert not missing, f"the dashboard reads series the service does not export: {sorted(missing)}"
    # Every panel the operators need is there (so an empty dashboard does not pass).
    assert {
        "mqcast_consumer_lag",
        "mqcast_events_consumed_total",
        "mqcast_events_invalid_total",
        "mqcast_events_late_total",
        "mqcast_dead_letters_total",
        "mqcast_forecasts_published_total",
        "mqcast_batch_size_bucket",
        "mqcast_inference_seconds_bucket",
        "mqcast_end_to_end_seconds_bucket",
        "mqcast_realised_wql",
        "mqcast_realised_pinball_loss",
        "mqcast_interval_coverage",
        "mqcast_items_tracked",
        "mqcast_items_evicted_total",
        "mqcast_partitions_paused",
        "mqcast_model_info",
        "mqcast_model_reloads_total",
        "mqcast_ready",
    } <= used


def test_alert_rules_read_only_exported_metrics():
    used = referenced_metrics(_strings(_yaml(ALERTS)))
    missing = used - exported_series()
    assert not missing, f"the alert rules read series the service does not export: {sorted(missing)}"
    assert {
        "mqcast_consumer_lag",
        "mqcast_forecasts_published_total",
        "mqcast_events_consumed_total",
        "mqcast_dead_letters_total",
        "mqcast_interval_coverage",
        "mqcast_ready",
        "mqcast_model_reloads_total",
    } <= used


# -- dashboard --------------------------------------------------------------------------------------


def test_dashboard_structure():
    dash = _dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    panels = _panels(dash)
    ids = [p["id"] for p in dash["panels"]]
    ids += [child["id"] for p in dash["panels"] if p["type"] == "row" for child in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}"
    titles = {p["title"] for p in panels}
    for title in (
        "Consumer lag per partition",
        "Events consumed / s",
        "Forecasts published / s",
        "Batch size",
        "Inference latency",
        "End-to-end latency",
        "Realised wQL",
        "Pinball loss by quantile",
        "Interval coverage",
        "Model version",
        "Model reloads",
        "Ready",
    ):
        assert title in titles
    coverage = next(p for p in panels if p["title"] == "Interval coverage")
    assert any("mqcast_interval_nominal_coverage" in t["expr"] for t in coverage["targets"]), (
        "coverage needs its nominal line"
    )
    latency = next(p for p in panels if p["title"] == "Inference latency")
    assert {"p50", "p99"} <= {t["legendFormat"] for t in latency["targets"]}


def _promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, so Prometheus can parse it."""
    return (
        expr.replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$__interval", "1m")
        .replace("$instance", ".*")
    )


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_dashboard_expressions_are_valid_promql(tmp_path: Path):
    exprs = [_promql(t["expr"]) for p in _panels(_dashboard()) for t in p["targets"]]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- alert rules ------------------------------------------------------------------------------------


def test_alert_rules_cover_the_failure_modes():
    groups = _yaml(ALERTS)["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    for name in (
        "MqcastConsumerLagGrowing",
        "MqcastNoForecastsPublished",
        "MqcastDeadLetterRateHigh",
        "MqcastIntervalCoverageDrift",
        "MqcastNotReady",
        "MqcastModelReloadRefused",
    ):
        assert name in rules
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert re.search(
        r"(deriv|increase|delta)\(mqcast_consumer_lag\[10m\]\)", rules["MqcastConsumerLagGrowing"]["expr"]
    )
    assert rules["MqcastNotReady"]["for"] == "5m"
    assert rules["MqcastIntervalCoverageDrift"]["for"] == "30m"
    assert 'result="refused"' in rules["MqcastModelReloadRefused"]["expr"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_checks_the_rules():
    proc = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_alert_rules_fire_when_they_should():
    # alerts_test.yml feeds synthetic series and states which alerts fire, and which do not.
    proc = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=DEPLOY / "prometheus",
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_serve_and_loads_the_mounted_rules():
    prom = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    compose = _compose()["services"]
    mounts = {
        v.split(":")[1]: v.split(":")[0] for v in compose["prometheus"]["volumes"] if v.startswith("./")
    }
    for rule_file in prom["rule_files"]:
        assert rule_file in mounts, f"{rule_file} is not mounted into the prometheus container"
        assert (DEPLOY / mounts[rule_file]).resolve() == ALERTS
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "mqcast")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    port = compose["serve"]["environment"]["MQCAST_METRICS_PORT"]
    assert targets == [f"serve:{port}"]


# -- docker compose ---------------------------------------------------------------------------------


def test_compose_services_and_images():
    services = _compose()["services"]
    assert {"kafka", "topics", "train", "serve", "replay", "prometheus", "grafana"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:4.3.1"
    roles = set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(","))
    assert roles == {"broker", "controller"}  # KRaft, combined node
    for name in ("topics", "train", "serve", "replay"):
        assert services[name]["build"]["context"] == ".."
        assert (COMPOSE.parent / services[name]["build"]["context"] / "Dockerfile").is_file()
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_compose_serve_waits_for_the_model_and_topics_and_has_a_gpu():
    services = _compose()["services"]
    serve = services["serve"]
    deps = serve["depends_on"]
    assert deps["train"]["condition"] == "service_completed_successfully"
    assert deps["topics"]["condition"] == "service_completed_successfully"
    assert deps["kafka"]["condition"] == "service_healthy"
    devices = serve["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    env = serve["environment"]
    assert env["MQCAST_METRICS_HOST"] == "0.0.0.0"
    assert env["MQCAST_BOOTSTRAP"] == "kafka:9092"
    # The model serve loads is the one train writes, through the same named volume.
    model = env["MQCAST_MODEL"]
    serve_volume = next(v for v in serve["volumes"] if model.startswith(v.split(":")[1] + "/"))
    train_volume = next(
        v for v in services["train"]["volumes"] if v.split(":")[0] == serve_volume.split(":")[0]
    )
    assert not train_volume.endswith(":ro")
    assert f"mv {model}.partial {model}" in services["train"]["command"][0]


def _train_argv(services: dict) -> list[str]:
    script = services["train"]["command"][0].replace("$${TRAIN_MINUTES}", "4")
    match = re.search(r"mqcast (train .*?)(?:&&|;|$)", script)
    assert match, script
    return shlex.split(match.group(1))


def test_compose_commands_parse_with_the_cli():
    services = _compose()["services"]
    parser = build_parser()
    for name in ("topics", "serve", "replay"):
        argv = [a.replace("${REPLAY_SPEED:-86400}", "86400") for a in services[name]["command"]]
        parser.parse_args(argv)
    args = parser.parse_args(_train_argv(services))
    assert args.out.name == "model.pt.partial"


def test_compose_data_files_exist_in_the_repository():
    services = _compose()["services"]
    for name in ("train", "replay"):
        mount = next(v for v in services[name]["volumes"] if v.startswith("../data:"))
        host, container = mount.split(":")[:2]
        text = " ".join(services[name]["command"])
        paths = re.findall(re.escape(container) + r"/[\w./-]+", text)
        assert paths, name
        for p in paths:
            assert (COMPOSE.parent / host / Path(p).relative_to(container)).is_file(), p
    for svc in ("prometheus", "grafana"):
        for mount in services[svc]["volumes"]:
            if mount.startswith("./"):
                assert (COMPOSE.parent / mount.split(":")[0]).exists(), mount


def test_compose_variables_are_ones_the_service_reads(capsys):
    known = _known_env(capsys)
    for name in ("topics", "serve", "replay"):
        env = _compose()["services"][name]["environment"]
        unknown = {k for k in env if k.startswith("MQCAST_")} - known
        assert not unknown, f"{name}: {sorted(unknown)} are not read by mqcast"


# -- kubernetes -------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    kustomization = _yaml(K8S / "kustomization.yaml")
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    kinds = set(_k8s())
    assert {"ConfigMap", "Deployment", "Service", "ScaledObject", "PrometheusRule"} <= kinds
    assert kinds & {"PodMonitor", "ServiceMonitor"}


def test_deployment_requests_a_gpu_and_probes_health_and_readiness():
    objs = _k8s()
    deployment = objs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) == 1
    assert int(resources["requests"]["nvidia.com/gpu"]) == 1
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = int(_configmap_env()["MQCAST_METRICS_PORT"])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == port
    assert pod["terminationGracePeriodSeconds"] >= 60  # the SIGTERM drain snapshots state
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert container["envFrom"][0]["configMapRef"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    # The model path of the ConfigMap lies in the mounted model volume.
    model = _configmap_env()["MQCAST_MODEL"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[str(Path(model).parent)]["readOnly"] is True


def test_service_and_pod_monitor_select_the_pods():
    objs = _k8s()
    labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    container = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    service = objs["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    monitor = objs.get("PodMonitor") or objs["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    endpoints = monitor["spec"].get("podMetricsEndpoints") or monitor["spec"]["endpoints"]
    assert {e["port"] for e in endpoints} <= port_names


def test_scaled_object_stays_within_the_partitions_and_watches_the_group():
    objs = _k8s()
    scaled = objs["ScaledObject"]
    env = _configmap_env()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == objs["Deployment"]["metadata"]["name"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["maxReplicaCount"] <= int(env["MQCAST_PARTITIONS"])
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == env["MQCAST_BOOTSTRAP"]
    assert meta["consumerGroup"] == env["MQCAST_GROUP_ID"]
    assert meta["topic"] == env["MQCAST_SALES_TOPIC"]


def test_prometheus_rule_matches_the_compose_alerts():
    assert _k8s()["PrometheusRule"]["spec"]["groups"] == _yaml(ALERTS)["groups"]


def test_configmap_is_a_valid_service_configuration(monkeypatch, capsys):
    env = _configmap_env()
    assert env["MQCAST_METRICS_HOST"] == "0.0.0.0"
    assert not set(env) - _known_env(capsys), "the ConfigMap sets variables mqcast does not read"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # Through the same parsing as `mqcast serve` (types, choices), then the typed configuration.
    cfg = service_config_from_args(parse_command_line(["serve"]))
    assert cfg.kafka.group_id == env["MQCAST_GROUP_ID"]
    assert str(cfg.model.path) == env["MQCAST_MODEL"]
    parse_command_line(["topics"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds():
    proc = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    images = {c["image"] for d in docs for c in _containers(d)}
    assert images and all(not image.startswith("mqcast:") for image in images), "images: rewrites the image"


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    return spec.get("template", {}).get("spec", {}).get("containers", [])


# -- Dockerfile -------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_and_runs_mqcast():
    instructions = _dockerfile_instructions()
    assert sum(word == "FROM" for word, _ in instructions) >= 2
    final = _final_stage()
    users = [arg for word, arg in final if word == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the runtime stage must drop root"
    assert json.loads(next(arg for word, arg in final if word == "ENTRYPOINT")) == ["mqcast"]
    assert json.loads(next(arg for word, arg in final if word == "CMD")) == ["serve"]
    assert "9464" in next(arg for word, arg in final if word == "EXPOSE").split()
    env = " ".join(arg for word, arg in final if word == "ENV")
    assert "MQCAST_METRICS_HOST=0.0.0.0" in env
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "mqcast" in pyproject["project"]["scripts"]


def test_dockerfile_healthcheck_asks_healthz_with_valid_python():
    health = next(arg for word, arg in _final_stage() if word == "HEALTHCHECK")
    assert "/healthz" in health
    exec_form = json.loads(health[health.index("CMD") + 3 :].strip())
    assert exec_form[:2] == ["python", "-c"]
    compile(exec_form[2], "<healthcheck>", "exec")


def test_dockerfile_builds_every_c_extension_and_checks_it_loads():
    builder = " ".join(arg for word, arg in _dockerfile_instructions() if word == "RUN")
    assert "gcc" in builder, "the builder needs a C compiler for the C extensions"
    extensions = re.findall(r'Extension\("([\w.]+)"', (REPO / "setup.py").read_text(encoding="utf-8"))
    assert extensions, "setup.py declares no extension"
    imported = {m.strip() for names in re.findall(r"import ([\w., ]+)", builder) for m in names.split(",")}
    assert set(extensions) <= imported, "a build that lost an extension must fail"


def test_dockerfile_copies_the_packages_and_dockerignore_keeps_them():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    copied = {
        arg.split()[0] for word, arg in _dockerfile_instructions() if word == "COPY" and "--from" not in arg
    }
    needed = {*pyproject["tool"]["setuptools"]["packages"], "pyproject.toml", pyproject["project"]["readme"]}
    needed.add("setup.py")  # the C extensions' build (stream._messages, stream._records)
    assert needed <= copied
    ignored = {
        line.strip().lstrip("/")
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not needed & ignored
