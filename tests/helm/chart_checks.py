"""`make test-helm`: deploy/helm/values-sidecar.yaml rendered by a real helm (4 and 3) with the
official Airflow chart 1.19.0, Airflow 3 under each executor and Airflow 2.10, and every pod the
chart makes checked as Kubernetes and Airflow will take it: KubernetesExecutor's task pods are
built by Airflow's own pod generator from the rendered pod_template_file, each daemon's
settings are loaded by the daemon's own loader from the env its container gets, and what
deploy/prometheus/podmonitor.yaml and the pods' annotations make Prometheus scrape is worked out
from the rendered pods.

The chart and helm come from tests/helm/render.py. In CI a missing chart or helm fails; elsewhere
the checks skip, saying how to get them."""

from __future__ import annotations

import configparser
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar.daemon.settings import Settings
from tests import test_deploy as deploy
from tests.helm import render
from tests.helm.render import RENDERS, Workload

ROOT = render.ROOT
KUBERNETES = ("1.29.0", kubernetes_validate.latest_version())
SIDECAR_IMAGE = "airflow-secrets-sidecar"
BACKEND = "sidecar.backend.SidecarSecretsBackend"
TOKEN_VOLUME = "sidecar-token"
TOKEN_SECRET = "airflow-secrets-sidecar-token"

# The workloads that must have the daemon beside them, and the name of their Airflow container.
AIRFLOW_CONTAINER = {
    "Deployment/airflow-api-server": "api-server",
    "Deployment/airflow-webserver": "webserver",
    "Deployment/airflow-scheduler": "scheduler",
    "Deployment/airflow-dag-processor": "dag-processor",
    "StatefulSet/airflow-triggerer": "triggerer",
    "StatefulSet/airflow-worker": "worker",
    "pod_template_file": "base",
}
WITH_SIDECAR = {
    "airflow3-celery": {"api-server", "scheduler", "dag-processor", "triggerer", "worker"},
    "airflow3-kubernetes": {"api-server", "scheduler", "dag-processor", "triggerer", "base"},
    "airflow3-celery-kubernetes": {"api-server", "scheduler", "dag-processor", "triggerer", "worker", "base"},
    "airflow2.10-celery": {"webserver", "scheduler", "triggerer", "worker"},
}
# Behind a Service: their pods must stay in it while AWS is unreachable, so no readiness of ours.
SERVING = {"api-server", "webserver"}
# Where the chart puts a component's extraVolumeMounts besides its Airflow container (the values
# file says why the token may be there).
CHART_FAN_OUT = re.compile(r"wait-for-airflow-migrations|.+-log-groomer")


# --- the chart, the renders ---


@pytest.fixture(scope="session")
def chart() -> Path:
    try:
        render.helm()
        path, origin = render.find_chart()
    except (render.NoChart, FileNotFoundError) as missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must render the chart: {missing}")
        pytest.skip(str(missing))
    print(f"\nchart: {path} (from {origin})")
    return path


@pytest.fixture(scope="session")
def renders(chart: Path) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    return {name: render.render(chart, overrides) for name, overrides in RENDERS.items()}


@pytest.fixture(params=list(RENDERS))
def rendered(request: pytest.FixtureRequest, renders: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    return request.param, renders[request.param][1]


def sidecars(workload: Workload) -> list[dict[str, Any]]:
    return [c for c in workload.containers() if SIDECAR_IMAGE in c.get("image", "")]


def the_sidecar(component: str, workload: Workload) -> dict[str, Any]:
    found = sidecars(workload)
    assert len(found) == 1, f"{component}: {len(found)} sidecars"
    return found[0]


def airflow_workloads(documents: list[dict[str, Any]]) -> dict[str, Workload]:
    """The workloads with a daemon, by the name of their Airflow container."""
    found = render.workloads(documents)
    return {AIRFLOW_CONTAINER[name]: found[name] for name in found if name in AIRFLOW_CONTAINER}


def container(workload: Workload, name: str) -> dict[str, Any]:
    (found,) = [c for c in workload.containers() if c["name"] == name]
    return found


def env_names(c: dict[str, Any]) -> set[str]:
    return {item["name"] for item in c.get("env") or []}


# --- a task pod as Airflow builds it, a daemon's settings as the daemon loads them ---


def task_pod(documents: list[dict[str, Any]], template: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pod KubernetesExecutor sends for a task: Airflow's PodGenerator over the pod_template_file
    (the chart's unless given), with the image the chart's airflow.cfg names."""
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
    from kubernetes.client import ApiClient

    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(render.airflow_cfg(documents))
    executor = cfg["kubernetes_executor"]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        yaml.safe_dump(template or render.pod_template_file(documents), handle)
        handle.flush()
        base = PodGenerator.deserialize_model_file(handle.name)
    pod = PodGenerator.construct_pod(
        dag_id="reads_secrets",
        task_id="get_connection",
        pod_id="reads-secrets-get-connection",
        try_number=1,
        kube_image=f"{executor['worker_container_repository']}:{executor['worker_container_tag']}",
        date=None,
        args=["airflow", "tasks", "run", "reads_secrets", "get_connection", "manual__1"],
        pod_override_object=None,
        base_worker_pod=base,
        namespace=executor["namespace"],
        scheduler_job_id="1",
        run_id="manual__1",
    )
    return ApiClient().sanitize_for_serialization(pod)


def daemon_settings(sidecar: dict[str, Any], pod: dict[str, Any]) -> Settings:
    """What the daemon in this container of this pod runs with (its labels feed the downward API)."""
    return deploy.daemon_settings(sidecar, pod["metadata"].get("labels"))


# --- the chart itself ---


def test_the_chart_is_the_official_one_at_the_version_the_values_name(chart: Path) -> None:
    assert render.chart_version(chart) == render.CHART_VERSION
    assert f"--version {render.CHART_VERSION}" in render.VALUES.read_text()


def test_the_charts_schema_refuses_a_misspelt_key_and_a_wrong_type(chart: Path, tmp_path: Path) -> None:
    values = yaml.safe_load(render.VALUES.read_text())
    values["scheduler"]["extraInitContainer"] = values["scheduler"].pop("extraInitContainers")
    values["triggerer"]["env"] = f"AIRFLOW__SECRETS__BACKEND={BACKEND}"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(values))
    result = render.run_helm("template", "airflow", str(chart), "-f", str(broken), check=False)
    assert result.returncode != 0
    assert "extraInitContainer" in result.stderr and "triggerer" in result.stderr, result.stderr


@pytest.mark.parametrize("name", list(RENDERS))
def test_renders_are_the_same_bytes_each_time_and_with_helm_3_and_4(chart: Path, renders: dict, name: str) -> None:
    text = renders[name][0]
    assert render.render(chart, RENDERS[name])[0] == text
    assert render.render(chart, RENDERS[name], version=render.HELM_VERSIONS[1])[0] == text


# --- every workload ---


def test_every_airflow_component_has_one_native_sidecar(rendered) -> None:
    name, documents = rendered
    found = airflow_workloads(documents)
    assert set(found) == WITH_SIDECAR[name]
    for component, workload in found.items():
        sidecar = the_sidecar(component, workload)
        assert sidecar in workload.spec["initContainers"] and sidecar["restartPolicy"] == "Always", component
        # SIDECAR_PORT pinned, the metrics port declared and named, every probe an httpGet on it.
        deploy.check_probes_and_ports(sidecar, daemon_settings(sidecar, workload.pod))
        security = sidecar["securityContext"]
        assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"], component
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
        assert container(workload, component)  # the Airflow container is there, by its name


def test_nothing_else_gets_the_sidecar_its_token_or_the_backend(rendered) -> None:
    _, documents = rendered
    others = [w for name, w in render.workloads(documents).items() if name not in AIRFLOW_CONTAINER]
    assert {"Job/airflow-run-airflow-migrations", "Job/airflow-create-user"} <= {w.name for w in others}
    for workload in others:
        assert not sidecars(workload), workload.name
        assert TOKEN_VOLUME not in {v["name"] for v in workload.spec.get("volumes") or []}, workload.name
        for c in workload.containers():
            assert "AIRFLOW__SECRETS__BACKEND" not in env_names(c), (workload.name, c["name"])


def test_readiness_holds_back_rollouts_but_never_a_service(rendered) -> None:
    """A native sidecar's readiness is its pod's: behind a Service it would take the UI and the
    Execution API away while AWS is unreachable; elsewhere it paces rolling updates."""
    _, documents = rendered
    for component, workload in airflow_workloads(documents).items():
        sidecar = the_sidecar(component, workload)
        if component in SERVING:
            assert "readinessProbe" not in sidecar, component
        else:
            assert "readinessProbe" in sidecar, component  # /readyz on the metrics port: checked above


def test_prometheus_scrapes_each_long_lived_daemon_once_and_nothing_else(rendered) -> None:
    """By the annotations (a plain Prometheus) and by deploy/prometheus/podmonitor.yaml (the Operator):
    every long-lived daemon, on its metrics port; no task pod, and no pod without a daemon."""
    _, documents = rendered
    with_daemon = airflow_workloads(documents)
    for component, workload in with_daemon.items():
        if component == "base":
            continue
        annotations = workload.pod["metadata"].get("annotations") or {}
        assert deploy.SCRAPE_ANNOTATIONS.items() <= annotations.items(), component
        assert deploy.scrape_targets(workload.pod) == [("secrets-sidecar", "/metrics", deploy.METRICS_PORT)], component
    if "base" in with_daemon:
        # Chart 1.19 gives task pods the workers' podAnnotations too; the PodMonitor leaves them out.
        assert deploy.scrape_targets(task_pod(documents)) == []
    for name, workload in render.workloads(documents).items():
        if name not in AIRFLOW_CONTAINER:
            assert deploy.scrape_targets(workload.pod) == [], name
            assert "prometheus.io/scrape" not in (workload.pod["metadata"].get("annotations") or {}), name


def test_the_token_is_mounted_where_it_is_read_and_where_the_chart_fans_mounts_out(rendered) -> None:
    _, documents = rendered
    for component, workload in airflow_workloads(documents).items():
        sidecar = the_sidecar(component, workload)
        (volume,) = [v for v in workload.spec["volumes"] if v["name"] == TOKEN_VOLUME]
        assert volume["secret"]["secretName"] == TOKEN_SECRET
        mounted = {c["name"] for c in workload.containers() if TOKEN_VOLUME in {m["name"] for m in c["volumeMounts"]}}
        readers = {sidecar["name"], component}
        fanned_out = {c["name"] for c in workload.containers() if CHART_FAN_OUT.fullmatch(c["name"])}
        assert readers <= mounted <= readers | fanned_out, component


def test_the_backend_is_set_on_the_airflow_container_alone_with_the_sidecars_token(rendered) -> None:
    _, documents = rendered
    for component, workload in airflow_workloads(documents).items():
        sidecar = the_sidecar(component, workload)
        airflow = container(workload, component)
        settings = {item["name"]: item.get("value") for item in airflow["env"]}
        assert settings["AIRFLOW__SECRETS__BACKEND"] == BACKEND, component
        kwargs = json.loads(settings["AIRFLOW__SECRETS__BACKEND_KWARGS"])
        token_file = {item["name"]: item.get("value") for item in sidecar["env"]}["SIDECAR_TOKEN_FILE"]
        assert kwargs["token_file"] == token_file, component
        for c in workload.containers():
            if c["name"] != component:
                assert "AIRFLOW__SECRETS__BACKEND" not in env_names(c), (component, c["name"])


def test_long_lived_daemons_warm_up_spread_out_and_task_pods_do_neither(rendered) -> None:
    _, documents = rendered
    for component, workload in airflow_workloads(documents).items():
        pod = task_pod(documents) if component == "base" else workload.pod
        (sidecar,) = [c for c in pod["spec"]["initContainers"] if SIDECAR_IMAGE in c["image"]]
        settings = daemon_settings(sidecar, pod)
        if component == "base":
            assert (settings.warmup, settings.warmup_jitter) == (False, 0.0)
        else:
            assert settings.warmup and settings.warmup_jitter > 0, component


@pytest.mark.parametrize("name", [name for name in RENDERS if "base" in WITH_SIDECAR[name]])
def test_a_task_pod_as_airflow_builds_it_keeps_the_native_sidecar_and_runs_our_image(renders, name) -> None:
    pod = task_pod(renders[name][1])
    (sidecar,) = pod["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert pod["metadata"]["labels"]["kubernetes_executor"] == "True"
    values = yaml.safe_load(render.VALUES.read_text())["images"]["airflow"]
    (base,) = pod["spec"]["containers"]
    assert base["image"] == f"{values['repository']}:{values['tag']}"


@pytest.mark.parametrize("version", KUBERNETES)
def test_every_document_and_task_pod_is_valid_kubernetes(rendered, version: str) -> None:
    name, documents = rendered
    pods = [render.pod_template_file(documents), task_pod(documents)] if "base" in WITH_SIDECAR[name] else []
    for document in [*documents, *pods]:
        kubernetes_validate.validate(document, version, strict=True)  # raises, naming the field


# --- deploy/kubernetes, for clusters without the chart ---

STANDALONE_TASK_POD = ROOT / "deploy" / "kubernetes" / "pod-template-kubernetes-executor.yaml"
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_no_manifest_overwrites_the_token_secret(manifest: Path) -> None:
    """`kubectl apply -f` after the README's `kubectl create secret` must keep the real token."""
    kinds = {doc["kind"] for doc in yaml.safe_load_all(manifest.read_text()) if doc}
    assert "Secret" not in kinds


def test_the_standalone_task_pod_template_mounts_all_the_charts_template_does(renders: dict) -> None:
    documents = renders["airflow3-kubernetes"][1]
    charts = container(Workload("chart", render.pod_template_file(documents)), "base")
    ours_template = yaml.safe_load(STANDALONE_TASK_POD.read_text())
    ours = container(Workload("ours", ours_template), "base")
    # All but the chart's own cluster policies (airflow_local_settings.py, from its config map).
    needed = {m["mountPath"] for m in charts["volumeMounts"] if not m["mountPath"].endswith("_local_settings.py")}
    assert needed <= {m["mountPath"] for m in ours["volumeMounts"]}
    pod = task_pod(documents, ours_template)
    (sidecar,) = pod["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    settings = daemon_settings(sidecar, pod)
    assert not settings.warmup
    deploy.check_probes_and_ports(sidecar, settings)
    assert deploy.scrape_targets(pod) == [], "a task pod is not scraped"
    for version in KUBERNETES:
        kubernetes_validate.validate(pod, version, strict=True)
