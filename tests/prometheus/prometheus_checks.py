"""`make test-prometheus`: deploy/prometheus/ against promtool and a real Prometheus.

promtool checks the rules and runs their unit tests (alerts_test.yaml). Then a real daemon process
(moto's server as AWS, change events from an SQS queue) serves some load on its main port, a real
`prometheus` scrapes its metrics port (SIDECAR_METRICS_PORT) every second and evaluates the rules,
and each query the dashboard and the alerts make must return series through Prometheus' HTTP API:
a metric or label value renamed in the daemon fails here. Last, the daemon is stopped and the
SidecarDown alert must fire. tests/prometheus/prepare.sh installs Debian's prometheus package.
Every wait has a deadline; every process started here is killed at teardown.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import FAKE_AWS_ENV, REGION, TOKEN, AwsEmulator, free_port
from tests.test_events import label_updated
from tests.test_process_faults import DaemonProcess
from tests.test_prometheus_files import ALERTS, DEPLOY, SELECTOR, alert_rules, dashboard

JOB = "airflow-secrets-sidecar"  # the job name alerts.yaml assumes (its SidecarDown reads it)
RATE_INTERVAL = "1m"  # what Grafana's $__rate_interval stands for here: a scrape every second
DEADLINE = 30.0
SECRETS = 25  # more than one BatchGetSecretValue call (20 names each): the second waits its turn

# A comparison outside a label matcher; `bool` makes it keep every series, 0 or 1, whatever its threshold.
COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool)")
MATCHERS = re.compile(r"(\{[^}]*\})")


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    for command in (["check", "rules", ALERTS], ["test", "rules", DEPLOY / "alerts_test.yaml"]):
        run = subprocess.run(["promtool", *command], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"promtool {command[0]} {command[1]}:\n{run.stdout}{run.stderr}"


def test_a_real_prometheus_finds_every_series_the_dashboard_and_alerts_read(aws, tmp_path, cleanup):
    daemon, metrics_port = start_daemon(aws, tmp_path, cleanup)
    drive_load(aws, daemon)
    lint = subprocess.run(["promtool", "check", "metrics"], input=scrape(daemon.port), capture_output=True, text=True)
    assert lint.returncode == 0, f"promtool check metrics:\n{lint.stdout}{lint.stderr}"

    prometheus = Prometheus(tmp_path, metrics_port, cleanup)
    instance = f"127.0.0.1:{metrics_port}"
    prometheus.wait_for_two_scrapes_and_every_rule_evaluated()
    check_the_dashboard(prometheus, instance)
    check_the_alerts(prometheus)
    check_the_daemon_down_alert(prometheus, daemon, instance)


@pytest.fixture
def cleanup() -> Iterator[contextlib.ExitStack]:
    """Every process a test starts is killed at its end, whatever failed."""
    with contextlib.ExitStack() as stack:
        yield stack


def killed(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=DEADLINE)


# --- the daemon and its load ---


def start_daemon(aws: AwsEmulator, tmp_path: Path, cleanup: contextlib.ExitStack) -> tuple[DaemonProcess, int]:
    """A daemon process, ready, listening on its main port and on its metrics port."""
    for index in range(SECRETS):
        aws.put(f"airflow/variables/v{index}", f"value-{index}")
    aws.put("airflow/connections/c", "postgresql://user@db:5432/airflow")
    queue = aws.client("sqs").create_queue(QueueName="airflow-secrets-sidecar-prometheus")["QueueUrl"]
    port, metrics_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("SIDECAR_")}
    env.update(FAKE_AWS_ENV, AWS_ENDPOINT_URL_SQS=aws.endpoint)
    env.update(
        SIDECAR_TOKEN=TOKEN,
        SIDECAR_PORT=str(port),
        SIDECAR_METRICS_PORT=str(metrics_port),
        SIDECAR_METRICS_HOST="127.0.0.1",
        SIDECAR_BACKEND_KWARGS=json.dumps({"region_name": REGION, "endpoint_url": aws.endpoint}),
        SIDECAR_EVENTS="sqs",
        SIDECAR_EVENTS_QUEUE_URL=queue,
        # One open connection: a second one gets a 429 (drive_load).
        SIDECAR_MAX_CONNECTIONS="1",
        # A BatchGetSecretValue call every 5 s: the warm-up's second batch waits its turn.
        SIDECAR_AWS_QUOTA_SHARE="0.002",
    )
    log = cleanup.enter_context(open(tmp_path / "daemon.log", "w"))  # noqa: SIM115 (the stack closes it)
    daemon = DaemonProcess(port, env, log)
    cleanup.callback(killed, daemon.popen)
    daemon.wait_until_healthy()
    wait_until(lambda: status(metrics_port, "/readyz") == 200, "the daemon's readiness", daemon.output)
    return daemon, metrics_port


def drive_load(aws: AwsEmulator, daemon: DaemonProcess) -> None:
    """Hits, a miss, a negative hit, stale answers (AWS failing, AWS throttling), a 401, a 429, a 503
    and a change event, each checked."""
    aws.fail["GetSecretValue:airflow/variables/flaky"] = "InternalServiceError"
    aws.fail["GetSecretValue:airflow/variables/throttled"] = "ThrottlingException"
    aws.fail["GetSecretValue:airflow/variables/denied"] = "AccessDeniedException"
    kept = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=DEADLINE)
    try:
        for path, token, expected in [
            ("/v1/variables/v0", TOKEN, (200, "hit")),
            ("/v1/connections/c", TOKEN, (200, "hit")),
            ("/v1/variables/missing", TOKEN, (404, "miss")),
            ("/v1/variables/missing", TOKEN, (404, "hit")),  # a negative hit
            ("/v1/variables/v0", "not-the-token", (401, None)),
            # AWS failing or throttling: a name the listing lacks is a stale miss; a refusal is a 503.
            ("/v1/variables/flaky", TOKEN, (404, "stale")),
            ("/v1/variables/throttled", TOKEN, (404, "stale")),
            ("/v1/variables/denied", TOKEN, (503, None)),
        ]:
            kept.request("GET", path, headers={"X-Sidecar-Token": token})
            response = kept.getresponse()
            response.read()
            answer = (response.status, response.getheader("X-Cache"))
            assert answer == expected, f"GET {path}: {answer}, expected {expected}"
        assert status(daemon.port, "/v1/variables/v0") == 429  # `kept` holds the only connection
    finally:
        kept.close()

    aws.client().put_secret_value(SecretId="airflow/variables/v0", SecretString="rotated")
    sqs = aws.client("sqs")
    queue = sqs.get_queue_url(QueueName="airflow-secrets-sidecar-prometheus")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(label_updated("airflow/variables/v0")))
    wait_until(
        lambda: 'sidecar_event_fetches_total{outcome="changed"} 1.0' in scrape(daemon.port),
        "the fetch the change event asked for",
        daemon.output,
    )


def status(port: int, path: str) -> int | None:
    """The status of GET `path` on a connection of its own (None: no answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"X-Sidecar-Token": TOKEN})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


def scrape(port: int) -> str:
    """The daemon's /metrics, read on its main port (the metrics port is Prometheus's)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


# --- Prometheus ---


class Prometheus:
    """`prometheus` on a loopback port: scrapes the daemon every second, evaluates alerts.yaml's rules
    (with each `for` cut to 0s, so that SidecarDown fires at once: alerts_test.yaml tests the `for`s)."""

    def __init__(self, tmp_path: Path, metrics_port: int, cleanup: contextlib.ExitStack) -> None:
        rules = yaml.safe_load(ALERTS.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule["for"] = "0s"
        (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(rules))
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "alerts.yaml")],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = tmp_path / "prometheus.log"
        with open(self.log_path, "w") as log:
            self.popen = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        cleanup.callback(killed, self.popen)
        wait_until(self._ready, "Prometheus to answer /-/ready", self.output)

    def _ready(self) -> bool:
        if self.popen.poll() is not None:
            pytest.fail(f"prometheus exited with {self.popen.returncode}:\n{self.output()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def output(self) -> str:
        return self.log_path.read_text()

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The series an instant query returns; an invalid query fails with Prometheus' error."""
        try:
            return self.api("query", query=expr)["result"]
        except urllib.error.HTTPError as exc:
            pytest.fail(f"{expr}: {json.load(exc).get('error')}")

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def firing(self, alertname: str) -> list[dict[str, str]]:
        alerts = self.api("alerts")["alerts"]
        return [a["labels"] for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]

    def wait_for_two_scrapes_and_every_rule_evaluated(self) -> None:
        """Every series the daemon had before Prometheus started, twice: enough for rate()."""
        wait_until(
            lambda: self.query(f'count_over_time(up{{job="{JOB}"}}[1m]) >= 2 and up{{job="{JOB}"}} == 1'),
            "two successful scrapes of the daemon",
            self.output,
        )
        wait_until(
            lambda: all(rule["health"] != "unknown" for rule in self.rules()),
            "every rule evaluated",
            self.output,
        )


# --- the checks ---


def check_the_dashboard(prometheus: Prometheus, instance: str) -> None:
    """Each panel's queries, as Grafana sends them with this job and instance chosen, return series;
    so do the variables' label_values() queries, holding the label they list."""
    board = dashboard()
    empty = []
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"]).groups()
            if not any(label in series["metric"] for series in prometheus.query(dashboard_query(metric, instance))):
                empty.append(f"variable {variable['name']}: {variable['query']['query']}")
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = dashboard_query(target["expr"], instance)
            if not prometheus.query(expr):
                empty.append(f"panel {panel['title']!r}: {expr}")
    assert not empty, "queries with no series:\n" + "\n".join(empty)


def dashboard_query(expr: str, instance: str) -> str:
    for name, value in (("$__rate_interval", RATE_INTERVAL), ("$job", JOB), ("$instance", instance)):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a template variable this test does not know: {expr}"
    return expr


def check_the_alerts(prometheus: Prometheus) -> None:
    """Every rule loaded and evaluated without error; each series it reads exists; and the whole
    expression, its comparisons made `bool`, returns series: labels match across its operators."""
    rules = {rule["name"]: rule for rule in prometheus.rules()}
    assert sorted(rules) == sorted(rule["alert"] for rule in alert_rules())
    problems = []
    for name, rule in rules.items():
        if rule["health"] != "ok":
            problems.append(f"{name}: {rule['health']} {rule.get('lastError', '')}")
        selectors = SELECTOR.findall(rule["query"])
        assert selectors, f"{name} reads none of the daemon's series: {rule['query']}"
        problems += [f"{name}: no series {selector}" for selector in selectors if not prometheus.query(selector)]
        whole = without_thresholds(rule["query"])
        if not prometheus.query(whole):
            problems.append(f"{name}: no series from {whole}")
    assert not problems, "\n".join(problems)


def without_thresholds(expr: str) -> str:
    """`expr` with `bool` after each comparison (label matchers left alone)."""
    parts = MATCHERS.split(expr)
    return "".join(part if part.startswith("{") else COMPARISON.sub(r"\1 bool", part) for part in parts)


def check_the_daemon_down_alert(prometheus: Prometheus, daemon: DaemonProcess, instance: str) -> None:
    assert prometheus.firing("SidecarDown") == []
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.output()
    wait_until(lambda: prometheus.firing("SidecarDown"), "SidecarDown to fire", prometheus.output)
    assert prometheus.firing("SidecarDown") == [
        {"alertname": "SidecarDown", "job": JOB, "instance": instance, "severity": "critical"}
    ]


def wait_until(predicate: Callable[[], Any], what: str, output: Callable[[], str]) -> None:
    """Poll `predicate` until it is true, failing after DEADLINE with `output()` (a log) shown."""
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE:g}s waiting for {what}; log:\n{output()}")
        time.sleep(0.1)  # polling a condition


@pytest.fixture(autouse=True)
def prometheus_installed() -> None:
    missing = [tool for tool in ("prometheus", "promtool") if shutil.which(tool) is None]
    assert not missing, f"{', '.join(missing)} not on PATH: run tests/prometheus/prepare.sh (make test-prometheus)"
