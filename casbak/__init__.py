"""casbak: a content-addressed, deduplicating snapshot store for ML alignment data."""

__version__ = "0.2.0"


def __getattr__(name: str):
    # `casbak.diff` is loaded on first use, so `import casbak` stays light for the CLI.
    if name == "diff":
        from casbak.operations.diff import diff

        return diff
    raise AttributeError(f"module 'casbak' has no attribute {name!r}")
