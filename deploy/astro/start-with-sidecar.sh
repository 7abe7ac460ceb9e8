#!/usr/bin/env bash
# Start airflow-secrets-sidecar in the background, wait until it answers /healthz, then exec the
# container's real command, so Airflow stays the process that the init (tini, dumb-init) signals:
#
#   ENTRYPOINT ["tini", "--", "/usr/local/bin/start-with-sidecar.sh", "/entrypoint"]
#
# The daemon starts only if Airflow is set to use it (AIRFLOW__SECRETS__BACKEND or
# AIRFLOW__WORKERS__SECRETS_BACKEND is sidecar.backend.SidecarSecretsBackend), so containers that
# do not use it run exactly as before. Optional knobs (not daemon settings, hence not SIDECAR_*):
#   AIRFLOW_SECRETS_SIDECAR       auto (default), on or off
#   AIRFLOW_SECRETS_SIDECAR_BIN   the daemon's executable (default: the /opt venv, else PATH)
#   AIRFLOW_SECRETS_SIDECAR_WAIT  seconds to wait for /healthz (default 30)
# The daemon reads SIDECAR_* as usual. Without SIDECAR_TOKEN or SIDECAR_TOKEN_FILE, a random token
# is written to a private file and exported as SIDECAR_TOKEN_FILE, which the Airflow backend reads
# too: nothing to configure, nothing shared beyond this container.
set -euo pipefail

say() { echo "start-with-sidecar: $*" >&2; }

# Supervisor, started below in its own session: signals for the process group (Ctrl-C, tini -g)
# must not stop the daemon while Airflow is still shutting down and reading secrets. It ends with
# the container. Exit 0 (asked to stop) and 2 (configuration error) are final; a crash restarts.
if [[ "${1:-}" == --supervise ]]; then
    while true; do
        status=0
        "$2" serve || status=$?
        if ((status == 0 || status == 2)); then
            exit "$status"
        fi
        say "airflow-secrets-sidecar exited with status $status; restarting in 2s"
        sleep 2
    done
fi

if (($# == 0)); then
    say "usage: start-with-sidecar.sh COMMAND [ARGS...]"
    exit 64
fi

mode="${AIRFLOW_SECRETS_SIDECAR:-auto}"
if [[ "$mode" == auto ]]; then
    mode=off
    case "${AIRFLOW__SECRETS__BACKEND:-} ${AIRFLOW__WORKERS__SECRETS_BACKEND:-}" in
        *sidecar.backend.SidecarSecretsBackend*) mode=on ;;
    esac
fi
case "$mode" in
    on) ;;
    off) exec "$@" ;;
    *)
        say "AIRFLOW_SECRETS_SIDECAR must be auto, on or off, got '$mode'"
        exit 64
        ;;
esac

# The /opt venv first: a --no-deps install in Airflow's environment also puts an
# airflow-secrets-sidecar script on PATH, but one that lacks the daemon's dependencies.
bin="${AIRFLOW_SECRETS_SIDECAR_BIN:-/opt/airflow-secrets-sidecar/bin/airflow-secrets-sidecar}"
if [[ ! -x "$bin" ]]; then
    bin="$(command -v airflow-secrets-sidecar)" || {
        say "airflow-secrets-sidecar not found: install it (see Dockerfile.snippet) or set AIRFLOW_SECRETS_SIDECAR_BIN"
        exit 1
    }
fi
python="${bin%/*}/python"
[[ -x "$python" ]] || python=python3

if [[ -z "${SIDECAR_TOKEN:-}" && -z "${SIDECAR_TOKEN_FILE:-}" ]]; then
    token_dir="$(mktemp -d "${TMPDIR:-/tmp}/airflow-secrets-sidecar.XXXXXX")" # mode 0700
    (umask 077 && "$python" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$token_dir/token")
    export SIDECAR_TOKEN_FILE="$token_dir/token"
fi

if command -v setsid >/dev/null; then
    setsid "$BASH" "${BASH_SOURCE[0]}" --supervise "$bin" &
else
    "$BASH" "${BASH_SOURCE[0]}" --supervise "$bin" &
fi
supervisor=$!
# For debugging and tests: the supervisor leads its own process group when setsid exists.
export AIRFLOW_SECRETS_SIDECAR_PID="$supervisor"

# GET /healthz over raw HTTP: works for TCP and SIDECAR_UNIX_SOCKET alike, with the stdlib only.
healthy() {
    "$python" - 2>/dev/null <<'PY'
import os, socket, sys

try:
    if os.environ.get("SIDECAR_UNIX_SOCKET"):
        conn = socket.socket(socket.AF_UNIX)
        conn.settimeout(2)
        conn.connect(os.environ["SIDECAR_UNIX_SOCKET"])
    else:
        address = (os.environ.get("SIDECAR_HOST") or "127.0.0.1", int(os.environ.get("SIDECAR_PORT") or 2779))
        conn = socket.create_connection(address, timeout=2)
    conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
    sys.exit(0 if conn.recv(64).split(b" ")[1:2] == [b"200"] else 1)
except (OSError, ValueError):
    sys.exit(1)
PY
}

wait_seconds="${AIRFLOW_SECRETS_SIDECAR_WAIT:-30}"
deadline=$((SECONDS + wait_seconds))
until healthy; do
    # `jobs -r`, not `kill -0`: an exited, unreaped child still answers kill -0.
    if [[ -z "$(jobs -rp)" ]]; then
        status=0
        wait "$supervisor" || status=$?
        say "airflow-secrets-sidecar stopped with status $status before answering (its error is above);" \
            "fix the SIDECAR_* settings, or set AIRFLOW_SECRETS_SIDECAR=off to run without it"
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        # Slow is not dead: start Airflow. Its backend waits startup_wait (5 s) on a first lookup,
        # then fails over to the next backend until the daemon answers.
        say "no answer on /healthz after ${wait_seconds}s; starting Airflow anyway"
        break
    fi
    sleep 0.5
done

exec "$@"
