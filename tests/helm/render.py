"""The official Apache Airflow Helm chart rendered by a real helm: where the chart and the helm
binaries come from, and the pods a render makes.

The chart: `AIRFLOW_CHART=<path to a .tgz or a folder>` when set; else the official chart
repository (pulled once, then kept beside the helm binaries); else the copy CI has beside the
checkout, `../shared/vendor/helm/airflow-1.19.0.tgz`. Whichever it is, it must be 1.19.0.
The helm binaries: `tests/helm/prepare.sh` puts them in SIDECAR_TEST_HELM_DIR (`make test-helm`
does both)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
# SIDECAR_TEST_HELM_VALUES: another values file in place of ours, e.g. an older one, to see what the
# checks say of it.
VALUES = Path(os.environ.get("SIDECAR_TEST_HELM_VALUES") or ROOT / "deploy" / "helm" / "values-sidecar.yaml")
HELM_DIR = Path(os.environ.get("SIDECAR_TEST_HELM_DIR") or ROOT / ".venv" / "helm")
HELM_VERSIONS = ("4.1.4", "3.17.1")
CHART_VERSION = "1.19.0"
OFFICIAL_REPOSITORY = "https://airflow.apache.org"
SHARED_CHART = ROOT.parent / "shared" / "vendor" / "helm" / f"airflow-{CHART_VERSION}.tgz"
HOW_TO_GET_ONE = (
    f"no Airflow chart {CHART_VERSION}: set AIRFLOW_CHART to a copy "
    f"(`helm pull airflow --repo {OFFICIAL_REPOSITORY} --version {CHART_VERSION}`)"
)

# What the chart would otherwise generate at random on each render (fernet key, secret keys, the
# redis password), fixed so that two renders of the same values are the same bytes.
FIXED_SECRETS = {
    "fernetKey": "dGVzdHMtb25seS1mZXJuZXQta2V5LTAwMDAwMDAwMDA=",
    "webserverSecretKey": "tests-only-webserver-secret-key",
    "apiSecretKey": "tests-only-api-secret-key",
    "jwtSecret": "tests-only-jwt-secret",
    "redis": {"password": "tests-only-redis-password"},
}

# Each deployment the tests render: chart values beside ours.
RENDERS: dict[str, dict[str, Any]] = {
    "airflow3-celery": {"executor": "CeleryExecutor"},
    "airflow3-kubernetes": {"executor": "KubernetesExecutor"},
    "airflow3-celery-kubernetes": {"executor": "CeleryExecutor,KubernetesExecutor"},
    "airflow2.10-celery": {"executor": "CeleryExecutor", "airflowVersion": "2.10.5", "defaultAirflowTag": "2.10.5"},
}


class NoChart(Exception):
    """No chart could be had; the message says how to get one."""


def helm(version: str = HELM_VERSIONS[0]) -> Path:
    binary = HELM_DIR / f"helm-{version}"
    if not os.access(binary, os.X_OK):
        raise FileNotFoundError(f"{binary}: run tests/helm/prepare.sh {HELM_DIR} (make test-helm does)")
    return binary


def run_helm(
    *args: str, version: str = HELM_VERSIONS[0], check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    # HOME and the cache in a temporary folder: nothing from the user's helm repositories applies.
    with tempfile.TemporaryDirectory() as home:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": home, "HELM_CACHE_HOME": f"{home}/cache"}
        env |= {"HELM_CONFIG_HOME": f"{home}/config", "HELM_DATA_HOME": f"{home}/data"}
        return subprocess.run(
            [str(helm(version)), *args], capture_output=True, text=True, env=env, timeout=timeout, check=check
        )


def chart_version(path: Path) -> str:
    return yaml.safe_load(run_helm("show", "chart", str(path)).stdout)["version"]


def find_chart() -> tuple[Path, str]:
    """The chart and where it came from."""
    explicit = os.environ.get("AIRFLOW_CHART")
    if explicit:
        if not Path(explicit).exists():
            raise NoChart(f"AIRFLOW_CHART={explicit}: no such file or folder")
        return Path(explicit), "AIRFLOW_CHART"
    pulled = HELM_DIR / f"airflow-{CHART_VERSION}.tgz"
    if not pulled.exists():
        pull = ("pull", "airflow", "--repo", OFFICIAL_REPOSITORY, "--version", CHART_VERSION, "-d", str(HELM_DIR))
        with contextlib.suppress(subprocess.TimeoutExpired):  # unreachable: fails at once, or hangs
            run_helm(*pull, check=False, timeout=30)
    if pulled.exists():
        return pulled, OFFICIAL_REPOSITORY
    if SHARED_CHART.exists():
        return SHARED_CHART, "../shared/vendor/helm"
    raise NoChart(HOW_TO_GET_ONE)


def render(
    chart: Path, overrides: dict[str, Any], values: Path = VALUES, version: str = HELM_VERSIONS[0]
) -> tuple[str, list[dict[str, Any]]]:
    """`helm template` of the chart with our values, then these; the text and its documents."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as extra:
        yaml.safe_dump({**FIXED_SECRETS, **overrides}, extra)
        extra.flush()
        text = run_helm("template", "airflow", str(chart), "-f", str(values), "-f", extra.name, version=version).stdout
    return text, [doc for doc in yaml.safe_load_all(text) if doc]


@dataclass
class Workload:
    name: str  # Kind/name, or "pod_template_file"
    pod: dict[str, Any]  # a Pod: metadata and spec

    @property
    def spec(self) -> dict[str, Any]:
        return self.pod["spec"]

    def containers(self) -> Iterator[dict[str, Any]]:
        yield from self.spec.get("initContainers") or []
        yield from self.spec["containers"]


def _pod_template(document: dict[str, Any]) -> dict[str, Any] | None:
    kind = document["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return document["spec"]["template"]
    if kind == "CronJob":
        return document["spec"]["jobTemplate"]["spec"]["template"]
    return None


def pod_template_file(documents: list[dict[str, Any]]) -> dict[str, Any] | None:
    """KubernetesExecutor's pod_template_file, as the chart writes it into its config map."""
    for document in documents:
        if document["kind"] == "ConfigMap" and "pod_template_file.yaml" in (document.get("data") or {}):
            return yaml.safe_load(document["data"]["pod_template_file.yaml"])
    return None


def airflow_cfg(documents: list[dict[str, Any]]) -> str:
    for document in documents:
        if document["kind"] == "ConfigMap" and "airflow.cfg" in (document.get("data") or {}):
            return document["data"]["airflow.cfg"]
    raise LookupError("no airflow.cfg in the render")


def workloads(documents: list[dict[str, Any]]) -> dict[str, Workload]:
    """Every pod the render makes, by workload; the pod_template_file's too."""
    found = {}
    for document in documents:
        template = _pod_template(document)
        if template is not None:
            name = f"{document['kind']}/{document['metadata']['name']}"
            found[name] = Workload(name, {"apiVersion": "v1", "kind": "Pod", **template})
    task_pod = pod_template_file(documents)
    if task_pod is not None:
        found["pod_template_file"] = Workload("pod_template_file", task_pod)
    return found
