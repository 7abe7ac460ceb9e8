"""What keeps the daemon light at rest (docs/benchmarks.md, S5), and that each cut keeps what it cut around:
endpoints.json read down to the daemon's services, frozenlist's C++ build and aiohttp's default TLS
contexts left out of the daemon's process, TLS to AWS still verified with the CA bundle botocore
is given."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import botocore.session
import pytest
from botocore.loaders import Loader
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.daemon.sources.aws import SERVICES, _Loader, _read_endpoints
from tests.benchmarks.sidecar_process import sidecar_process
from tests.support import REGION, TOKEN, AwsEmulator

ENDPOINTS = Path(Loader.BUILTIN_DATA_PATH) / "endpoints.json"


def test_endpoints_json_is_read_down_to_the_daemons_services() -> None:
    text = ENDPOINTS.read_text(encoding="utf-8")
    expected = json.loads(text)
    for partition in expected["partitions"]:
        partition["services"] = {name: data for name, data in partition["services"].items() if name in SERVICES}

    assert _read_endpoints(text)[0] == expected
    assert {"secretsmanager", "ssm", "sts"} <= expected["partitions"][0]["services"].keys()


def test_any_json_layout_reads_the_same() -> None:
    data = {
        "partitions": [
            {"partition": "p", "services": {"ssm": {"endpoints": {"r": {}}}, "ec2": {"x": [1, {"y": None}]}}},
            {"services": {}, "regions": {"r": {"description": "a ]} in a string"}}},
        ],
        "version": 3,
    }
    kept = json.loads(json.dumps(data))
    del kept["partitions"][0]["services"]["ec2"]
    for text in (json.dumps(data), json.dumps(data, indent=4), json.dumps(data, separators=(",", ":"))):
        assert _read_endpoints(text)[0] == kept


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1", "us-iso-east-1"])
def test_clients_resolve_as_with_all_of_endpoints_json(region: str) -> None:
    """Each service the daemon calls gets the endpoint and signing botocore's own data gives it."""

    def resolved(session: botocore.session.Session, service: str) -> tuple[str, str, str]:
        client = session.create_client(
            service,
            region_name=region,
            aws_access_key_id="k",
            aws_secret_access_key="s",
        )
        signer = client._request_signer  # where botocore keeps what it signs with
        return client.meta.endpoint_url, signer.signing_name, signer.region_name

    stock = botocore.session.Session()
    pruned = botocore.session.Session()
    pruned.register_component("data_loader", _Loader(stock.get_component("data_loader").search_paths))
    for service in sorted(SERVICES - {"signin"}):
        assert resolved(pruned, service) == resolved(stock, service), service


def test_the_daemon_process_loads_nothing_it_cut(aws: AwsEmulator) -> None:
    aws.put("airflow/variables/weight", "light")
    with sidecar_process(aws.endpoint, harden="false") as daemon:  # hardened, its maps are root's alone
        assert _read(daemon.url, "weight") == (200, "light")
        libraries = {Path(line.split()[-1]).name for line in Path(f"/proc/{daemon.pid}/maps").read_text().splitlines()}
    assert not {name for name in libraries if name.startswith(("libstdc++", "_frozenlist"))}
    assert any(name.startswith("_http_parser") for name in libraries)  # aiohttp's compiled parser does load


# --- TLS to AWS: the CA bundle botocore is given, never aiohttp's defaults ---


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aws.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "aws.pem", directory / "aws.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@contextmanager
def tls_in_front_of(aws: AwsEmulator, certificate: tuple[Path, Path]) -> Iterator[str]:
    """The emulator behind TLS: https://127.0.0.1:<port>, bytes passed both ways."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    upstream_host, upstream_port = aws.get_host_and_port()
    loop = asyncio.new_event_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        aws_reader, aws_writer = await asyncio.open_connection(upstream_host, upstream_port)
        await asyncio.gather(pipe(client_reader, aws_writer), pipe(aws_reader, client_writer))

    server = loop.run_until_complete(asyncio.start_server(relay, "127.0.0.1", 0, ssl=context))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        server.close()
        loop.close()


def _read(url: str, key: str) -> tuple[int, str]:
    request = urllib.request.Request(f"{url}/v1/variables/{key}", headers={"X-Sidecar-Token": TOKEN})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())["value"]
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.mark.parametrize("trusted", [True, False])
def test_tls_to_aws_is_verified_with_the_bundle_botocore_is_given(
    aws: AwsEmulator, certificate: tuple[Path, Path], trusted: bool
) -> None:
    """`verify` names the CA bundle: AWS's certificate is checked against it, and without it
    (certifi's bundle) the same certificate is refused: no default of aiohttp's stands in."""
    aws.put("airflow/variables/over_tls", "verified")
    with tls_in_front_of(aws, certificate) as endpoint:
        kwargs = {"region_name": REGION, "endpoint_url": endpoint}
        if trusted:
            kwargs["verify"] = str(certificate[0])
        with sidecar_process(endpoint, backend_kwargs=json.dumps(kwargs), warmup="false") as daemon:
            status, value = _read(daemon.url, "over_tls")
    assert (status, value) == ((200, "verified") if trusted else (503, ""))
