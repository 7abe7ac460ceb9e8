"""The daemon's HTTP contract, in one place for the daemon and the backend. Standard library only:
the backend imports it in every Airflow process."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 2779
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
# Every request but /healthz, /readyz and /metrics carries the token in this header.
TOKEN_HEADER = "X-Sidecar-Token"
# Separates the team name from the secret id in a team-scoped name (Airflow's multi_team).
TEAM_SEP = "--"
