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

from tests.faults import FaultProxy
from tests.support import REGION, AwsEmulator

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
