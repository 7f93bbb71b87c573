"""`--read-data`: download packs and check every byte against the pack name and the index.

A pack is checked at three levels. Its name must be the BLAKE3 of its bytes. Its header
must parse and list the same objects as the index. Every indexed object must open
(authenticate, decompress) to the plaintext length and digest that the index records.
"""

from __future__ import annotations

import logging
import math
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import blake3

from casbak.errors import ObjectNotFound, UsageError
from casbak.operations.verify.findings import (
    OBJECT_DAMAGED,
    PACK_HASH_MISMATCH,
    PACK_HEADER_DAMAGED,
    PACK_HEADER_MISMATCH,
    Finding,
    VerifyResult,
)
from casbak.operations.verify.objects import DAMAGE_ERRORS, open_entry
from casbak.operations.verify.structure import RepositoryState
from casbak.store.index import PackInfo
from casbak.store.packs import PackEntry, pack_path, parse_pack_header
from casbak.store.repository import Repository

log = logging.getLogger(__name__)

_GROUP = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class Subset:
    """Pack selection of `--read-data-subset`: the n-th of m groups, or a random percentage."""

    group: Optional[int] = None
    groups: Optional[int] = None
    percent: Optional[float] = None

    def select(self, pack_ids: list[str]) -> list[str]:
        ordered = sorted(pack_ids)
        if self.percent is not None:
            count = min(len(ordered), math.ceil(len(ordered) * self.percent / 100))
            return sorted(random.SystemRandom().sample(ordered, count))
        assert self.group is not None and self.groups is not None
        # The group depends only on the pack id, so runs 1/m .. m/m cover every pack once,
        # and a pack keeps its group when other packs are added or removed.
        return [pack_id for pack_id in ordered if int(pack_id[:16], 16) % self.groups == self.group - 1]


def parse_subset(text: str) -> Subset:
    """Parse `n/m` (1 <= n <= m) or `P%` (0 < P <= 100); raise UsageError otherwise."""
    group = _GROUP.match(text)
    if group:
        number, groups = int(group.group(1)), int(group.group(2))
        if not 1 <= number <= groups:
            raise UsageError(f"read-data subset {text!r}: n/m needs 1 <= n <= m, such as 1/7")
        return Subset(group=number, groups=groups)
    percent = _PERCENT.match(text)
    if percent:
        value = float(percent.group(1))
        if not 0 < value <= 100:
            raise UsageError(f"read-data subset {text!r}: the percentage must be above 0 and at most 100")
        return Subset(percent=value)
    raise UsageError(f"read-data subset {text!r}: expected n/m (such as 2/7) or a percentage (such as 10%)")


@dataclass
class PackReport:
    """Findings and counters of reading one pack, merged into the result by the calling thread."""

    pack_id: str
    bytes_read: int = 0
    objects_read: int = 0
    findings: list[Finding] = field(default_factory=list)
    damaged: list[tuple[bytes, Finding]] = field(default_factory=list)


def read_packs(
    repository: Repository,
    state: RepositoryState,
    result: VerifyResult,
    subset: Optional[Subset],
    workers: int,
) -> None:
    """Read the selected indexed packs that exist and record every damaged object."""
    candidates = sorted(pack_id for pack_id in state.packs if pack_id in state.present)
    selected = subset.select(candidates) if subset else candidates
    log.info("reading %d of %d packs", len(selected), len(candidates))
    # Each worker keeps one whole pack in memory (the config's pack size, 16 MiB by default).
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="casbak-verify") as pool:
        for report in pool.map(lambda pack_id: _check_pack(repository, state, pack_id), selected):
            result.stats.packs_read += 1
            result.stats.bytes_read += report.bytes_read
            result.stats.objects_read += report.objects_read
            result.errors.extend(report.findings)
            for digest, finding in report.damaged:
                state.mark_damaged(digest, finding)


def _check_pack(repository: Repository, state: RepositoryState, pack_id: str) -> PackReport:
    pack = state.packs[pack_id]
    report = PackReport(pack_id)
    try:
        data = repository.backend.read(pack_path(pack.kind, pack_id))
    except ObjectNotFound:
        log.warning("pack %s: deleted while verify was running; not read", pack_id[:12])
        return report
    report.bytes_read = len(data)
    # The structure check already reported a pack whose size differs from the index and
    # attributed the objects past its end. Here only the objects still inside it are read.
    if len(data) == pack.size:
        _check_pack_name_and_header(repository, pack, data, report)
    for entry in pack.entries:
        if entry.offset + entry.length <= len(data):
            _check_object(repository, state, pack_id, entry, data, report)
    return report


def _check_pack_name_and_header(repository: Repository, pack: PackInfo, data: bytes, report: PackReport) -> None:
    pack_id = pack.pack_id
    if blake3.blake3(data).hexdigest() != pack_id:
        report.findings.append(
            Finding(PACK_HASH_MISMATCH, f"pack {pack_id[:12]}: content does not match its name (bytes were altered)", pack=pack_id)
        )
    try:
        kind, entries = parse_pack_header(pack_id, data, len(data), repository.sealer)
    except DAMAGE_ERRORS as exc:
        report.findings.append(Finding(PACK_HEADER_DAMAGED, f"{exc}", pack=pack_id))
        return
    if kind != pack.kind or set(entries) != set(pack.entries):
        report.findings.append(
            Finding(
                PACK_HEADER_MISMATCH,
                f"pack {pack_id[:12]}: header lists {len(entries)} {kind} objects, the index lists "
                f"{len(pack.entries)} {pack.kind} objects, and they differ",
                pack=pack_id,
            )
        )


def _check_object(
    repository: Repository, state: RepositoryState, pack_id: str, entry: PackEntry, data: bytes, report: PackReport
) -> None:
    report.objects_read += 1
    try:
        open_entry(repository, pack_id, entry, data[entry.offset : entry.offset + entry.length])
    except DAMAGE_ERRORS as exc:
        finding = Finding(OBJECT_DAMAGED, f"{exc}", pack=pack_id, object=entry.digest.hex())
        report.findings.append(finding)
        if state.owns(pack_id, entry.digest):
            report.damaged.append((entry.digest, finding))
