"""deploy/: alert rules (promtool), the Grafana dashboard, the KEDA ScaledObject and the
compose `monitoring` profile, checked without Docker or Kubernetes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from broker import keys
from tests.services import unavailable

from .files import ROOT, load_compose, service_environment

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "agentstore.json"

# The workers' metric names, as the observability issue fixes them. Kept here until the
# metrics code exports its own list; histograms also appear as _bucket, _sum and _count.
COUNTERS_AND_GAUGES = {
    "agentstore_ops_applied_total",
    "agentstore_ops_stale_total",
    "agentstore_dead_letters_total",
    "agentstore_dead_letters",
    "agentstore_queue_depth",
    "agentstore_queue_ops",
    "agentstore_pending_oldest_seconds",
    "agentstore_reaper_republished_total",
    "agentstore_retries_total",
    "agentstore_store_errors_total",
    "agentstore_cosmos_requests_total",
    "agentstore_cosmos_request_charge_total",
    "agentstore_worker_processes",
}
HISTOGRAMS = {"agentstore_apply_lag_seconds", "agentstore_batch_ops", "agentstore_batch_seconds"}
METRICS = COUNTERS_AND_GAUGES | {
    f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")
}
NAME = re.compile(r"\bagentstore_[a-z_]+")


def _yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def _promtool(*args: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool (apt-get install prometheus), to check the alert rules")
    result = subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=120, cwd=ALERTS.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rules_are_valid() -> None:
    _promtool("check", "rules", ALERTS.name)


def test_each_alert_fires_and_stays_quiet_in_its_unit_tests() -> None:
    tests = _yaml(ALERTS.parent / "alerts.test.yml")
    alerts = {rule["alert"] for group in _yaml(ALERTS)["groups"] for rule in group["rules"]}
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == alerts
    _promtool("test", "rules", "alerts.test.yml")


def _dashboard_exprs(panels: list[dict[str, Any]]) -> Iterator[str]:
    for panel in panels:
        yield from (target["expr"] for target in panel.get("targets", []))
        yield from _dashboard_exprs(panel.get("panels", []))


def _alert_exprs() -> Iterator[str]:
    for group in _yaml(ALERTS)["groups"]:
        yield from (rule["expr"] for rule in group["rules"])


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_only_the_workers_metric_names_are_used(source: str) -> None:
    if source == "dashboard":
        exprs = list(_dashboard_exprs(json.loads(DASHBOARD.read_text())["panels"]))
    else:
        exprs = list(_alert_exprs())
    used = {name for expr in exprs for name in NAME.findall(expr)}
    assert used, f"no agentstore metric in the {source}"
    assert used <= METRICS, f"not metrics the workers export: {sorted(used - METRICS)}"


def test_the_dashboard_shows_what_operators_need_on_the_provisioned_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    text = " ".join(_dashboard_exprs(dashboard["panels"]))
    for needed in [
        "agentstore_ops_applied_total",
        "agentstore_apply_lag_seconds_bucket",
        "agentstore_queue_depth",
        "agentstore_pending_oldest_seconds",
        "agentstore_dead_letters",
        "agentstore_retries_total",
        "agentstore_batch_ops_bucket",
        "agentstore_worker_processes",
    ]:
        assert needed in text, f"the dashboard does not show {needed}"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    (variable,) = dashboard["templating"]["list"]
    datasources = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert variable["current"]["value"] == datasources["datasources"][0]["uid"]


def test_the_monitoring_profile_scrapes_the_workers_and_provisions_the_dashboard() -> None:
    services = load_compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    mounts = {
        ROOT / volume.split(":")[0]: volume.split(":")[1]
        for service in (prometheus, grafana)
        for volume in service["volumes"]
        if volume.startswith("./")
    }
    assert all(path.is_dir() for path in mounts), mounts
    config = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert all((ALERTS.parent / rules).is_file() for rules in config["rule_files"])
    (job,) = config["scrape_configs"]
    assert 'job="' + job["job_name"] + '"' in "".join(_alert_exprs())
    assert all(name in services for sd in job["dns_sd_configs"] for name in sd["names"])
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "agentstore.yml")
    assert mounts[DASHBOARD.parent] == provider["providers"][0]["options"]["path"]


def test_the_workers_serve_metrics_on_the_port_prometheus_scrapes() -> None:
    worker = load_compose()["services"]["worker"]
    env = service_environment(worker, {"POSTGRES_PASSWORD": "x"})
    assert env["CELERY_BROKER_URL"], "the shared settings are still merged in"
    (job,) = _yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    ports = {str(sd["port"]) for sd in job["dns_sd_configs"] if "worker" in sd["names"]}
    assert ports == {env["AGENTSTORE_METRICS_PORT"]}


def test_the_readme_lists_every_metric() -> None:
    text = (ROOT / "README.md").read_text()
    observe = text[text.index("## Observe it") :]
    observe = observe[: observe.index("\n## ", 1)]
    missing = sorted(name for name in COUNTERS_AND_GAUGES | HISTOGRAMS if name not in observe)
    assert not missing, f"README's 'Observe it' does not name {missing}"


def test_keda_scales_the_workers_on_the_queue_list() -> None:
    scaled = _yaml(DEPLOY / "kubernetes" / "keda-scaledobject.yaml")
    assert scaled["kind"] == "ScaledObject"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == keys.QUEUE
    # One worker always stays: it finishes messages in flight and runs the reaper.
    assert scaled["spec"]["minReplicaCount"] >= 1
