"""Parameter Store as the source, with the semantics of the provider's SystemsManagerParameterStoreBackend."""

from __future__ import annotations

import json


def _put(aws, name: str, value: str, secure: bool = False) -> None:
    aws.client("ssm").put_parameter(Name=name, Value=value, Type="SecureString" if secure else "String")
    aws.clear_counts()


async def test_parameters_are_served_under_the_default_prefixes(aws, start_sidecar):
    _put(aws, "/airflow/variables/v", "plain")
    _put(aws, "/airflow/connections/db", "postgresql://u:p@h/d", secure=True)
    _put(aws, "/airflow/config/smtp_password", "pw", secure=True)
    sidecar = await start_sidecar(source="ssm")

    assert (await sidecar.get("variables", "v"))[:2] == (200, {"value": "plain"})
    assert (await sidecar.get("connections", "db"))[:2] == (200, {"value": "postgresql://u:p@h/d"})
    assert (await sidecar.get("config", "smtp_password"))[:2] == (200, {"value": "pw"})
    assert (await sidecar.get("variables", "absent"))[0] == 404
    assert aws.names == [
        "/airflow/variables/v",
        "/airflow/connections/db",
        "/airflow/config/smtp_password",
        "/airflow/variables/absent",
    ]


async def test_leading_slash_is_ensured_and_an_empty_prefix_is_the_root(aws, start_sidecar):
    _put(aws, "/custom/v", "custom")
    _put(aws, "/bare", "bare")
    sidecar = await start_sidecar(source="ssm", backend_kwargs={"variables_prefix": "custom/", "config_prefix": ""})

    assert (await sidecar.get("variables", "v"))[1] == {"value": "custom"}
    assert (await sidecar.get("config", "bare"))[1] == {"value": "bare"}


async def test_team_scoped_parameter_first_even_under_an_empty_prefix(aws, start_sidecar):
    _put(aws, "/ops--v", "team")
    _put(aws, "/v", "global")
    sidecar = await start_sidecar(source="ssm", backend_kwargs={"variables_prefix": ""})

    assert (await sidecar.get("variables", "v", team="ops"))[1] == {"value": "team"}
    assert (await sidecar.get("variables", "v", team="dev"))[1] == {"value": "global"}


async def test_json_connections_are_served_as_stored(aws, start_sidecar):
    stored = json.dumps({"conn_type": "http", "user": "svc"})
    _put(aws, "/airflow/connections/api", stored)
    sidecar = await start_sidecar(source="ssm")

    assert (await sidecar.get("connections", "api"))[1] == {"value": stored}


async def test_warm_up_lists_recursively_with_values_and_asks_for_absent_names_once(aws, start_sidecar):
    for i in range(25):
        _put(aws, f"/airflow/variables/group{i % 3}/v{i}", f"value {i}", secure=i % 2 == 0)
    sidecar = await start_sidecar(source="ssm", warm=True)
    assert aws.calls["GetParametersByPath"] >= 3  # one or more pages per prefix
    assert aws.calls["GetParameter"] == aws.calls["GetParameters"] == 0
    aws.clear_counts()

    for i in range(25):
        assert await sidecar.get("variables", f"group{i % 3}/v{i}") == (200, {"value": f"value {i}"}, "hit")
    for _ in range(3):
        assert (await sidecar.get("variables", "absent"))[0] == 404
    assert aws.calls == {"GetParameter": 1}  # by name, once: a listing is not proof of absence


async def test_refresh_ahead_batches_with_get_parameters(aws, start_sidecar):
    _put(aws, "/airflow/variables/a", "1")
    _put(aws, "/airflow/variables/b", "2")
    sidecar = await start_sidecar(source="ssm", ttl=300)
    for key in ("a", "b", "a", "b"):
        await sidecar.get("variables", key)
    aws.clear_counts()
    sidecar.clock.advance(240)

    assert await sidecar.daemon.cache.refresh_due() == 2
    assert dict(aws.calls) == {"GetParameters": 1}


async def test_version_and_label_selectors_pin_a_value(aws, start_sidecar):
    ssm = aws.client("ssm")
    ssm.put_parameter(Name="/airflow/variables/v", Value="v1", Type="String")
    ssm.put_parameter(Name="/airflow/variables/v", Value="v2", Type="String", Overwrite=True)
    ssm.label_parameter_version(Name="/airflow/variables/v", ParameterVersion=1, Labels=["old"])
    sidecar = await start_sidecar(source="ssm", warm=True)

    assert (await sidecar.get("variables", "v"))[1] == {"value": "v2"}
    assert (await sidecar.get("variables", "v:1"))[1] == {"value": "v1"}
    assert (await sidecar.get("variables", "v:old"))[1] == {"value": "v1"}
    assert (await sidecar.get("variables", "v:9"))[0] == 404
    assert (await sidecar.get("variables", "absent:1"))[0] == 404
