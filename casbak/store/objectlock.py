"""S3 Object Lock: write-once retention for packs, index files and manifests.

With a retention set, S3 rejects deleting or overwriting that object version until
the retain-until date passes, even for the credentials that wrote it (in governance
mode a user with s3:BypassGovernanceRetention can still remove it; in compliance mode
no one can). A deleted locked object only gets a delete marker on top, and the locked
version stays readable by version id. The bucket must have been created with Object
Lock enabled, which also turns on versioning.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Optional

from casbak.errors import StorageError, UsageError
from casbak.store.retry import call_with_retry

log = logging.getLogger(__name__)

MODES = ("governance", "compliance")

# Names whose objects get a retention date; the config and key files stay mutable,
# because adding or removing a password rewrites `keys/`.
LOCKED_PREFIXES = ("data/", "tree/", "index/", "snapshots/")


@dataclass(frozen=True)
class ObjectLock:
    """Retention settings stored in the repository config."""

    days: int
    mode: str = "governance"

    def __post_init__(self) -> None:
        if self.days < 1:
            raise UsageError(f"object lock days {self.days}: must be at least 1")
        if self.mode not in MODES:
            raise UsageError(f"object lock mode {self.mode!r}: must be one of {', '.join(MODES)}")

    def put_arguments(self, name: str, now: Optional[dt.datetime] = None) -> dict[str, Any]:
        """Return the extra PutObject arguments for the file `name` (empty when not locked)."""
        if not name.startswith(LOCKED_PREFIXES):
            return {}
        now = now or dt.datetime.now(dt.timezone.utc)
        # NOTE: the retention is fixed at upload. A pack that later snapshots still
        # reuse loses its lock after `days`; nothing extends retention periodically yet.
        return {
            "ObjectLockMode": self.mode.upper(),
            "ObjectLockRetainUntilDate": now + dt.timedelta(days=self.days),
        }


def object_lock_from_config(days: int, mode: Optional[str]) -> Optional[ObjectLock]:
    """Return the ObjectLock of a config's fields, or None when retention is off."""
    if not days:
        return None
    return ObjectLock(days=days, mode=mode or "governance")


def is_s3_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in ("s3", "s3a")


def apply_object_lock(backend: Any, days: int, mode: Optional[str]) -> None:
    """Make `backend` write retention dates when the config sets Object Lock."""
    lock = object_lock_from_config(days, mode)
    if lock is None:
        return
    target = getattr(backend, "inner", backend)
    if not is_s3_url(backend.url) or not hasattr(target, "object_lock"):
        log.warning(
            "repository %s has Object Lock set, which only s3:// repositories support; "
            "new files are written without retention", backend.url,
        )
        return
    target.object_lock = lock


def check_bucket_object_lock(backend: Any) -> None:
    """Raise UsageError unless the S3 bucket of `backend` has Object Lock enabled."""
    if not is_s3_url(backend.url) or not hasattr(backend, "fs"):
        raise UsageError(
            f"repository {backend.url}: Object Lock needs an s3:// repository; "
            "remove --object-lock-days or use an S3 bucket created with Object Lock enabled"
        )
    bucket = backend.root.split("/", 1)[0]
    try:
        configuration = call_with_retry(
            lambda: backend.fs.call_s3("get_object_lock_configuration", Bucket=bucket),
            "read", "the Object Lock configuration", backend.url,
        )
    except (OSError, ValueError, StorageError) as exc:
        raise UsageError(
            f"bucket {bucket}: Object Lock configuration could not be read ({exc}); "
            "create the bucket with Object Lock enabled (ObjectLockEnabledForBucket) or drop --object-lock-days"
        ) from exc
    if configuration.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
        raise UsageError(
            f"bucket {bucket}: Object Lock is not enabled; create the bucket with Object Lock enabled "
            "or drop --object-lock-days"
        )
