"""The `astro dev` recipe: deploy/astro/docker-compose.override.yml merged over the compose project
astro-cli generates (tests/data/compose/), checked against the Compose Specification's schema.
`make test-image` runs the real `docker-compose config` on the same pair (tests/image/)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "compose"
BASE = DATA / "astro-cli-airflow3.yml"
OVERRIDE = ROOT / "deploy" / "astro" / "docker-compose.override.yml"
AIRFLOW_SERVICES = ("scheduler", "dag-processor", "api-server", "triggerer")
CREDENTIALS = "/home/astro/.aws"
# Keys that would change what astro-cli runs, not just add to it.
FORBIDDEN = {"image", "build", "command", "entrypoint", "user", "network_mode", "ports"}


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def _target(volume: str | dict[str, Any]) -> str:
    return volume["target"] if isinstance(volume, dict) else volume.split(":")[1]


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of a second file over the first, for the keys used here: mappings merge,
    `environment` by name, `volumes` by their target in the container."""
    merged = copy.deepcopy(base)
    for name, service in (override.get("services") or {}).items():
        into = merged["services"].setdefault(name, {})
        for key, value in service.items():
            if key == "volumes":
                kept = [v for v in into.get("volumes") or [] if _target(v) not in {_target(n) for n in value}]
                into["volumes"] = kept + list(value)
            elif key == "environment":
                into["environment"] = {**(into.get("environment") or {}), **value}
            else:
                into[key] = copy.deepcopy(value)
    return merged


def check_recipe(merged: dict[str, Any], base: dict[str, Any]) -> None:
    """What the recipe must give `astro dev`: credentials in the four Airflow containers, the rest unchanged."""
    services = merged["services"]
    for name in AIRFLOW_SERVICES:
        service = services[name]
        mounts = {_target(volume): volume for volume in service["volumes"]}
        assert CREDENTIALS in mounts, f"{name}: no AWS credentials mounted"
        mount = mounts[CREDENTIALS]
        read_only = mount.get("read_only") if isinstance(mount, dict) else mount.endswith(":ro")
        assert read_only, f"{name}: the credentials must be mounted read-only"
        assert service["environment"]["AWS_CONFIG_FILE"].startswith(CREDENTIALS + "/")
        base_service = base["services"][name]
        for key in ("image", "command", "user", "env_file"):
            assert service.get(key) == base_service.get(key), f"{name}: {key} changed"
        assert {_target(v) for v in base_service["volumes"]} < set(mounts), f"{name}: lost a volume"
        for variable, value in base_service["environment"].items():
            assert str(service["environment"][variable]) == str(value), f"{name}: {variable} changed"
    for name in set(services) - set(AIRFLOW_SERVICES):
        assert _comparable(services[name]) == _comparable(base["services"][name]), f"{name} changed"


def _comparable(service: dict[str, Any]) -> dict[str, Any]:
    """A service with its networks as names: `config` writes `airflow: {}` or `airflow: null` alike."""
    return {**service, "networks": sorted(service.get("networks") or [])}


def test_the_override_only_adds_to_the_four_airflow_services() -> None:
    services = _load(OVERRIDE)["services"]
    assert set(services) == set(AIRFLOW_SERVICES)
    for name, service in services.items():
        assert not FORBIDDEN & set(service), f"{name} sets {sorted(FORBIDDEN & set(service))}"


def test_both_files_and_their_merge_follow_the_compose_specification() -> None:
    validator = jsonschema.Draft7Validator(json.loads((DATA / "compose-spec.json").read_text()))
    base, override = _load(BASE), _load(OVERRIDE)
    for document in (base, override, merge(base, override)):
        errors = sorted(validator.iter_errors(document), key=lambda error: list(error.path))
        assert not errors, [f"{list(error.path)}: {error.message}" for error in errors]


def test_merged_over_astro_clis_project_every_airflow_container_gets_the_credentials() -> None:
    base = _load(BASE)
    check_recipe(merge(base, _load(OVERRIDE)), base)


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_the_check_fails_when_a_service_is_left_out(service: str) -> None:
    base, override = _load(BASE), _load(OVERRIDE)
    del override["services"][service]
    with pytest.raises(AssertionError, match=f"{service}: no AWS credentials"):
        check_recipe(merge(base, override), base)


def test_the_schema_check_can_fail() -> None:
    validator = jsonschema.Draft7Validator(json.loads((DATA / "compose-spec.json").read_text()))
    broken = _load(OVERRIDE)
    broken["services"]["scheduler"]["volumes"] = "not a list"
    assert list(validator.iter_errors(broken))
