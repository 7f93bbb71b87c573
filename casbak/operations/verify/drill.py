"""The restore drill: restore one snapshot into a temporary directory and check every file.

`restore_snapshot` already verifies each object and each file's content hash while it
writes. The drill then reads every restored file back from disk and compares its size
and content hash with the tree entry, so it also proves that the bytes on disk are the
bytes of the snapshot.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import time
from typing import Optional

from casbak.catalog import walk
from casbak.errors import RestoreError
from casbak.manifest import Manifest
from casbak.operations.restore import restore_snapshot
from casbak.operations.verify.findings import FILE_MISMATCH, RESTORE_FAILED, DrillStats, Finding, VerifyResult
from casbak.operations.verify.objects import DAMAGE_ERRORS
from casbak.store.repository import Repository
from casbak.tree import FILE, Entry

log = logging.getLogger(__name__)

READ_BLOCK = 1024 * 1024


def run_restore_drill(
    repository: Repository, manifest: Manifest, result: VerifyResult, work_dir: Optional[str] = None
) -> DrillStats:
    """Restore a snapshot into a fresh temporary directory under `work_dir` (the system
    default when None), compare every file, and remove the directory again."""
    stats = DrillStats(snapshot=manifest.id)
    started = time.monotonic()
    target = tempfile.mkdtemp(prefix="casbak-drill-", dir=work_dir)
    log.info("restore drill: restoring snapshot %s into %s", manifest.id[:12], target)
    try:
        restored = _restore(repository, manifest, target, result)
        _compare_files(repository, manifest, target, restored, stats, result)
    finally:
        _remove_tree(target)
        stats.duration_seconds = time.monotonic() - started
    result.drill = stats
    return stats


def _restore(repository: Repository, manifest: Manifest, target: str, result: VerifyResult) -> bool:
    try:
        restore_snapshot(repository, manifest, target)
    except (*DAMAGE_ERRORS, RestoreError) as exc:
        result.errors.append(Finding(RESTORE_FAILED, f"restore of snapshot {manifest.id[:12]} failed: {exc}", snapshot=manifest.id))
        return False
    return True


def _compare_files(
    repository: Repository, manifest: Manifest, target: str, restored: bool, stats: DrillStats, result: VerifyResult
) -> None:
    try:
        for relative, entry in walk(repository, manifest.tree):
            if entry.type == FILE:
                _compare_file(repository, manifest, target, relative, entry, restored, stats, result)
    except DAMAGE_ERRORS as exc:
        # The restore has already failed on the same tree and reported it.
        if restored:
            result.errors.append(Finding(RESTORE_FAILED, f"listing snapshot {manifest.id[:12]} failed: {exc}", snapshot=manifest.id))


def _compare_file(
    repository: Repository,
    manifest: Manifest,
    target: str,
    relative: bytes,
    entry: Entry,
    restored: bool,
    stats: DrillStats,
    result: VerifyResult,
) -> None:
    snapshot_path = "/" + relative.decode("utf-8", "backslashreplace")
    local = os.path.join(os.fsencode(target), relative)
    digest = repository.hasher.stream()
    size = 0
    try:
        with open(local, "rb") as handle:
            for block in iter(lambda: handle.read(READ_BLOCK), b""):
                digest.update(block)
                size += len(block)
    except FileNotFoundError:
        stats.files_not_restored += 1
        if restored:
            result.errors.append(_mismatch(manifest, snapshot_path, "missing after a restore that reported success"))
        return
    except OSError as exc:
        result.errors.append(_mismatch(manifest, snapshot_path, f"cannot be read back ({exc.strerror or exc})"))
        return
    stats.files_checked += 1
    stats.bytes_checked += size
    if size != entry.size:
        result.errors.append(_mismatch(manifest, snapshot_path, f"restored {size} bytes, the snapshot records {entry.size}"))
    elif digest.digest() != entry.content:
        result.errors.append(_mismatch(manifest, snapshot_path, "restored content hash does not match the snapshot"))


def _mismatch(manifest: Manifest, path: str, problem: str) -> Finding:
    return Finding(FILE_MISMATCH, f"file {path} of snapshot {manifest.id[:12]}: {problem}", snapshot=manifest.id, path=path)


def _remove_tree(path: str) -> None:
    """Delete the drill directory, including directories restored without write permission."""

    def make_writable_and_retry(function, failed_path, _exc_info) -> None:
        parent = os.path.dirname(failed_path)
        os.chmod(parent, os.stat(parent).st_mode | stat.S_IRWXU)
        if os.path.isdir(failed_path) and not os.path.islink(failed_path):
            os.chmod(failed_path, os.stat(failed_path).st_mode | stat.S_IRWXU)
        function(failed_path)

    try:
        shutil.rmtree(path, onerror=make_writable_and_retry)
    except OSError as exc:
        log.error("restore drill: could not remove %s: %s; delete it by hand", path, exc)
