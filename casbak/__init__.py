"""casbak: a content-addressed, deduplicating snapshot store for ML alignment data."""

__version__ = "0.1.0"
