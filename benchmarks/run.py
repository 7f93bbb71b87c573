"""Benchmark casbak against restic and BorgBackup on a generated week of alignment data.

One run measures, alternating the order of the tools at every step so that none of them
always gets the warmest page cache or the quietest machine:

- week: day-0 snapshot, the snapshot of each later day, repository size after each day,
  and the restore of the last day (verified byte for byte after timing);
- pipeline limit: `zstd -3 -T2` and `b3sum` over the concatenated day-0 files, the work
  every deduplicating, compressing backup must do at least once per byte;
- small files: one snapshot of N files of 1-10 KB, then a snapshot with nothing changed;
- large file: one file of float16 weights of the given size;
- chunk-size sweep (casbak only): the same week into repositories with other average
  chunk sizes, reporting repository size, index size and throughput.

Usage: python benchmarks/run.py --size-mb 300 --small-files 20000 --large-gb 1 --out results
"""

from __future__ import annotations

import argparse
import filecmp
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tools import Measurement, Tool, directory_bytes, has_gnu_time, tool_version, use_casbak_source  # noqa: E402
from generate import MB, WeekGenerator, default_corpus, tensor_bytes  # noqa: E402
from rows import RowMaker, load_corpus  # noqa: E402
from report import write_report  # noqa: E402

log = logging.getLogger("benchmarks.run")

TOOLS = ("casbak", "restic", "borg")


def rotated(names: tuple[str, ...], step: int) -> list[str]:
    """Return `names` rotated by `step`, so each tool goes first in turn."""
    shift = step % len(names)
    return list(names[shift:] + names[:shift])


def record(measurement: Measurement) -> dict:
    return {"wall": round(measurement.wall_seconds, 3), "user": round(measurement.user_seconds, 3),
            "system": round(measurement.system_seconds, 3), "rss_kib": measurement.rss_kib,
            "ok": measurement.ok, "error": "" if measurement.ok else measurement.stderr_tail[-500:]}


def trees_equal(left: Path, right: Path) -> bool:
    """Compare two directory trees file by file, content included."""
    for folder, _, files in os.walk(left):
        relative = Path(folder).relative_to(left)
        for name in files:
            other = right / relative / name
            if not other.is_file() or not filecmp.cmp(Path(folder) / name, other, shallow=False):
                log.error("restore differs from the source at %s", relative / name)
                return False
    return sum(len(f) for _, _, f in os.walk(left)) == sum(len(f) for _, _, f in os.walk(right))


def pipeline_limit(source: Path) -> dict:
    """Time zstd -3 -T2 and b3sum over the concatenated files of `source`, alone and together."""
    if not (shutil.which("zstd") and shutil.which("b3sum")):
        return {"error": "zstd or b3sum is not installed (Debian packages zstd and b3sum)"}
    concatenate = f"find {source} -type f -print0 | sort -z | xargs -0 cat"
    commands = {
        "zstd": f"{concatenate} | zstd -3 -T2 -q -c > /dev/null",
        "b3sum": f"{concatenate} | b3sum > /dev/null",
        "both": f"{concatenate} | tee >(b3sum > /dev/null) | zstd -3 -T2 -q -c > /dev/null",
    }
    results = {}
    for name, command in commands.items():
        start = time.perf_counter()
        subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)
        results[name] = round(time.perf_counter() - start, 3)
    return results


def make_tools(workdir: Path, names: tuple[str, ...], label: str) -> dict[str, Tool]:
    return {name: Tool(name, workdir / label / name) for name in names}


def setup_all(tools: dict[str, Tool]) -> None:
    for tool in tools.values():
        result = tool.setup()
        if not result.ok:
            raise SystemExit(f"{tool.name} init failed: {result.stderr_tail}")


def run_week(args: argparse.Namespace, workdir: Path, results: dict) -> None:
    source = workdir / "source" / "alignment"
    generator = WeekGenerator(source, args.size_mb, args.seed, args.corpus)
    tools = make_tools(workdir, TOOLS, "week")
    sweep = {kib: Tool("casbak", workdir / "sweep" / f"casbak-{kib}", chunk_avg_kib=kib) for kib in args.sweep_kib}
    setup_all(tools)
    setup_all({str(k): t for k, t in sweep.items()})

    week = results["week"] = {"days": []}
    results["sweep"] = {str(kib): {"days": []} for kib in sweep}
    for day in range(args.days + 1):
        generator.advance()
        total = directory_bytes(source)
        entry = {"day": day, "source_bytes": total, "tools": {}}
        if day == 0:
            week["pipeline"] = pipeline_limit(source)
            log.info("pipeline limit on %.1f MB: %s", total / MB, week["pipeline"])
        for name in rotated(TOOLS, day):
            measurement = tools[name].snapshot(source)
            entry["tools"][name] = {**record(measurement), "repository_bytes": tools[name].repository_bytes()}
            log.info("day %d %s: %.2f s, %d KiB RSS", day, name, measurement.wall_seconds, measurement.rss_kib)
        week["days"].append(entry)

        for kib, tool in sweep.items():
            measurement = tool.snapshot(source)
            results["sweep"][str(kib)]["days"].append({**record(measurement), "day": day, "source_bytes": total,
                                                       "repository_bytes": tool.repository_bytes(),
                                                       "index_bytes": tool.index_bytes()})
            log.info("sweep %d KiB day %d: %.2f s", kib, day, measurement.wall_seconds)
        save(results, args.out)

    week["casbak_index_bytes"] = tools["casbak"].index_bytes()
    week["restore"] = {}
    for name in rotated(TOOLS, args.days + 1):
        target = workdir / "restore" / name
        measurement, mirrored = tools[name].restore(source, target)
        same = measurement.ok and trees_equal(source, mirrored)
        week["restore"][name] = {**record(measurement), "verified": same}
        log.info("restore %s: %.2f s, verified %s", name, measurement.wall_seconds, same)
        shutil.rmtree(target)
    week["restore"]["copy_limit"] = copy_limit(source, workdir / "restore" / "copy")
    save(results, args.out)


def copy_limit(source: Path, target: Path) -> float:
    """Time `cp -a` of `source`: the cost of writing the restored bytes without any backup work."""
    start = time.perf_counter()
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    elapsed = time.perf_counter() - start
    shutil.rmtree(target)
    return round(elapsed, 3)


def write_small_files(root: Path, count: int, seed: int, corpus_dir: Path) -> int:
    """Write `count` text files of 1-10 KB in folders of 1000 and return their total size."""
    import random

    rng = random.Random(seed)
    maker = RowMaker(load_corpus(corpus_dir), rng)
    total = 0
    for index in range(count):
        folder = root / f"batch-{index // 1000:04d}"
        if index % 1000 == 0:
            folder.mkdir(parents=True)
        size = rng.randint(1000, 10_000)
        text = ""
        while len(text) < size:
            text += json.dumps(maker.row(f"s-{index}")) + "\n"
        data = text.encode()[:size]
        (folder / f"item-{index:06d}.json").write_bytes(data)
        total += len(data)
    return total


def write_large_file(path: Path, gigabytes: float, seed: int) -> int:
    """Write one file of float16 weights, 64 MiB of fresh values at a time."""
    piece = 64 * 1024 * 1024
    total = int(gigabytes * 1000**3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        written = 0
        while written < total:
            data = tensor_bytes(seed, "large", written // piece, piece)[: total - written]
            handle.write(data)
            written += len(data)
    return total


def run_single_tree(label: str, source: Path, total: int, workdir: Path, step: int, results: dict, repeat: bool) -> None:
    """Snapshot `source` once with each tool into fresh repositories, and again if `repeat`."""
    tools = make_tools(workdir, TOOLS, label)
    setup_all(tools)
    case = results[label] = {"source_bytes": total, "pipeline": pipeline_limit(source), "first": {}, "unchanged": {}}
    for name in rotated(TOOLS, step):
        case["first"][name] = {**record(tools[name].snapshot(source)), "repository_bytes": tools[name].repository_bytes()}
        log.info("%s %s: %s", label, name, case["first"][name])
    if repeat:
        for name in rotated(TOOLS, step + 1):
            case["unchanged"][name] = record(tools[name].snapshot(source))
            log.info("%s unchanged %s: %s", label, name, case["unchanged"][name])
    for tool in tools.values():
        shutil.rmtree(tool.workdir)


def export_casbak(reference: str, destination: Path) -> str:
    """Export commit `reference` of this repository to `destination`; return the commit id.

    Benchmarking a commit rather than the working tree keeps a run repeatable while other
    people edit the checkout, and names exactly which code produced the numbers.
    """
    repository = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(repository), "rev-parse", "--verify", reference + "^{commit}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    destination.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(repository), "archive", commit, "casbak"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)
    # Compile bytecode as pip does on install. Without it, and with PYTHONDONTWRITEBYTECODE
    # set, every casbak command would compile its modules again (about 0.07 s of CPU here).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(destination)], check=True, stdout=subprocess.DEVNULL)
    return commit


def machine_info() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as handle:
        memory_kib = int(handle.readline().split()[1])
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(memory_kib / 1024**2, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "rss_source": "GNU time -v" if has_gnu_time() else "getrusage(RUSAGE_CHILDREN)",
            "versions": {name: tool_version(name) for name in ("casbak", "restic", "borg", "zstd", "b3sum")},
            "loadavg_start": os.getloadavg()}


def save(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1000, help="Size of day 0 in MB (10^6 bytes).")
    parser.add_argument("--days", type=int, default=7, help="Days after day 0.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the data generator.")
    parser.add_argument("--small-files", type=int, default=100_000, help="Files in the small-file case (0 skips it).")
    parser.add_argument("--large-gb", type=float, default=4, help="Size of the large-file case in GB (0 skips it).")
    parser.add_argument("--sweep-kib", type=int, nargs="*", default=[16, 32, 64, 256, 512, 1024],
                        help="Average chunk sizes in KiB for the casbak sweep; 128 KiB is the week's casbak run.")
    parser.add_argument("--corpus", type=Path, default=None, help="Corpus directory that seeds the data (default: tests.conftest.CORPUS).")
    parser.add_argument("--workdir", type=Path, default=None, help="Scratch directory (default: a new temporary one, removed at the end).")
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"), help="Directory for results.json and results.md.")
    parser.add_argument("--casbak-ref", default="HEAD",
                        help="Git commit of casbak to benchmark, exported to the work directory; `installed` runs the installed package.")
    parser.add_argument("--skip-week", action="store_true", help="Run only the small-file and large-file cases.")
    args = parser.parse_args(argv)
    args.corpus = args.corpus or default_corpus()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for tool in ("restic", "borg"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run `apt-get install -y restic borgbackup`")

    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="casbak-bench-")) if temporary else args.workdir
    casbak_commit = "installed package"
    if args.casbak_ref != "installed":
        source_tree = workdir / "casbak-src"
        casbak_commit = export_casbak(args.casbak_ref, source_tree)
        use_casbak_source(source_tree)
    results: dict = {"machine": machine_info(), "casbak_commit": casbak_commit, "arguments": {k: str(v) for k, v in vars(args).items()},
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    try:
        if not args.skip_week:
            run_week(args, workdir, results)
            shutil.rmtree(workdir / "week")
            shutil.rmtree(workdir / "sweep", ignore_errors=True)
        if args.small_files > 0:
            source = workdir / "small" / "files"
            total = write_small_files(source, args.small_files, args.seed, args.corpus)
            run_single_tree("small_files", source, total, workdir, 1, results, repeat=True)
            shutil.rmtree(source)
        if args.large_gb > 0:
            source = workdir / "large" / "data"
            total = write_large_file(source / "weights.bin", args.large_gb, args.seed)
            run_single_tree("large_file", source, total, workdir, 2, results, repeat=False)
            shutil.rmtree(source)
    finally:
        results["machine"]["loadavg_end"] = os.getloadavg()
        save(results, args.out)
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)

    markdown = write_report(results)
    (args.out / "results.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
