"""`casbak stats`: repository size, snapshot count, deduplication and growth."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional

import typer

from casbak.cli.output import count_of, format_size

if TYPE_CHECKING:
    from casbak.manifest import Manifest
    from casbak.store.repository import Repository

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400
# Small files that are not packs, listed and sized one by one.
METADATA_PREFIXES = ("index", "snapshots", "keys", "forgotten", "locks")


@dataclass
class RepositoryStats:
    """Sizes in bytes; ratios are None when their denominator is zero."""

    snapshots: int
    hosts: list[str]
    first_snapshot: Optional[str]
    last_snapshot: Optional[str]
    repository_bytes: int
    pack_bytes: int
    data_pack_bytes: int
    tree_pack_bytes: int
    metadata_bytes: int
    packs: int
    objects: int
    unique_bytes: int
    unique_stored_bytes: int
    logical_bytes: int
    dedup_ratio: Optional[float]
    compression_ratio: Optional[float]
    growth_bytes_per_day: Optional[float]


def collect_stats(repository: Repository) -> RepositoryStats:
    """Compute repository statistics from the index, the manifests and metadata file sizes."""
    from casbak.catalog import load_manifests
    from casbak.store.packs import KIND_DATA, KIND_TREE

    manifests = load_manifests(repository)
    packs = repository.index.packs()
    data_pack_bytes = sum(size for _id, kind, size in packs if kind == KIND_DATA)
    tree_pack_bytes = sum(size for _id, kind, size in packs if kind == KIND_TREE)
    unique_bytes, unique_stored = _object_sizes(repository)
    metadata = _metadata_bytes(repository)
    pack_bytes = data_pack_bytes + tree_pack_bytes
    logical = sum(int(m.stats.get("bytes_total", 0)) for m in manifests)
    return RepositoryStats(
        snapshots=len(manifests),
        hosts=sorted({m.hostname for m in manifests}),
        first_snapshot=manifests[0].time_iso if manifests else None,
        last_snapshot=manifests[-1].time_iso if manifests else None,
        repository_bytes=pack_bytes + metadata,
        pack_bytes=pack_bytes,
        data_pack_bytes=data_pack_bytes,
        tree_pack_bytes=tree_pack_bytes,
        metadata_bytes=metadata,
        packs=len(packs),
        objects=len(repository.index),
        unique_bytes=unique_bytes,
        unique_stored_bytes=unique_stored,
        logical_bytes=logical,
        dedup_ratio=_ratio(logical, pack_bytes),
        compression_ratio=_ratio(unique_bytes, unique_stored),
        growth_bytes_per_day=_growth_per_day(manifests),
    )


def _object_sizes(repository: Repository) -> tuple[int, int]:
    """Return (plaintext bytes, stored bytes) summed over every indexed object."""
    raw = stored = 0
    index = repository.index
    for digest in index.digests():
        location = index.lookup(digest)
        if location is not None:
            raw += location.raw_length
            stored += location.length
    return raw, stored


def _metadata_bytes(repository: Repository) -> int:
    total = repository.backend.size("config") if repository.backend.exists("config") else 0
    for prefix in METADATA_PREFIXES:
        for name in repository.backend.list(prefix):
            total += repository.backend.size(name)
    return total


def _ratio(numerator: int, denominator: int) -> Optional[float]:
    return round(numerator / denominator, 3) if denominator else None


def _growth_per_day(manifests: list[Manifest]) -> Optional[float]:
    """Return the stored bytes that snapshots after the first added, per day between first and last."""
    if len(manifests) < 2:
        return None
    days = (manifests[-1].time_ns - manifests[0].time_ns) / 1e9 / SECONDS_PER_DAY
    # A rate over less than a day extrapolates one run's noise, so it is not reported.
    if days < 1:
        return None
    added = sum(int(m.stats.get("data_added_stored", 0)) for m in manifests[1:])
    return round(added / days, 1)


def stats(ctx: typer.Context) -> None:
    """Show repository size, snapshot count, deduplication and compression ratios, and growth."""
    state = ctx.obj
    repository = state.open_repository()
    result = collect_stats(repository)
    if state.json:
        state.emit_json({"schema": "casbak.stats/1", "command": "stats", "repository": repository.backend.url, **asdict(result)})
        return
    if state.quiet:
        return
    growth = f"{format_size(int(result.growth_bytes_per_day))}/day" if result.growth_bytes_per_day is not None else "n/a (needs two snapshots on different days)"
    lines = [
        f"repository:         {repository.backend.url}",
        f"snapshots:          {result.snapshots} from {count_of(len(result.hosts), 'host')}"
        + (f", {result.first_snapshot[:19]} to {result.last_snapshot[:19]} UTC" if result.snapshots else ""),
        f"repository size:    {format_size(result.repository_bytes)} "
        f"(data packs {format_size(result.data_pack_bytes)}, tree packs {format_size(result.tree_pack_bytes)}, "
        f"metadata {format_size(result.metadata_bytes)})",
        f"logical size:       {format_size(result.logical_bytes)} (all snapshots, as restored)",
        f"unique content:     {format_size(result.unique_bytes)} in {result.objects} objects, {result.packs} packs",
        f"dedup ratio:        {_shown_ratio(result.dedup_ratio)} (logical size / pack size)",
        f"compression ratio:  {_shown_ratio(result.compression_ratio)} (unique content / stored objects)",
        f"growth:             {growth}",
    ]
    typer.echo("\n".join(lines))


def _shown_ratio(value: Optional[float]) -> str:
    return f"{value:.2f}x" if value is not None else "n/a"


def register(app: typer.Typer) -> None:
    app.command("stats")(stats)
