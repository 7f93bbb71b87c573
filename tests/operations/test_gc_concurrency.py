"""gc against live writers and gc killed with SIGKILL, with real processes on a local repository."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from casbak.catalog import load_manifest, walk
from casbak.operations.prune import run_gc
from casbak.operations.restore import restore_snapshot
from casbak.operations.retention import RetentionPolicy
from casbak.operations.snapshot import create_snapshot
from casbak.store.locks import list_locks
from casbak.store.repository import Repository
from tests.conftest import FAST_KDF, PASSWORD, make_tree, small_config
from tests.operations.test_prune import assert_verify_clean

ROOT = Path(__file__).resolve().parents[2]

# Shared by the test and the child processes: the content hash of a directory.
TREE_HASH = textwrap.dedent(
    """
    import hashlib, os

    def tree_hash(root):
        digest = hashlib.sha256()
        for directory, subdirs, files in os.walk(root):
            subdirs.sort()
            relative = os.path.relpath(directory, root)
            digest.update(b"D" + os.fsencode(relative) + b"\\0")
            for name in sorted(files):
                with open(os.path.join(directory, name), "rb") as handle:
                    content = handle.read()
                digest.update(b"F" + os.fsencode(name) + b"\\0" + hashlib.sha256(content).digest())
        return digest.hexdigest()
    """
)
namespace: dict = {}
exec(TREE_HASH, namespace)
tree_hash = namespace["tree_hash"]

WRITER = TREE_HASH + textwrap.dedent(
    """
    import random, shutil, sys, time
    from casbak.errors import RepositoryLocked
    from casbak.operations.snapshot import create_snapshot
    from casbak.store.repository import Repository

    repo, source, host, deadline, seed, record = sys.argv[1:7]
    deadline, rng = float(deadline), random.Random(int(seed))
    repository = Repository.open(repo, PASSWORD)
    os.makedirs(source, exist_ok=True)
    shared_pool = [bytes([n]) * 3000 for n in range(8)]  # content other writers also store
    refused = 0
    while time.time() < deadline:
        for _ in range(rng.randint(1, 4)):
            path = os.path.join(source, f"d{rng.randint(0, 2)}", f"f{rng.randint(0, 9)}.bin")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if rng.random() < 0.2 and os.path.exists(path):
                os.unlink(path)
                continue
            data = rng.choice(shared_pool) if rng.random() < 0.3 else rng.randbytes(rng.randint(100, 12000))
            with open(path, "wb") as handle:
                handle.write(data)
        expected = tree_hash(source)
        while True:
            try:
                result = create_snapshot(repository, [source], hostname=host)
                break
            except RepositoryLocked:
                refused += 1
                time.sleep(rng.uniform(0.02, 0.1))
        with open(record, "a") as handle:
            handle.write(f"{result.manifest.id} {expected}\\n")
            handle.flush()
            os.fsync(handle.fileno())
        time.sleep(rng.uniform(0.1, 0.4))
    print(json.dumps({"refused": refused}))
    """
)

GC_LOOP = textwrap.dedent(
    """
    import json, random, sys, time
    from casbak.errors import RepositoryLocked
    from casbak.operations.prune import PruneOptions, run_gc
    from casbak.operations.retention import RetentionPolicy
    from casbak.store.repository import Repository

    repo, deadline = sys.argv[1], float(sys.argv[2])
    repository = Repository.open(repo, PASSWORD)
    runs = refused = repacked = deleted = 0
    while time.time() < deadline:
        try:
            report = run_gc(repository, RetentionPolicy(last=2), options=PruneOptions(max_unused=0.05))
        except RepositoryLocked:
            refused += 1
            time.sleep(random.uniform(0.01, 0.05))
            continue
        runs += 1
        repacked += report.prune.packs_repacked
        deleted += report.prune.packs_deleted
    print(json.dumps({"runs": runs, "refused": refused, "repacked": repacked, "deleted": deleted}))
    """
)

GC_UNTIL_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from casbak.operations.prune import run_gc
    from casbak.operations.retention import RetentionPolicy
    from casbak.store.repository import Repository

    repo, kill_at, before = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "before"
    repository = Repository.open(repo, PASSWORD)

    class KillAt:
        # Storage double: SIGKILLs this process right before or after its kill_at-th change.
        def __init__(self, backend):
            self._backend, self.count = backend, 0

        def _step(self, action, *args):
            self.count += 1
            if before and self.count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            action(*args)
            if not before and self.count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        def write(self, name, data):
            self._step(self._backend.write, name, data)

        def delete(self, name):
            self._step(self._backend.delete, name)

        def __getattr__(self, attribute):
            return getattr(self._backend, attribute)

    if kill_at:
        repository.backend = KillAt(repository.backend)
    print("gc-start", flush=True)
    run_gc(repository, RetentionPolicy(last=2))
    print("gc-end", flush=True)
    """
)


def child(code: str, *args: str, **popen) -> subprocess.Popen:
    prelude = f"import json, os\nPASSWORD = {PASSWORD!r}\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", prelude + code, *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )


def new_repository(path: Path) -> Repository:
    Repository.init(str(path), PASSWORD, config=small_config(), kdf=FAST_KDF)
    return Repository.open(str(path), PASSWORD)


def restored_hash(repository: Repository, snapshot_id: str, source: str, scratch: Path) -> str:
    target = scratch / f"restore-{snapshot_id[:16]}-{os.urandom(4).hex()}"
    restore_snapshot(repository, load_manifest(repository, snapshot_id), str(target), source)
    return tree_hash(str(target))


def read_every_indexed_object(repository: Repository) -> int:
    count = 0
    for digest in repository.index.digests():
        repository.get(digest)
        count += 1
    return count


def test_gc_loop_with_three_writers(tmp_path):
    repo = tmp_path / "repo"
    new_repository(repo)
    deadline = time.time() + 16
    writers = {}
    for number in range(3):
        source = tmp_path / f"writer{number}" / "data"
        record = tmp_path / f"writer{number}.log"
        process = child(WRITER, str(repo), str(source), f"host{number}", str(deadline), str(number), str(record))
        writers[number] = (process, str(source), record)
    gc = child(GC_LOOP, str(repo), str(deadline))

    gc_out, gc_err = gc.communicate(timeout=180)
    assert gc.returncode == 0, gc_err
    for process, _source, _record in writers.values():
        _out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err

    gc_counts = json.loads(gc_out)
    assert gc_counts["runs"] >= 1, f"gc never got the lock: {gc_counts}"
    assert gc_counts["deleted"] + gc_counts["repacked"] >= 1, f"gc never removed anything: {gc_counts}"
    repository = Repository.open(str(repo), PASSWORD)
    expected = {}
    for number, (_process, source, record) in writers.items():
        for line in record.read_text().splitlines():
            snapshot_id, content_hash = line.split()
            expected[snapshot_id] = (source, content_hash)
    assert len(expected) >= 6

    remaining = repository.list_snapshot_ids()
    assert remaining and set(remaining) <= set(expected)
    for snapshot_id in remaining:
        source, content_hash = expected[snapshot_id]
        assert restored_hash(repository, snapshot_id, source, tmp_path) == content_hash, snapshot_id[:12]

    run_gc(repository, RetentionPolicy(last=2))
    repository = Repository.open(str(repo), PASSWORD)
    remaining = repository.list_snapshot_ids()
    assert len(remaining) == 6
    for snapshot_id in remaining:
        source, content_hash = expected[snapshot_id]
        assert restored_hash(repository, snapshot_id, source, tmp_path) == content_hash, snapshot_id[:12]
    assert read_every_indexed_object(repository) > 0
    assert_verify_clean(repository, allow_warnings=False)
    assert list_locks(repository) == []


def build_history(tmp_path: Path) -> tuple[Path, dict[str, str], str]:
    """Return a repository with garbage in shared packs, the two newest ids with their hashes, and the source."""
    repo = tmp_path / "template"
    repository = new_repository(repo)
    source = tmp_path / "src"
    rng = random.Random(7)
    stable = rng.randbytes(30_000)
    hashes = {}
    for step in range(5):
        shutil.rmtree(source, ignore_errors=True)
        make_tree(source, {"stable.bin": stable, f"step{step}.bin": rng.randbytes(25_000), "d": {"n.txt": str(step).encode()}})
        hashes[create_snapshot(repository, [str(source)]).manifest.id] = tree_hash(str(source))
    newest = dict(list(hashes.items())[-2:])
    return repo, newest, str(source)


def count_changes(repo: Path, scratch: Path) -> int:
    probe = scratch / "probe"
    shutil.copytree(repo, probe)
    process = child(GC_UNTIL_KILLED.replace("os.kill(os.getpid(), signal.SIGKILL)", "pass") + "\nprint(repository.backend.count)\n", str(probe), "1000000", "before")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return int(out.split()[-1])


def check_after_kill(work: Path, kept: dict[str, str], source: str, scratch: Path) -> None:
    repository = Repository.open(str(work), PASSWORD)
    remaining = set(repository.list_snapshot_ids())
    assert set(kept) <= remaining
    for snapshot_id in remaining:
        manifest = load_manifest(repository, snapshot_id)
        for _path, entry in walk(repository, manifest.tree):
            for digest in entry.chunks or []:
                repository.get(digest)
    for snapshot_id, content_hash in kept.items():
        assert restored_hash(repository, snapshot_id, source, scratch) == content_hash

    # The killed run's lock names a dead process of this host, so gc removes it itself.
    report = run_gc(repository, RetentionPolicy(last=2))
    assert report.prune.retained == []
    repository = Repository.open(str(work), PASSWORD)
    assert set(repository.list_snapshot_ids()) == set(kept)
    for snapshot_id, content_hash in kept.items():
        assert restored_hash(repository, snapshot_id, source, scratch) == content_hash
    again = run_gc(repository, RetentionPolicy(last=2))
    assert again.prune.packs_deleted == again.prune.unindexed_packs_deleted == again.prune.packs_repacked == 0
    assert list_locks(repository) == []


@pytest.mark.parametrize("seed", range(4))
def test_gc_sigkill_at_random_step(tmp_path, seed):
    repo, kept, source = build_history(tmp_path)
    total = count_changes(repo, tmp_path)
    rng = random.Random(seed)
    kill_at = rng.randint(1, total)
    side = rng.choice(["before", "after"])
    work = tmp_path / "work"
    shutil.copytree(repo, work)

    process = child(GC_UNTIL_KILLED, str(work), str(kill_at), side)
    _out, err = process.communicate(timeout=120)

    assert process.returncode == -signal.SIGKILL, f"gc was not killed at step {kill_at} of {total}: {err}"
    check_after_kill(work, kept, source, tmp_path)


@pytest.mark.parametrize("seed", range(2))
def test_gc_sigkill_after_random_delay(tmp_path, seed):
    repo, kept, source = build_history(tmp_path)
    probe = tmp_path / "probe"
    shutil.copytree(repo, probe)
    timed = child(GC_UNTIL_KILLED, str(probe), "0", "before")
    assert timed.stdout.readline().strip() == "gc-start"
    started = time.monotonic()
    assert timed.stdout.readline().strip() == "gc-end"
    duration = time.monotonic() - started
    timed.communicate(timeout=120)

    process = child(GC_UNTIL_KILLED, str(repo), "0", "before")
    assert process.stdout.readline().strip() == "gc-start"
    # Timing varies, so the kill may land after gc finished; the step test covers every point.
    time.sleep(random.Random(seed).uniform(0, duration))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=120)

    check_after_kill(repo, kept, source, tmp_path)
