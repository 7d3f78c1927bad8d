"""The compose file, Prometheus config, alert rules and Grafana dashboard: they load,
they point at each other, and every metric they name is one the worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from worker.observability.http import HealthState
from worker.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def exported_names() -> set[str]:
    """Every sample name a worker's /metrics can carry (all metrics touched once)."""
    metrics = Metrics()
    metrics.export_health(HealthState())
    metrics.rules_version("v")
    metrics.owned_partitions([1])
    metrics.observe_batch(0.1)
    metrics.observe_confirm_latency(0.1)
    return {sample.name for family in text_string_to_metric_families(metrics.render().decode())
            for sample in family.samples}


def named_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\binbox_rules_[a-z_]+", expr))


def test_compose_serves_metrics_and_has_an_observability_profile() -> None:
    """(The worker's health check is the image's: tests/test_packaging.py.)"""
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    worker = services["worker"]
    assert "9464" in worker["expose"]
    assert "9464:9464" in worker["ports"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
    assert worker["profiles"] == ["single"]


def test_prometheus_scrapes_the_workers_and_its_alerts_name_real_metrics() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    [job] = config["scrape_configs"]
    assert job["dns_sd_configs"][0]["names"] == ["worker"]
    assert job["dns_sd_configs"][0]["port"] == 9464
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]  # ./deploy/prometheus
    rules = load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"][0]["rules"]
    exported = exported_names()
    assert len(rules) >= 8
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= rule.keys()
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert named_metrics(rule["expr"]) <= exported, rule["alert"]


def test_grafana_dashboard_has_the_panels_and_queries_real_metrics() -> None:
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" /
                           "prometheus.yml")["datasources"][0]
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" /
                         "inbox-rules.yml")["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    with (DEPLOY / "grafana" / "dashboards" / "inbox-rules.json").open() as file:
        dashboard = json.load(file)

    panels = dashboard["panels"]
    titles = {panel["title"] for panel in panels}
    assert {"Events consumed /s", "Updates published /s", "Dead letters by family /s",
            "Batch latency p50 / p99", "Unacked events", "Cached accounts", "Owned partitions",
            "Rules version"} <= titles
    exported = exported_names()
    queried: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"]
        for target in panel["targets"]:
            names = named_metrics(target["expr"])
            assert names, target["expr"]
            assert names <= exported, (panel["title"], names - exported)
            queried |= names
    assert {"inbox_rules_events_consumed_total", "inbox_rules_updates_published_total",
            "inbox_rules_dead_letters_total", "inbox_rules_batch_duration_seconds_bucket",
            "inbox_rules_unacked_events", "inbox_rules_cached_accounts",
            "inbox_rules_owned_partitions", "inbox_rules_rules_info"} <= queried
    # Panels must not overlap on Grafana's 24-column grid.
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine
