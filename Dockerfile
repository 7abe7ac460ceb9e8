# The airflow-secrets-sidecar daemon, as a small image for a sidecar container next to Airflow.
#
#   DOCKER_BUILDKIT=1 docker build -t airflow-secrets-sidecar:0.1.0 .
#
# BASE_IMAGE may be any Debian-like image with python3 (3.10+) and its venv module; `make test-image`
# builds one with debootstrap where no registry is reachable. Behind a TLS-intercepting proxy, give
# pip its CA bundle as a build secret (never stored in a layer):
#   --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt
#
# No EXPOSE, on purpose: the daemon listens on 127.0.0.1:2779 (SIDECAR_HOST stays loopback), so only
# processes sharing its network namespace reach it: the other containers of a Kubernetes pod, or
# `docker run --network container:<airflow-container>` (compose: `network_mode: "service:<airflow>"`).
# A published port would lead nowhere. To draw the boundary with file permissions instead, set
# SIDECAR_UNIX_SOCKET to a path on a volume shared with Airflow.
#
# Configure with SIDECAR_* variables: a token is required (SIDECAR_TOKEN_FILE, mounted from a
# secret), SIDECAR_BACKEND_KWARGS takes the provider's JSON, and AWS credentials come from the
# standard chain (IRSA or EKS Pod Identity, instance role, AWS_* env). Examples: deploy/.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# uvloop: about a tenth more cache hits per second than asyncio's loop (`make bench`, S3).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SIDECAR_EVENT_LOOP=uvloop \
    PATH=/opt/airflow-secrets-sidecar/bin:$PATH

# The daemon in a virtualenv of its own, with uvloop, pinned by constraints-dev.txt: the versions the
# test suite runs with. The source is bind-mounted rather than COPYed: no source layer ships, and pip's
# in-tree build leftovers vanish with the mount. Runtime dependencies only: no dev extras, no compiler.
RUN --mount=type=bind,target=/src,rw \
    --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && python3 -m venv /opt/airflow-secrets-sidecar \
 && pip install --no-cache-dir -c /src/constraints-dev.txt '/src[daemon,uvloop]'

# A fixed numeric uid, with no passwd entry needed: Kubernetes' runAsNonRoot can only verify a numeric USER.
USER 10001:10001

# Docker-only liveness (Kubernetes ignores HEALTHCHECK and uses the probes in deploy/kubernetes).
# `probe` reads SIDECAR_HOST / SIDECAR_PORT / SIDECAR_UNIX_SOCKET like the daemon; the image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["airflow-secrets-sidecar", "probe"]

ENTRYPOINT ["airflow-secrets-sidecar"]
CMD ["serve"]
