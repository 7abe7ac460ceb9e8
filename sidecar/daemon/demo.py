"""`airflow-secrets-sidecar demo`: the real daemon in front of an embedded AWS emulation (moto)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shlex
import sys

from sidecar.daemon.config_error import ConfigError
from sidecar.daemon.settings import load_settings

REGION = "us-east-1"
SAMPLES = {
    "airflow/variables/greeting": "hello from AWS Secrets Manager, via the sidecar",
    "airflow/variables/environment": "demo",
    "airflow/variables/pipeline_settings": json.dumps({"retries": 3, "owner": "data-eng"}),
    "airflow/connections/demo_postgres": "postgresql://demo_user:demo-password@db.example.com:5432/analytics",
    "airflow/connections/demo_api": json.dumps(
        {"engine": "http", "host": "api.example.com", "user": "svc", "pass": "demo-api-key", "extra": {"timeout": 30}}
    ),
    "airflow/config/smtp_password": "demo-smtp-password",
}


def _here(path: str) -> str:
    """`path` as a shell in the current directory types it: relative below it, else absolute."""
    relative = os.path.relpath(path)
    if relative.startswith(".."):
        return shlex.quote(os.path.abspath(path))
    return shlex.quote(relative if os.sep in relative else f"./{relative}")


def _command() -> str:
    """How this process was started, to print commands that work as printed (`make demo`: the venv's script)."""
    if os.path.basename(sys.argv[0]) == "airflow-secrets-sidecar":
        return _here(sys.argv[0])
    return f"{_here(sys.executable)} -m sidecar"


def _banner(url: str, token: str, endpoint: str) -> str:
    get = f"SIDECAR_TOKEN={shlex.quote(token)} {_command()} get"
    kwargs = json.dumps({"url": url, "token": token})
    seeded = "\n".join(f"    {name}" for name in SAMPLES)
    return f"""
  airflow-secrets-sidecar demo
  ----------------------------
  AWS emulation (moto):  {endpoint}, seeded with {len(SAMPLES)} secrets:
{seeded}
  sidecar:               {url}
  token:                 {token}

  Try it, from another shell in this directory:
    {get} variables greeting --url {url}
    {get} connections demo_api --url {url}
    {get} variables not_there --url {url}   # 404, cached as a miss
    curl -s -H 'X-Sidecar-Token: {token}' {url}/v1/variables/greeting
    curl -s {url}/metrics | grep sidecar_

  Read them through Airflow (pip install airflow-secrets-sidecar where Airflow runs): in airflow.cfg
    [secrets]
    backend = sidecar.backend.SidecarSecretsBackend
    backend_kwargs = {kwargs}
  or in Airflow's environment
    export AIRFLOW__SECRETS__BACKEND=sidecar.backend.SidecarSecretsBackend
    export AIRFLOW__SECRETS__BACKEND_KWARGS='{kwargs}'
  and Variable.get("greeting") answers from the sidecar. Against real AWS: README.md
  (Switch from the stock backend), docs/configuration.md and docs/deployment.md.

  Ctrl-C stops the sidecar and the emulation.
"""


def run_demo(port: str) -> int:
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        print("the demo needs moto: pip install 'airflow-secrets-sidecar[demo]' (or run `make demo`)", file=sys.stderr)
        return 2
    from sidecar.daemon.lifecycle import serve
    from sidecar.daemon.logs import setup_logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the emulation's access log is noise here
    aws = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    aws.start()
    host, aws_port = aws.get_host_and_port()
    endpoint = f"http://{host}:{aws_port}"
    # Credentials for the emulation only; the daemon finds them through the standard chain.
    os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo", AWS_DEFAULT_REGION=REGION)
    client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name=REGION)
    for name, value in SAMPLES.items():
        client.create_secret(Name=name, SecretString=value)

    token = secrets.token_urlsafe(24)
    args = argparse.Namespace(port=port, backend_kwargs=json.dumps({"region_name": REGION, "endpoint_url": endpoint}))
    try:
        settings = load_settings(args, {"SIDECAR_TOKEN": token})
    except ConfigError as exc:
        print(f"airflow-secrets-sidecar: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings, on_started=lambda daemon: print(_banner(daemon.url, token, endpoint), flush=True)))
    except (ConfigError, OSError) as exc:  # where it listens: a port in use
        print(f"cannot start the demo: {exc} (try `airflow-secrets-sidecar demo --port 2780`)", file=sys.stderr)
        return 1
    finally:
        aws.stop()
    return 0
