"""Profile a casbak day-0 snapshot, its restore and a small-file snapshot with py-spy.

py-spy samples the threads that it judges active, and time spent in C code that released
the GIL (zstd, AES-GCM, BLAKE3, file reads) is counted under the Python function that
called it. Its idle detection misses threads blocked on thread-pool queues and locks, so
those samples are put in a bucket of their own. The raw profiles are collapsed stacks, which speedscope.app and flamegraph.pl open.

Usage: python benchmarks/hotspots.py --size-mb 200 --out profile-results
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tools import PASSWORD, casbak_command, use_casbak_source  # noqa: E402
from generate import WeekGenerator, default_corpus  # noqa: E402
from run import export_casbak, write_small_files  # noqa: E402

log = logging.getLogger("benchmarks.hotspots")

FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Buckets of work. Without --native, py-spy shows a call into C (zstd, AES-GCM, BLAKE3,
# FastCDC) as time in the Python function that made it, so the innermost frame names the
# work: Sealer.seal's own time is zstd compression, because it calls the compressor directly.
IMPORT_FRAME = re.compile(r"_find_and_load|SourceLoader|<frozen importlib")
# py-spy's idle detection misses threads blocked in these calls, so they are named as waiting.
WAIT_FRAME = re.compile(r"^(_worker \(concurrent|Condition\.(wait|notify)|Semaphore\.(acquire|release)|Future\.result|Event\.wait)")
BUCKETS = [
    ("compression (zstd, in Sealer.seal)", re.compile(r"Sealer\.seal|ZstdCompressor|_compressor")),
    ("decompression (zstd)", re.compile(r"_decompress|decompress")),
    ("encryption and decryption (AES-GCM)", re.compile(r"Cipher\.|AESGCM|aead")),
    ("hashing (BLAKE3)", re.compile(r"Hasher|blake3")),
    ("chunking (FastCDC)", re.compile(r"Chunker|fastcdc")),
    ("trees and msgpack", re.compile(r"msgpack|Tree\.|Entry\.|tree\.py")),
    ("index lookups and encoding", re.compile(r"index\.py")),
    ("file and pack writes", re.compile(r"_write_all|\.write \(|_write\w* \(|PackBuilder|fsync")),
    ("file and pack reads", re.compile(r"_read\w* \(|\.read \(|read_metadata|readinto|iter_objects|_open_for_reading")),
]


def parse_frame(frame: str) -> str:
    """Return `function (file)` of a py-spy frame, without the line number."""
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    short = re.sub(r"^.*/(site-packages|casbak-src|lib/python3\.\d+)/", "", match.group("file"))
    return f"{match.group('function')} ({short})"


def summarize(collapsed: Path, top: int = 15, main_thread_only: bool = False) -> dict:
    """Rank functions by self and inclusive share of the samples in a collapsed-stack file.

    With `main_thread_only`, only stacks rooted at the `python -c` entry point count: in a
    profile recorded with --idle these show where the main thread spends wall-clock time,
    waiting included, while worker threads (rooted at Thread._bootstrap) are left out.
    """
    own: collections.Counter[str] = collections.Counter()
    casbak_inclusive: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(f) for f in stack.split(";")]
        if main_thread_only and not frames[0].startswith("<module> (<string>"):
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
            if "(casbak/" in name and "cli/" not in name:
                casbak_inclusive[name] += count
        buckets[bucket_of(frames)] += count
    share = lambda counter: [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]  # noqa: E731
    return {"samples": total, "self": share(own), "inclusive_casbak": share(casbak_inclusive),
            "inclusive": share(inclusive), "buckets": share(buckets)}


def bucket_of(frames: list[str]) -> str:
    """Name the kind of work of one stack: imports anywhere on it, else a wait, else its innermost known frame."""
    if any(IMPORT_FRAME.search(frame) for frame in frames):
        return "interpreter start and imports"
    if WAIT_FRAME.search(frames[-1]):
        return "waiting on thread-pool queues and locks"
    for frame in reversed(frames):
        for name, pattern in BUCKETS:
            if pattern.search(frame):
                return name
    return "other Python"


def record(command: list[str], output: Path, env: dict[str, str], rate: int, idle: bool) -> None:
    """Run `command` under py-spy and write its collapsed stacks to `output`; `idle` keeps waiting threads."""
    profiler = shutil.which("py-spy")
    if profiler is None:
        raise SystemExit("py-spy is not installed: run `pip install py-spy`")
    subprocess.run([profiler, "record", "--rate", str(rate), "--format", "raw", "--function",
                    *(["--idle"] if idle else []), "-o", str(output), "--"] + command, env=env, check=True)


def _fresh_repository_command(command: list[str], workdir: Path, env: dict[str, str]) -> list[str]:
    """Return `command` aimed at a new empty repository, so a second snapshot run repeats the first's work."""
    position = command.index("-r") + 1
    fresh = Path(command[position] + "-again")
    shutil.rmtree(fresh, ignore_errors=True)
    subprocess.run(casbak_command() + ["-q", "-r", str(fresh), "init"], env=env, check=True)
    return command[:position] + [str(fresh)] + command[position + 1 :]


def prepare_runs(args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> dict[str, list[str]]:
    """Generate the data, create the repositories and return the casbak commands to profile, in order."""
    source = workdir / "alignment"
    WeekGenerator(source, args.size_mb, 1, args.corpus).advance()
    repository = str(workdir / "repository")
    subprocess.run(casbak_command() + ["-q", "-r", repository, "init"], env=env, check=True)
    runs = {
        "snapshot": casbak_command() + ["-q", "-r", repository, "snapshot", str(source)],
        # The restore reads the snapshot that the run before it wrote.
        "restore": casbak_command() + ["-q", "-r", repository, "restore", "latest",
                                       "--target", str(workdir / "restored"), "--path", str(source)],
    }
    if args.small_files > 0:
        small = workdir / "small"
        write_small_files(small, args.small_files, 1, args.corpus)
        small_repository = str(workdir / "small-repository")
        subprocess.run(casbak_command() + ["-q", "-r", small_repository, "init"], env=env, check=True)
        runs["small_files"] = casbak_command() + ["-q", "-r", small_repository, "snapshot", str(small)]
    return runs


def profile_runs(runs: dict[str, list[str]], args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> dict:
    """Record each run twice: once for CPU hot spots, once with --idle for the main thread's wall time."""
    summary: dict = {}
    for name, command in runs.items():
        output = args.out / f"{name}.collapsed.txt"
        record(command, output, env, args.rate, idle=False)
        summary[name] = summarize(output)
        log.info("%s: %s", name, json.dumps(summary[name]["buckets"]))

        shutil.rmtree(workdir / "restored", ignore_errors=True)
        again = command if name == "restore" else _fresh_repository_command(command, workdir, env)
        waiting = args.out / f"{name}.idle.collapsed.txt"
        record(again, waiting, env, args.rate, idle=True)
        summary[name + "_main_thread_wall"] = summarize(waiting, main_thread_only=True)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=200, help="Size of the generated day 0 in MB.")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second.")
    parser.add_argument("--casbak-ref", default="HEAD", help="Git commit of casbak to profile; `installed` uses the installed package.")
    parser.add_argument("--small-files", type=int, default=20_000, help="Files of 1-10 KB for a third profiled snapshot (0 skips it).")
    parser.add_argument("--corpus", type=Path, default=None, help="Corpus directory that seeds the data (default: tests.conftest.CORPUS).")
    parser.add_argument("--out", type=Path, default=Path("profile-results"), help="Directory for the profiles and summary.json.")
    args = parser.parse_args(argv)
    args.corpus = args.corpus or default_corpus()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="casbak-profile-") as scratch:
        workdir = Path(scratch)
        commit = "installed package"
        if args.casbak_ref != "installed":
            commit = export_casbak(args.casbak_ref, workdir / "casbak-src")
            use_casbak_source(workdir / "casbak-src")
        env = {**os.environ, "CASBAK_PASSWORD": PASSWORD}
        runs = prepare_runs(args, workdir, env)
        summary = {"casbak_commit": commit, "size_mb": args.size_mb, **profile_runs(runs, args, workdir, env)}

    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
