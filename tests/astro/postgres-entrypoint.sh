#!/bin/sh
# PostgreSQL for `make test-astro` (postgres.Dockerfile): a fresh cluster at first start, user
# postgres with password $POSTGRES_PASSWORD, on 127.0.0.1:$PGPORT only. No durability: fsync off.
set -eu
bin="$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)"
data=/var/lib/postgresql/airflow
if [ ! -s "$data/PG_VERSION" ]; then
    printf '%s\n' "${POSTGRES_PASSWORD:-postgres}" >/tmp/pwfile
    "$bin/initdb" -D "$data" -U postgres --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f /tmp/pwfile
fi
exec "$bin/postgres" -D "$data" -p "${PGPORT:-5432}" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories=/tmp -c max_connections=200 -c fsync=off
