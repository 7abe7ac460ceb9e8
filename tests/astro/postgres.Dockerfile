# The metadata database for `make test-astro`: Debian's PostgreSQL on the debootstrap base (no
# registry serves postgres images here). postgres-entrypoint.sh makes a cluster at first start and
# listens on 127.0.0.1:$PGPORT only.
ARG BASE_IMAGE=airflow-secrets-sidecar-base:bookworm
FROM ${BASE_IMAGE}

# hadolint ignore=DL3008
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
# hadolint ignore=DL3066
USER postgres
ENTRYPOINT ["sh", "/usr/local/bin/postgres-entrypoint.sh"]
