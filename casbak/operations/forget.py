"""Forget snapshots: remove manifests by retention policy or by id, leaving a forget record.

Before any manifest is deleted, a forget record `forgotten/<BLAKE3 of the stored bytes>`
is written: a sealed msgpack map {"version": 1, "time_ns", "snapshots": [{"id",
"previous", "time_ns"}], "reason"}. A manifest whose `previous` link points at a missing
manifest is a broken hash chain unless a forget record lists that id, so verification
can tell forgetting from tampering. The data of forgotten snapshots stays until prune.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import blake3
import msgpack

from casbak.catalog import load_manifests, resolve_snapshot
from casbak.errors import StorageError, UsageError
from casbak.manifest import Manifest
from casbak.operations.retention import Decision, RetentionPolicy, apply_policy
from casbak.store.backend import Backend
from casbak.store.locks import EXCLUSIVE, LockSettings, RepositoryLock
from casbak.store.repository import SNAPSHOTS_PREFIX, Repository

log = logging.getLogger(__name__)

FORGOTTEN_PREFIX = "forgotten"
FORGET_RECORD_VERSION = 1


@dataclass
class ForgetResult:
    """Decisions and outcome of one forget run; `retained` lists deletions the storage rejected."""

    decisions: list[Decision] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    retained: list[dict] = field(default_factory=list)
    record: Optional[str] = None
    dry_run: bool = False

    def to_json(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "decisions": [decision_json(d) for d in self.decisions],
            "removed": self.removed,
            "retained": self.retained,
            "forget_record": self.record,
        }


def decision_json(decision: Decision) -> dict:
    manifest = decision.manifest
    return {
        "id": manifest.id,
        "time": manifest.time_iso,
        "hostname": manifest.hostname,
        "sources": manifest.sources,
        "tags": manifest.tags,
        "keep": decision.keep,
        "reasons": decision.reasons,
    }


def forget_by_policy(
    repository: Repository,
    policy: RetentionPolicy,
    group_by: str = "host,sources",
    dry_run: bool = False,
    lock: Optional[RepositoryLock] = None,
    lock_settings: Optional[LockSettings] = None,
    select: Optional[Callable[[Manifest], bool]] = None,
) -> ForgetResult:
    """Remove every snapshot the policy does not keep.

    Only snapshots for which `select` returns True are judged; the others are kept and
    not listed. Takes an exclusive lock unless the caller passes the one it holds.
    Damaged manifests cannot be judged; they are logged and kept.
    """
    if dry_run:
        return ForgetResult(decisions=apply_policy(_selected(repository, select), policy, group_by), dry_run=True)
    with _ExclusiveLockScope(repository, lock, lock_settings) as held:
        decisions = apply_policy(_selected(repository, select), policy, group_by)
        doomed = [d.manifest for d in decisions if not d.keep]
        result = remove_manifests(repository, doomed, f"policy: {policy.describe()}; group by {group_by}", held)
        result.decisions = decisions
        return result


def _selected(repository: Repository, select: Optional[Callable[[Manifest], bool]]) -> list[Manifest]:
    manifests = load_manifests(repository)
    if select is None:
        return manifests
    return [m for m in manifests if select(m)]


def forget_by_ids(
    repository: Repository,
    selectors: Sequence[str],
    dry_run: bool = False,
    lock: Optional[RepositoryLock] = None,
    lock_settings: Optional[LockSettings] = None,
) -> ForgetResult:
    """Remove the snapshots named by ids or unique id prefixes."""
    if not selectors:
        raise UsageError("no snapshot given: name snapshot ids, or use --keep-* options for a policy")
    with _ExclusiveLockScope(repository, lock, lock_settings, skip=dry_run) as held:
        chosen: dict[str, Manifest] = {}
        for selector in selectors:
            manifest = resolve_snapshot(repository, selector)
            chosen[manifest.id] = manifest
        doomed = sorted(chosen.values(), key=lambda m: (m.time_ns, m.id))
        decisions = [Decision(m, (), []) for m in doomed]
        if dry_run:
            return ForgetResult(decisions=decisions, dry_run=True)
        result = remove_manifests(repository, doomed, "requested by id", held)
        result.decisions = decisions
        return result


def remove_manifests(repository: Repository, doomed: Sequence[Manifest], reason: str, lock: RepositoryLock) -> ForgetResult:
    """Write the forget record, then delete the manifests; the caller holds an exclusive lock."""
    result = ForgetResult()
    if not doomed:
        return result
    lock.ensure_held()
    result.record = write_forget_record(repository, doomed, reason)
    for manifest in doomed:
        name = f"{SNAPSHOTS_PREFIX}/{manifest.id}"
        failure = delete_or_retain(repository.backend, name)
        if failure is None:
            result.removed.append(manifest.id)
            log.info("forgot snapshot %s from %s", manifest.id[:12], manifest.time_iso)
        else:
            result.retained.append({"name": name, "detail": failure})
    return result


def write_forget_record(repository: Repository, manifests: Sequence[Manifest], reason: str) -> str:
    """Store the forget record for `manifests` and return its name."""
    body = {
        "version": FORGET_RECORD_VERSION,
        "time_ns": time.time_ns(),
        "snapshots": [{"id": m.id, "previous": m.previous, "time_ns": m.time_ns} for m in manifests],
        "reason": reason,
    }
    sealed = repository.sealer.seal(msgpack.packb(body))
    name = f"{FORGOTTEN_PREFIX}/{blake3.blake3(sealed).hexdigest()}"
    repository.backend.write(name, sealed)
    return name


def delete_or_retain(backend: Backend, name: str) -> Optional[str]:
    """Delete one stored file; return a description when the storage rejects the delete.

    Object stores with retention (such as S3 Object Lock) raise PermissionError for a
    delete before the retain-until date, which remote backends wrap in a StorageError.
    That is expected, so it is reported and not fatal. Other OSErrors are reported the
    same way, because every caller stays correct when a file it meant to delete
    remains. Any other StorageError (such as retries running out) is raised.
    """
    try:
        backend.delete(name)
    except (OSError, StorageError) as exc:
        rejection = _permission_error(exc)
        if rejection is None and isinstance(exc, StorageError):
            raise
        if rejection is not None:
            until = getattr(rejection, "retain_until", None)
            detail = f"retained until {until}" if until else f"retained by the storage ({exc})"
            log.warning("%s: not deleted: %s", name, detail)
            return detail
        # Every caller stays correct when the file remains (docs/gc.md), and the next gc retries.
        detail = f"delete failed ({exc}); the next gc tries again"
        log.error("%s: not deleted: %s", name, detail)
        return detail
    return None


def _permission_error(error: BaseException) -> Optional[PermissionError]:
    # Object-store backends wrap the PermissionError of an access-denied delete in a
    # StorageError, so the cause chain is searched too.
    current: Optional[BaseException] = error
    for _ in range(8):
        if current is None:
            return None
        if isinstance(current, PermissionError):
            return current
        current = current.__cause__ or current.__context__
    return None


class _ExclusiveLockScope:
    """Context manager that yields the caller's lock or takes and releases an exclusive one."""

    def __init__(self, repository: Repository, lock: Optional[RepositoryLock], settings: Optional[LockSettings], skip: bool = False) -> None:
        self._caller_lock = lock
        self._own = None if lock is not None or skip else RepositoryLock(repository, EXCLUSIVE, "forget", settings, remove_stale=True)

    def __enter__(self) -> RepositoryLock:
        if self._own is not None:
            return self._own.acquire()
        return self._caller_lock  # type: ignore[return-value]

    def __exit__(self, *exc_info: object) -> None:
        if self._own is not None:
            self._own.release()
