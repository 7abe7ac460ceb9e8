"""The daemon's AWS client: role_arn through STS, and credential or region problems named clearly."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError


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


async def test_unknown_profile_is_a_configuration_error(aws, start_sidecar):
    with pytest.raises(ConfigError, match="profile_name 'nope'"):
        await start_sidecar(backend_kwargs={"profile_name": "nope"})


async def test_missing_region_is_a_configuration_error(aws, start_sidecar, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(ConfigError, match="region_name"):
        await start_sidecar(backend_kwargs={"region_name": None})
