"""How an Airflow process reaches the daemon: the endpoint and token, the HTTP client, autostart.

Standard library only, like `sidecar.backend`: every Airflow process imports it.
"""
