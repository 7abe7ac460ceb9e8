"""The daemon: settings, lifecycle, and the data path handler -> answers -> catalog / cache -> source.

Needs the `daemon` extra (aiohttp, aiobotocore, cachetools). This file stays
import-free: the CLI reads the settings without starting anything.
"""
