"""The daemon: settings, lifecycle, and the data path handler -> lookup -> catalog / cache -> source.

Needs the `daemon` extra (aiohttp, aiobotocore, cachetools, prometheus-client). This file stays
import-free: the CLI reads the settings without starting anything.
"""
