"""One Airflow-like process: build a secrets backend, do lookups, check the values, report timings.

Run as a script (`python tests/benchmarks/child.py SPEC_JSON`), not as part of the `tests`
package, so that nothing but the interpreter, Airflow and the backend under test is imported
before the clock starts. It prints one line `BENCH_RESULT {json}` and leaves without interpreter
shutdown (see `main`); a wrong value exits 3.

Modes:
- `fresh`: what a new DAG-parsing or task process pays: imports, first lookup, all lookups;
- `latency`: warm lookups of one present and one absent key, timed one by one.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

BACKENDS = {
    "stock": ("airflow.providers.amazon.aws.secrets.secrets_manager", "SecretsManagerBackend"),
    "sidecar": ("sidecar.backend", "SidecarSecretsBackend"),
    "sidecar_round_trip": ("sidecar.backend", "SidecarSecretsBackend"),  # with local_ttl 0
    "stock_use_cache": ("__main__", "AirflowUseCache"),
    "aws_caching": ("__main__", "AwsSecretsManagerCaching"),
}
RESULT_MARK = "BENCH_RESULT "


class WrongValue(Exception):
    pass


class AirflowUseCache:
    """The stock backend behind Airflow's own `[secrets] use_cache`, as the Task SDK's
    `_get_variable` uses it: the shared cache first (a multiprocessing manager's dict, one round
    trip to the manager process per lookup), then the backend; only found values are saved."""

    def __init__(self, **kwargs: Any) -> None:
        os.environ["AIRFLOW__SECRETS__USE_CACHE"] = "True"
        from airflow.providers.amazon.aws.secrets.secrets_manager import SecretsManagerBackend
        from airflow.sdk.execution_time.cache import SecretCache

        SecretCache.init()
        self._cache = SecretCache
        self._backend = SecretsManagerBackend(**kwargs)

    def get_variable(self, key: str) -> str | None:
        try:
            return self._cache.get_variable(key)
        except self._cache.NotPresentException:
            value = self._backend.get_variable(key)
            if value is not None:
                self._cache.save_variable(key, value)
            return value


class AwsSecretsManagerCaching:
    """AWS's in-process `aws-secretsmanager-caching` SecretCache over a boto3 client: each process
    keeps its own cache (an hour by default) and asks AWS for what it has not seen."""

    def __init__(self, region_name: str, endpoint_url: str, variables_prefix: str = "airflow/variables") -> None:
        import boto3
        from aws_secretsmanager_caching import SecretCache

        client = boto3.client("secretsmanager", region_name=region_name, endpoint_url=endpoint_url)
        self._missing = client.exceptions.ResourceNotFoundException
        self._cache = SecretCache(client=client)
        self._prefix = variables_prefix

    def get_variable(self, key: str) -> str | None:
        try:
            value: str | None = self._cache.get_secret_string(f"{self._prefix}/{key}")
        except self._missing:
            return None
        return value


def lookup(backend: Any, kind: str, key: str) -> str | None:
    if kind == "variables":
        return backend.get_variable(key)
    if kind == "connections":
        return backend.get_conn_value(key)
    return backend.get_config(key)


def check(kind: str, key: str, got: str | None, expected: Any) -> None:
    """`expected` is None (absent), a string, or for a JSON connection the normalised dict."""
    ok = (got is not None and json.loads(got) == expected) if isinstance(expected, dict) else got == expected
    if not ok:
        shown = "None" if got is None else f"a {len(got)}-character value"
        raise WrongValue(f"{kind} {key!r}: got {shown}, expected {'None' if expected is None else 'a value'}")


def build(spec: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    import airflow.secrets  # noqa: F401  # what any Airflow process has loaded anyway

    timings["airflow_import_s"] = time.perf_counter() - start
    module_name, class_name = BACKENDS[spec["backend"]]
    start = time.perf_counter()
    module = sys.modules[__name__] if module_name == "__main__" else importlib.import_module(module_name)
    timings["backend_import_s"] = time.perf_counter() - start
    start = time.perf_counter()
    backend = getattr(module, class_name)(**spec["kwargs"])
    timings["construct_s"] = time.perf_counter() - start
    return backend, timings


def fresh(spec: dict[str, Any]) -> dict[str, Any]:
    backend, result = build(spec)
    lookups = spec["lookups"]
    start = time.perf_counter()
    for index, (kind, key, expected) in enumerate(lookups):
        check(kind, key, lookup(backend, kind, key), expected)
        if index == 0:
            result["first_lookup_s"] = time.perf_counter() - start
    result["lookups_s"] = time.perf_counter() - start
    result["lookups"] = len(lookups)
    result["total_s"] = time.perf_counter() - STARTED
    result["boto3_loaded"] = "boto3" in sys.modules
    result["botocore_loaded"] = "botocore" in sys.modules
    return result


def latency(spec: dict[str, Any]) -> dict[str, Any]:
    backend, result = build(spec)
    clock = time.perf_counter_ns
    for case in ("existing", "missing"):
        key, expected = spec[case]
        for _ in range(spec["warmup"]):  # connection set up, client built, daemon cache filled
            check("variables", key, backend.get_variable(key), expected)
        samples: list[int] = []
        for _ in range(spec["n"]):
            start = clock()
            value = backend.get_variable(key)
            samples.append(clock() - start)
            check("variables", key, value, expected)
        result[case] = [sample / 1000 for sample in samples]  # microseconds
    return result


def main() -> int:
    spec = json.loads(sys.argv[1])
    try:
        result = fresh(spec) if spec["mode"] == "fresh" else latency(spec)
    except WrongValue as error:
        print(f"WRONG VALUE from the {spec['backend']} backend: {error}", file=sys.stderr)
        return 3
    print(RESULT_MARK + json.dumps(result), flush=True)
    sys.stderr.flush()
    if "multiprocessing" in sys.modules:  # use_cache's manager process: it holds our stdout open
        for process in sys.modules["multiprocessing"].active_children():
            process.terminate()
    # Skip interpreter shutdown: with Airflow loaded it takes ~0.35 s, the same for either backend,
    # and over 100 processes it would add half a minute that says nothing about secrets.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
