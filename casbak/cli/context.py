"""Shared command-line state: repository location, password sources, output mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from casbak.errors import PasswordMissing, UsageError

if TYPE_CHECKING:
    from casbak.store.repository import Repository


@dataclass
class CliState:
    """Options given before the command name (or through CASBAK_* variables)."""

    repo: Optional[str] = None
    password_file: Optional[str] = None
    password_command: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)
    json: bool = False
    quiet: bool = False
    verbose: int = 0
    no_cache: bool = False
    # --signing-key: the Ed25519 key file that signs new snapshots (see casbak.audit.signing).
    signing_key: Optional[str] = None

    def require_repo(self) -> str:
        if not self.repo:
            raise UsageError("no repository given: pass --repo/-r LOCATION or set CASBAK_REPOSITORY")
        return self.repo

    def password(self, required: bool) -> Optional[bytes]:
        """Return the password from the first source set, in documented order."""
        secret = os.environ.get("CASBAK_PASSWORD")
        if secret is not None:
            return secret.encode()
        if self.password_file:
            return _read_password_file(self.password_file)
        if self.password_command:
            return _run_password_command(self.password_command)
        if required and sys.stdin.isatty():
            import getpass

            return getpass.getpass("repository password: ").encode()
        return None

    def open_repository(self) -> Repository:
        # Imported here so that `--help` does not load the storage layer.
        from casbak.store.cache import detach_cache
        from casbak.store.repository import Repository

        location = self.require_repo()
        try:
            repository = Repository.open(location, self.password(required=False), self.options)
        except PasswordMissing:
            if not sys.stdin.isatty():
                raise
            repository = Repository.open(location, self.password(required=True), self.options)
        if self.no_cache:
            repository.backend = detach_cache(repository.backend)
        return repository

    def emit_json(self, value: Any) -> None:
        json.dump(value, sys.stdout, indent=2, sort_keys=False, default=str)
        sys.stdout.write("\n")


def _read_password_file(path: str) -> bytes:
    try:
        with open(os.path.expanduser(path), "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise PasswordMissing(
            f"password file {path}: cannot be read ({exc.strerror}); check --password-file or CASBAK_PASSWORD_FILE"
        ) from exc
    # A trailing newline is an editor artefact, not part of the password.
    return data.rstrip(b"\r\n")


def _run_password_command(command: str) -> bytes:
    try:
        result = subprocess.run(command, shell=True, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise PasswordMissing(f"password command {command!r}: timed out after 120 s") from exc
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()
        raise PasswordMissing(f"password command {command!r}: exited with status {result.returncode}: {detail}")
    return result.stdout.rstrip(b"\r\n")


def parse_options(values: list[str]) -> dict[str, Any]:
    """Turn `-o key=value` pairs into fsspec storage options ("s3.endpoint_url" style keys).

    The part before the first dot names the backend and is dropped, so
    `s3.endpoint_url=http://127.0.0.1:5000` becomes {"endpoint_url": ...}; nested keys
    such as `s3.client_kwargs.region_name` become nested dicts.
    """
    options: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise UsageError(f"option {item!r}: expected KEY=VALUE, such as s3.endpoint_url=http://127.0.0.1:5000")
        key, value = item.split("=", 1)
        parts = key.split(".")
        if len(parts) > 1:
            parts = parts[1:]
        node = options
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _option_value(value)
    return options


def _option_value(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(value)
    except ValueError:
        return value
