"""The daemon's AWS client: role_arn through STS, and credential or region problems named clearly."""

from __future__ import annotations

import pytest

from sidecar import __version__ as sidecar_version
from sidecar.daemon.config_error import ConfigError


async def test_role_arn_is_assumed_through_sts_before_the_first_call(aws, start_sidecar, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", aws.endpoint)  # STS at the emulator, like the secrets
    aws.put("airflow/variables/v", "as the role")
    sidecar = await start_sidecar(
        backend_kwargs={
            "role_arn": "arn:aws:iam::123456789012:role/airflow-secrets",
            "assume_role_kwargs": {"ExternalId": "ext-1", "DurationSeconds": 900},
        }
    )

    assert (await sidecar.get("variables", "v"))[:2] == (200, {"value": "as the role"})
    assert aws.calls["AssumeRole"] == 1
    assert (await sidecar.get("variables", "v", refresh=True))[0] == 200
    assert aws.calls["AssumeRole"] == 1  # the credentials are reused until they near expiry
    mark = f"airflow-secrets-sidecar/{sidecar_version}"  # CloudTrail's userAgent tells the daemon's calls apart
    assert all(mark in agent for api in ("AssumeRole", "GetSecretValue") for agent in aws.user_agents[api])


async def test_unknown_profile_is_a_configuration_error(aws, start_sidecar):
    with pytest.raises(ConfigError, match="profile_name 'nope'"):
        await start_sidecar(backend_kwargs={"profile_name": "nope"})


async def test_missing_region_is_a_configuration_error(aws, start_sidecar, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(ConfigError, match="region_name"):
        await start_sidecar(backend_kwargs={"region_name": None})


async def test_the_providers_client_options_reach_the_client(aws, start_sidecar):
    aws.put("airflow/variables/v", "with the provider's options")
    aws.fail["GetSecretValue:airflow/variables/down"] = "InternalServiceError"
    options = {"use_ssl": False, "api_version": "2017-10-17", "config_kwargs": {"retries": {"total_max_attempts": 1}}}
    sidecar = await start_sidecar(backend_kwargs=options)

    assert (await sidecar.get("variables", "v"))[:2] == (200, {"value": "with the provider's options"})
    calls = aws.calls["GetSecretValue"]
    assert (await sidecar.get("variables", "down"))[0] == 503
    assert aws.calls["GetSecretValue"] == calls + 1  # config_kwargs' one attempt, not the daemon's three


@pytest.mark.parametrize("where", ["top level", "session_kwargs"])
async def test_keys_in_the_json_sign_the_calls_as_the_providers_connection_would(aws, start_sidecar, where):
    keys = {"aws_access_key_id": "AKIAFROMTHEJSON", "aws_secret_access_key": "from-the-json"}
    aws.put("airflow/variables/v", "signed")
    sidecar = await start_sidecar(backend_kwargs=keys if where == "top level" else {"session_kwargs": keys})

    assert (await sidecar.get("variables", "v"))[0] == 200
    assert set(aws.access_keys) == {"AKIAFROMTHEJSON"}


async def test_service_config_names_the_sts_endpoint_for_role_arn(aws, start_sidecar, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_STS", raising=False)
    aws.put("airflow/variables/v", "as the role")
    sidecar = await start_sidecar(
        backend_kwargs={
            "role_arn": "arn:aws:iam::123456789012:role/airflow-secrets",
            "service_config": {"sts": {"endpoint_url": aws.endpoint}},
        }
    )
    assert (await sidecar.get("variables", "v"))[0] == 200
    assert aws.calls["AssumeRole"] == 1


async def test_a_config_kwargs_option_botocore_lacks_is_a_configuration_error(aws, start_sidecar):
    with pytest.raises(ConfigError, match=r"'config_kwargs'.*connect_timeout_ms"):
        await start_sidecar(backend_kwargs={"config_kwargs": {"connect_timeout_ms": 5}})
