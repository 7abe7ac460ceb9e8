"""airflow-secrets-sidecar: a caching AWS secrets daemon and the Airflow backend that asks it.

This module is also the daemon's HTTP contract, in one place for the daemon and the backend, and
the environment the Airflow side reads: plain constants, no import. Every Airflow process imports
the package to reach `sidecar.backend`, so the contract costs no module of its own on that path.
"""

__version__ = "0.1.0"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2779
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
# Every request but /healthz, /readyz and /metrics carries the token in this header.
TOKEN_HEADER = "X-Sidecar-Token"
# Separates the team name from the secret id in a team-scoped name (Airflow's multi_team).
TEAM_SEP = "--"

# The kinds Airflow asks for, each under GET /v1/<kind>/<key> (plain strings: they key every hit).
VARIABLES, CONNECTIONS, CONFIG = "variables", "connections", "config"
KINDS = (VARIABLES, CONNECTIONS, CONFIG)
LOOKUP_PATH = "/v1/"
# Paths that need no token and name no key.
HEALTHZ, READYZ, METRICS = "/healthz", "/readyz", "/metrics"
# Where an answer came from: the X-Cache header of every /v1 answer.
X_CACHE = "X-Cache"
X_CACHE_HIT, X_CACHE_MISS, X_CACHE_STALE = "hit", "miss", "stale"
# Every error answer is {"error": <code>, "message": ...}: each code with its status
# (their meaning: docs/http-api.md).
ERRORS = {
    "bad_request": 400,
    "forwarded": 400,
    "unauthorized": 401,
    "browser": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_refused": 413,
    "busy": 429,
    "internal": 500,
    "upstream_unavailable": 503,
    "upstream_error": 503,
    "timeout": 503,
    "invalid_secret": 503,
}

# Where the secrets are: SIDECAR_SOURCE, for the daemon and for the backend's direct fallback.
SECRETSMANAGER, SSM = "secretsmanager", "ssm"
STORES = (SECRETSMANAGER, SSM)


# The environment the Airflow side reads to find the daemon, under the names the daemon reads for
# the same settings (its own flags and variables are generated from its settings' names).
UNIX_SOCKET_ENV = "SIDECAR_UNIX_SOCKET"
URL_ENV = "SIDECAR_URL"  # the Airflow side's only: the daemon listens where HOST / PORT say
HOST_ENV, PORT_ENV = "SIDECAR_HOST", "SIDECAR_PORT"
TOKEN_FILE_ENV, TOKEN_ENV = "SIDECAR_TOKEN_FILE", "SIDECAR_TOKEN"
SOURCE_ENV = "SIDECAR_SOURCE"
BACKEND_KWARGS_ENV = "SIDECAR_BACKEND_KWARGS"
