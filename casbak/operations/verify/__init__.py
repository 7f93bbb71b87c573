"""`casbak verify`: prove that a repository's snapshots can be restored, or report what cannot.

Checks, in order:

1. index files decode (each damaged one is named);
2. every indexed pack exists with exactly its indexed size, and packs that no index
   names are listed as warnings;
3. with `read_data`, the selected packs are downloaded and every object re-opened;
4. forget records decode, manifests open and match their ids, and every `previous`
   link names a valid manifest or a forgotten one;
5. every tree reachable from a valid manifest loads, and every chunk it references
   is indexed. Damaged or missing objects are traced to the snapshots and paths that
   use them;
6. with `restore_drill`, one snapshot is restored into a temporary directory and
   every file is read back and compared.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional

from casbak.catalog import resolve_snapshot
from casbak.operations.verify.data import Subset, parse_subset, read_packs
from casbak.operations.verify.drill import run_restore_drill
from casbak.operations.verify.findings import Affected, DrillStats, Finding, VerifyResult, VerifyStats
from casbak.operations.verify.structure import (
    RepositoryState,
    check_chain,
    check_packs,
    load_forgotten_ids,
    load_index_files,
    load_manifests,
    parse_forget_record,
)
from casbak.operations.verify.signatures import check_ledger
from casbak.operations.verify.trees import TreeChecker
from casbak.store.locks import SHARED, RepositoryLock
from casbak.store.repository import Repository

__all__ = [
    "Affected",
    "DrillStats",
    "Finding",
    "Subset",
    "VerifyOptions",
    "VerifyResult",
    "VerifyStats",
    "parse_forget_record",
    "parse_subset",
    "verify_repository",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyOptions:
    """Options of one verify run beyond the structure checks, which always run.

    `read_data` reads the packs that `subset` selects (all packs when None).
    `restore_drill` is a snapshot selector (id, prefix or `latest`) to restore into a
    temporary directory under `drill_dir` (the system default when None). `lock` takes
    a shared repository lock, so that a gc cannot delete packs while they are checked.
    """

    read_data: bool = False
    subset: Optional[Subset] = None
    restore_drill: Optional[str] = None
    drill_dir: Optional[str] = None
    workers: int = 4
    lock: bool = True
    # `ledger` also checks every manifest signature; `signers` pins the trusted fingerprints.
    ledger: bool = False
    signers: Optional[frozenset[str]] = None


def verify_repository(repository: Repository, options: VerifyOptions = VerifyOptions()) -> VerifyResult:
    """Run every check that `options` selects and return all findings with counters.

    Raises RepositoryLocked while a forget or gc holds an exclusive lock, unless
    `options.lock` is False.
    """
    if not options.lock:
        return _verify(repository, options)
    with RepositoryLock(repository, SHARED, "verify"):
        return _verify(repository, options)


def _verify(repository: Repository, options: VerifyOptions) -> VerifyResult:
    started = time.monotonic()
    # An unknown drill snapshot is a usage error, reported before any slow check runs.
    drill_manifest = resolve_snapshot(repository, options.restore_drill) if options.restore_drill else None
    result = VerifyResult()
    state = RepositoryState()

    load_index_files(repository, state, result, options.workers)
    check_packs(repository, state, result, options.workers)
    if options.read_data or options.subset is not None:
        read_packs(repository, state, result, options.subset, options.workers)

    forgotten = load_forgotten_ids(repository, result)
    listed = load_manifests(repository, state, result)
    check_chain(state, listed, forgotten, result)
    if options.ledger:
        result.first_broken_link = check_ledger(repository, state, result, set(options.signers) if options.signers else None)

    checker = TreeChecker(repository, state, result)
    for manifest in state.manifests:
        checker.check_snapshot(manifest)

    if drill_manifest is not None:
        run_restore_drill(repository, drill_manifest, result, options.drill_dir)

    result.stats.duration_seconds = time.monotonic() - started
    _log_summary(result)
    return result


def _log_summary(result: VerifyResult) -> None:
    # The caller reports the findings themselves; the log keeps them for -vv runs.
    for finding in result.errors + result.warnings:
        log.debug("%s: %s", finding.kind, finding.message)
    log.info(
        "verify finished: %d errors, %d warnings, %d snapshots, %d packs read in %.1f s",
        len(result.errors), len(result.warnings), result.stats.snapshots, result.stats.packs_read,
        result.stats.duration_seconds,
    )
