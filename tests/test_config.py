"""`load_settings` and `parse_backend_kwargs`: defaults, precedence, the provider's JSON, and errors.

Every error a user can meet must name the flag and/or the variable to change, and must never
echo a token or the backend kwargs JSON (it may hold credentials).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import build_parser
from sidecar.daemon.backend_kwargs import KindRule, parse_backend_kwargs
from sidecar.daemon.config_error import ConfigError
from sidecar.daemon.settings import SETTINGS, Settings, load_settings, markdown_table
from tests.support import TOKEN, exception_chain

FAKE_SECRET = "AKIAXXXSECRET"


def load(env: dict[str, str] | None = None, *, token: bool = True, **flags: Any) -> Settings:
    """Settings from these flags (Namespace attributes) and env vars; a valid token unless told."""
    environ = {"SIDECAR_TOKEN": TOKEN} if token else {}
    environ.update(env or {})
    return load_settings(argparse.Namespace(**flags), environ)


def config_error(env: dict[str, str] | None = None, *, token: bool = True, **flags: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(env, token=token, **flags)
    return str(caught.value)


def kwargs_error(data: Any) -> str:
    raw = data if isinstance(data, str) else json.dumps(data)
    with pytest.raises(ConfigError) as caught:
        parse_backend_kwargs(raw)
    message = str(caught.value)
    assert "--backend-kwargs / SIDECAR_BACKEND_KWARGS" in message
    return message


# --- defaults ---


def test_defaults():
    settings = load()

    assert (settings.host, settings.port, settings.unix_socket) == ("127.0.0.1", 2779, None)
    with pytest.raises(ConfigError, match="loopback"):  # allow_remote is off by default
        load(host="0.0.0.0")
    assert (settings.token, settings.token_file) == (TOKEN, None)
    assert settings.source == "secretsmanager"
    assert (settings.ttl, settings.negative_ttl, settings.max_stale) == (1800.0, 600.0, 21600.0)
    assert settings.max_entries == 10000
    assert settings.warmup is True
    assert settings.list_interval == 300.0
    assert (settings.log_level, settings.log_format) == ("INFO", "text")
    assert (settings.max_upstream, settings.max_requests, settings.request_timeout) == (32, 512, 8.0)
    store = settings.store
    assert store.sep == "/"
    assert store.kinds == {
        "variables": KindRule("airflow/variables", None),
        "connections": KindRule("airflow/connections", None),
        "config": KindRule("airflow/config", None),
    }
    assert store.extra_conn_words == {}
    assert (store.role_arn, store.region_name, store.profile_name, store.endpoint_url) == (None, None, None, None)
    assert store.assume_role_kwargs == {}
    assert store.verify is None


def test_ssm_source_has_the_ssm_providers_default_prefixes():
    settings = load({"SIDECAR_SOURCE": "ssm"})

    assert settings.source == "ssm"
    assert {kind: rule.prefix for kind, rule in settings.store.kinds.items()} == {
        "variables": "/airflow/variables",
        "connections": "/airflow/connections",
        "config": "/airflow/config",
    }


def test_source_is_case_insensitive():
    assert load({"SIDECAR_SOURCE": "SSM"}).source == "ssm"


def test_the_negative_ttl_defaults_to_twice_the_listing_interval():
    assert load({"SIDECAR_TTL": "42"}).list_interval == 300.0  # the TTL no longer sets it
    assert load({"SIDECAR_LIST_INTERVAL": "60"}).negative_ttl == 120.0
    assert load(list_interval="7.5").negative_ttl == 15.0
    assert load({"SIDECAR_LIST_INTERVAL": "60", "SIDECAR_NEGATIVE_TTL": "5"}).negative_ttl == 5.0


def test_an_empty_env_var_means_the_default():
    settings = load({"SIDECAR_TTL": "", "SIDECAR_PORT": "", "SIDECAR_HOST": "", "SIDECAR_BACKEND_KWARGS": ""})

    assert (settings.ttl, settings.port, settings.host) == (1800.0, 2779, "127.0.0.1")
    assert settings.store.kinds["variables"].prefix == "airflow/variables"


def test_env_vars_are_read():
    settings = load(
        {
            "SIDECAR_HOST": "::1",
            "SIDECAR_PORT": "0",
            "SIDECAR_TTL": "10",
            "SIDECAR_NEGATIVE_TTL": "0",
            "SIDECAR_MAX_STALE": "0",
            "SIDECAR_MAX_ENTRIES": "5",
            "SIDECAR_WARMUP": "off",
            "SIDECAR_LIST_INTERVAL": "3",
            "SIDECAR_LOG_LEVEL": "debug",
            "SIDECAR_LOG_FORMAT": "JSON",
            "SIDECAR_MAX_UPSTREAM": "4",
            "SIDECAR_MAX_REQUESTS": "8",
            "SIDECAR_REQUEST_TIMEOUT": "0.5",
            "SIDECAR_UNIX_SOCKET": "/run/sidecar.sock",
        }
    )

    assert (settings.host, settings.port, settings.unix_socket) == ("::1", 0, "/run/sidecar.sock")
    assert (settings.ttl, settings.negative_ttl, settings.max_stale) == (10.0, 0.0, 0.0)
    assert (settings.max_entries, settings.warmup, settings.list_interval) == (5, False, 3.0)
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    assert (settings.max_upstream, settings.max_requests, settings.request_timeout) == (4, 8, 0.5)


# --- flags win over env vars ---


def test_flags_win_over_env_vars():
    env = {
        "SIDECAR_HOST": "127.0.0.1",
        "SIDECAR_PORT": "1111",
        "SIDECAR_TTL": "20",
        "SIDECAR_NEGATIVE_TTL": "21",
        "SIDECAR_MAX_STALE": "22",
        "SIDECAR_MAX_ENTRIES": "23",
        "SIDECAR_WARMUP": "true",
        "SIDECAR_LIST_INTERVAL": "24",
        "SIDECAR_LOG_LEVEL": "error",
        "SIDECAR_LOG_FORMAT": "json",
        "SIDECAR_MAX_UPSTREAM": "25",
        "SIDECAR_MAX_REQUESTS": "26",
        "SIDECAR_REQUEST_TIMEOUT": "27",
        "SIDECAR_SOURCE": "ssm",
        "SIDECAR_BACKEND_KWARGS": json.dumps({"variables_prefix": "from-env"}),
        "SIDECAR_UNIX_SOCKET": "/env.sock",
    }
    settings = load(
        env,
        host="localhost",
        port="2222",
        ttl="10",
        negative_ttl="11",
        max_stale="12",
        max_entries="13",
        warmup=False,
        list_interval="14",
        log_level="warning",
        log_format="text",
        max_upstream="15",
        max_requests="16",
        request_timeout="17",
        source="secretsmanager",
        backend_kwargs=json.dumps({"variables_prefix": "from-flag"}),
        unix_socket="/flag.sock",
    )

    assert (settings.host, settings.port, settings.unix_socket) == ("localhost", 2222, "/flag.sock")
    assert (settings.ttl, settings.negative_ttl, settings.max_stale) == (10.0, 11.0, 12.0)
    assert (settings.max_entries, settings.warmup, settings.list_interval) == (13, False, 14.0)
    assert (settings.log_level, settings.log_format) == ("WARNING", "text")
    assert (settings.max_upstream, settings.max_requests, settings.request_timeout) == (15, 16, 17.0)
    assert settings.source == "secretsmanager"
    assert settings.store.kinds["variables"].prefix == "from-flag"
    assert settings.store.kinds["connections"].prefix == "airflow/connections"  # the secretsmanager default


def test_warmup_flag_true_wins_over_env_false():
    assert load({"SIDECAR_WARMUP": "false"}, warmup=True).warmup is True


@pytest.mark.parametrize("task_pod", [{"SIDECAR_TASK_POD": "True"}, {"SIDECAR_TASK_POD": "true"}, {}])
def test_a_task_pod_neither_warms_up_nor_waits_for_its_turn(task_pod):
    """ "True" is the value of the `kubernetes_executor` label that Airflow puts on task pods; the
    Helm values hand it to the sidecar, whose spec is the Celery workers' too."""
    settings = load({"SIDECAR_WARMUP": "true", "SIDECAR_WARMUP_JITTER": "60", **task_pod})
    assert (settings.warmup, settings.warmup_jitter) == ((False, 0.0) if task_pod else (True, 60.0))
    assert load(warmup=True, warmup_jitter="60", task_pod="true").warmup is False


def test_a_daemon_in_a_task_pods_own_container_knows_it_from_airflow():
    # KubernetesExecutor sets AIRFLOW_IS_K8S_EXECUTOR_POD in the task's container, where autostart runs.
    assert load({"AIRFLOW_IS_K8S_EXECUTOR_POD": "True"}).warmup is False
    assert load({"AIRFLOW_IS_K8S_EXECUTOR_POD": "True", "SIDECAR_TASK_POD": "false"}).warmup is True


def test_an_empty_task_pod_setting_is_a_long_lived_pod():
    # A label the pod lacks reaches the container as an empty variable.
    assert load({"SIDECAR_TASK_POD": "", "SIDECAR_WARMUP_JITTER": "60"}).warmup_jitter == 60.0


def test_allow_remote_flag_and_env():
    assert load(host="0.0.0.0", allow_remote="true").host == "0.0.0.0"
    assert load({"SIDECAR_HOST": "0.0.0.0", "SIDECAR_ALLOW_REMOTE": "yes"}).host == "0.0.0.0"


# --- SIDECAR_BACKEND_KWARGS: the provider's JSON ---


def test_backend_kwargs_json_of_the_provider():
    raw = json.dumps(
        {
            "connections_prefix": "airflow/connections/",
            "variables_prefix": "team/vars//",
            "config_prefix": None,
            "variables_lookup_pattern": "^AIRFLOW_",
            "role_arn": "arn:aws:iam::123456789012:role/airflow",
            "assume_role_kwargs": {"DurationSeconds": 900},
            "region_name": "eu-west-1",
            "profile_name": "prod",
            "endpoint_url": "http://localhost:4566",
            "verify": False,
        }
    )
    settings = load({"SIDECAR_BACKEND_KWARGS": raw})
    store = settings.store

    assert store.kinds["connections"].prefix == "airflow/connections"
    assert store.kinds["variables"].prefix == "team/vars"
    assert store.kinds["config"] == KindRule(None, None)
    assert store.role_arn == "arn:aws:iam::123456789012:role/airflow"
    assert store.assume_role_kwargs == {"DurationSeconds": 900}
    assert (store.region_name, store.profile_name, store.endpoint_url) == ("eu-west-1", "prod", "http://localhost:4566")
    assert store.verify is False


def test_backend_kwargs_flag_is_read():
    settings = load(backend_kwargs='{"variables_prefix": "x/y/"}')
    assert settings.store.kinds["variables"].prefix == "x/y"


def test_null_prefix_turns_a_kind_off():
    rule = parse_backend_kwargs('{"variables_prefix": null}').kinds["variables"]

    assert rule.prefix is None
    assert not rule.admits("anything")


def test_empty_prefix_stays_empty_and_means_the_bare_key():
    rule = parse_backend_kwargs('{"connections_prefix": ""}').kinds["connections"]

    assert rule.prefix == ""
    assert rule.admits("my_conn")


def test_custom_sep_is_kept_and_stripped_from_prefixes():
    store = parse_backend_kwargs(json.dumps({"sep": ":", "variables_prefix": "airflow:variables::"}))

    assert store.sep == ":"
    assert store.kinds["variables"].prefix == "airflow:variables"
    # The provider strips only its own sep: a trailing "/" stays when the sep is something else.
    assert parse_backend_kwargs('{"sep": "-", "variables_prefix": "a/b/"}').kinds["variables"].prefix == "a/b/"


def test_lookup_patterns_are_compiled_case_insensitive():
    store = parse_backend_kwargs(
        json.dumps(
            {"variables_lookup_pattern": "^aws_", "connections_lookup_pattern": "db", "config_lookup_pattern": ""}
        )
    )
    variables = store.kinds["variables"]

    assert isinstance(variables.lookup_pattern, re.Pattern)
    assert variables.lookup_pattern.flags & re.IGNORECASE
    assert variables.admits("aws_key") and variables.admits("AWS_KEY")
    assert not variables.admits("other") and not variables.admits("x_aws_key")
    # re.match semantics, like the provider: anchored at the start only.
    assert store.kinds["connections"].admits("DB_main") and not store.kinds["connections"].admits("main_db")
    assert store.kinds["config"].lookup_pattern is None


def test_extra_conn_words_map_user_to_login():
    store = parse_backend_kwargs(
        json.dumps({"extra_conn_words": {"user": ["usr"], "login": ["principal"], "password": ["secret", "pwd"]}})
    )

    assert set(store.extra_conn_words) == {"login", "password"}
    assert sorted(store.extra_conn_words["login"]) == ["principal", "usr"]
    assert store.extra_conn_words["password"] == ("secret", "pwd")


# --- errors: each names the flag and/or variable ---


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("ttl", "abc"),
        ("ttl", "0"),
        ("ttl", "-5"),
        ("ttl", "nan"),
        ("ttl", "inf"),
        ("negative_ttl", "soon"),
        ("negative_ttl", "-1"),
        ("negative_ttl", "inf"),
        ("max_stale", "x"),
        ("max_stale", "-0.5"),
        ("max_entries", "many"),
        ("max_entries", "0"),
        ("max_entries", "1.5"),
        ("port", "http"),
        ("port", "-1"),
        ("port", "65536"),
        ("list_interval", "hourly"),
        ("list_interval", "0"),
        ("max_upstream", "0"),
        ("max_upstream", "lots"),
        ("max_requests", "-3"),
        ("max_requests", "1e3"),
        ("request_timeout", "0"),
        ("request_timeout", "slow"),
        ("warmup", "maybe"),
        ("task_pod", "perhaps"),
        ("allow_remote", "sure"),
        ("log_level", "verbose"),
        ("log_format", "xml"),
        ("source", "vault"),
    ],
)
def test_a_bad_setting_names_its_flag_and_env_var(name, bad):
    flag = "--" + name.replace("_", "-")
    env_var = f"SIDECAR_{name.upper()}"

    for message in (config_error({env_var: bad}), config_error(**{name: bad})):
        assert flag in message
        assert env_var in message
        assert repr(bad) in message  # says what it got


def test_a_bad_number_says_a_number_is_expected():
    assert "must be a number" in config_error({"SIDECAR_TTL": "abc"})
    assert "0 to 65535" in config_error({"SIDECAR_PORT": "70000"})


def test_the_port_range_ends_are_accepted():
    assert load({"SIDECAR_PORT": "0"}).port == 0
    assert load({"SIDECAR_PORT": "65535"}).port == 65535


def test_invalid_json_does_not_echo_the_text():
    raw = '{"role_arn": "' + FAKE_SECRET + '", "region_name": }'
    message = config_error({"SIDECAR_BACKEND_KWARGS": raw})

    assert "--backend-kwargs / SIDECAR_BACKEND_KWARGS" in message
    assert "not valid JSON" in message
    assert FAKE_SECRET not in message
    assert "role_arn" not in message


@pytest.mark.parametrize("raw", ["[]", '"text"', "42", "null"])
def test_backend_kwargs_must_be_an_object(raw):
    assert "JSON object" in kwargs_error(raw)


def test_a_key_nothing_reads_is_refused_by_name_with_the_keys_there_are():
    message = kwargs_error({"variable_prefix": FAKE_SECRET})

    assert "['variable_prefix'] (misspelt?)" in message and "'variables_prefix'" in message
    assert FAKE_SECRET not in message and "credentials" not in message


def test_every_key_the_providers_client_reads_moves_unchanged():
    """The kwargs of the provider's own tests and docs: its client options and its AWS connection's."""
    store = parse_backend_kwargs(
        json.dumps(
            {
                "api_version": "2017-10-17",
                "use_ssl": False,
                "config_kwargs": {"connect_timeout": 5},
                "service_config": {"sts": {"endpoint_url": "https://sts.example"}, "s3": {"bucket": "x"}},
                "assume_role_method": "assume_role",
                "session_kwargs": {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": FAKE_SECRET},
            }
        )
    )
    assert (store.api_version, store.use_ssl, store.config_kwargs) == ("2017-10-17", False, {"connect_timeout": 5})
    assert store.sts_endpoint_url == "https://sts.example"
    assert store.credentials == ("AKIAEXAMPLE", FAKE_SECRET, None)
    assert FAKE_SECRET not in repr(store)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"assume_role_method": "assume_role_with_saml"}, "'assume_role_method'"),
        ({"use_ssl": "no"}, "'use_ssl'"),
        ({"aws_session_token": FAKE_SECRET}, "'aws_session_token'"),
        ({"aws_access_key_id": "AKIAEXAMPLE"}, "'aws_secret_access_key'"),
        ({"config_kwargs": ["connect_timeout"]}, "'config_kwargs'"),
    ],
)
def test_a_client_option_the_daemon_cannot_honour_is_refused_by_name(data, named):
    message = kwargs_error(data)
    assert named in message and FAKE_SECRET not in message


def test_unknown_key_is_named_but_its_value_is_not():
    message = kwargs_error({"aws_secret_access_key": FAKE_SECRET})

    assert "aws_secret_access_key" in message
    assert FAKE_SECRET not in message


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"variables_prefix": 5}, "variables_prefix"),
        ({"connections_prefix": ["a"]}, "connections_prefix"),
        ({"config_prefix": True}, "config_prefix"),
        ({"variables_lookup_pattern": 1}, "variables_lookup_pattern"),
        ({"connections_lookup_pattern": ["x"]}, "connections_lookup_pattern"),
        ({"role_arn": 123}, "role_arn"),
        ({"role_arn": {"arn": FAKE_SECRET}}, "role_arn"),
        ({"region_name": 1}, "region_name"),
        ({"endpoint_url": []}, "endpoint_url"),
        ({"assume_role_kwargs": "x"}, "assume_role_kwargs"),
        ({"sep": 1}, "sep"),
        ({"verify": 1}, "verify"),
    ],
)
def test_a_wrong_type_names_the_key(data, key):
    message = kwargs_error(data)

    assert repr(key) in message
    assert FAKE_SECRET not in message


def test_an_invalid_regex_names_the_key():
    message = kwargs_error({"variables_lookup_pattern": "(unclosed"})

    assert "'variables_lookup_pattern'" in message
    assert "regular expression" in message


@pytest.mark.parametrize(
    "words",
    [
        ["usr"],
        "usr",
        {"username": ["usr"]},
        {"login": "usr"},
        {"login": ["usr", 3]},
        {"password": {"a": "b"}},
    ],
)
def test_bad_extra_conn_words(words):
    assert "'extra_conn_words'" in kwargs_error({"extra_conn_words": words})


def test_empty_sep_is_refused():
    assert "'sep'" in kwargs_error({"sep": ""})


def test_bad_backend_kwargs_through_load_settings_name_the_setting():
    message = config_error(backend_kwargs='{"sep": ""}')
    assert "--backend-kwargs / SIDECAR_BACKEND_KWARGS" in message


# --- bind address ---


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.com"])
def test_a_non_loopback_host_needs_allow_remote(host):
    message = config_error({"SIDECAR_HOST": host})

    assert "--host / SIDECAR_HOST" in message
    assert "--allow-remote / SIDECAR_ALLOW_REMOTE" in message
    assert load({"SIDECAR_HOST": host, "SIDECAR_ALLOW_REMOTE": "true"}).host == host
    assert load(host=host, allow_remote="true").host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_hosts_are_accepted(host):
    settings = load({"SIDECAR_HOST": host})

    assert settings.host == host


def test_a_unix_socket_needs_no_loopback_host():
    assert load({"SIDECAR_HOST": "0.0.0.0"}, unix_socket="/tmp/s.sock").unix_socket == "/tmp/s.sock"


# --- token ---


def test_no_token_at_all_is_refused_naming_the_variables():
    message = config_error(token=False)

    assert "SIDECAR_TOKEN" in message
    assert "SIDECAR_TOKEN_FILE" in message
    assert "--token-file" in message


def test_no_token_flag_gives_no_token():
    settings = load(token=False, no_token=True)

    assert settings.token is None
    assert settings.token_file is None


def test_a_short_token_is_refused_without_echoing_it():
    short = "short-secret"
    message = config_error({"SIDECAR_TOKEN": short})

    assert "SIDECAR_TOKEN" in message
    assert "too short" in message
    assert short not in message


def test_a_token_with_surrounding_spaces_is_refused():
    message = config_error({"SIDECAR_TOKEN": f" {TOKEN} "})

    assert "SIDECAR_TOKEN" in message
    assert TOKEN not in message


def test_token_from_sidecar_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    settings = load({"SIDECAR_TOKEN_FILE": str(path)}, token=False)

    assert settings.token == TOKEN
    assert settings.token_file == str(path)


def test_token_file_flag_wins_over_the_env_vars(tmp_path):
    flag_file = tmp_path / "flag-token"
    flag_file.write_text("flag-token-0123456789")
    env_file = tmp_path / "env-token"
    env_file.write_text("env-token-0123456789")
    settings = load({"SIDECAR_TOKEN_FILE": str(env_file)}, token_file=str(flag_file))

    assert settings.token == "flag-token-0123456789"
    assert settings.token_file == str(flag_file)


def test_a_token_file_wins_over_sidecar_token(tmp_path):
    path = tmp_path / "token"
    path.write_text("from-the-file-0123456789")

    assert load({"SIDECAR_TOKEN_FILE": str(path)}).token == "from-the-file-0123456789"


def test_a_missing_token_file_names_the_path(tmp_path):
    path = str(tmp_path / "absent")
    message = config_error({"SIDECAR_TOKEN_FILE": path}, token=False)

    assert repr(path) in message
    assert "--token-file / SIDECAR_TOKEN_FILE" in message


def test_an_unreadable_token_file_names_the_path(tmp_path):
    message = config_error(token_file=str(tmp_path))  # a directory cannot be read as a file
    assert repr(str(tmp_path)) in message
    assert "--token-file / SIDECAR_TOKEN_FILE" in message

    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + FAKE_SECRET.encode() + b"\x80\x81")
    message = config_error(token_file=str(binary))
    assert repr(str(binary)) in message
    assert FAKE_SECRET not in message


def test_a_token_file_that_is_not_utf8_leaves_none_of_it_in_the_error_or_its_chain(tmp_path):
    binary = tmp_path / "binary"
    binary.write_bytes(FAKE_SECRET.encode() + b"\xff\xfe")
    with pytest.raises(ConfigError) as caught:
        load(token_file=str(binary))

    assert "not UTF-8 text" in str(caught.value)
    for held in exception_chain(caught.value):
        assert FAKE_SECRET.encode() not in repr(held).encode() + bytes(getattr(held, "object", b""))


def test_a_short_token_in_a_file_names_the_path_but_not_the_token(tmp_path):
    path = tmp_path / "token"
    path.write_text("tiny-secret\n")
    message = config_error({"SIDECAR_TOKEN_FILE": str(path)})

    assert repr(str(path)) in message
    assert "too short" in message
    assert "tiny-secret" not in message


def test_an_empty_token_file_is_refused(tmp_path):
    path = tmp_path / "token"
    path.write_text("\n")

    assert "too short" in config_error(token_file=str(path))


def test_settings_repr_never_holds_the_token(tmp_path):
    assert TOKEN not in repr(load())
    assert TOKEN not in str(load())
    path = tmp_path / "token"
    path.write_text(TOKEN)
    assert TOKEN not in repr(load(token=False, token_file=str(path)))


@pytest.mark.parametrize("name", ["max_entries", "max_upstream", "max_requests", "max_connections"])
def test_a_fraction_where_a_count_is_expected_says_a_whole_number(name):
    message = config_error({f"SIDECAR_{name.upper()}": "1.5"})

    assert "must be a whole number above 0, got '1.5'" in message


def test_a_port_that_is_no_number_says_a_port_number():
    assert "must be a port number from 0 to 65535, got 'http'" in config_error({"SIDECAR_PORT": "http"})


@pytest.mark.parametrize("inside", [" ", "\t", "\u00a0"])
def test_a_token_with_whitespace_inside_is_refused(inside):
    token = TOKEN[:8] + inside + TOKEN[8:]
    message = config_error({"SIDECAR_TOKEN": token})

    assert "SIDECAR_TOKEN" in message and "spaces" in message
    assert TOKEN[:8] not in message


# --- the settings table: the one place each setting is written ---

CONFIGURATION_MD = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
# Settings `load_settings` reads and folds into others rather than keeps.
CONSUMED = {"backend_kwargs", "source", "allow_remote", "no_token", "task_pod"}


def test_the_docs_table_is_the_settings_table():
    lines = CONFIGURATION_MD.read_text().splitlines()
    start = lines.index("| setting | flag | env var | default |")
    documented = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        documented.append(line)
    assert "\n".join(documented) + "\n" == markdown_table(), (
        "docs/configuration.md's settings table is not SETTINGS: replace it with the output of "
        "python -c 'from sidecar.daemon.settings import markdown_table; print(markdown_table())'"
    )


def test_every_setting_kept_has_a_row():
    rows = {row.name for row in SETTINGS}
    kept = {each.name for each in dataclasses.fields(Settings)} - {"store"}

    assert len(rows) == len(SETTINGS)
    assert kept <= rows
    assert rows - kept == CONSUMED


def test_load_settings_reads_the_variable_of_every_row_and_no_other():
    asked: set[str] = set()

    class Recording(dict):
        def get(self, key: str, default: Any = None) -> Any:
            asked.add(key)
            return super().get(key, default)

    load_settings(argparse.Namespace(), Recording(SIDECAR_TOKEN=TOKEN))

    assert asked == {row.env_var for row in SETTINGS if row.env_var} | {"AIRFLOW_IS_K8S_EXECUTOR_POD"}


def test_the_flags_are_the_rows_with_one():
    (commands,) = (action.choices for action in build_parser()._actions if isinstance(action.choices, dict))
    for command in ("serve", "check"):
        options = {action.dest: action.option_strings for action in commands[command]._actions if action.dest != "help"}
        assert options == {
            row.name: [row.option, f"--no-{row.option[2:]}"] if row.flag == "on/off" else [row.option]
            for row in SETTINGS
            if row.option
        }
        helps = {action.dest: action.help for action in commands[command]._actions}
        for row in SETTINGS:
            if row.option:
                assert row.env_var is None or row.env_var in helps[row.name]
                assert "default: " in helps[row.name]


def test_a_setting_without_a_flag_names_its_variable_alone():
    message = config_error({"SIDECAR_HARDEN": "maybe"})

    assert message == "invalid SIDECAR_HARDEN: must be true or false, got 'maybe'"


def test_the_source_has_one_owner_the_store():
    settings = load({"SIDECAR_SOURCE": "ssm"})

    assert settings.source == settings.store.source == "ssm"
    assert "source" not in {each.name for each in dataclasses.fields(Settings)}
