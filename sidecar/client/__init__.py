"""How an Airflow process reaches the daemon: where it is and its token (`endpoint`), the HTTP
client (`http`), starting it (`autostart`), and asking AWS without it (`direct`).

Standard library only, like `sidecar.backend`: every Airflow process imports it.
"""
