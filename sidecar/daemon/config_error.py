"""The error of a bad setting, below every module that checks one (settings, backend kwargs, token)."""


class ConfigError(Exception):
    """A setting is invalid. The message names the flag or variable to change."""
