"""Which secret names a key maps to, as the provider's SecretsManagerBackend does it, counted at AWS."""

from __future__ import annotations

import json

import pytest

from sidecar.daemon.answers.connections import InvalidSecret, normalise
from sidecar.daemon.backend_kwargs import CONN_WORDS
from tests.support import exception_chain


async def test_custom_prefixes_and_trailing_separators(aws, start_sidecar):
    aws.put("team-a/vars/v", "custom")
    aws.put("team-a/conns/c", "http://h")
    sidecar = await start_sidecar(
        backend_kwargs={"variables_prefix": "team-a/vars/", "connections_prefix": "team-a/conns//"}
    )

    assert (await sidecar.get("variables", "v"))[1] == {"value": "custom"}
    assert (await sidecar.get("connections", "c"))[1] == {"value": "http://h"}
    assert aws.names == ["team-a/vars/v", "team-a/conns/c"]


async def test_custom_separator(aws, start_sidecar):
    aws.put("airflow_variables_v", "underscored")
    sidecar = await start_sidecar(backend_kwargs={"variables_prefix": "airflow_variables", "sep": "_"})

    assert (await sidecar.get("variables", "v"))[1] == {"value": "underscored"}
    assert aws.names == ["airflow_variables_v"]


async def test_null_prefix_turns_a_kind_off_without_an_aws_call(aws, start_sidecar):
    aws.put("airflow/variables/v", "present")
    sidecar = await start_sidecar(backend_kwargs={"variables_prefix": None})

    assert (await sidecar.get("variables", "v"))[0] == 404
    assert aws.total() == 0


async def test_empty_prefix_means_the_bare_key(aws, start_sidecar):
    aws.put("bare_name", "bare")
    sidecar = await start_sidecar(backend_kwargs={"config_prefix": ""})

    assert (await sidecar.get("config", "bare_name"))[1] == {"value": "bare"}
    assert aws.names == ["bare_name"]


async def test_empty_prefix_gets_no_team_scoped_name(aws, start_sidecar):
    aws.put("v", "bare")
    sidecar = await start_sidecar(backend_kwargs={"variables_prefix": ""})

    assert (await sidecar.get("variables", "v", team="ops"))[1] == {"value": "bare"}
    assert aws.names == ["v"]


@pytest.mark.parametrize(
    ("key", "looked_up"),
    [("prod_db", True), ("PROD_x", True), ("dev_db", False), ("xprod_db", False)],
)
async def test_lookup_pattern_is_a_case_insensitive_match_at_the_start(aws, start_sidecar, key, looked_up):
    aws.put(f"airflow/connections/{key}", "http://h")
    sidecar = await start_sidecar(backend_kwargs={"connections_lookup_pattern": "prod_"})

    status = (await sidecar.get("connections", key))[0]
    assert (status == 200) is looked_up
    assert aws.total() == int(looked_up)


async def test_lookup_pattern_applies_to_its_kind_only(aws, start_sidecar):
    aws.put("airflow/variables/anything", "v")
    sidecar = await start_sidecar(backend_kwargs={"connections_lookup_pattern": "^prod"})

    assert (await sidecar.get("variables", "anything"))[0] == 200


async def test_json_connection_gets_the_provider_field_aliases(aws, start_sidecar):
    secret = {"engine": "postgres", "username": "u", "pass": "p", "server": "db", "port": 5432, "database": "d"}
    aws.put("airflow/connections/pg", json.dumps(secret))
    sidecar = await start_sidecar()

    value = json.loads((await sidecar.get("connections", "pg"))[1]["value"])
    assert value == {
        "login": "u",
        "password": "p",
        "host": "db",
        "port": 5432,
        "schema": "d",
        "conn_type": "postgres",
        "extra": None,
    }


async def test_extra_conn_words_extend_the_aliases(aws, start_sidecar):
    aws.put("airflow/connections/c", json.dumps({"usr": "u", "secret": "p", "conn_type": "http"}))
    sidecar = await start_sidecar(backend_kwargs={"extra_conn_words": {"user": ["usr"], "password": ["secret"]}})

    value = json.loads((await sidecar.get("connections", "c"))[1]["value"])
    assert (value["login"], value["password"]) == ("u", "p")


async def test_uri_connection_and_json_variable_pass_through_untouched(aws, start_sidecar):
    aws.put("airflow/connections/uri", "  mysql://u:p%40ss@h:3306/db?x=1  ")
    aws.put("airflow/variables/doc", '{"user": "not a connection"}')
    sidecar = await start_sidecar()

    assert (await sidecar.get("connections", "uri"))[1] == {"value": "  mysql://u:p%40ss@h:3306/db?x=1  "}
    assert (await sidecar.get("variables", "doc"))[1] == {"value": '{"user": "not a connection"}'}


async def test_binary_secret_is_not_served(aws, start_sidecar):
    aws.put("airflow/variables/blob", b"\x00\x01")
    sidecar = await start_sidecar()

    assert (await sidecar.get("variables", "blob"))[0] == 404


async def test_connection_that_is_broken_json_is_503_without_its_value(aws, start_sidecar):
    aws.put("airflow/connections/bad", '{"password": "hunter2-value",')
    sidecar = await start_sidecar()

    status, body, _ = await sidecar.get("connections", "bad")
    assert (status, body["error"]) == (503, "invalid_secret")
    assert "hunter2" not in json.dumps(body)


def test_broken_json_connection_error_holds_none_of_the_value_in_its_chain():
    with pytest.raises(InvalidSecret) as raised:
        normalise('{"password": "hunter2-value",', CONN_WORDS)

    for held in exception_chain(raised.value):
        assert "hunter2" not in repr(held) + str(getattr(held, "doc", ""))


async def test_key_with_a_slash_is_one_name_below_the_prefix(aws, start_sidecar):
    aws.put("airflow/variables/group/v", "nested")
    sidecar = await start_sidecar()

    assert (await sidecar.get("variables", "group/v"))[1] == {"value": "nested"}
