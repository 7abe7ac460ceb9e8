"""The layout's rules, read from the source: no import cycle among the package's modules, the
Airflow side (what every Airflow process imports) on the standard library alone, and the settings
below the daemon they configure."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sidecar"
# Imported by every Airflow process: the standard library, Airflow, and each other only.
AIRFLOW_SIDE = (
    "sidecar",
    "sidecar.autostart",
    "sidecar.backend",
    "sidecar.client",
    "sidecar.direct",
)
# The settings, and what they parse: the CLI reads them before anything starts, so they stand below
# the daemon that runs (lookup, cache, http, ...) and import none of it.
SETTINGS_SIDE = (
    "sidecar.daemon.settings",
    "sidecar.daemon.backend_kwargs",
    "sidecar.daemon.config_error",
    "sidecar.daemon.token_checks",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """Every module of the package `name` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    return {name: {imported for imported in _imports(name) if imported in MODULES} - {name} for name in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it; None when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        path.append(name)
        for imported in sorted(graph[name]):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name)
        if cycle:
            return cycle
    return None


def test_the_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_of_the_package_imports_itself_through_others():
    assert _cycle(_graph()) is None


def test_the_airflow_side_imports_the_standard_library_airflow_and_itself_only():
    side = [name for name in MODULES if name in AIRFLOW_SIDE]
    assert "sidecar.backend" in side and "sidecar.client" in side
    for name in side:
        for imported in _imports(name):
            top = imported.split(".")[0]
            if top in sys.stdlib_module_names or top == "airflow" or imported == "__future__":
                continue
            assert imported in side or imported.rpartition(".")[0] in side, f"{name} imports {imported}"


def test_the_settings_import_the_standard_library_the_airflow_side_and_each_other_only():
    allowed = (*SETTINGS_SIDE, *AIRFLOW_SIDE)
    for name in SETTINGS_SIDE:
        for imported in _imports(name):
            if imported.split(".")[0] in sys.stdlib_module_names or imported == "__future__":
                continue
            assert imported in allowed or imported.rpartition(".")[0] in allowed, f"{name} imports {imported}"


# The data path below the HTTP handler names AWS's failure without loading an AWS client: the
# error lives with the sources' protocol (sources/base.py), the client in sources/aws.py.
WITHOUT_AWS_CLIENT = (
    "sidecar.daemon.cache.cache",
    "sidecar.daemon.catalog.listing",
    "sidecar.daemon.http.errors",
    "sidecar.daemon.answers.resolver",
)


def _loaded(name: str, graph: dict[str, set[str]]) -> set[str]:
    """Every module of the package that importing `name` runs: what it imports, their parent
    packages' `__init__`, and so on."""
    loaded: set[str] = set()
    todo = [name]
    while todo:
        module = todo.pop()
        if module in loaded:
            continue
        loaded.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:end]) for end in range(1, len(parts)) if ".".join(parts[:end]) in MODULES]
        todo += graph[module]
    return loaded


def test_the_cache_catalog_answers_and_errors_load_no_aws_client():
    graph = _graph()
    assert "sidecar.daemon.sources.aws" in _loaded("sidecar.daemon.lifecycle", graph)  # the check sees it
    for name in WITHOUT_AWS_CLIENT:
        loaded = _loaded(name, graph)
        assert "sidecar.daemon.sources.aws" not in loaded, name
        third_party = {imported.split(".")[0] for module in loaded for imported in _imports(module)}
        assert not third_party & {"aiobotocore", "botocore", "boto3"}, name
