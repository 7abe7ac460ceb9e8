"""`make test-astro`: the Astro recipe of deploy/astro run for real, the way `astro dev` runs a project.

The project's image is FROM a stand-in for Astro Runtime 3.1 (tests/astro/prepare.sh builds it) with
deploy/astro/Dockerfile.snippet pasted under it, read at test time; only the wheel comes from this
checkout (PIP_FIND_LINKS, as the snippet says to do before a release), the daemon's dependencies from
PyPI. Its containers get astro-cli's environment (tests/data/compose/astro-cli-airflow3.yml) over
deploy/astro/.env.example, read at test time, with AWS pointed at moto on the host. Postgres, `airflow
db migrate`, then the four containers `astro dev` starts: api-server, scheduler, dag-processor,
triggerer. All use the host's network and talk over 127.0.0.1 only. The DAG in project/ reads secrets
in each of the four; then `docker stop` and `docker start` of the same containers, and the DAG again.

Not part of `make test` (no Docker there). As root, with Docker (tests/image/prepare.sh starts dockerd):
    tests/astro/prepare.sh
    .venv/bin/python -m pytest -p no:cacheprovider -s tests/astro/astro_checks.py

The tests run in file order, one scenario: each says which earlier step it needs and skips without it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REGION, AwsEmulator, free_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SNIPPET = ROOT / "deploy" / "astro" / "Dockerfile.snippet"
ENV_EXAMPLE = ROOT / "deploy" / "astro" / ".env.example"
ASTRO_CLI_COMPOSE = ROOT / "tests" / "data" / "compose" / "astro-cli-airflow3.yml"
DOCKER = "/usr/bin/docker"  # Debian's client: BuildKit built in
RUNTIME_IMAGE = "airflow-secrets-sidecar-astro-runtime:current"  # tests/astro/prepare.sh
POSTGRES_IMAGE = "airflow-secrets-sidecar-astro-postgres:current"
PROJECT_IMAGE = "airflow-secrets-sidecar-astro-project:test"
LABEL = "airflow-secrets-sidecar-astro-test"  # on every container this test starts, with its run's prefix
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
AIRFLOW_HOME = "/usr/local/airflow"
DAG_ID = "astro_sidecar"
STOP_GRACE = 30  # s: `docker stop -t`
# Airflow 3.1's LocalExecutor.end() sends one shutdown message per live worker, then joins each one
# without a timeout (apache/airflow#67870 is the same unbounded join). Now and then under load (about
# one stop in three on 2 busy cores, whatever the daemon's version) one idle worker is left waiting
# for its message, and the scheduler waits for it until Docker's SIGKILL. That wait is Airflow's,
# not the daemon's: it is told apart by what the container runs just before the grace ends.
LOCAL_EXECUTOR_END = "Shutting down LocalExecutor; waiting for running tasks to finish"
CONTAINER_KEY = "AKIAASTROCONTAINER01"  # the containers' AWS_ACCESS_KEY_ID
TASK_KEY = "task-changed"  # one task-like process's own AWS_ACCESS_KEY_ID
ROLE_ARN = "arn:aws:iam::123456789012:role/astro-airflow-secrets"  # for .env.example's "<your-role-arn>"

# Run inside a container: the airflow-secrets-sidecar daemons, from /proc (the image has no ps). The
# short-lived launcher (`python -c ... serve`) is not one.
DAEMONS = r"""
import json, os
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        continue
    if "serve" in args and "-c" not in args and args.index("serve") > 0:
        before = args[args.index("serve") - 1]
        if before.endswith("airflow-secrets-sidecar") or before == "sidecar":
            found.append({"pid": int(pid), "ppid": int(fields[1]), "state": fields[0].decode(), "args": " ".join(args)})
print(json.dumps(found))
"""


# --- plumbing ---


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        require(result.returncode == 0, f"docker {' '.join(args[:3])} ...: exit {result.returncode}\n{result.stderr}")
    return result


def processes(container: str) -> list[tuple[str, str]]:
    """What each process in a running container waits in (its wchan) and its command line."""
    script = r'for p in /proc/[0-9]*; do printf "%s\t%s\n" "$(cat $p/wchan)" "$(tr "\0" " " < $p/cmdline)"; done'
    result = docker("exec", container, "sh", "-c", f"{script} 2>/dev/null", timeout=20, check=False)
    rows = (line.partition("\t") for line in result.stdout.splitlines())
    return [(wchan, command) for wchan, tab, command in rows if tab]


def airflow_waits_for_an_idle_worker(running: list[tuple[str, str]]) -> bool:
    """The scheduler's main process waits for a child while a LocalExecutor worker sits idle on its
    queue: the hang of LOCAL_EXECUTOR_END."""
    waits = any(wchan == "do_wait" and command.rstrip().endswith("airflow scheduler") for wchan, command in running)
    return waits and any("pipe" in wchan and "LocalExecutor: <idle>" in command for wchan, command in running)


def wait_for(condition: Callable[[], bool], what: str, seconds: float, explain: Callable[[], str] = str) -> float:
    """Poll `condition` until true; the seconds it took. Fails with `what` and `explain()` at the deadline."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            pytest.fail(f"{what}: not within {seconds:g}s\n{explain()}", pytrace=False)
        time.sleep(0.5)
    return time.monotonic() - started


def say(message: str) -> None:
    print(f"astro: {message}", flush=True)


def require(ok: bool, message: str) -> None:
    """Fail with `message` alone: for a command's failure, whose output says it all."""
    if not ok:
        pytest.fail(message, pytrace=False)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as Compose reads a .env: comments and blank lines skipped, one level of quotes removed."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a KEY=VALUE line: {line!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def snippet_lines() -> str:
    """deploy/astro/Dockerfile.snippet, verbatim: the lines a user pastes under the project's FROM."""
    text = SNIPPET.read_text()
    froms = [line for line in text.splitlines() if re.match(r"\s*FROM\s", line, re.IGNORECASE)]
    assert not froms, f"{SNIPPET} has a FROM of its own, which would start a new stage: {froms}"
    return text


def described(conn: dict[str, Any]) -> dict[str, Any]:
    """What the DAG compares of a Connection (project/dags/astro_sidecar.py): the password as its digest."""
    return {
        **{key: conn[key] for key in ("conn_type", "host", "login", "port", "schema")},
        "password_sha256": hashlib.sha256(conn["password"].encode()).hexdigest(),
    }


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# --- fixtures ---


@pytest.fixture(scope="module")
def dotenv() -> dict[str, str]:
    env = read_env_file(ENV_EXAMPLE)
    for name in ("AIRFLOW__SECRETS__BACKEND", "AIRFLOW__SECRETS__BACKEND_KWARGS", "SIDECAR_BACKEND_KWARGS"):
        assert name in env, f"{ENV_EXAMPLE} sets no {name}"
    return env


@pytest.fixture(scope="module")
def secrets(dotenv: dict[str, str]) -> dict[str, Any]:
    """The values this run puts in AWS, unique to the run, keyed as the DAG asks for them."""
    run = uuid.uuid4().hex[:8]
    return {
        "astro_parse_time": f"parsed-{run}",
        "astro_task_time": f"task-{run}",
        "astro_warehouse": {
            "conn_type": "postgres",
            "host": "warehouse.example.com",
            "login": "etl",
            "password": f"warehouse-{run}",
            "port": 5432,
            "schema": "analytics",
        },
        "astro_api": {
            "conn_type": "http",
            "host": "api.example.com",
            "login": "svc",
            "password": f"api-{run}",
            "port": 8443,
            "schema": "v1",
        },
    }


@pytest.fixture(scope="module")
def aws(dotenv: dict[str, str], secrets: dict[str, Any]) -> Iterator[AwsEmulator]:
    """moto on the host, seeded under .env.example's prefixes: variables as strings, connections as a
    JSON object and as a URI (the two forms the provider reads)."""
    kwargs = json.loads(dotenv["SIDECAR_BACKEND_KWARGS"])
    variables = kwargs.get("variables_prefix", "airflow/variables")
    connections = kwargs.get("connections_prefix", "airflow/connections")
    server = AwsEmulator()
    server.start()
    try:
        server.put(f"{variables}/astro_parse_time", secrets["astro_parse_time"])
        server.put(f"{variables}/astro_task_time", secrets["astro_task_time"])
        server.put(f"{connections}/astro_warehouse", json.dumps(secrets["astro_warehouse"]))
        api = secrets["astro_api"]
        uri = f"{api['conn_type']}://{api['login']}:{api['password']}@{api['host']}:{api['port']}/{api['schema']}"
        server.put(f"{connections}/astro_api", uri)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def project_image() -> Iterator[str]:
    """The user's image: the Runtime stand-in plus the snippet's lines, with this checkout's wheel."""
    inspect = docker("image", "inspect", RUNTIME_IMAGE, check=False)
    require(inspect.returncode == 0, f"no {RUNTIME_IMAGE}: run tests/astro/prepare.sh first")
    with tempfile.TemporaryDirectory(prefix="astro-image-") as scratch:
        context = Path(scratch) / "context"
        # A copy of the checkout (with uncommitted changes): pip builds in-tree, leaving build/ behind.
        source = Path(scratch) / "source"
        ignore = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
        shutil.copytree(ROOT, source, ignore=ignore)
        started = time.monotonic()
        wheel = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(context / "wheels"), str(source)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        require(wheel.returncode == 0, f"building the wheel failed:\n{tail(wheel.stdout + wheel.stderr)}")
        (context / "Dockerfile").write_text(
            f"FROM {RUNTIME_IMAGE}\n"
            "# As the snippet says to do before a release: pip finds airflow-secrets-sidecar in the wheel.\n"
            "COPY wheels /wheels\n"
            "ENV PIP_FIND_LINKS=/wheels\n"
            f"# deploy/astro/Dockerfile.snippet, pasted under the FROM:\n{snippet_lines()}"
        )
        build = subprocess.run(
            [DOCKER, "build", "--progress", "plain", "--network", "host", "-t", PROJECT_IMAGE, str(context)],
            capture_output=True, text=True, timeout=900, env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )  # fmt: skip
        require(build.returncode == 0, f"building the project's image failed:\n{tail(build.stdout + build.stderr, 60)}")
        say(f"built {PROJECT_IMAGE} (wheel + snippet) in {time.monotonic() - started:.0f}s")
    yield PROJECT_IMAGE
    docker("image", "rm", PROJECT_IMAGE, check=False)


class AstroDev:
    """The containers `astro dev start` would run, on the host's network, and what each showed."""

    def __init__(self, image: str, aws: AwsEmulator, dotenv: dict[str, str], workdir: Path) -> None:
        self.image = image
        self.aws = aws
        self.workdir = workdir
        self.prefix = f"astro-{uuid.uuid4().hex[:6]}"
        self.pg_port = free_port()
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        socket_path = json.loads(dotenv["AIRFLOW__SECRETS__BACKEND_KWARGS"])["unix_socket"]
        self.sidecar_dir = os.path.dirname(socket_path)
        self.sidecar_log = f"{self.sidecar_dir}/sidecar.log"
        self.common_env, self.env = self._environments(dotenv)
        self.done: set[str] = set()  # the steps that completed
        self.seen: dict[str, dict[str, str]] = {component: {} for component in COMPONENTS}  # for the table
        self.notes: list[str] = []
        self._token: str | None = None
        self._health: Any = None

    def _environments(self, dotenv: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """astro-cli's common variables (all the db-migration gets), and the Airflow containers' (.env,
        then the common ones over it, as Compose does), moved to 127.0.0.1 and moto."""
        compose = yaml.safe_load(ASTRO_CLI_COMPOSE.read_text())
        common = {name: str(value) for name, value in compose["x-common-env-vars"].items()}
        database = f"postgresql://postgres:postgres@127.0.0.1:{self.pg_port}/postgres"
        common.update(
            AIRFLOW__CORE__SQL_ALCHEMY_CONN=database,
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=database,
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.api_port),
            AIRFLOW__API__BASE_URL=self.url,
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
            # Ports of their own: the scheduler's and the triggerer's log servers share the host's network.
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
        )
        kwargs = json.loads(dotenv["SIDECAR_BACKEND_KWARGS"])
        if "role_arn" in kwargs:  # assumed through moto's STS
            kwargs["role_arn"] = ROLE_ARN
            kwargs["service_config"] = {**kwargs.get("service_config", {}), "sts": {"endpoint_url": self.aws.endpoint}}
        kwargs.update(region_name=REGION, endpoint_url=self.aws.endpoint)
        unfilled = {key: value for key, value in kwargs.items() if isinstance(value, str) and value.startswith("<")}
        assert not unfilled, f"{ENV_EXAMPLE}: SIDECAR_BACKEND_KWARGS placeholders this test cannot fill: {unfilled}"
        env = {
            **dotenv,
            **common,
            "SIDECAR_BACKEND_KWARGS": json.dumps(kwargs),
            "AWS_ACCESS_KEY_ID": CONTAINER_KEY,
            "AWS_SECRET_ACCESS_KEY": "astro-container-secret",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance metadata service: only loopback here
        }
        return common, env

    def name(self, component: str) -> str:
        return f"{self.prefix}-{component}"

    @staticmethod
    def _flags(env: dict[str, str]) -> list[str]:
        return [flag for name, value in env.items() for flag in ("-e", f"{name}={value}")]

    # --- lifecycle ---

    def start(self, secrets: dict[str, Any]) -> None:
        self._write_project(secrets)
        started = time.monotonic()
        # --network host: 127.0.0.1 is the host's, where moto, Postgres, the API server and this test are.
        common = ["--network", "host", "--label", f"{LABEL}={self.prefix}"]
        docker("run", "-d", "--name", self.name("postgres"), *common,
               "-e", f"PGPORT={self.pg_port}", "-e", "POSTGRES_PASSWORD=postgres", POSTGRES_IMAGE)  # fmt: skip
        ready = ["exec", self.name("postgres"), "sh", "-c", "exec /usr/lib/postgresql/*/bin/pg_isready -q -h 127.0.0.1"]
        wait_for(
            lambda: self._check_running(["postgres"]) and docker(*ready, check=False).returncode == 0,
            "Postgres accepting connections", 60, lambda: self.logs("postgres"),
        )  # fmt: skip
        migrate = docker(
            "run", "--rm", "--name", self.name("db-migration"), *common, *self._flags(self.common_env),
            self.image, "airflow", "db", "migrate", timeout=600, check=False,
        )  # fmt: skip
        require(migrate.returncode == 0, f"airflow db migrate failed:\n{tail(migrate.stdout + migrate.stderr)}")
        say(f"postgres and `airflow db migrate` in {time.monotonic() - started:.0f}s")
        project = self.workdir / "project"
        for folder in ("dags", "plugins", "include", "logs"):
            common += ["-v", f"{project}/{folder}:{AIRFLOW_HOME}/{folder}"]
        for component in COMPONENTS:
            docker("run", "-d", "--name", self.name(component), "--user", "astro", *common, *self._flags(self.env),
                   self.image, "airflow", component)  # fmt: skip
        took = self.wait_healthy()
        say(f"the four Airflow containers healthy {took:.0f}s after `docker run`")

    def _write_project(self, secrets: dict[str, Any]) -> None:
        """project/ (dags, plugins) as an Astro project has them, with expected.json; writable by astro."""
        project = self.workdir / "project"
        shutil.copytree(HERE / "project", project, ignore=shutil.ignore_patterns("__pycache__"))
        (project / "include").mkdir()
        (project / "logs").mkdir()  # not in astro-cli's compose: here so that a failed task's log can be shown
        expected = {key: described(value) if isinstance(value, dict) else value for key, value in secrets.items()}
        (project / "dags" / "expected.json").write_text(json.dumps(expected, indent=2))
        for path in [project, *project.rglob("*")]:
            os.chown(path, 50000, 50000)

    def wait_healthy(self) -> float:
        def healthy() -> bool:
            self._check_running(COMPONENTS)
            status, self._health = self.api("GET", "/api/v2/monitor/health", auth=False)
            parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
            return status == 200 and all((self._health.get(part) or {}).get("status") == "healthy" for part in parts)

        return wait_for(
            healthy, "Airflow's /api/v2/monitor/health reporting every component healthy", 300,
            lambda: f"its last answer: {self._health}\n{self.all_logs()}",
        )  # fmt: skip

    def _check_running(self, components: Any) -> bool:
        for component in components:
            state = json.loads(docker("inspect", "--format", "{{json .State}}", self.name(component)).stdout)
            if not state["Running"]:
                pytest.fail(
                    f"container {component} exited ({state['ExitCode']}):\n{self.logs(component)}", pytrace=False
                )
        return True

    def logs(self, component: str, lines: int = 40) -> str:
        result = docker("logs", "--tail", str(lines), self.name(component), check=False)
        return f"--- docker logs {component} (last {lines} lines)\n{tail(result.stdout + result.stderr, lines)}"

    def all_logs(self) -> str:
        return "\n".join(self.logs(component, 25) for component in COMPONENTS)

    def remove(self) -> None:
        remove_containers(f"{LABEL}={self.prefix}")

    # --- inside the containers ---

    def exec(self, component: str, *command: str, env: dict[str, str] | None = None) -> str:
        flags = self._flags(env or {})
        result = docker("exec", *flags, self.name(component), *command, check=False, timeout=120)
        require(result.returncode == 0, f"`{' '.join(command)[:80]}` in {component} failed:\n{tail(result.stderr)}")
        return result.stdout

    def daemons(self, component: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self.exec(component, "python", "-c", DAEMONS))
        return found

    def environ(self, component: str, pid: int) -> dict[str, str]:
        """Read from the host: the daemon is not dumpable (SIDECAR_HARDEN), so inside its container
        not even root, which Docker leaves without CAP_SYS_PTRACE, may read it."""
        raw = Path(f"/proc/{self.host_pid(component, pid)}/environ").read_bytes().decode()
        return dict(item.partition("=")[::2] for item in raw.split("\0") if item)

    def host_pid(self, component: str, pid: int) -> int:
        """The host's pid of the container's process `pid`: the one in its pid namespace with that NSpid."""
        init = docker("inspect", "-f", "{{.State.Pid}}", self.name(component)).stdout.strip()
        namespace = os.readlink(f"/proc/{init}/ns/pid")
        for entry in Path("/proc").iterdir():
            try:
                if not entry.name.isdigit() or os.readlink(entry / "ns" / "pid") != namespace:
                    continue
                status = (entry / "status").read_text().splitlines()
            except OSError:
                continue
            nspid = next((line.split()[1:] for line in status if line.startswith("NSpid:")), [])
            if nspid and int(nspid[-1]) == pid:
                return int(entry.name)
        raise AssertionError(f"no host process is pid {pid} of {component} (reading it takes root on the host)")

    def environ_refused_to_airflow(self, component: str, pid: int) -> bool:
        """Whether Airflow's own user (the daemon's too) is refused the daemon's environment."""
        result = docker("exec", self.name(component), "cat", f"/proc/{pid}/environ", check=False, timeout=120)
        return result.returncode != 0 and "Permission denied" in result.stderr

    def sidecar_files(self, component: str) -> tuple[list[str], str]:
        """From a stopped container: the names in the sidecar's directory, and its log."""
        result = subprocess.run(
            [DOCKER, "cp", f"{self.name(component)}:{self.sidecar_dir}", "-"], capture_output=True, timeout=60
        )
        require(result.returncode == 0, f"docker cp of {self.sidecar_dir} from {component}: {result.stderr.decode()}")
        with tarfile.open(fileobj=io.BytesIO(result.stdout)) as archive:
            names = sorted(os.path.basename(member.name) for member in archive.getmembers() if member.isfile())
            log = archive.extractfile(f"{os.path.basename(self.sidecar_dir)}/sidecar.log")
            text = log.read().decode("utf-8", "replace") if log else ""
        upper = docker("inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", self.name(component)).stdout.strip()
        directory = Path(upper + self.sidecar_dir) if upper else None
        if directory and directory.is_dir():  # overlay2: sockets too, which docker cp leaves out
            names = sorted(path.name for path in directory.iterdir())
        return names, text

    # --- Airflow's REST API ---

    def api(self, method: str, path: str, body: Any = None, auth: bool = True) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")
        except OSError as exc:
            return 0, f"{type(exc).__name__}: {exc}"

    def token(self) -> str:
        """A token from the simple auth manager, which astro-cli runs with all users admins."""
        if self._token is None:
            status, body = self.api("GET", "/auth/token", auth=False)
            require(status in (200, 201), f"GET /auth/token: {status} {body}")
            self._token = body["access_token"]
        return self._token

    def run_dag(self, what: str) -> str:
        """Trigger the DAG and wait for the run to succeed; its run id. Fails with the tasks' logs."""
        seen: dict[str, Any] = {}

        def parsed() -> bool:
            self._check_running(COMPONENTS)
            status, seen["dag"] = self.api("GET", f"/api/v2/dags/{DAG_ID}")
            if status != 200:
                _, errors = self.api("GET", "/api/v2/importErrors")
                errors = errors.get("import_errors", []) if isinstance(errors, dict) else []
                mine = [error for error in errors if DAG_ID in error.get("filename", "")]
                if mine:
                    pytest.fail(f"the DAG does not import:\n{mine[0]['stack_trace']}", pytrace=False)
            return status == 200

        wait_for(parsed, f"the dag-processor parsing {DAG_ID}", 180, lambda: f"{seen}\n{self.logs('dag-processor')}")
        status, body = self.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        require(status == 200, f"unpausing {DAG_ID}: {status} {body}")
        status, body = self.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None})
        require(status == 200, f"triggering {DAG_ID}: {status} {body}")
        run_id = body["dag_run_id"]
        run_path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"

        def finished() -> bool:
            self._check_running(COMPONENTS)
            status, seen["run"] = self.api("GET", run_path)
            return status == 200 and seen["run"]["state"] in ("success", "failed")

        took = wait_for(finished, f"the {what} of {DAG_ID} finishing", 300, lambda: self.explain_run(run_id))
        state = seen["run"]["state"]
        assert state == "success", f"the {what} of {DAG_ID} ended {state}:\n{self.explain_run(run_id)}"
        markers = self.task_logs(run_id)
        for marker in ("the task read astro_warehouse", "the triggerer read astro_api"):
            assert marker in markers, f"no '{marker}' in the task logs:\n{tail(markers)}"
        say(f"the {what} of {DAG_ID} succeeded in {took:.0f}s")
        return run_id

    def explain_run(self, run_id: str) -> str:
        _, instances = self.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
        instances = instances.get("task_instances", []) if isinstance(instances, dict) else []
        states = [(instance["task_id"], instance["state"]) for instance in instances]
        return f"task states: {states}\n{tail(self.task_logs(run_id), 80)}\n{self.logs('scheduler')}"

    def task_logs(self, run_id: str) -> str:
        """The run's task logs, from the logs folder the containers share with this test."""
        run_dir = self.workdir / "project" / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
        logs = sorted(run_dir.rglob("*.log"))
        return "\n".join(f"--- {path.relative_to(run_dir)}\n{path.read_text()}" for path in logs)

    # --- the table ---

    def report(self) -> str:
        columns = ("container", "daemon pid (parent)", "its AWS key", "docker stop", "daemon ended", "starts logged",
                   "left behind", "after docker start")  # fmt: skip
        rows = [list(columns)]
        rows += [
            [component, *(self.seen[component].get(column, "-") for column in columns[1:])] for component in COMPONENTS
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(["", "make test-astro: what each container showed", *lines, *self.notes])


def remove_containers(label: str) -> None:
    ids = docker("ps", "-aq", "--filter", f"label={label}").stdout.split()
    if ids:
        docker("rm", "-f", "-v", *ids, check=False)


@pytest.fixture(scope="module")
def astro(project_image: str, aws: AwsEmulator, dotenv: dict[str, str], secrets: dict[str, Any]) -> Iterator[AstroDev]:
    remove_containers(LABEL)  # any left by a run that was killed
    workdir = Path(tempfile.mkdtemp(prefix="astro-dev-"))
    dev = AstroDev(project_image, aws, dotenv, workdir)
    try:
        dev.start(secrets)
        yield dev
    finally:
        print(dev.report(), flush=True)
        dev.remove()
        shutil.rmtree(workdir, ignore_errors=True)


# --- the scenario ---


def test_a_task_started_daemon_gets_the_containers_aws_credentials(astro: AstroDev, secrets: dict[str, Any]) -> None:
    """A task-like process with an AWS_ACCESS_KEY_ID of its own does the triggerer's first lookup: the
    daemon it starts serves the whole container, so it must run with the container's credentials."""
    component = "triggerer"
    assert astro.daemons(component) == [], "a daemon runs in the triggerer before any lookup there"
    # As Airflow builds its backend from AIRFLOW__SECRETS__BACKEND and _KWARGS.
    lookup = (
        "from airflow.configuration import get_custom_secret_backend as b; print(b().get_variable('astro_task_time'))"
    )
    output = astro.exec(component, "python", "-c", lookup, env={"AWS_ACCESS_KEY_ID": TASK_KEY})
    assert output.strip().splitlines()[-1:] == [secrets["astro_task_time"]], f"the lookup printed:\n{output}"
    daemons = astro.daemons(component)
    assert len(daemons) == 1, f"daemons in the triggerer after its first lookup: {daemons}"
    key = astro.environ(component, daemons[0]["pid"]).get("AWS_ACCESS_KEY_ID")
    astro.notes.append(
        f"triggerer: its first lookup came from `docker exec` with AWS_ACCESS_KEY_ID={TASK_KEY}; the daemon it "
        f"started (pid {daemons[0]['pid']}) has AWS_ACCESS_KEY_ID={key} (the container's: {CONTAINER_KEY})"
    )
    assert key == CONTAINER_KEY, (
        f"the daemon (pid {daemons[0]['pid']}) runs with AWS_ACCESS_KEY_ID={key!r}, the environment of the task that "
        f"happened to start it, not the container's {CONTAINER_KEY!r}: autostart must start it from PID 1's environment"
    )


def test_a_dag_run_reads_its_secrets_in_all_four_containers(astro: AstroDev) -> None:
    """Parse time in the dag-processor, the task in the scheduler (LocalExecutor), the task's lookup of
    a Variable in no backend on the API server, a trigger in the triggerer."""
    astro.run_dag("first run")
    astro.notes.append(f"moto's calls after the first run: {dict(sorted(astro.aws.calls.items()))}")
    astro.done.add("first run")


def test_each_container_holds_exactly_one_daemon(astro: AstroDev) -> None:
    if "first run" not in astro.done:
        pytest.skip("needs the first DAG run")
    found = {component: astro.daemons(component) for component in COMPONENTS}
    for component, daemons in found.items():
        if len(daemons) == 1:
            daemon = daemons[0]
            key = astro.environ(component, daemon["pid"]).get("AWS_ACCESS_KEY_ID", "unset")
            astro.seen[component]["daemon pid (parent)"] = f"{daemon['pid']} ({daemon['ppid']})"
            astro.seen[component]["its AWS key"] = key
            # Hardened: its environment (AWS keys, the token where one is given) is not for Airflow to read.
            assert astro.environ_refused_to_airflow(component, daemon["pid"]), f"{component}: environ readable"
    wrong = {component: daemons for component, daemons in found.items() if len(daemons) != 1}
    assert not wrong, f"containers without exactly one airflow-secrets-sidecar daemon: {wrong}"
    zombies = {component: d for component, daemons in found.items() for d in daemons if d["state"] == "Z"}
    assert not zombies, f"zombie daemons: {zombies}"
    astro.done.add("one daemon each")


def test_docker_stop_ends_each_container_within_its_grace_period(astro: AstroDev) -> None:
    """tini (PID 1) forwards SIGTERM to Airflow and exits with it; the kernel then SIGKILLs what is left
    in the container, the daemon among them. Its log must still end with a complete line."""
    if "one daemon each" not in astro.done:
        pytest.skip("needs the daemons of the first run")

    before_kill: dict[str, list[tuple[str, str]]] = {}

    def stop(component: str) -> tuple[float, dict[str, Any]]:
        started = time.monotonic()
        container = astro.name(component)
        # what still runs 5 s before Docker's SIGKILL, if anything does
        look = threading.Timer(STOP_GRACE - 5, lambda: before_kill.update({component: processes(container)}))
        look.start()
        docker("stop", "-t", str(STOP_GRACE), container, timeout=STOP_GRACE + 60)
        took = time.monotonic() - started
        look.cancel()
        look.join()
        return took, json.loads(docker("inspect", "--format", "{{json .State}}", container).stdout)

    with concurrent.futures.ThreadPoolExecutor(len(COMPONENTS)) as pool:  # as `astro dev stop` does: all at once
        stopped = dict(zip(COMPONENTS, pool.map(stop, COMPONENTS), strict=True))
    problems = []
    for component, (took, state) in stopped.items():
        names, log = astro.sidecar_files(component)
        last = log.rstrip("\n").rsplit("\n", 1)[-1]
        after_start = log.rsplit("starts the sidecar", 1)[-1]
        if re.search(r"\bstopped\b", after_start):
            ended = "stopped on a signal (logged 'stopped')"
        elif re.search(r"\bstopping\b", after_start):
            ended = "killed while stopping"
        else:
            ended = "SIGKILLed with the container"
        astro.seen[component].update({
            "docker stop": f"{took:.1f}s, exit {state['ExitCode']}",
            "daemon ended": ended,
            "left behind": " ".join(name for name in names if name != "sidecar.log"),
            "starts logged": str(log.count("starts the sidecar")),
        })  # fmt: skip
        astro.notes.append(f"{component}: the daemon's log ends with: {last[:150]}")
        killed = took >= STOP_GRACE or state["ExitCode"] == 137 or state["OOMKilled"]
        running = before_kill.get(component, [])
        if killed and airflow_waits_for_an_idle_worker(running) and LOCAL_EXECUTOR_END in astro.logs(component, 400):
            astro.notes.append(f"{component}: SIGKILLed while Airflow's LocalExecutor waited for an idle worker")
        elif killed:
            problems.append(
                f"{component}: stopped in {took:.1f}s, exit {state['ExitCode']}: SIGKILLed after the grace?\n"
                + "\n".join(f"  {wchan:<20} {command[:120]}" for wchan, command in running)
                + f"\n{astro.logs(component)}"
            )
        if not log.endswith("\n"):
            problems.append(f"{component}: the daemon's log ends mid-line: {last[-200:]!r}")
    assert not problems, "\n".join(problems)
    astro.done.add("stopped")


def test_docker_start_autostarts_one_daemon_again_and_lookups_work(astro: AstroDev) -> None:
    """The same containers started again: the socket, pid and lock files of the killed daemons are
    still there, and must not keep the backend from starting exactly one daemon per container."""
    if "stopped" not in astro.done:
        pytest.skip("needs the containers stopped")
    docker("start", *(astro.name(component) for component in COMPONENTS))
    took = astro.wait_healthy()
    say(f"healthy again {took:.0f}s after `docker start`")
    astro.run_dag("run after docker start")
    found = {component: astro.daemons(component) for component in COMPONENTS}
    for component, daemons in found.items():
        pids = " ".join(f"{daemon['pid']} ({daemon['ppid']})" for daemon in daemons) or "none"
        starts = astro.exec(component, "cat", astro.sidecar_log).count("starts the sidecar")
        astro.seen[component]["after docker start"] = f"{pids}, starts logged: {starts}"
    wrong = {component: daemons for component, daemons in found.items() if len(daemons) != 1}
    assert not wrong, f"after docker start, containers without exactly one daemon: {wrong}"
    astro.done.add("restarted")


def test_aws_sees_one_warm_up_per_daemon_and_few_lookups(astro: AstroDev) -> None:
    """Each daemon start assumes the role, lists each prefix (variables, connections, config) and loads
    what it found in one batch; the lookup that started it may come before that ends. Lookups are then
    answered from its cache. Room for one re-listing."""
    if "first run" not in astro.done:
        pytest.skip("needs the first DAG run")
    starts = 2 * len(COMPONENTS) if "restarted" in astro.done else len(COMPONENTS)
    calls = dict(sorted(astro.aws.calls.items()))
    astro.notes.append(f"moto's calls in all, for {starts} daemon starts: {calls}")
    limits = {
        "ListSecrets": 2 * 3 * starts,
        "BatchGetSecretValue": starts,
        "GetSecretValue": 2 * starts,
        "AssumeRole": starts,
    }
    over = {api: (count, limits.get(api, 0)) for api, count in calls.items() if count > limits.get(api, 0)}
    assert not over, f"AWS calls over their limit (count, limit): {over}; all: {calls}"
