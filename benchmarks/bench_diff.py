"""Time `casbak diff` of two snapshots of a large tree that differ in a few files.

The tree has `--files` small files (100 directories of 10 subdirectories by default).
After a first snapshot, `--changes` files in different directories are rewritten and a
second snapshot is taken. The script then times the diff of the two snapshots next to
a full listing of one snapshot (`catalog.walk` over the whole tree). A diff that did
not skip equal subtrees would have to do at least that much on each side.

Both timings start after the repository is opened and its index loaded, and each is
the best of `--repeats` runs. The script prints one markdown table row.

Usage: python benchmarks/bench_diff.py [--files 100000] [--changes 10] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from casbak.catalog import walk
from casbak.crypto import KdfParams
from casbak.operations.diff import diff_snapshots
from casbak.operations.snapshot import create_snapshot
from casbak.store.repository import Repository

PASSWORD = b"benchmark-password-not-secret"
TOP_DIRECTORIES = 100
SUBDIRECTORIES = 10


def build_tree(root: Path, files: int) -> list[Path]:
    """Create `files` small files spread evenly over TOP_DIRECTORIES x SUBDIRECTORIES."""
    per_directory = max(1, files // (TOP_DIRECTORIES * SUBDIRECTORIES))
    paths = []
    for top in range(TOP_DIRECTORIES):
        for sub in range(SUBDIRECTORIES):
            directory = root / f"shard{top:03d}" / f"part{sub:02d}"
            directory.mkdir(parents=True)
            for number in range(per_directory):
                path = directory / f"row{number:04d}.json"
                path.write_bytes(b'{"id": "%d-%d-%d", "label": 0}\n' % (top, sub, number))
                paths.append(path)
    return paths


def edit_files(paths: list[Path], changes: int) -> None:
    """Rewrite `changes` files spread over the whole tree, so each sits in another directory."""
    step = max(1, len(paths) // changes)
    for path in paths[::step][:changes]:
        path.write_bytes(path.read_bytes().replace(b'"label": 0', b'"label": 1'))


def best_time(action: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        value = action()
        best = min(best, time.perf_counter() - started)
    return best, value


def run(files: int, changes: int, workdir: Path, repeats: int) -> str:
    source = workdir / "tree"
    repository_path = workdir / "repo"
    Repository.init(str(repository_path), PASSWORD, kdf=KdfParams(n=2**14))
    repository = Repository.open(str(repository_path), PASSWORD)

    paths = build_tree(source, files)
    started = time.perf_counter()
    first = create_snapshot(repository, [str(source)]).manifest
    snapshot_seconds = time.perf_counter() - started
    edit_files(paths, changes)
    second = create_snapshot(repository, [str(source)]).manifest

    # A fresh open with the index loaded up front, so neither timing pays for it.
    repository = Repository.open(str(repository_path), PASSWORD)
    index_started = time.perf_counter()
    len(repository.index)
    index_seconds = time.perf_counter() - index_started

    diff_seconds, result = best_time(lambda: diff_snapshots(repository, first, second), repeats)
    walk_seconds, entries = best_time(lambda: sum(1 for _ in walk(repository, first.tree)), repeats)
    modified = result.summary.modified
    return (
        f"| {len(paths):,} | {modified} | {diff_seconds * 1000:.1f} ms | {result.summary.trees_read} "
        f"| {walk_seconds * 1000:.0f} ms | {entries:,} | {walk_seconds / diff_seconds:.0f}x "
        f"| {index_seconds * 1000:.0f} ms | {snapshot_seconds:.0f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="number of files in the tree")
    parser.add_argument("--changes", type=int, default=10, help="number of files changed between the snapshots")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each operation; the best is reported")
    parser.add_argument("--workdir", type=Path, default=None, help="work directory (default: a new temporary one)")
    arguments = parser.parse_args()

    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="casbak-bench-diff-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        row = run(arguments.files, arguments.changes, workdir, arguments.repeats)
    finally:
        if arguments.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores")
    print("| files | files changed | diff | trees read by diff | walk of one snapshot | entries walked | walk / diff | index load | first snapshot |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(row)


if __name__ == "__main__":
    main()
