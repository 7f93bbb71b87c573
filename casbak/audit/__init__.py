"""Audit features: per-file hashes, signed manifests and the PII scan."""
