"""airflow-secrets-sidecar: a caching AWS secrets daemon and the Airflow backend that asks it.

This file stays import-free: `sidecar.backend` is imported by every Airflow process.
"""

__version__ = "0.1.0"
