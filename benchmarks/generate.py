"""Generate a week of alignment metadata for benchmarks, seeded from the real corpus.

Day 0 writes a tree of about `size_mb` MB. Every later day changes it the way a training
team's data directory changes overnight:

- preference shards (JSONL) grow by appended rows, and one shard per day gets a run of
  rows in its middle relabelled (chosen and rejected swapped, same byte length);
- Parquet shards: a new shard per day, and one old shard rewritten with relabelled rows;
- reward-model checkpoints in safetensors layout: each day adds a checkpoint that shares
  most tensors with the previous one, and checkpoints older than three days are deleted;
- many small YAML/JSON configs (copies of the real configs with edited values), per-run
  JSON metrics and a growing training log and audit log;
- the training shards copied byte for byte under a second model's folder.

Rows are rebuilt from sentences of the real hh-rlhf and human-eval files, so the text
compresses like real text, not like random bytes. Everything is a pure function of the
seed, size and day, so two runs produce the same bytes.

Usage: python benchmarks/generate.py OUT --size-mb 1000 --days 7 [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import struct
import sys
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from rows import RowMaker, load_corpus, relabel

log = logging.getLogger(__name__)

MB = 1000 * 1000


def default_corpus() -> Path:
    """Return tests.conftest.CORPUS, the corpus directory that the test suite reads."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from tests.conftest import CORPUS
    except ImportError as exc:
        raise SystemExit(f"cannot import tests.conftest to find the corpus ({exc}): pass --corpus DIR") from exc
    return CORPUS

# Share of the day-0 size that each kind of data takes.
SHARE_PREFERENCES = 0.30
SHARE_PARQUET = 0.08
SHARE_CHECKPOINT = 0.40
SHARE_HUMAN_EVAL = 0.02
# The second model's folder holds a copy of the first half of the preference shards.
SHARE_DUPLICATED = 0.15

SHARD_COUNT_TARGET = 5
CHECKPOINTS_KEPT = 3
TENSOR_BYTES = 4 * 1024 * 1024
CHANGED_TENSOR_SHARE = 0.12
RELABEL_SHARE = 0.05
DAILY_APPEND_SHARE = 0.02
CONFIG_RUNS_DAY0 = 150
CONFIG_RUNS_PER_DAY = 15


def write_safetensors(path: Path, tensors: dict[str, bytes], shapes: dict[str, list[int]], metadata: dict[str, str]) -> None:
    """Write tensors in the safetensors layout: u64 header length, JSON header, raw data."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):
        size = len(tensors[name])
        header[name] = {"dtype": "F16", "shape": shapes[name], "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    # Pad the header to a multiple of 4 KiB with spaces (allowed by the format), so a header
    # whose metadata changes keeps every tensor at the same file offset.
    encoded += b" " * (-len(encoded) % 4096)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for name in sorted(tensors):
            handle.write(tensors[name])
    os.replace(tmp, path)


def tensor_bytes(seed: int, name: str, version: int, size: int) -> bytes:
    """Return float16 weights drawn from N(0, 0.02). The same arguments give the same bytes."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), version])
    values = rng.standard_normal(size // 2, dtype=np.float32) * np.float32(0.02)
    return values.astype(np.float16).tobytes()


class WeekGenerator:
    """Writes day 0 of the tree under `root` and applies each later day in place."""

    def __init__(self, root: Path, size_mb: float, seed: int, corpus_dir: Path) -> None:
        self.root = root
        self.size = int(size_mb * MB)
        self.seed = seed
        self.corpus = load_corpus(corpus_dir)
        self.day = -1
        self.shard_bytes = max(MB, int(self.size * SHARE_PREFERENCES / SHARD_COUNT_TARGET))
        self.tensor_count = max(4, int(self.size * SHARE_CHECKPOINT / TENSOR_BYTES))
        self.tensor_versions = {f"model.layers.{i:03d}.weight": 0 for i in range(self.tensor_count)}
        self.next_row = 0

    # Paths of the tree.
    @property
    def prefs_dir(self) -> Path:
        return self.root / "datasets" / "preferences"

    @property
    def parquet_dir(self) -> Path:
        return self.root / "datasets" / "preferences-parquet"

    @property
    def duplicate_dir(self) -> Path:
        return self.root / "models" / "rm-b" / "train-data"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "models" / "rm-a" / "checkpoints"

    def rng(self, *labels: object) -> random.Random:
        return random.Random(f"{self.seed}/{self.day}/" + "/".join(map(str, labels)))

    def advance(self) -> int:
        """Write the next day (day 0 on the first call) and return its number."""
        self.day += 1
        if self.day == 0:
            if self.root.exists():
                shutil.rmtree(self.root)
            self.root.mkdir(parents=True)
            self._write_day0()
        else:
            self._apply_day()
        return self.day

    def _rows(self, count: int, rng: random.Random) -> Iterator[dict]:
        maker = RowMaker(self.corpus, rng)
        for _ in range(count):
            self.next_row += 1
            yield maker.row(f"pref-{self.seed:02d}-{self.next_row:09d}")

    def _append_rows(self, path: Path, budget: int, rng: random.Random) -> int:
        written = 0
        maker = RowMaker(self.corpus, rng)
        with open(path, "a", encoding="utf-8") as handle:
            while written < budget:
                self.next_row += 1
                line = json.dumps(maker.row(f"pref-{self.seed:02d}-{self.next_row:09d}"), ensure_ascii=False) + "\n"
                handle.write(line)
                written += len(line.encode())
        return written

    def _write_day0(self) -> None:
        self.prefs_dir.mkdir(parents=True)
        total = int(self.size * SHARE_PREFERENCES)
        index = 0
        while total > 0:
            budget = min(self.shard_bytes, total)
            total -= self._append_rows(self.prefs_dir / f"train-{index:05d}.jsonl", budget, self.rng("prefs", index))
            index += 1
        self._sync_duplicates()
        self.parquet_dir.mkdir(parents=True)
        parquet_total = int(self.size * SHARE_PARQUET)
        for index in range(SHARD_COUNT_TARGET):
            self._write_parquet_shard(index, parquet_total // SHARD_COUNT_TARGET)
        self._write_human_eval()
        self.checkpoint_dir.mkdir(parents=True)
        self._write_checkpoint()
        for run in range(CONFIG_RUNS_DAY0):
            self._write_run(f"run-d0-{run:04d}")
        self._append_logs()

    def _apply_day(self) -> None:
        self._grow_preferences()
        self._relabel_preferences()
        self._sync_duplicates()
        self._write_parquet_shard(SHARD_COUNT_TARGET + self.day - 1, int(self.size * SHARE_PARQUET / SHARD_COUNT_TARGET / 4))
        self._relabel_parquet()
        self._write_checkpoint()
        for run in range(CONFIG_RUNS_PER_DAY):
            self._write_run(f"run-d{self.day}-{run:04d}")
        self._edit_configs()
        self._append_metrics()
        self._append_logs()

    def _grow_preferences(self) -> None:
        shards = sorted(self.prefs_dir.glob("*.jsonl"))
        last = shards[-1]
        budget = int(self.size * DAILY_APPEND_SHARE)
        if last.stat().st_size + budget > self.shard_bytes * 1.2:
            last = self.prefs_dir / f"train-{len(shards):05d}.jsonl"
        self._append_rows(last, budget, self.rng("append"))

    def _relabel_preferences(self) -> None:
        shards = sorted(self.prefs_dir.glob("*.jsonl"))
        target = shards[self.day % len(shards)]
        lines = target.read_text(encoding="utf-8").splitlines(keepends=True)
        count = max(1, int(len(lines) * RELABEL_SHARE))
        start = (len(lines) - count) // 2
        for i in range(start, start + count):
            lines[i] = json.dumps(relabel(json.loads(lines[i])), ensure_ascii=False) + "\n"
        # Written in place (same inode), as an editor or a pandas to_json on the same path does.
        with open(target, "w", encoding="utf-8") as handle:
            handle.writelines(lines)

    def _sync_duplicates(self) -> None:
        self.duplicate_dir.mkdir(parents=True, exist_ok=True)
        shards = sorted(self.prefs_dir.glob("*.jsonl"))
        copied = 0
        for shard in shards:
            if copied >= self.size * SHARE_DUPLICATED:
                break
            destination = self.duplicate_dir / shard.name
            if not destination.exists() or destination.stat().st_mtime_ns < shard.stat().st_mtime_ns:
                shutil.copyfile(shard, destination)
            copied += shard.stat().st_size

    def _write_parquet_shard(self, index: int, budget: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows: list[dict] = []
        size = 0
        for row in self._rows(10**9, self.rng("parquet", index)):
            rows.append(row)
            size += len(row["chosen"]) + len(row["rejected"]) + 80
            # Aim at the file size, not the row size. Snappy stored this text at about 60% of
            # its size in trial runs (an estimate, so shard sizes are approximate).
            if size * 0.6 >= budget:
                break
        pq.write_table(pa.Table.from_pylist(rows), self.parquet_dir / f"part-{index:05d}.parquet", compression="snappy")

    def _relabel_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        shards = sorted(self.parquet_dir.glob("*.parquet"))
        target = shards[self.day % len(shards)]
        rows = pq.read_table(target).to_pylist()
        count = max(1, int(len(rows) * RELABEL_SHARE))
        start = (len(rows) - count) // 2
        rows[start : start + count] = [relabel(r) for r in rows[start : start + count]]
        pq.write_table(pa.Table.from_pylist(rows), target, compression="snappy")

    def _write_human_eval(self) -> None:
        folder = self.root / "datasets" / "human-eval"
        folder.mkdir(parents=True)
        rng = self.rng("human-eval")
        budget = int(self.size * SHARE_HUMAN_EVAL)
        with open(folder / "eval_instances.jsonl", "w", encoding="utf-8") as handle:
            written = 0
            while written < budget:
                row = dict(rng.choice(self.corpus.eval_rows))
                row["id"] = f"{row.get('id', 'eval')}-r{written}"
                line = json.dumps(row, ensure_ascii=False) + "\n"
                handle.write(line)
                written += len(line.encode())

    def _write_checkpoint(self) -> None:
        rng = self.rng("checkpoint")
        if self.day > 0:
            names = sorted(self.tensor_versions)
            # The last layers and the value head move most during reward-model fine-tuning.
            changed = max(2, int(len(names) * CHANGED_TENSOR_SHARE))
            tail = changed // 2
            for name in names[-tail:] + rng.sample(names[:-tail], changed - tail):
                self.tensor_versions[name] = self.day
        tensors = {n: tensor_bytes(self.seed, n, v, TENSOR_BYTES) for n, v in self.tensor_versions.items()}
        shapes = {n: [1024, TENSOR_BYTES // 2 // 1024] for n in tensors}
        step = 1000 * (self.day + 1)
        folder = self.checkpoint_dir / f"step-{step:07d}"
        folder.mkdir()
        write_safetensors(folder / "model.safetensors", tensors, shapes, {"format": "pt", "step": str(step)})
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": self.day + 1, "best_metric": rng.random()}))
        for old in sorted(self.checkpoint_dir.iterdir())[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old)

    def _write_run(self, run_id: str) -> None:
        rng = self.rng("run", run_id)
        folder = self.root / "models" / rng.choice(["rm-a", "rm-b"]) / "runs" / run_id
        folder.mkdir(parents=True)
        for name, text in rng.sample(self.corpus.configs, k=min(6, len(self.corpus.configs))):
            edited = re.sub(r"(learning_rate|lr|seed|num_train_epochs)(\s*[:=]\s*)[0-9.e-]+",
                            lambda m: f"{m.group(1)}{m.group(2)}{rng.choice(['1e-6', '5e-7', '2e-5', '3', '42'])}", text)
            (folder / name.replace("/", "__")).write_text(f"# run {run_id}\n{edited}", encoding="utf-8")
        metrics = {"run": run_id, "reward_accuracy": round(rng.random(), 4), "loss": round(rng.uniform(0.2, 0.7), 4),
                   "eval": {f"task_{i}": round(rng.random(), 4) for i in range(20)}}
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        with open(folder / "metrics.jsonl", "w", encoding="utf-8") as handle:
            for step in range(rng.randint(20, 200)):
                handle.write(json.dumps({"step": step * 10, "loss": round(rng.uniform(0.1, 1), 5), "lr": 1e-6}) + "\n")

    def _edit_configs(self) -> None:
        rng = self.rng("edit")
        configs = sorted(p for p in (self.root / "models").rglob("runs/*/*") if p.suffix in (".yaml", ".yml", ".conf"))
        for path in rng.sample(configs, k=max(1, len(configs) // 20)):
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(f"# edited on day {self.day}: seed {rng.randrange(1000)}\n")

    def _append_metrics(self) -> None:
        rng = self.rng("metrics")
        runs = sorted((self.root / "models").rglob("runs/*/metrics.jsonl"))
        for path in rng.sample(runs, k=max(1, len(runs) // 10)):
            with open(path, "a", encoding="utf-8") as handle:
                for step in range(50):
                    handle.write(json.dumps({"step": 10000 + step, "loss": round(rng.uniform(0.1, 1), 5)}) + "\n")

    def _append_logs(self) -> None:
        rng = self.rng("logs")
        folder = self.root / "logs"
        folder.mkdir(exist_ok=True)
        budget = max(100_000, int(self.size * 0.004))
        with open(folder / "train-rm-a.log", "a", encoding="utf-8") as log_file:
            written = 0
            while written < budget:
                line = (f"2026-12-{self.day + 1:02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z INFO step="
                        f"{rng.randrange(10**6)} loss={rng.random():.5f} grad_norm={rng.uniform(0, 3):.4f} "
                        f"reward_margin={rng.uniform(-1, 4):.4f}\n")
                log_file.write(line)
                written += len(line)
        with open(folder / "audit.jsonl", "a", encoding="utf-8") as audit:
            for i in range(200):
                audit.write(json.dumps({"day": self.day, "event": rng.choice(["read", "label", "export"]),
                                        "user": f"u{rng.randrange(50)}", "n": i}) + "\n")


def tree_size(root: Path) -> tuple[int, int]:
    """Return (file count, total bytes) of the regular files under `root`."""
    count = total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            count += 1
            total += os.lstat(os.path.join(folder, name)).st_size
    return count, total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="Directory to write (replaced if it exists).")
    parser.add_argument("--size-mb", type=float, default=1000, help="Approximate size of day 0 in MB (10^6 bytes).")
    parser.add_argument("--days", type=int, default=7, help="Days to apply after day 0; the tree ends in that day's state.")
    parser.add_argument("--seed", type=int, default=1, help="Seed; the same seed and size give the same bytes.")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="Corpus directory with preferences/, human-eval/, configs/ (default: tests.conftest.CORPUS).")
    args = parser.parse_args(argv)
    args.corpus = args.corpus or default_corpus()
    logging.basicConfig(level=logging.INFO, format="generate: %(message)s")
    generator = WeekGenerator(args.out, args.size_mb, args.seed, args.corpus)
    for _ in range(args.days + 1):
        day = generator.advance()
        count, total = tree_size(args.out)
        log.info("day %d: %d files, %.1f MB", day, count, total / MB)


if __name__ == "__main__":
    sys.exit(main())
