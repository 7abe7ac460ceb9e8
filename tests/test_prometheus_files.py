"""deploy/prometheus/ read as files, without Prometheus: every alert is unit-tested both ways and
documented, every series the alerts and the dashboard read is one the daemon exports, and every
dashboard query follows its variables. `make test-prometheus` runs them against a real Prometheus."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar.daemon.metrics import Metrics
from tests.support import REPO

DEPLOY = REPO / "deploy" / "prometheus"
ALERTS = DEPLOY / "alerts.yaml"
DASHBOARD = DEPLOY / "dashboard.json"
OPERATIONS = REPO / "docs" / "operations.md"

# A series a PromQL expression reads: a metric this project names, with its label matchers.
SELECTOR = re.compile(r"\b(?:up|sidecar_\w+|process_\w+)\b(?:\{[^}]*\})?")
# What the text format appends to a family's name in its series.
SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    queries = [
        variable["query"]["query"] for variable in dashboard()["templating"]["list"] if variable["type"] == "query"
    ]
    return queries + [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def test_every_alert_is_unit_tested_firing_and_quiet():
    tests = yaml.safe_load((DEPLOY / "alerts_test.yaml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alert_rules():
        own = [case["exp_alerts"] for case in cases if case["alertname"] == rule["alert"]]
        assert any(own) and not all(own), f"{rule['alert']}: needs a case that fires and one that does not"


def test_every_alert_says_how_bad_and_what_to_do_and_is_documented():
    docs = OPERATIONS.read_text()
    assert "\n## Alerts and dashboard\n" in docs
    for rule in alert_rules():
        assert rule["for"] and rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert "docs/operations.md#alerts-and-dashboard" in rule["annotations"]["description"], rule["alert"]
        assert f"`{rule['alert']}`" in docs, f"{rule['alert']} is not in docs/operations.md"


def test_every_series_the_alerts_and_dashboard_read_is_one_the_daemon_exports():
    exported = {family.name for family in text_string_to_metric_families(Metrics().render().decode())} | {"up"}
    used = {
        selector.split("{")[0]
        for expr in [rule["expr"] for rule in alert_rules()] + dashboard_queries()
        for selector in SELECTOR.findall(expr)
    }
    unknown = sorted(name for name in used if not any(name.removesuffix(suffix) in exported for suffix in SUFFIXES))
    assert not unknown, f"not exported by sidecar/daemon/metrics.py: {unknown}"


def test_every_dashboard_query_follows_the_datasource_job_and_instance_variables():
    board = dashboard()
    assert board["schemaVersion"] >= 39
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert panel["datasource"]["uid"] == target["datasource"]["uid"] == "${datasource}", panel["title"]
            for selector in SELECTOR.findall(target["expr"]):
                assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, (panel["title"], selector)


def test_the_dashboard_panels_have_their_own_ids_and_places():
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells = [
        (x, y)
        for panel in panels
        for x in range(panel["gridPos"]["x"], panel["gridPos"]["x"] + panel["gridPos"]["w"])
        for y in range(panel["gridPos"]["y"], panel["gridPos"]["y"] + panel["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells)), "panels overlap"
    assert all(x < 24 for x, _ in cells), "a panel past the grid's 24 columns"
