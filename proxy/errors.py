"""Errors every layer may raise and the CLI turns into one line (kept import-light)."""


class ConfigError(Exception):
    """A configuration mistake; str() is the one line shown to the user."""
