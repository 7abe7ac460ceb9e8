"""The fault layer itself: boto3 through `tests.faults.FaultProxy` sees each mode as AWS would show it.

Short botocore timeouts and one attempt per call: a mode shows up as one error, at once. Every
wait has a deadline (`proxy.wait_for`, `Future.result(timeout)`) and fails when it passes.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from tests.faults import FaultProxy, _Lag
from tests.support import REGION, AwsEmulator, FakeClock

NAME = "airflow/variables/k"


def client(proxy: FaultProxy, service: str = "secretsmanager", read_timeout: float = 5.0) -> Any:
    config = Config(connect_timeout=2, read_timeout=read_timeout, retries={"total_max_attempts": 1})
    return boto3.client(service, endpoint_url=proxy.endpoint, region_name=REGION, config=config)


def in_thread(call: Any, *args: Any, **kwargs: Any) -> Future[Any]:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(call, *args, **kwargs)
    pool.shutdown(wait=False)
    return future


def error_of(call: Any, **kwargs: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_normal_forwards_and_counts_each_api(aws: AwsEmulator, proxy: FaultProxy) -> None:
    secrets = client(proxy)
    secrets.create_secret(Name=NAME, SecretString="v1")

    assert secrets.get_secret_value(SecretId=NAME)["SecretString"] == "v1"
    assert proxy.counts() == {"CreateSecret": 1, "GetSecretValue": 1}
    assert aws.calls["GetSecretValue"] == 1  # it reached moto
    proxy.reset_counts()
    assert proxy.counts() == {}


@pytest.mark.parametrize(
    ("mode", "code", "status"),
    [
        ("throttle", "ThrottlingException", 400),
        ("5xx", "ServiceUnavailableException", 503),
        ("denied", "AccessDeniedException", 400),
    ],
)
def test_json_protocol_errors_parse_as_aws_errors(aws: AwsEmulator, proxy: FaultProxy, mode, code, status) -> None:
    aws.put(NAME, "v1")
    ssm = client(proxy, "ssm")
    ssm.put_parameter(Name="/p", Value="v", Type="String")
    proxy.set("GetSecretValue", mode)
    proxy.set("GetParameter", mode)

    assert error_of(client(proxy).get_secret_value, SecretId=NAME) == (code, status)
    assert error_of(ssm.get_parameter, Name="/p") == (code, status)
    assert ssm.get_parameters(Names=["/p"])["Parameters"][0]["Value"] == "v"  # another API: normal
    assert aws.calls["GetSecretValue"] == aws.calls["GetParameter"] == 0  # answered here: moto never saw them
    assert proxy.counts() == {"PutParameter": 1, "GetSecretValue": 1, "GetParameter": 1, "GetParameters": 1}


@pytest.mark.parametrize(
    ("mode", "code", "status"),
    [("throttle", "Throttling", 400), ("5xx", "ServiceUnavailable", 503), ("denied", "AccessDenied", 403)],
)
def test_query_protocol_errors_parse_as_sts_errors(aws: AwsEmulator, proxy: FaultProxy, mode, code, status) -> None:
    sts = client(proxy, "sts")
    role = "arn:aws:iam::123456789012:role/r"
    assert sts.assume_role(RoleArn=role, RoleSessionName="soak")["Credentials"]["AccessKeyId"]
    proxy.set("AssumeRole", mode)

    assert error_of(sts.assume_role, RoleArn=role, RoleSessionName="soak") == (code, status)
    assert proxy.counts() == {"AssumeRole": 2}


def test_star_covers_every_api_without_its_own_mode(aws: AwsEmulator, proxy: FaultProxy) -> None:
    aws.put(NAME, "v1")
    proxy.set("*", "throttle")
    proxy.set("ListSecrets", "normal")
    secrets = client(proxy)

    assert [s["Name"] for s in secrets.list_secrets()["SecretList"]] == [NAME]
    assert error_of(secrets.get_secret_value, SecretId=NAME)[0] == "ThrottlingException"
    assert error_of(client(proxy, "ssm").get_parameter, Name="/p")[0] == "ThrottlingException"
    proxy.clear()
    assert secrets.get_secret_value(SecretId=NAME)["SecretString"] == "v1"


def test_reset_drops_the_connection_without_an_answer(aws: AwsEmulator, proxy: FaultProxy) -> None:
    aws.put(NAME, "v1")
    proxy.set("GetSecretValue", "reset")
    secrets = client(proxy)

    with pytest.raises(ConnectionClosedError):
        secrets.get_secret_value(SecretId=NAME)
    host, port = proxy.endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:  # a reset, not a polite close
        body = b'{"SecretId": "k"}'
        raw.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: secretsmanager.GetSecretValue\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        with pytest.raises(ConnectionResetError):
            raw.recv(1024)
    assert aws.calls["GetSecretValue"] == 0
    assert proxy.counts() == {"GetSecretValue": 2}
    proxy.set("GetSecretValue", "normal")
    assert secrets.get_secret_value(SecretId=NAME)["SecretString"] == "v1"


def test_blackhole_never_answers_and_closes_when_the_mode_changes(aws: AwsEmulator, proxy: FaultProxy) -> None:
    aws.put(NAME, "v1")
    proxy.set("*", "blackhole")

    with pytest.raises(ReadTimeoutError):  # the client gives up ...
        client(proxy, read_timeout=0.3).get_secret_value(SecretId=NAME)
    proxy.wait_for(lambda: proxy.held() == 0, 5, "the abandoned request to leave the black hole")  # ... and it is gone

    waiting = in_thread(client(proxy, read_timeout=30).get_secret_value, SecretId=NAME)
    proxy.wait_for(lambda: proxy.held("GetSecretValue") == 1, 5, "the request to be black-holed")
    assert not waiting.done()
    started = time.monotonic()
    proxy.set("*", "normal")  # the black hole ends: its connection is closed, not answered
    with pytest.raises(ConnectionClosedError):
        waiting.result(10)
    assert time.monotonic() - started < 10  # long before the 30 s read timeout
    assert proxy.held() == 0
    assert aws.calls["GetSecretValue"] == 0


def test_hold_waits_for_release_then_forwards(aws: AwsEmulator, proxy: FaultProxy) -> None:
    aws.put(NAME, "v1")
    proxy.set("GetSecretValue", "hold")
    held = in_thread(client(proxy).get_secret_value, SecretId=NAME)
    other = in_thread(client(proxy).get_secret_value, SecretId=NAME)
    proxy.wait_for(lambda: proxy.held("GetSecretValue") == 2, 5, "both requests to be held")
    assert proxy.held("ListSecrets") == 0
    assert not held.done() and aws.calls["GetSecretValue"] == 0

    aws.client().put_secret_value(SecretId=NAME, SecretString="v2")  # while held: the answer is the newer value
    proxy.release("GetSecretValue")
    assert held.result(10)["SecretString"] == "v2"
    assert other.result(10)["SecretString"] == "v2"
    assert proxy.held() == 0

    third = in_thread(client(proxy).get_secret_value, SecretId=NAME)  # still "hold": held again ...
    proxy.wait_for(lambda: proxy.held() == 1, 5, "the third request to be held")
    proxy.clear()  # ... and clear() lets it go too
    assert third.result(10)["SecretString"] == "v2"


def test_late_answers_now_at_aws_but_delivers_at_release(aws: AwsEmulator, proxy: FaultProxy) -> None:
    aws.put(NAME, "v1")
    proxy.set("GetSecretValue", "late")
    late = in_thread(client(proxy).get_secret_value, SecretId=NAME)
    proxy.wait_for(lambda: proxy.held("GetSecretValue") == 1, 5, "the answer to be held")
    assert aws.calls["GetSecretValue"] == 1 and not late.done()  # AWS answered; the client still waits

    aws.client().put_secret_value(SecretId=NAME, SecretString="v2")
    proxy.release()
    assert late.result(10)["SecretString"] == "v1"  # the answer from before the change, delivered late


def test_down_resets_held_requests_at_once(aws: AwsEmulator, proxy: FaultProxy) -> None:
    proxy.set("*", "blackhole")
    waiting = in_thread(client(proxy, read_timeout=30).list_secrets)
    proxy.wait_for(lambda: proxy.held() == 1, 5, "the request to be black-holed")

    proxy.down()
    assert proxy.held() == 0
    with pytest.raises(ConnectionClosedError):
        waiting.result(10)


def test_slow_answers_after_the_delay(aws: AwsEmulator, proxy: FaultProxy) -> None:
    aws.put(NAME, "v1")
    proxy.set("GetSecretValue", "slow", delay=0.4)
    started = time.monotonic()

    assert client(proxy).get_secret_value(SecretId=NAME)["SecretString"] == "v1"
    assert time.monotonic() - started >= 0.4


def test_down_refuses_connections_and_up_listens_again_on_the_same_port(aws: AwsEmulator, proxy: FaultProxy) -> None:
    aws.put(NAME, "v1")
    secrets = client(proxy)
    assert secrets.get_secret_value(SecretId=NAME)["SecretString"] == "v1"  # a keep-alive connection is open
    endpoint = proxy.endpoint

    proxy.down()
    with pytest.raises(EndpointConnectionError):
        secrets.get_secret_value(SecretId=NAME)
    with pytest.raises(EndpointConnectionError):
        client(proxy).get_secret_value(SecretId=NAME)
    proxy.up()

    assert proxy.endpoint == endpoint
    assert secrets.get_secret_value(SecretId=NAME)["SecretString"] == "v1"
    assert proxy.counts() == {"GetSecretValue": 2}  # refused connections reached nothing


def test_wait_for_fails_naming_what_it_waited_for(proxy: FaultProxy) -> None:
    with pytest.raises(AssertionError, match="the impossible"):
        proxy.wait_for(lambda: False, 0.05, "the impossible")


# --- lag: ListSecrets as of `delay` seconds ago, counted from when the layer first saw a change ---


def lagged(proxy: FaultProxy, delay: float) -> FakeClock:
    """ListSecrets in lag mode on a fake clock, which the test moves."""
    clock = FakeClock()
    proxy.clock = clock
    proxy.set("ListSecrets", "lag", delay=delay)
    return clock


def names(secrets: Any, **request: Any) -> list[str]:
    return [entry["Name"] for entry in secrets.list_secrets(**request)["SecretList"]]


def stages(secrets: Any, name: str) -> dict[str, list[str]] | None:
    """The version map ListSecrets shows for `name`, or None when it is not listed."""
    entries = [entry for entry in secrets.list_secrets()["SecretList"] if entry["Name"] == name]
    return entries[0]["SecretVersionsToStages"] if entries else None


def test_lag_hides_a_new_secret_until_delay_after_the_layer_first_saw_it(aws: AwsEmulator, proxy: FaultProxy) -> None:
    old = "airflow/variables/old"
    aws.put(old, "v")
    clock = lagged(proxy, 30)
    secrets = client(proxy)
    assert names(secrets) == [old]  # in the baseline: listed at once

    secrets.create_secret(Name=NAME, SecretString="v1")
    clock.advance(100)  # unseen time does not count: the lag starts at the next listing
    assert names(secrets) == [old]
    clock.advance(29.5)
    assert names(secrets) == [old]
    clock.advance(0.5)
    assert names(secrets) == [NAME, old]
    assert proxy.counts() == {"CreateSecret": 1, "ListSecrets": 4}
    assert aws.calls["ListSecrets"] == 1 + 4  # the baseline, then one snapshot per lagged ListSecrets
    at_aws = sorted(aws.client().list_secrets()["SecretList"], key=lambda entry: entry["Name"])
    assert secrets.list_secrets()["SecretList"] == at_aws  # the entries as AWS sent them, parsed alike


def test_lag_shows_the_old_version_map_after_put_secret_value(aws: AwsEmulator, proxy: FaultProxy) -> None:
    aws.put(NAME, "v1")
    clock = lagged(proxy, 30)
    secrets = client(proxy)
    before = stages(secrets, NAME)
    assert before is not None and list(before.values()) == [["AWSCURRENT"]]
    (first,) = before

    new = secrets.put_secret_value(SecretId=NAME, SecretString="v2")["VersionId"]
    assert stages(secrets, NAME) == before  # first seen now
    clock.advance(29)
    assert stages(secrets, NAME) == before
    clock.advance(1)
    assert stages(secrets, NAME) == {first: ["AWSPREVIOUS"], new: ["AWSCURRENT"]}


def test_lag_shows_a_moved_stage_late(aws: AwsEmulator, proxy: FaultProxy) -> None:
    secrets = client(proxy)
    old = secrets.create_secret(Name=NAME, SecretString="v1")["VersionId"]
    new = secrets.put_secret_value(SecretId=NAME, SecretString="v2")["VersionId"]
    clock = lagged(proxy, 30)
    assert stages(secrets, NAME) == {old: ["AWSPREVIOUS"], new: ["AWSCURRENT"]}

    secrets.update_secret_version_stage(
        SecretId=NAME, VersionStage="AWSCURRENT", MoveToVersionId=old, RemoveFromVersionId=new
    )
    moved = aws.client().list_secrets()["SecretList"][0]["SecretVersionsToStages"]  # AWS has it now
    assert moved[old] == ["AWSCURRENT"] and "AWSCURRENT" not in moved.get(new, [])
    assert stages(secrets, NAME) == {old: ["AWSPREVIOUS"], new: ["AWSCURRENT"]}
    clock.advance(29.9)
    assert stages(secrets, NAME) == {old: ["AWSPREVIOUS"], new: ["AWSCURRENT"]}
    clock.advance(0.1)
    assert stages(secrets, NAME) == moved


def test_lag_keeps_a_deleted_secret_listed_for_the_delay(aws: AwsEmulator, proxy: FaultProxy) -> None:
    aws.put(NAME, "v1")
    clock = lagged(proxy, 30)
    secrets = client(proxy)

    secrets.delete_secret(SecretId=NAME, ForceDeleteWithoutRecovery=True)
    assert aws.client().list_secrets()["SecretList"] == []
    assert names(secrets) == [NAME]  # first seen gone now
    clock.advance(29)
    assert names(secrets) == [NAME]
    clock.advance(1)
    assert names(secrets) == []


def test_lag_filters_by_name_prefix_as_aws_does(aws: AwsEmulator, proxy: FaultProxy) -> None:
    for name in ("airflow/variables/a", "airflow/connections/b", "airflow/config/x", "Airflow/variables/x"):
        aws.put(name, "v")
    lagged(proxy, 30)
    secrets = client(proxy)
    by_prefix = [{"Key": "name", "Values": ["airflow/variables/", "airflow/connections/"]}]
    negated = [{"Key": "name", "Values": ["!airflow/"]}]

    assert names(secrets, Filters=by_prefix) == ["airflow/connections/b", "airflow/variables/a"]
    assert names(secrets, Filters=negated) == ["Airflow/variables/x"]
    for filters in (by_prefix, negated):  # the same answers as AWS's
        assert names(secrets, Filters=filters) == sorted(names(aws.client(), Filters=filters))
    with pytest.raises(ClientError, match="'name' only"):
        secrets.list_secrets(Filters=[{"Key": "tag-key", "Values": ["team"]}])
    with pytest.raises(ValueError, match="ListSecrets only"):
        proxy.set("GetSecretValue", "lag", delay=30)


def test_lag_pages_the_view_with_max_results_and_next_token(aws: AwsEmulator, proxy: FaultProxy) -> None:
    every = [f"airflow/variables/{n}" for n in range(5)]
    for name in every:
        aws.put(name, "v")
    lagged(proxy, 30)
    secrets = client(proxy)

    pages: list[list[str]] = []
    request: dict[str, Any] = {"MaxResults": 2}
    for _ in range(10):  # a deadline: never more than 10 pages
        page = secrets.list_secrets(**request)
        pages.append([entry["Name"] for entry in page["SecretList"]])
        if "NextToken" not in page:
            break
        request["NextToken"] = page["NextToken"]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [name for page in pages for name in page] == every  # each exactly once, in name order
    assert proxy.counts() == {"ListSecrets": 3}


def test_clear_and_another_mode_end_lag(aws: AwsEmulator, proxy: FaultProxy) -> None:
    lagged(proxy, 30)
    secrets = client(proxy)
    secrets.create_secret(Name=NAME, SecretString="v1")
    assert names(secrets) == []

    proxy.clear()  # forwarded again: a secret created a moment ago is listed at once
    assert names(secrets) == [NAME]
    calls = aws.calls["ListSecrets"]
    secrets.create_secret(Name="airflow/variables/other", SecretString="v1")
    assert names(secrets) == [NAME, "airflow/variables/other"]
    assert aws.calls["ListSecrets"] == calls + 1  # the request itself, no snapshot

    lagged(proxy, 30)
    secrets.create_secret(Name="airflow/variables/third", SecretString="v1")
    assert names(secrets) == [NAME, "airflow/variables/other"]
    proxy.set("ListSecrets", "normal")
    assert names(secrets) == [NAME, "airflow/variables/other", "airflow/variables/third"]


def test_a_lagged_list_secrets_behaves_as_the_star_fault_then_lags_on(aws: AwsEmulator, proxy: FaultProxy) -> None:
    old, during = "airflow/variables/old", "airflow/variables/during"
    aws.put(old, "v")
    clock = lagged(proxy, 30)
    secrets = client(proxy)
    aws.put(NAME, "v1")
    assert names(secrets) == [old]  # NAME first seen now

    proxy.set("*", "throttle")
    aws.put(during, "v1")  # (clears AWS's counts)
    clock.advance(30)
    assert error_of(secrets.list_secrets) == ("ThrottlingException", 400)
    assert aws.calls["ListSecrets"] == 0  # refused by the layer: no snapshot taken

    proxy.set("*", "normal")  # lagged again, its timelines kept: NAME was seen 30 s ago
    assert names(secrets) == [NAME, old]  # `during` first seen now
    clock.advance(30)
    assert names(secrets) == [during, NAME, old]


def test_a_lagged_list_secrets_under_a_slow_star_answers_the_lagged_view_late(
    aws: AwsEmulator, proxy: FaultProxy
) -> None:
    clock = lagged(proxy, 30)
    secrets = client(proxy)
    aws.put(NAME, "v1")
    proxy.set("*", "slow", delay=0.2)

    started = time.monotonic()
    assert names(secrets) == []  # the lagged view, not AWS's own listing
    assert time.monotonic() - started >= 0.2
    clock.advance(30)
    assert names(secrets) == [NAME]


def test_observe_lags_a_change_from_when_it_was_made(aws: AwsEmulator, proxy: FaultProxy) -> None:
    assert proxy.observe() == 0  # not lagged: nothing to do, AWS not asked
    assert aws.calls["ListSecrets"] == 0
    clock = lagged(proxy, 30)
    secrets = client(proxy)
    proxy.set("*", "blackhole")  # observe() reads AWS straight, whatever the modes
    aws.put(NAME, "v1")
    assert proxy.observe() == 1  # one page
    clock.advance(30)
    proxy.set("*", "normal")

    assert names(secrets) == [NAME]  # no listing saw it before: observe() did


def test_lag_drops_a_snapshot_that_a_later_started_one_overtook() -> None:
    lag = _Lag(30)
    entry = {"Name": NAME, "SecretVersionsToStages": {"v2": ["AWSCURRENT"]}}
    older, newer = lag.ticket(), lag.ticket()
    lag.observe(10, {NAME: entry}, newer)
    lag.observe(11, {}, older)  # started first, finished last: its state is older

    assert lag.view(100) == [entry]
