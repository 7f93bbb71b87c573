"""TOML configuration file with named profiles, and the per-profile run lock.

The file lives at `--config FILE`, else `$CASBAK_CONFIG`, else
`$XDG_CONFIG_HOME/casbak/config.toml` (XDG_CONFIG_HOME defaults to ~/.config). Example:

    [profiles.nightly]
    repository = "/srv/backup/casbak"
    password-file = "/etc/casbak/password"
    sources = ["/data/alignment"]
    exclude = ["*.tmp", "**/cache/**"]
    tags = ["nightly"]
    keep-daily = 14
    notify-url = "http://127.0.0.1:9000/hooks/casbak"
    metrics-file = "/var/lib/node_exporter/textfile/casbak_nightly.prom"

Keys use the spelling of the command-line options. Options given on the command line
(or through CASBAK_* variables) override the profile's values.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional

from casbak.cli.context import parse_options
from casbak.errors import EXIT_LOCKED, CasbakError, UsageError

log = logging.getLogger(__name__)

RETENTION_KEYS = ("keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly")
NOTIFY_ON_VALUES = ("failure", "always")
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ProfileLocked(CasbakError):
    """Another run of the same profile is still running on this machine."""

    exit_code = EXIT_LOCKED


@dataclass
class Profile:
    """One named profile; attribute names are the TOML keys with `-` replaced by `_`."""

    name: str
    repository: Optional[str] = None
    password_file: Optional[str] = None
    password_command: Optional[str] = None
    sources: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    exclude_file: list[str] = field(default_factory=list)
    exclude_larger_than: Optional[str] = None
    one_file_system: bool = False
    tags: list[str] = field(default_factory=list)
    host: Optional[str] = None
    stdin_from_command: Optional[str] = None
    stdin_filename: Optional[str] = None
    keep_last: Optional[int] = None
    keep_hourly: Optional[int] = None
    keep_daily: Optional[int] = None
    keep_weekly: Optional[int] = None
    keep_monthly: Optional[int] = None
    keep_yearly: Optional[int] = None
    keep_within: Optional[str] = None
    keep_tag: list[str] = field(default_factory=list)
    notify_url: Optional[str] = None
    notify_on: str = "failure"
    metrics_file: Optional[str] = None
    pii_scan: Optional[str] = None
    pii_allowlist: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def retention(self) -> dict[str, Any]:
        """The retention policy keys that are set, such as {"keep-daily": 14}, for `casbak gc`.

        Keys are the option names without dashes in front. Unset keys are left out.
        """
        policy: dict[str, Any] = {}
        for key in RETENTION_KEYS + ("keep-within",):
            value = getattr(self, key.replace("-", "_"))
            if value is not None:
                policy[key] = value
        if self.keep_tag:
            policy["keep-tag"] = list(self.keep_tag)
        return policy


def default_config_path() -> Path:
    """Return the configuration file used when `--config` is not given."""
    explicit = os.environ.get("CASBAK_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "casbak" / "config.toml"


def load_config(path: Optional[str] = None) -> dict[str, Any]:
    """Parse the configuration file; a missing default file is an empty configuration."""
    import tomllib  # only runs with a profile read the file

    config_path = Path(path).expanduser() if path else default_config_path()
    try:
        with open(config_path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        if path:
            raise UsageError(f"config file {config_path}: not found; check the --config path") from None
        return {}
    except OSError as exc:
        raise UsageError(f"config file {config_path}: cannot be read ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {config_path}: invalid TOML ({exc})") from exc


def load_profile(name: str, config_path: Optional[str] = None) -> Profile:
    """Return the profile `name` of the configuration file, checked for unknown keys and types."""
    config = load_config(config_path)
    shown_path = config_path or str(default_config_path())
    profiles = config.get("profiles", {})
    if not isinstance(profiles, dict) or name not in profiles:
        known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) and profiles else "none"
        raise UsageError(f"profile {name!r}: not found in {shown_path} (profiles defined: {known})")
    return profile_from_table(name, profiles[name], shown_path)


def profile_from_table(name: str, table: Any, where: str = "config") -> Profile:
    """Build a Profile from one `[profiles.NAME]` table."""
    if not _PROFILE_NAME.match(name):
        raise UsageError(f"profile {name!r}: invalid name; use letters, digits, '.', '_' and '-'")
    if not isinstance(table, dict):
        raise UsageError(f"profile {name!r} in {where}: must be a table ([profiles.{name}])")
    known = {f.name: f for f in fields(Profile) if f.name != "name"}
    values: dict[str, Any] = {}
    for key, value in table.items():
        attribute = key.replace("-", "_")
        if attribute not in known:
            choices = ", ".join(sorted(k.replace("_", "-") for k in known))
            raise UsageError(f"profile {name!r} in {where}: unknown key {key!r}; known keys: {choices}")
        values[attribute] = _checked_value(name, key, value, known[attribute].type)
    profile = Profile(name=name, **values)
    if profile.notify_on not in NOTIFY_ON_VALUES:
        raise UsageError(f"profile {name!r}: notify-on {profile.notify_on!r} must be one of {', '.join(NOTIFY_ON_VALUES)}")
    return profile


def _checked_value(profile: str, key: str, value: Any, declared: str) -> Any:
    # `declared` is the annotation text, since this module uses postponed annotations.
    if declared.startswith("list["):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise UsageError(f"profile {profile!r}: {key} must be a string or a list of strings")
        return value
    if declared == "bool":
        if not isinstance(value, bool):
            raise UsageError(f"profile {profile!r}: {key} must be true or false")
        return value
    if declared == "Optional[int]":
        # -1 is `casbak gc`'s "keep all" for keep-* counts.
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise UsageError(f"profile {profile!r}: {key} must be an integer of -1 or more")
        return value
    if declared.startswith("dict["):
        if not isinstance(value, dict):
            raise UsageError(f"profile {profile!r}: {key} must be a table")
        return value
    if isinstance(value, int) and not isinstance(value, bool) and key == "exclude-larger-than":
        return str(value)
    if not isinstance(value, str):
        raise UsageError(f"profile {profile!r}: {key} must be a string")
    return value


def lock_directory() -> Path:
    """Return the directory of per-profile lock files ($XDG_RUNTIME_DIR, else the cache)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "casbak"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "casbak" / "locks"


@contextmanager
def profile_lock(name: str) -> Iterator[Path]:
    """Hold an exclusive lock for runs of profile `name` on this machine; raise ProfileLocked if taken.

    The lock is an flock on a file, so the kernel releases it when the process dies and
    a crashed run never leaves a stale lock behind. It does not guard the repository
    against other machines (repository locks do that).
    """
    directory = lock_directory()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"profile-{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            raise ProfileLocked(
                f"profile {name!r}: another run is still in progress{holder} (lock file {path}); "
                "this run stopped without doing anything, so wait for the other run to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        log.debug("locked profile %s with %s", name, path)
        yield path
    finally:
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""


PROFILE_META_KEY = "casbak.profile"


def current_profile(ctx: Any) -> Optional[Profile]:
    """Return the profile selected with the global `--profile` option, if any.

    Commands receive it through the click context, which `casbak --profile NAME` fills.
    """
    return ctx.meta.get(PROFILE_META_KEY)


def apply_profile(ctx: Any, state: Any, profile: Profile) -> None:
    """Fill repository and password settings of `state` that the command line left unset."""
    ctx.meta[PROFILE_META_KEY] = profile
    if not state.repo:
        state.repo = profile.repository
    if not state.password_file and not state.password_command:
        state.password_file = profile.password_file
        state.password_command = profile.password_command
    if profile.options:
        items = [f"{key}={value}" for key, value in profile.options.items()]
        state.options = {**parse_options(items), **state.options}
