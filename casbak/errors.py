"""One exception hierarchy for casbak, each class carrying its process exit code.

Exit codes are part of the command-line interface and are documented in the README.
Retired codes stay listed here as comments so their numbers are never reused.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2  # typer/click use 2 for invalid command-line usage
EXIT_PARTIAL = 3  # snapshot written, but some sources could not be read
EXIT_LOCKED = 4  # repository locked by another run (RepositoryLocked)
EXIT_INTEGRITY = 5  # verify found damaged or missing data
EXIT_PII = 6  # snapshot --pii-scan fail found personal data or secrets; no snapshot written


class CasbakError(Exception):
    """Base class of every error casbak reports to a user."""

    exit_code = EXIT_FATAL


class UsageError(CasbakError):
    """Invalid argument or option value given by the caller."""

    exit_code = EXIT_USAGE


class RepositoryNotFound(CasbakError):
    """No casbak repository exists at the given location."""


class RepositoryExists(CasbakError):
    """`init` was asked to create a repository where one already exists."""


class UnsupportedFormat(CasbakError):
    """The repository or an object uses a format version this program cannot read."""


class WrongPassword(CasbakError):
    """No key file of the repository opens with the given password."""


class KeyFilesMissing(CasbakError):
    """An encrypted repository has no key file left under `keys/`."""


class PasswordMissing(CasbakError):
    """The repository is encrypted and no password source was given."""


class SnapshotNotFound(CasbakError):
    """A snapshot selector (id, prefix, `latest`) matches no snapshot."""


class AmbiguousSnapshot(CasbakError):
    """A snapshot id prefix matches more than one snapshot."""


class PathNotFound(CasbakError):
    """A path inside a snapshot does not exist."""


class IntegrityError(CasbakError):
    """Stored data does not match its digest, cannot be decrypted, or cannot be parsed."""

    exit_code = EXIT_INTEGRITY


class ObjectNotFound(IntegrityError):
    """An object digest is referenced but no index entry or pack holds it."""


class CorruptObject(IntegrityError):
    """An object, pack header, index file or manifest failed authentication or parsing."""


class RepositoryLocked(CasbakError):
    """Another run holds a lock that conflicts with the requested operation."""

    exit_code = EXIT_LOCKED


class StorageError(CasbakError):
    """A storage request failed for good: access denied, invalid request, or retries exhausted."""


class RestoreError(CasbakError):
    """Restoring could not write an entry into the target directory."""


class PiiFound(CasbakError):
    """`snapshot --pii-scan fail` found personal data or secrets; no manifest was written."""

    exit_code = EXIT_PII
