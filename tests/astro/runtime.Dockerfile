# A stand-in for Astronomer's Astro Runtime 3.1 image, which no registry here serves, for `make
# test-astro` (tests/astro/astro_checks.py): Airflow 3.1 with the amazon and postgres providers,
# `python` and `pip` on PATH, a user astro (uid 50000), tini as PID 1 running /entrypoint,
# AIRFLOW_HOME=/usr/local/airflow, and a global pip constraint on everything installed. Built on the
# debootstrap base by tests/astro/prepare.sh:
#   docker build --network host --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt \
#     --build-arg BASE_IMAGE=airflow-secrets-sidecar-base:bookworm -f runtime.Dockerfile tests/astro
ARG BASE_IMAGE=airflow-secrets-sidecar-base:bookworm
FROM ${BASE_IMAGE}

# hadolint ignore=DL3008
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tini >/dev/null \
 && rm -rf /var/lib/apt/lists/*

# This machine's CA bundle (a build secret) becomes the image's: PyPI is reached through a TLS proxy
# here, and the snippet's RUN lines, taken verbatim, cannot mount a secret. Debian's pip reads the
# system bundle. CA_SHA256 (the bundle's digest) makes a changed bundle a cache miss.
ARG CA_SHA256=
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then cp /run/secrets/pip-ca /etc/ssl/certs/ca-certificates.crt; fi

# Airflow in a virtualenv on PATH (Debian's python3 refuses system-wide pip installs), keeping
# Debian's pip; then every install is constrained to these pins, as on Astro.
ENV PATH=/opt/python/bin:$PATH \
    AIRFLOW_HOME=/usr/local/airflow \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY airflow-requirements.txt /etc/astronomer-pip-constraints.txt
RUN python3 -m venv /opt/python \
 && PIP_CONFIG_FILE=/dev/null pip install --no-cache-dir -q -r /etc/astronomer-pip-constraints.txt \
 && printf '[global]\nconstraint = /etc/astronomer-pip-constraints.txt\n' >/etc/pip.conf

COPY entrypoint /entrypoint
RUN chmod 0755 /entrypoint \
 && useradd --uid 50000 --user-group --create-home --home-dir /home/astro --shell /bin/bash astro \
 && install -d -o astro -g astro /usr/local/airflow /usr/local/airflow/dags /usr/local/airflow/plugins \
      /usr/local/airflow/include /usr/local/airflow/logs

WORKDIR /usr/local/airflow
# Astro's images name their users, as Astronomer's own examples do.
# hadolint ignore=DL3066
USER astro
ENTRYPOINT ["tini", "--", "/entrypoint"]
CMD ["airflow", "version"]
