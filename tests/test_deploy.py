"""The deployment examples (deploy/, Dockerfile) name only settings the code reads, keep the daemon's /v1 on
loopback with its port pinned, probe and scrape it on its metrics port, and the Astro wrapper script really starts
the daemon and hands a working token to Airflow."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.daemon.backend_kwargs import parse_backend_kwargs
from sidecar.daemon.settings import Settings, _is_loopback, load_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
# Kubernetes manifests and Helm values; the astro compose override has tests of its own (test_compose.py).
YAML_FILES = sorted(path for folder in ("helm", "kubernetes") for path in (DEPLOY / folder).rglob("*.y*ml"))
SHELL_SCRIPTS = sorted(DEPLOY.rglob("*.sh"))
ENV_FILES = sorted(DEPLOY.rglob(".env*"))
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
PODMONITOR = DEPLOY / "prometheus" / "podmonitor.yaml"
SYSTEMD_FILES = sorted((DEPLOY / "systemd").glob("*"))
TEXT_FILES = sorted(
    {*YAML_FILES, *SHELL_SCRIPTS, *ENV_FILES, *DEPLOY.rglob("Dockerfile*"), ROOT / "Dockerfile"}
    | {PODMONITOR, *SYSTEMD_FILES}
)
WRAPPER = DEPLOY / "astro" / "start-with-sidecar.sh"
ASTRO_SNIPPET = DEPLOY / "astro" / "Dockerfile.snippet"
ASTRO_ENV = DEPLOY / "astro" / ".env.example"

# A whole SIDECAR_* name: not the tail of another variable (AIRFLOW_SECRETS_SIDECAR_WAIT), not `SIDECAR_*`.
SETTING_NAME = re.compile(r"(?<![A-Z0-9_])SIDECAR_[A-Z0-9_]*[A-Z0-9]")
LABEL_REF = re.compile(r"metadata\.labels\['([^']+)'\]")
CONTAINER_LISTS = ("containers", "initContainers", "extraContainers", "extraInitContainers")
INIT_LISTS = ("initContainers", "extraInitContainers")
BACKEND_CLASS = "sidecar.backend.SidecarSecretsBackend"
# /v1's port, pinned in every daemon's env: Kubernetes gives each container SIDECAR_PORT=tcp://... for a
# Service named `sidecar`. The metrics port (/metrics, /healthz, /readyz) by its container port's name.
PINNED_PORT = "2779"
METRICS_PORT, METRICS_PORT_NAME = 9779, "sidecar-metrics"
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(METRICS_PORT),
    "prometheus.io/path": "/metrics",
}
PROBE_PATHS = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}


class _RecordingEnviron(dict[str, str]):
    """An environment that remembers every name asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)


def _names_load_settings_reads() -> set[str]:
    environ = _RecordingEnviron({"SIDECAR_TOKEN": "t" * 32})
    load_settings(argparse.Namespace(), environ)
    return {name for name in environ.asked if name.startswith("SIDECAR_")}


def _names_the_code_reads() -> set[str]:
    names = _names_load_settings_reads()
    for module in (ROOT / "sidecar").rglob("*.py"):
        names |= set(SETTING_NAME.findall(module.read_text()))
    return names


KNOWN_NAMES = _names_the_code_reads()


def _documents(path: Path) -> list[Any]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _containers(node: Any, list_key: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container spec in a manifest or a Helm values file, with the key of the list holding it."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _containers(value, key)
    elif isinstance(node, list):
        for item in node:
            if list_key in CONTAINER_LISTS and isinstance(item, dict) and "name" in item:
                yield list_key, item
            yield from _containers(item)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: str(item.get("value", "")) for item in container.get("env") or []}


def _env_lists(node: Any) -> Iterator[dict[str, str]]:
    """Every `env:` list (containers, Helm components) as a dict."""
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            yield _env(node)
        for value in node.values():
            yield from _env_lists(value)
    elif isinstance(node, list):
        for item in node:
            yield from _env_lists(item)


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if re.match(r"[A-Z_][A-Z0-9_]*=", line))
    return dict(pairs)


def _sidecars(path: Path) -> list[tuple[str, dict[str, Any]]]:
    found = [(key, c) for doc in _documents(path) for key, c in _containers(doc)]
    return [(key, c) for key, c in found if "airflow-secrets-sidecar" in str(c.get("image", ""))]


def daemon_settings(container: dict[str, Any], labels: dict[str, str] | None = None) -> Settings:
    """What the daemon in this container runs with: its env as the kubelet resolves it (a label the
    pod lacks is an empty string), the token's file replaced by a token (no Secret here)."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            env[item["name"]] = (labels or {}).get(LABEL_REF.fullmatch(path)[1], "")
    assert env.pop("SIDECAR_TOKEN_FILE")
    return load_settings(argparse.Namespace(), {**env, "SIDECAR_TOKEN": "t" * 32})


def check_probes_and_ports(container: dict[str, Any], settings: Settings) -> None:
    """/v1's port pinned; the kubelet probes /healthz and /readyz on the metrics port, the only one declared."""
    assert _env(container).get("SIDECAR_PORT") == PINNED_PORT, "pin SIDECAR_PORT (Kubernetes' service links)"
    assert settings.port == int(PINNED_PORT) and _is_loopback(settings.host)
    assert settings.metrics_port == METRICS_PORT
    # Only the metrics port: /v1 on loopback is reachable by nobody through a declared port.
    assert container.get("ports") == [{"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT}]
    assert {"startupProbe", "livenessProbe"} <= set(container), "the kubelet waits for a daemon that listens"
    for probe in set(PROBE_PATHS) & set(container):
        # The kubelet's request costs nothing; an exec starts a Python process in the container.
        assert set(container[probe]) & {"exec", "tcpSocket", "grpc"} == set(), probe
        assert container[probe]["httpGet"] == {"path": PROBE_PATHS[probe], "port": METRICS_PORT_NAME}, probe


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a pod's labels."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    tests = {
        "In": lambda key, values: labels.get(key) in values,
        "NotIn": lambda key, values: labels.get(key) not in values,
        "Exists": lambda key, _: key in labels,
        "DoesNotExist": lambda key, _: key not in labels,
    }
    return all(tests[e["operator"]](e["key"], e.get("values") or []) for e in selector.get("matchExpressions") or [])


def scrape_targets(pod: dict[str, Any]) -> list[tuple[str, str, int]]:
    """What deploy/prometheus/podmonitor.yaml scrapes in this pod, as the Prometheus Operator's pod
    discovery finds it (init containers included): (container, path, port) for each endpoint."""
    (monitor,) = _documents(PODMONITOR)
    if not _matches(monitor["spec"]["selector"], pod["metadata"].get("labels") or {}):
        return []
    containers = [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
    return [
        (c["name"], endpoint["path"], port["containerPort"])
        for endpoint in monitor["spec"]["podMetricsEndpoints"]
        for c in containers
        for port in c.get("ports") or []
        if port.get("name") == endpoint["port"]
    ]


def _pods(path: Path) -> list[dict[str, Any]]:
    """The pods a manifest makes: a Pod, or a workload's pod template."""
    return [doc if doc["kind"] == "Pod" else doc["spec"]["template"] for doc in _documents(path) if "spec" in doc]


def test_there_is_something_to_check() -> None:
    assert YAML_FILES and SHELL_SCRIPTS and ENV_FILES and SYSTEMD_FILES and PODMONITOR.exists()
    # The recorder must see load_settings' reads, or the name check below would be vacuous.
    assert {"SIDECAR_TTL", "SIDECAR_HOST", "SIDECAR_BACKEND_KWARGS", "SIDECAR_TOKEN_FILE"} <= KNOWN_NAMES


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_settings_the_code_reads_are_named(path: Path) -> None:
    """Set, read or merely mentioned in a comment: a SIDECAR_* name that nothing reads misleads users."""
    unknown = set(SETTING_NAME.findall(path.read_text())) - KNOWN_NAMES
    assert not unknown, f"{path.name} names settings the daemon and backend do not read: {sorted(unknown)}"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_daemon_is_swapped_out(path: Path) -> None:
    """Kubernetes' node swap leaves out a container whose memory request equals its limit."""
    for _, container in _sidecars(path):
        resources = container["resources"]
        assert resources["requests"]["memory"] == resources["limits"]["memory"], container["name"]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_sidecar_containers_keep_v1_on_loopback_and_are_probed_on_the_metrics_port(path: Path) -> None:
    sidecars = _sidecars(path)
    assert sidecars, f"no airflow-secrets-sidecar container found in {path.name}"
    for list_key, container in sidecars:
        env = _env(container)
        assert _is_loopback(env.get("SIDECAR_HOST", "127.0.0.1")), "SIDECAR_HOST must stay loopback"
        assert env.get("SIDECAR_ALLOW_REMOTE", "false").lower() in ("", "0", "false", "no", "off")
        # Native sidecar: up before Airflow, down after it.
        assert list_key in INIT_LISTS and container.get("restartPolicy") == "Always"
        check_probes_and_ports(container, daemon_settings(container))


def test_the_helm_values_annotate_every_pod_with_a_daemon_for_prometheus() -> None:
    """Per component: the chart's airflowPodAnnotations would also reach its jobs, which have no daemon."""
    (values,) = _documents(DEPLOY / "helm" / "values-sidecar.yaml")
    assert "airflowPodAnnotations" not in values
    with_sidecar = [c for c in values.values() if isinstance(c, dict) and c.get("extraInitContainers")]
    assert len(with_sidecar) == 6
    for component in with_sidecar:
        assert component["podAnnotations"] == SCRAPE_ANNOTATIONS


def test_the_long_lived_pod_is_scraped_and_the_task_pod_is_not() -> None:
    (worker,) = _pods(DEPLOY / "kubernetes" / "airflow-worker-with-sidecar.yaml")
    assert worker["metadata"]["annotations"] == SCRAPE_ANNOTATIONS
    assert scrape_targets(worker) == [("secrets-sidecar", "/metrics", METRICS_PORT)]
    (task,) = _pods(DEPLOY / "kubernetes" / "pod-template-kubernetes-executor.yaml")
    assert not task["metadata"].get("annotations")
    # Airflow labels every task pod so; tests/helm/chart_checks.py builds one with Airflow's own generator.
    task["metadata"]["labels"] = {"kubernetes_executor": "True", "tier": "airflow"}
    assert scrape_targets(task) == []


def test_the_podmonitor_is_what_the_prometheus_operator_reads() -> None:
    (monitor,) = _documents(PODMONITOR)
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert "namespace" not in monitor["metadata"], "applied in Airflow's namespace, whichever it is"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint == {"port": METRICS_PORT_NAME, "path": "/metrics", "interval": "30s"}
    assert len(METRICS_PORT_NAME) <= 15, "Kubernetes' limit for a port name"


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_manifests_are_valid_kubernetes(path: Path, version: str) -> None:
    for document in _documents(path):
        kubernetes_validate.validate(document, version, strict=True)  # raises, naming the field


@pytest.mark.parametrize("path", [ROOT / "Dockerfile", *ENV_FILES], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_file_moves_the_daemon_off_loopback(path: Path) -> None:
    for host in re.findall(r"\bSIDECAR_HOST=(\S+)", path.read_text()):
        assert _is_loopback(host.strip("'\""))


@pytest.mark.parametrize("path", [*YAML_FILES, *ENV_FILES], ids=lambda p: str(p.relative_to(ROOT)))
def test_settings_values_are_valid(path: Path) -> None:
    """The JSON a user copies must parse, and Airflow must be pointed at a class that exists."""
    backend_module = pytest.importorskip("sidecar.backend")  # needs apache-airflow or its Task SDK
    accepted = set(inspect.signature(backend_module.SidecarSecretsBackend).parameters) - {"kwargs"}
    envs = [_env_file(path)] if path in ENV_FILES else list(_env_lists(_documents(path)))
    checked = 0
    for env in envs:
        if "SIDECAR_BACKEND_KWARGS" in env:
            parse_backend_kwargs(env["SIDECAR_BACKEND_KWARGS"], env.get("SIDECAR_SOURCE") or "secretsmanager")
            checked += 1
        if "AIRFLOW__SECRETS__BACKEND" in env:
            assert env["AIRFLOW__SECRETS__BACKEND"] == BACKEND_CLASS
            module, _, name = BACKEND_CLASS.rpartition(".")
            assert getattr(importlib.import_module(module), name) is backend_module.SidecarSecretsBackend
            kwargs = json.loads(env.get("AIRFLOW__SECRETS__BACKEND_KWARGS") or "{}")
            assert set(kwargs) <= accepted, f"the backend does not accept {sorted(set(kwargs) - accepted)}"
            checked += 1
    assert checked >= 2, f"{path.name} sets neither the daemon's nor Airflow's side"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_airflow_and_sidecar_share_one_token_file(path: Path) -> None:
    docs = _documents(path)
    airflow_side = {
        json.loads(env["AIRFLOW__SECRETS__BACKEND_KWARGS"]).get("token_file")
        for env in _env_lists(docs)
        if "AIRFLOW__SECRETS__BACKEND_KWARGS" in env
    }
    for _, sidecar in _sidecars(path):
        token_file = _env(sidecar)["SIDECAR_TOKEN_FILE"]
        assert airflow_side == {token_file}
        mounts = {mount["mountPath"].rstrip("/") for mount in sidecar["volumeMounts"]}
        assert str(Path(token_file).parent) in mounts, "the token file must come from a mounted Secret"


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_parse_and_are_executable(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert path.stat().st_mode & stat.S_IXUSR, f"chmod +x {path.relative_to(ROOT)}"


# --- Astro: RUN lines and environment variables, no entrypoint ---


def _instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_astro_recipe_changes_no_entrypoint_and_installs_where_autostart_looks() -> None:
    from sidecar.autostart import RECIPE_COMMAND, RECIPE_VENV

    instructions = _instructions(ASTRO_SNIPPET)
    # No FROM: pasted under the project's own FROM, the Runtime; one of its own would start a new stage.
    assert {line.split()[0] for line in instructions} == {"USER", "RUN"}
    assert instructions[-1] == "USER astro", "hand the image back to Astro's user"
    assert f"python -m venv {RECIPE_VENV}" in ASTRO_SNIPPET.read_text()
    assert f"{RECIPE_VENV}/bin/pip install" in ASTRO_SNIPPET.read_text()
    assert RECIPE_COMMAND.startswith(f"{RECIPE_VENV}/bin/")


def test_the_astro_settings_build_an_autostarting_backend() -> None:
    backend_module = pytest.importorskip("sidecar.backend")
    env = _env_file(ASTRO_ENV)
    kwargs = json.loads(env["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    backend = backend_module.SidecarSecretsBackend(**kwargs)  # raises on a bad combination
    assert backend.autostart is True and backend.unix_socket == kwargs["unix_socket"]
    assert Path(kwargs["unix_socket"]).parent.name == "airflow-secrets-sidecar", "a directory of its own"


# --- the Astro wrapper, run for real ---


def _wrapper_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "AIRFLOW_", "AIRFLOW__"))}
    env["AIRFLOW_SECRETS_SIDECAR_BIN"] = str(Path(sys.executable).with_name("airflow-secrets-sidecar"))
    return {**env, **extra}


def test_wrapper_runs_the_command_unchanged_when_airflow_does_not_use_the_sidecar() -> None:
    result = subprocess.run(["bash", str(WRAPPER), "sh", "-c", "exit 7"], env=_wrapper_env(), timeout=30)
    assert result.returncode == 7


def test_wrapper_stops_before_airflow_when_the_daemon_cannot_start(tmp_path: Path) -> None:
    env = _wrapper_env(
        TMPDIR=str(tmp_path),  # where the wrapper writes its generated token
        AIRFLOW__SECRETS__BACKEND=BACKEND_CLASS,
        SIDECAR_BACKEND_KWARGS="not json",
    )
    result = subprocess.run(["bash", str(WRAPPER), "echo", "airflow ran"], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "airflow ran" not in result.stdout
    assert "SIDECAR_BACKEND_KWARGS" in result.stderr


_CLIENT = """
import json, os, urllib.error, urllib.request
print(os.environ["AIRFLOW_SECRETS_SIDECAR_PID"], flush=True)
path = os.environ["SIDECAR_TOKEN_FILE"]
codes = {}
for label, token in (("right", open(path).read().strip()), ("wrong", "x" * 32)):
    request = urllib.request.Request(os.environ["URL"], headers={"X-Sidecar-Token": token})
    try:
        codes[label] = urllib.request.urlopen(request, timeout=5).status
    except urllib.error.HTTPError as exc:
        codes[label] = exc.code
print(json.dumps({"codes": codes, "mode": oct(os.stat(path).st_mode & 0o777)}))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(shutil.which("setsid") is None, reason="the cleanup relies on setsid's process group")
def test_wrapper_starts_the_daemon_with_a_private_token_before_airflow(tmp_path: Path) -> None:
    port = _free_port()
    env = _wrapper_env(
        TMPDIR=str(tmp_path),  # where the wrapper writes the generated token
        AIRFLOW__SECRETS__BACKEND=BACKEND_CLASS,
        SIDECAR_PORT=str(port),
        SIDECAR_WARMUP="false",
        # Variables switched off: a 404 with no AWS call, and nothing can reach AWS anyway.
        SIDECAR_BACKEND_KWARGS='{"variables_prefix": null, "endpoint_url": "http://127.0.0.1:9"}',
        URL=f"http://127.0.0.1:{port}/v1/variables/anything",
    )
    # Files, not pipes: the daemon inherits the wrapper's stdout and stderr and outlives the command.
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with stdout.open("w") as out, stderr.open("w") as err:
        command = ["bash", str(WRAPPER), sys.executable, "-c", _CLIENT]
        result = subprocess.run(command, env=env, stdout=out, stderr=err, timeout=60)
    lines = stdout.read_text().splitlines()
    supervisor = int(lines[0]) if lines and lines[0].isdigit() else None
    try:
        assert result.returncode == 0, stderr.read_text()
        report = json.loads(lines[1])
        assert report["codes"] == {"right": 404, "wrong": 401}
        assert report["mode"] == "0o600"
    finally:
        # Outside a container nothing tears the daemon down when the command ends: stop its process group.
        with contextlib.suppress(ProcessLookupError):
            if supervisor is not None and os.getpgid(supervisor) == supervisor:
                os.killpg(supervisor, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    os.killpg(supervisor, 0)  # raises once the group is gone
                    time.sleep(0.1)
