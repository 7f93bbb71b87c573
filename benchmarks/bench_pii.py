"""Measure the throughput of the streaming PII scan on a generated JSONL file.

The file looks like preference data: one JSON object per line with a prompt, a chosen
and a rejected answer, scores, a timestamp and a small float array. About one line in
200 contains an e-mail address or a phone number, so the detectors' validators run too.
The file is written once to `--workdir` (a temporary directory by default). The timed
part reads it in `--chunk-kb` pieces, as a snapshot's reader thread does, and feeds
them to one FileScanner. The first read warms the page cache, and the best of
`--repeats` runs is reported, so the number is the scan's CPU cost, not the disk's.

Usage: python benchmarks/bench_pii.py [--size-mb 1024] [--chunk-kb 1024] [--repeats 1] [--gzip]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

from casbak.audit.pii import FileScanner

WORDS = (
    "the model should answer the question clearly and avoid harmful content while staying helpful "
    "assistant human prompt response preference chosen rejected reward score explain why this is "
    "better because it follows instructions version 1.2.3 at 2024-05-01T10:20:30Z with 42 tokens"
).split()
# Fake identifiers on reserved-looking but reportable domains and numbers, no real person.
PLANTED = ("write to {name}@mailhost.io", "call +1 415 555 {number:04d}", "office (212) 555-{number:04d}")


def make_line(rng: random.Random, index: int) -> bytes:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 160)))
    if index % 200 == 0:
        text += " " + rng.choice(PLANTED).format(name=f"user{index}", number=index % 10000)
    record = {
        "id": index,
        "prompt": text[: len(text) // 3],
        "chosen": text[len(text) // 3 :],
        "rejected": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))),
        "score": round(rng.random(), 6),
        "embedding": [round(rng.uniform(-1, 1), 7) for _ in range(8)],
        "created": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z",
    }
    return json.dumps(record).encode() + b"\n"


def generate(path: Path, size: int, compress: bool) -> int:
    """Write about `size` bytes of JSONL (before compression); return the exact size."""
    rng = random.Random(1234)
    written = 0
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        index = 0
        while written < size:
            block = b"".join(make_line(rng, index + i) for i in range(1000))
            index += 1000
            handle.write(block)
            written += len(block)
    return written


def scan_file(path: Path, chunk_size: int) -> tuple[float, dict[str, int]]:
    scanner = FileScanner(str(path))
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while True:
            chunk = handle.read(chunk_size)
            if not chunk:
                break
            scanner.feed(chunk)
    findings = scanner.finish()
    elapsed = time.perf_counter() - started
    return elapsed, {name: hits.count for name, hits in findings.hits.items()}


def machine(load: float) -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}, 1-minute load average {load:.1f} before the scan"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="uncompressed JSONL size in MiB (default 1024)")
    parser.add_argument("--chunk-kb", type=int, default=1024, help="bytes fed per call, in KiB (default 1024)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs; the best is reported (default 1)")
    parser.add_argument("--gzip", action="store_true", help="write and scan a .jsonl.gz file instead")
    parser.add_argument("--workdir", help="directory for the generated file (default: a temporary directory)")
    args = parser.parse_args()

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="casbak-bench-pii-"))
    path = workdir / ("bench.jsonl.gz" if args.gzip else "bench.jsonl")
    try:
        size = generate(path, args.size_mb << 20, args.gzip)
        if path.stat().st_size < (2 << 30):
            path.read_bytes()  # warm the page cache
        load = os.getloadavg()[0]
        best = None
        counts: dict[str, int] = {}
        for _ in range(args.repeats):
            elapsed, counts = scan_file(path, args.chunk_kb << 10)
            best = elapsed if best is None else min(best, elapsed)
        rate = size / best / 1e6
        print(f"machine: {machine(load)}")
        print(f"scanned {size / 1e6:.0f} MB of JSONL{' (gzip)' if args.gzip else ''} in {best:.1f} s: {rate:.1f} MB/s")
        print(f"matches per detector: {json.dumps(counts, sort_keys=True)}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
