"""The one error every backend raises, so that callers never import a backend to catch it."""


class StoreError(Exception):
    """The store could not do what was asked (disk full, locked, unreachable, corrupt)."""
