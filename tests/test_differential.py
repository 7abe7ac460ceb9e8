"""Differential tests: `SidecarSecretsBackend`, through a real daemon, answers as the provider backends do.

Every kwargs combination below has the corpus (`tests/corpus.py`) stored under the names its
kwargs give each kind; all combinations share one store, filled once for this module. Per
combination one daemon runs with those kwargs as `SIDECAR_BACKEND_KWARGS`, and every key of the
corpus is asked of our backend and of the provider backend, for every kind, without a team and
as team "ops". The answers must be equal: variables and config exactly, connections as JSON data
(both backends re-serialise JSON connections), misses as misses, failures as failures (only for
the connection the corpus stores unservable).

The sidecar refuses a few keys on purpose where the provider would look the literal name up
(`tests.corpus.DELIBERATE`, each with its reason). Those are asserted separately: ours is a
miss, and the provider does find a value (or raises), so the allow-list cannot go stale.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from airflow import __version__ as airflow_version
from airflow.providers.amazon.aws.secrets.secrets_manager import SecretsManagerBackend
from airflow.providers.amazon.aws.secrets.systems_manager import SystemsManagerParameterStoreBackend
from packaging.version import Version

from sidecar.backend import SidecarSecretsBackend
from tests import corpus
from tests.corpus import KINDS, TEAM, Deliberate, Entry
from tests.support import REGION, TOKEN, AwsEmulator, DaemonThread, make_settings

PROVIDERS = {"secretsmanager": SecretsManagerBackend, "ssm": SystemsManagerParameterStoreBackend}
DEFAULT_PREFIX = {"secretsmanager": "airflow/{kind}", "ssm": "/airflow/{kind}"}
METHODS = {"variables": "get_variable", "connections": "get_conn_value", "config": "get_config"}

# Teams came with Airflow 3.2: before, Airflow asks without one, and the provider's getters take no
# team_name or ignore it (make test-airflow-versions runs this module under 3.0 and 3.1 too).
TEAMS_SUPPORTED = Version(airflow_version).release[:2] >= (3, 2)
TEAMS = (None, TEAM) if TEAMS_SUPPORTED else (None,)

# The amazon providers of Airflow 3.2's time (9.29 in 3.2.2's) answer None for an id shaped like a
# team-scoped one ("ops--x") asked without a team, in multi-team mode or not; later ones, and the
# sidecar, only in that mode. Under such a provider those answers are checked to be its None.
TEAM_SHAPED = re.compile(r"[^-]+--.+")
TEAM_SHAPED_ALWAYS_REFUSED = "no team context was provided" in inspect.getsource(SecretsManagerBackend)

Outcome = tuple[str, Any]  # ("value", str) | ("none", None) | ("error", exception type name)
NONE: Outcome = ("none", None)


@dataclass(frozen=True)
class Combo:
    name: str
    kwargs: dict[str, Any]
    warmup: bool = False
    # Each deliberate difference that applies shows up: the provider does find the literal name
    # at least once. False where null prefixes or lookup patterns keep the provider away too.
    deliberate_found: bool = True


SECRETS_MANAGER_COMBOS = [
    Combo("defaults", {}),
    Combo("defaults-warm", {}, warmup=True),
    Combo(
        "custom-prefixes-warm",
        {"variables_prefix": "team-a/vars/", "connections_prefix": "team-a/conns//", "config_prefix": "settings/af/"},
        warmup=True,
    ),
    Combo(
        "sep-underscore-warm",
        {
            "variables_prefix": "airflow_variables_",
            "connections_prefix": "airflow_connections",
            "config_prefix": "airflow_config__",
            "sep": "_",
        },
        warmup=True,
    ),
    Combo(
        "sep-dot",
        {
            "variables_prefix": "airflow.variables",
            "connections_prefix": "airflow.connections.",
            "config_prefix": "airflow.config",
            "sep": ".",
        },
    ),
    Combo("empty-prefixes", {"variables_prefix": "", "connections_prefix": "", "config_prefix": ""}),
    # The bare-key variables are not listed; the listing still answers for the config prefix.
    Combo("empty-variables-null-connections-warm", {"variables_prefix": "", "connections_prefix": None}, warmup=True),
    Combo(
        "null-variables-and-config-warm",
        {"variables_prefix": None, "config_prefix": None},
        warmup=True,
        deliberate_found=False,
    ),
    Combo(
        "lookup-patterns-warm",
        {
            "variables_lookup_pattern": r"^(plain|json|team|ops|a/)",
            "connections_lookup_pattern": "json_|uri_",
            "config_lookup_pattern": "P",
        },
        warmup=True,
        deliberate_found=False,
    ),
    Combo(
        "extra-conn-words-warm",
        {
            "extra_conn_words": {
                "user": ["usr"],
                "login": ["lgn", "shared"],
                "password": ["secret_pw", "shared"],
                "host": ["hostname"],
                "schema": ["db"],
                "conn_type": ["type"],
                "extra": ["extras"],
                "port": ["port_number"],
            }
        },
        warmup=True,
    ),
    # A config prefix nested inside the connections prefix: the listings overlap.
    Combo(
        "config-prefix-nested-warm",
        {"config_prefix": "custom/conf/tree", "connections_prefix": "custom/conf"},
        warmup=True,
    ),
]

PARAMETER_STORE_COMBOS = [
    Combo("defaults", {}),
    Combo("defaults-warm", {}, warmup=True),
    Combo(
        "prefixes-without-leading-slash-warm",
        {"variables_prefix": "airflow-ssm/vars", "connections_prefix": "airflow-ssm/conns/", "config_prefix": "cfg"},
        warmup=True,
    ),
    Combo("empty-prefixes", {"variables_prefix": "", "connections_prefix": "", "config_prefix": ""}),
    Combo("null-prefixes", {"connections_prefix": None, "config_prefix": None}, deliberate_found=False),
    Combo(
        "lookup-patterns",
        {
            "variables_lookup_pattern": "^(plain|team|ops)",
            "connections_lookup_pattern": "json",
            "config_lookup_pattern": "^[a-m]",
        },
        deliberate_found=False,
    ),
]

# For the lookup-pattern call count: stored under the default names.
PATTERN_ENTRIES = [corpus.connection("prod_db", "postgres://h"), corpus.connection("dev_db", "x://")]

CASES: dict[str, int] = {}  # combination -> differential cases run, for the summary line
DELIBERATE_CASES: dict[str, int] = {}  # allow-listed key -> cases where ours refused it on purpose


# --- the store, filled once ---


def secret_name(source: str, kwargs: dict[str, Any], kind: str, secret_id: str) -> str:
    """Where a combination keeps `secret_id` of `kind`; a null prefix stores under the default, as a trap."""
    default = DEFAULT_PREFIX[source].format(kind=kind)
    prefix = kwargs.get(f"{kind}_prefix", default)
    if prefix is None:
        prefix = default  # must never be found: the kind is off
    if source == "ssm":
        name = f"{prefix.rstrip('/')}/{secret_id}"
        return name if name.startswith("/") else "/" + name
    sep = kwargs.get("sep", "/")
    return f"{prefix.rstrip(sep)}{sep}{secret_id}" if prefix else secret_id


def layout(source: str, combo: Combo, entries: list[Entry]) -> dict[str, tuple[str | bytes, Entry]]:
    """name -> (value, entry) for every entry the store accepts; the first entry of a name wins."""
    names: dict[str, tuple[str | bytes, Entry]] = {}
    for entry in entries:
        for kind, value in entry.values.items():
            name = secret_name(source, combo.kwargs, kind, entry.secret_id)
            if corpus.storable(source, name):
                names.setdefault(name, (f"{combo.name}:{value}" if entry.tagged else value, entry))
    return names


def create(client: Any, source: str, name: str, value: str | bytes, entry: Entry) -> None:
    if source == "ssm":
        assert isinstance(value, str)
        if entry.previous is not None:
            client.put_parameter(Name=name, Value=entry.previous, Type=entry.parameter_type)
        client.put_parameter(Name=name, Value=value, Type=entry.parameter_type, Overwrite=entry.previous is not None)
        return
    if entry.previous is not None:
        client.create_secret(Name=name, SecretString=entry.previous)
        client.put_secret_value(SecretId=name, SecretString=value)
    elif isinstance(value, bytes):
        client.create_secret(Name=name, SecretBinary=value)
    else:
        client.create_secret(Name=name, SecretString=value)
    if entry.deleted:
        client.delete_secret(SecretId=name, RecoveryWindowInDays=7)


@pytest.fixture(scope="module")
def store(aws_server: AwsEmulator) -> Iterator[AwsEmulator]:
    """The emulator holding every combination's names. Tests here never reset it (no `aws` fixture)."""
    werkzeug = logging.getLogger("werkzeug")
    was_disabled, werkzeug.disabled = werkzeug.disabled, True  # a log line per AWS call costs seconds here
    aws_server.reset()
    layouts = [("secretsmanager", combo, corpus.SECRETS_MANAGER) for combo in SECRETS_MANAGER_COMBOS]
    layouts += [("ssm", combo, corpus.PARAMETER_STORE) for combo in PARAMETER_STORE_COMBOS]
    layouts += [(source, Combo("pattern-calls", {}), PATTERN_ENTRIES) for source in PROVIDERS]
    wanted: dict[str, dict[str, tuple[str | bytes, Entry]]] = {source: {} for source in PROVIDERS}
    for source, combo, entries in layouts:
        for name, stored in layout(source, combo, entries).items():
            wanted[source].setdefault(name, stored)
    for source, names in wanted.items():
        client = aws_server.client(source)
        for name, (value, entry) in names.items():
            create(client, source, name, value, entry)
    aws_server.clear_counts()
    yield aws_server
    werkzeug.disabled = was_disabled


@pytest.fixture(scope="module", autouse=True)
def summary(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if CASES and reporter is not None and capture is not None:
        lines = [f"  {name}: {count}" for name, count in CASES.items()]
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\ndifferential cases: {sum(CASES.values())} in {time.monotonic() - started:.1f}s")
            for line in lines:
                reporter.write_line(line)
            deliberate = ", ".join(f"{key!r}: {count}" for key, count in DELIBERATE_CASES.items())
            reporter.write_line(
                f"deliberate differences (ours refuses): {sum(DELIBERATE_CASES.values())} ({deliberate})"
            )


@contextmanager
def backends(aws: AwsEmulator, source: str, combo: Combo) -> Iterator[tuple[SidecarSecretsBackend, Any]]:
    """One daemon with the combination's kwargs, our backend on it, and the provider backend."""
    settings = make_settings(aws, combo.kwargs, source=source, warmup=str(combo.warmup).lower())
    with DaemonThread(settings) as thread:
        deadline = time.monotonic() + 30
        while not thread.daemon.warmup.readiness.ready:  # warm-up: listed and loaded before the first lookup
            assert time.monotonic() < deadline, f"warm-up did not finish: {thread.daemon.warmup.readiness.reason}"
            time.sleep(0.01)
        ours = SidecarSecretsBackend(url=thread.daemon.url, token=TOKEN, source=source)
        theirs = PROVIDERS[source](**combo.kwargs, region_name=REGION, endpoint_url=aws.endpoint)
        yield ours, theirs


# --- asking both ---


def outcome(call: Callable[[], str | None]) -> Outcome:
    try:
        value = call()
    except Exception as exc:
        return ("error", type(exc).__name__)
    return NONE if value is None else ("value", value)


def ask_ours(backend: SidecarSecretsBackend, kind: str, key: str, team: str | None) -> Outcome:
    method = getattr(backend, METHODS[kind])
    # Airflow passes team_name to get_variable and get_conn_value; get_config takes it through **kwargs.
    return outcome(lambda: method(key, team_name=team) if team or kind != "config" else method(key))


def ask_provider(backend: Any, kind: str, key: str, team: str | None) -> Outcome:
    if kind == "config":  # the provider's get_config has no team_name
        return outcome(lambda: backend.get_config(key))
    method = getattr(backend, METHODS[kind])
    return outcome(lambda: method(key, team_name=team) if TEAMS_SUPPORTED else method(key))


def same(kind: str, theirs: Outcome, ours: Outcome) -> bool:
    if theirs[0] != ours[0]:
        return False
    if theirs[0] != "value" or theirs[1] == ours[1]:
        return True
    if kind != "connections":
        return False  # variables and config are served as stored: the very same string
    try:
        return json.loads(theirs[1]) == json.loads(ours[1])
    except ValueError:
        return False


def short(answer: Outcome) -> str:
    text = repr(answer[1])
    return f"{answer[0]} {text[:80]}{'...' if len(text) > 80 else ''}"


@dataclass
class Report:
    cases: int = 0
    mismatches: list[str] = field(default_factory=list)
    deliberate: dict[str, list[Outcome]] = field(default_factory=dict)  # key -> the provider's answers


def differential(
    source: str,
    combo: Combo,
    ours: SidecarSecretsBackend,
    theirs: Any,
    keys: list[str],
    deliberate: list[Deliberate],
    unservable: frozenset[str] = frozenset(),
) -> Report:
    """Ask both backends for every key, kind and team; collect what differs."""
    sep = combo.kwargs.get("sep", "/")
    report = Report()
    for kind in KINDS:
        prefix = combo.kwargs.get(f"{kind}_prefix", DEFAULT_PREFIX[source].format(kind=kind))
        refused = {item.key: item for item in deliberate if item.applies(sep, prefix)}
        for key in keys:
            provider = NONE
            for team in TEAMS:
                mine = ask_ours(ours, kind, key, team)
                # The provider's get_config takes no team: with one, its answer is the one just given.
                if kind != "config" or not team:
                    provider = ask_provider(theirs, kind, key, team)
                where = f"{kind} {key[:60]!r} team={team}"
                asked_without_team = team is None or kind == "config"  # the provider's get_config takes none
                if TEAM_SHAPED_ALWAYS_REFUSED and asked_without_team and TEAM_SHAPED.fullmatch(key):
                    if provider != NONE:
                        report.mismatches.append(f"{where}: the older provider's None expected, got {short(provider)}")
                    continue
                if key in refused:
                    report.deliberate.setdefault(key, []).append(provider)
                    if mine != NONE or provider[0] not in ("none", refused[key].provider):
                        report.mismatches.append(f"{where}: deliberate, provider {short(provider)}, ours {short(mine)}")
                    continue
                report.cases += 1
                unexpected_error = "error" in (mine[0], provider[0]) and not (
                    kind == "connections" and key in unservable
                )
                if unexpected_error or not same(kind, provider, mine):
                    report.mismatches.append(f"{where}: provider {short(provider)}, ours {short(mine)}")
    return report


def check(report: Report, source: str, combo: Combo, deliberate: list[Deliberate]) -> None:
    assert not report.mismatches, f"{len(report.mismatches)} differences:\n" + "\n".join(report.mismatches[:40])
    if combo.deliberate_found:
        # An allow-listed difference must be a real one: the provider does answer the literal name.
        sep = combo.kwargs.get("sep", "/")
        prefixes = [combo.kwargs.get(f"{kind}_prefix", DEFAULT_PREFIX[source].format(kind=kind)) for kind in KINDS]
        for item in deliberate:
            if any(item.applies(sep, prefix) for prefix in prefixes):
                answers = report.deliberate.get(item.key, [])
                assert any(kind == item.provider for kind, _ in answers), (
                    f"{item.key!r} is allow-listed ({item.reason}), but the provider never gave {item.provider!r}"
                )
    CASES[f"{source}/{combo.name}"] = report.cases
    for key, answers in report.deliberate.items():
        DELIBERATE_CASES[key] = DELIBERATE_CASES.get(key, 0) + len(answers)


# --- the tests ---


@pytest.mark.parametrize("combo", SECRETS_MANAGER_COMBOS, ids=lambda combo: combo.name)
def test_secrets_manager_backend_and_sidecar_agree(store: AwsEmulator, combo: Combo) -> None:
    entries = corpus.SECRETS_MANAGER
    assert len(layout("secretsmanager", combo, entries)) >= (0 if combo.kwargs.get("sep") == ":" else 50)
    with backends(store, "secretsmanager", combo) as (ours, theirs):
        report = differential(
            "secretsmanager",
            combo,
            ours,
            theirs,
            corpus.query_keys(entries),
            corpus.DELIBERATE,
            corpus.UNSERVABLE_CONNECTIONS,
        )
    check(report, "secretsmanager", combo, corpus.DELIBERATE)
    assert report.cases >= 250 * len(TEAMS)  # every key and kind asked, per team


@pytest.mark.parametrize("combo", PARAMETER_STORE_COMBOS, ids=lambda combo: combo.name)
def test_parameter_store_backend_and_sidecar_agree(store: AwsEmulator, combo: Combo) -> None:
    entries = corpus.PARAMETER_STORE
    assert len(layout("ssm", combo, entries)) >= 20
    keys = list(dict.fromkeys([entry.key for entry in entries] + corpus.PARAMETER_STORE_QUERY_ONLY))
    with backends(store, "ssm", combo) as (ours, theirs):
        report = differential("ssm", combo, ours, theirs, keys, corpus.PARAMETER_STORE_DELIBERATE)
    check(report, "ssm", combo, corpus.PARAMETER_STORE_DELIBERATE)
    assert report.cases >= 90 * len(TEAMS)


@pytest.mark.parametrize("source", ["secretsmanager", "ssm"])
@pytest.mark.skipif(not TEAMS_SUPPORTED, reason="Airflow before 3.2 has no multi-team mode")
def test_multi_team_mode_refuses_ids_with_the_team_separator_on_both_sides(
    store: AwsEmulator, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    entries = corpus.SECRETS_MANAGER if source == "secretsmanager" else corpus.PARAMETER_STORE
    query_only = corpus.QUERY_ONLY if source == "secretsmanager" else corpus.PARAMETER_STORE_QUERY_ONLY
    keys = list(dict.fromkeys([entry.key for entry in entries] + query_only))
    ambiguous = [key for key in keys if corpus.TEAM_SEP in key]
    assert len(ambiguous) >= 4
    combo = Combo("multi-team", {}, deliberate_found=False)
    # Set before the backends are built: ours reads the option once, the provider on every call.
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
    with backends(store, source, combo) as (ours, theirs):
        # Outside multi-team mode these ids are ordinary names, and the provider finds them (the older
        # providers excepted, see TEAM_SHAPED_ALWAYS_REFUSED).
        monkeypatch.delenv("AIRFLOW__CORE__MULTI_TEAM")
        found = {key for key in ambiguous if ask_provider(theirs, "variables", key, None)[0] == "value"}
        if not TEAM_SHAPED_ALWAYS_REFUSED:
            assert {"ops--shadow", f"{TEAM}--team_only", f"{TEAM}--team_override"} <= found
        monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")

        for key in ambiguous:
            for kind in KINDS:
                for team in TEAMS:
                    # The older providers refuse only "x--y" asked without a team, and look up the rest.
                    if not TEAM_SHAPED_ALWAYS_REFUSED:
                        assert ask_provider(theirs, kind, key, team) == NONE, (kind, key, team)
                    assert ask_ours(ours, kind, key, team) == NONE, (kind, key, team)
        # Team scoping still works, and agrees, for ordinary ids.
        others = ["plain", "team_override", "team_only", "other_team_only", "json_conn", "missing", "a/../b"]
        others += ["team_conn", "json_many_aliases", "team_binary"] if source == "secretsmanager" else []
        deliberate = corpus.DELIBERATE if source == "secretsmanager" else corpus.PARAMETER_STORE_DELIBERATE
        unservable = corpus.UNSERVABLE_CONNECTIONS if source == "secretsmanager" else frozenset()
        report = differential(source, combo, ours, theirs, others, deliberate, unservable)
    check(report, source, combo, deliberate)
    CASES[f"{source}/multi-team"] += len(ambiguous) * len(KINDS) * len(TEAMS)


@pytest.mark.parametrize("source", ["secretsmanager", "ssm"])
def test_lookup_pattern_skip_costs_no_aws_call_on_either_side(store: AwsEmulator, source: str) -> None:
    combo = Combo("pattern-calls", {"connections_lookup_pattern": "^prod_"})
    with backends(store, source, combo) as (ours, theirs):
        cases = [("dev_db", None), ("dev_db", TEAM), ("PROD_db", None), ("prod_db", TEAM), ("prod_x", TEAM)]
        for key, team in [(key, team) for key, team in cases if team in TEAMS]:
            answers, calls = [], []
            for ask, backend in ((ask_provider, theirs), (ask_ours, ours)):
                store.clear_counts()
                answers.append(ask(backend, "connections", key, team))
                calls.append(dict(store.calls))
            assert answers[0] == answers[1], (key, team)
            assert calls[0] == calls[1], (key, team)  # the very same AWS calls: none when the pattern skips
            assert sum(calls[0].values()) == (0 if key.startswith("dev") else 2 if team else 1), (key, team)


def test_a_separator_no_secret_name_may_hold_finds_nothing_and_costs_ours_no_call(store: AwsEmulator) -> None:
    """Secrets Manager names cannot hold ":": the provider asks AWS in vain, the sidecar does not ask."""
    combo = Combo("sep-colon", {"sep": ":"})
    assert layout("secretsmanager", combo, corpus.SECRETS_MANAGER) == {}
    keys = ["plain", "team_override", "json_user", "missing", "a/../b", ""]
    with backends(store, "secretsmanager", combo) as (ours, theirs):
        for key in keys:
            for kind in KINDS:
                for team in TEAMS:
                    store.clear_counts()
                    assert ask_provider(theirs, kind, key, team) == NONE, (kind, key, team)
                    provider_calls = store.total()
                    store.clear_counts()
                    assert ask_ours(ours, kind, key, team) == NONE, (kind, key, team)
                    assert store.total() == 0, (kind, key, team)
                    assert provider_calls >= (1 if key else 0)
    CASES["secretsmanager/sep-colon"] = len(keys) * len(KINDS) * len(TEAMS)
