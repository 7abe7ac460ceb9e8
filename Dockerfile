# syntax=docker/dockerfile:1
# The airflow-secrets-sidecar daemon, as a small image for a sidecar container next to Airflow.
#
#   docker build -t airflow-secrets-sidecar:0.1.0 .
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
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric uid: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin sidecar

# The source is bind-mounted rather than COPYed: no source layer ships, and pip's in-tree build
# leftovers (build/, *.egg-info) vanish with the mount. Runtime dependencies only; no dev extras.
RUN --mount=type=bind,target=/src,rw pip install --no-cache-dir '/src[daemon]'

USER 10001:10001

# Docker-only liveness (Kubernetes ignores HEALTHCHECK and uses the probes in deploy/kubernetes).
# `probe` reads SIDECAR_HOST / SIDECAR_PORT / SIDECAR_UNIX_SOCKET like the daemon; the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["airflow-secrets-sidecar", "probe"]

ENTRYPOINT ["airflow-secrets-sidecar"]
CMD ["serve"]
