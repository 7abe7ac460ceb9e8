"""deploy/helm/values-sidecar.yaml against the official chart's values schema, and the pods those
values make against Kubernetes' own API schemas (kubernetes-validate, strict: unknown fields fail).

No `helm` binary or chart can be installed here (no registry holds the chart), so the chart is not
rendered. tests/data/helm/README.md names the chart version the schema comes from."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "tests" / "data" / "helm"
VALUES = ROOT / "deploy" / "helm" / "values-sidecar.yaml"
MANIFEST = ROOT / "deploy" / "kubernetes" / "airflow-worker-with-sidecar.yaml"
TASK_POD_TEMPLATE = ROOT / "deploy" / "kubernetes" / "pod-template-kubernetes-executor.yaml"
# Native sidecars (restartPolicy: Always on an init container) are on by default from 1.29.
KUBERNETES = ("1.29.0", "1.37.0")
COMPONENTS = ("scheduler", "workers", "dagProcessor", "triggerer", "apiServer")
# The pod securityContext the chart applies by default (values.yaml: uid 50000, gid 0, fsGroup 0).
CHART_POD_SECURITY = {"runAsUser": 50000, "runAsGroup": 0, "fsGroup": 0}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def merged_values(ours: dict[str, Any]) -> dict[str, Any]:
    """Ours over the chart's defaults, as Helm merges them: maps merge, anything else replaces."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{key: merge(base.get(key), value) for key, value in over.items()}}
        return copy.deepcopy(over)

    return merge(_load(CHART / "values.yaml"), ours)


def schema_errors(values: dict[str, Any]) -> list[str]:
    """The chart's schema errors for these values. The pinned chart (1.15) predates `apiServer`
    (1.16+, Airflow 3): that block is checked against `webserver`, the component it replaced,
    whose extraInitContainers, extraVolumes, extraVolumeMounts and env have the same schema."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = copy.deepcopy(values)
    api_server = values.pop("apiServer", None)
    if api_server is not None:
        values["webserver"] = {**values.get("webserver", {}), **api_server}
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.path))}: {e.message[:200]}" for e in validator.iter_errors(values)]


def pods(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod each component's values make: Airflow's container with the component's env and
    extraVolumeMounts, the extra init containers and volumes, the chart's pod securityContext."""
    image = values["images"]["airflow"]
    made = {}
    for component in COMPONENTS:
        settings = values.get(component) or {}
        if not settings.get("extraInitContainers"):
            continue
        airflow = {
            "name": component.lower(),
            "image": f"{image['repository']}:{image['tag']}",
            "env": settings.get("env", []),
            "volumeMounts": settings.get("extraVolumeMounts", []),
        }
        made[component] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"airflow-{component.lower()}"},
            "spec": {
                "securityContext": CHART_POD_SECURITY,
                "initContainers": settings["extraInitContainers"],
                "containers": [airflow, *settings.get("extraContainers", [])],
                "volumes": settings.get("extraVolumes", []),
            },
        }
    return made


def test_the_values_fit_the_charts_schema() -> None:
    assert schema_errors(merged_values(_load(VALUES))) == []


def test_the_schema_check_catches_a_misspelt_key_and_a_wrong_type() -> None:
    broken = _load(VALUES)
    broken["scheduler"]["extraInitContainer"] = broken["scheduler"].pop("extraInitContainers")
    broken["triggerer"]["env"] = "AIRFLOW__SECRETS__BACKEND=sidecar.backend.SidecarSecretsBackend"
    errors = schema_errors(merged_values(broken))
    assert any("extraInitContainer" in error for error in errors), errors
    assert any(error.startswith("triggerer.env") for error in errors), errors


@pytest.mark.parametrize("version", KUBERNETES)
def test_every_pod_the_values_make_is_a_valid_kubernetes_pod(version: str) -> None:
    made = pods(_load(VALUES))
    assert set(made) == set(COMPONENTS)
    for component, pod in made.items():
        kubernetes_validate.validate(pod, version, strict=True)  # raises with the field's path
        volumes = {volume["name"] for volume in pod["spec"]["volumes"]}
        for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{component}: {container['name']} mounts an undeclared volume"


def test_the_pod_check_catches_an_unknown_field() -> None:
    pod = pods(_load(VALUES))["scheduler"]
    pod["spec"]["initContainers"][0]["restartPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES[0], strict=True)


@pytest.mark.parametrize("manifest", [MANIFEST, TASK_POD_TEMPLATE], ids=lambda path: path.name)
@pytest.mark.parametrize("version", KUBERNETES)
def test_the_kubernetes_manifests_are_valid(version: str, manifest: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(manifest.read_text()) if doc]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_task_pods_run_the_daemon_without_warm_up_beside_airflows_base_container() -> None:
    pod = _load(TASK_POD_TEMPLATE)
    sidecar = pod["spec"]["initContainers"][0]
    assert {"name": "SIDECAR_WARMUP", "value": "false"} in sidecar["env"]
    assert sidecar["restartPolicy"] == "Always"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["base"]
