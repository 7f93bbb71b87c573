"""Measure what the per-file SHA-256 adds to a snapshot of one large file.

The file is random bytes (incompressible, so zstd does little and chunking, hashing and
encryption dominate), written once to `--workdir`. Each run creates a fresh encrypted
local repository with the default chunker and pack settings, once with `file_sha256`
on and once off, and times `create_snapshot` of the file. Runs alternate between the
two settings so that page-cache and thermal effects hit both alike, and the median of
`--repeats` runs per setting is reported, with the raw hashlib SHA-256 and BLAKE3
throughput of the same machine for comparison.

Usage: python benchmarks/bench_sha256.py [--size-mb 300] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import blake3

from casbak.crypto import KdfParams
from casbak.operations.snapshot import create_snapshot
from casbak.store.config import RepositoryConfig
from casbak.store.repository import Repository

PASSWORD = b"benchmark password"


def write_input(directory: Path, size_mb: int) -> Path:
    path = directory / "source" / "large.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for _ in range(size_mb):
            handle.write(os.urandom(1024 * 1024))
    return path


def time_snapshot(workdir: Path, source: Path, file_sha256: bool, run: int) -> tuple[float, float]:
    """Return (wall seconds, CPU seconds of all threads of this process) of one snapshot."""
    repo = workdir / f"repo-{file_sha256}-{run}"
    Repository.init(str(repo), PASSWORD, config=RepositoryConfig(file_sha256=file_sha256), kdf=KdfParams(n=2**10))
    repository = Repository.open(str(repo), PASSWORD)
    started, cpu_started = time.perf_counter(), time.process_time()
    create_snapshot(repository, [str(source.parent)])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    shutil.rmtree(repo)
    return elapsed, cpu


def hash_throughput(path: Path) -> dict[str, float]:
    """Return MB/s of one-threaded SHA-256 and BLAKE3 over the file, read in 1 MiB pieces."""
    rates = {}
    for name, factory in (("sha256", hashlib.sha256), ("blake3", blake3.blake3)):
        digest = factory()
        size = 0
        started = time.perf_counter()
        with open(path, "rb") as handle:
            while piece := handle.read(1024 * 1024):
                digest.update(piece)
                size += len(piece)
        rates[name] = size / 1e6 / (time.perf_counter() - started)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="casbak-bench-sha256-"))
    source = write_input(workdir, args.size_mb)
    times: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    for run in range(args.repeats):
        for setting in (False, True):
            elapsed, cpu_seconds = time_snapshot(workdir, source, setting, run)
            times[setting].append(elapsed)
            cpu[setting].append(cpu_seconds)
    rates = hash_throughput(source)
    shutil.rmtree(workdir)
    without, with_sha = statistics.median(times[False]), statistics.median(times[True])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"file: {args.size_mb} MiB of random bytes, {args.repeats} runs per setting (median)")
    print(f"snapshot without sha256: {without:.2f} s  runs {['%.2f' % t for t in times[False]]}")
    print(f"snapshot with sha256:    {with_sha:.2f} s  runs {['%.2f' % t for t in times[True]]}")
    print(f"difference: {with_sha - without:+.2f} s ({(with_sha / without - 1) * 100:+.1f} %)")
    cpu_without, cpu_with = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(f"CPU seconds (all threads, median): without {cpu_without:.2f} s, with {cpu_with:.2f} s, {cpu_with - cpu_without:+.2f} s")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"one-thread hashing: sha256 {rates['sha256']:.0f} MB/s, blake3 {rates['blake3']:.0f} MB/s")


if __name__ == "__main__":
    main()
