"""Crash safety: a snapshot killed with SIGKILL leaves the repository usable and reusable."""

from __future__ import annotations

import filecmp
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from casbak.catalog import load_manifests
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from casbak.store.index import decode_index
from casbak.store.packs import KIND_DATA
from casbak.store.repository import Repository
from tests.conftest import FAST_KDF, PASSWORD, make_tree, small_config
from tests.store.test_writer import FailingAfterBackend, indexed_pack_names

SOURCE_SIZE = 40 * 1024 * 1024
PACK_SIZE = 256 * 1024
# Kill once this many data packs exist: about a quarter of the run.
KILL_AFTER_PACKS = 40

CHILD_SCRIPT = textwrap.dedent(
    """
    import sys
    from casbak.operations.snapshot import create_snapshot
    from casbak.store.repository import Repository
    repository = Repository.open(sys.argv[1], sys.argv[2].encode())
    create_snapshot(repository, [sys.argv[3]])
    print("finished")
    """
)


def write_random_files(root: Path, total: int, seed: int) -> None:
    """Write `total` bytes of incompressible data as a few files of different sizes."""
    generator = random.Random(seed)
    root.mkdir(parents=True)
    sizes = [total // 2, total // 4, total // 8, total - total // 2 - total // 4 - total // 8]
    for number, size in enumerate(sizes):
        with open(root / f"shard-{number:02d}.bin", "wb") as handle:
            for offset in range(0, size, 1 << 20):
                handle.write(generator.randbytes(min(1 << 20, size - offset)))


def wait_for_packs(repo: Path, count: int, child: subprocess.Popen, timeout: float) -> int:
    """Poll the repository's data/ directory until it contains `count` packs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        packs = sum(len(files) for _dir, _subdirs, files in os.walk(repo / "data"))
        if packs >= count:
            return packs
        if child.poll() is not None:
            pytest.fail(f"snapshot child exited early with status {child.returncode}: {child.stderr.read()}")
        time.sleep(0.005)
    pytest.fail(f"snapshot child wrote fewer than {count} packs in {timeout} s")


def indexed_data_bytes(repository: Repository) -> int:
    """Return the plaintext size of every data object that some index file names."""
    total = 0
    for name in repository.backend.list("index"):
        index_id = name.split("/", 1)[1]
        for pack in decode_index(index_id, repository.backend.read(name), repository.sealer):
            if pack.kind == KIND_DATA:
                total += sum(entry.raw_length for entry in pack.entries)
    return total


@pytest.mark.slow
def test_killed_snapshot_is_recoverable(tmp_path):
    repo = tmp_path / "repo"
    Repository.init(str(repo), PASSWORD, config=small_config(pack_size=PACK_SIZE), kdf=FAST_KDF)
    repository = Repository.open(str(repo), PASSWORD)
    earlier_source = tmp_path / "earlier"
    make_tree(earlier_source, {"prefs.jsonl": os.urandom(300_000), "cfg": {"a.yaml": b"beta: 0.1\n"}})
    earlier = create_snapshot(repository, [str(earlier_source)]).manifest
    source = tmp_path / "big"
    write_random_files(source, SOURCE_SIZE, seed=11)

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_SCRIPT, str(repo), PASSWORD.decode(), str(source)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        packs_at_kill = wait_for_packs(repo, KILL_AFTER_PACKS, child, timeout=120)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    # Nothing of the killed run is visible as a snapshot.
    survivor = Repository.open(str(repo), PASSWORD)
    assert [m.id for m in load_manifests(survivor)] == [earlier.id]
    earlier_target = tmp_path / "earlier-restored"
    restore_snapshot(survivor, earlier, str(earlier_target), str(earlier_source))
    assert not filecmp.dircmp(earlier_source, earlier_target).diff_files
    assert sorted(os.listdir(earlier_target)) == ["cfg", "prefs.jsonl"]
    assert (earlier_target / "prefs.jsonl").read_bytes() == (earlier_source / "prefs.jsonl").read_bytes()

    # The next run completes and reuses the packs that the killed run indexed.
    reusable = indexed_data_bytes(survivor) - 300_000
    assert reusable > 0
    resumed = create_snapshot(survivor, [str(source)])
    assert resumed.manifest.partial is False
    assert resumed.stats.data_added < SOURCE_SIZE
    assert resumed.stats.data_added <= SOURCE_SIZE - reusable + 1024 * 1024
    total_packs = sum(len(files) for _dir, _subdirs, files in os.walk(repo / "data"))
    assert total_packs > packs_at_kill

    target = tmp_path / "restored"
    restore_snapshot(survivor, resumed.manifest, str(target), str(source))
    for name in sorted(os.listdir(source)):
        assert filecmp.cmp(source / name, target / name, shallow=False), name
    assert [m.id for m in load_manifests(survivor)] == [earlier.id, resumed.manifest.id]


def test_failed_upload_keeps_uploaded_packs(tmp_path):
    # A snapshot stopped by a failing pack upload writes no manifest but indexes every
    # pack it did upload, and the next run stores only what is still missing.
    repo = tmp_path / "repo"
    Repository.init(str(repo), PASSWORD, config=small_config(), kdf=FAST_KDF)
    source = tmp_path / "data"
    write_random_files(source, 3 * 1024 * 1024, seed=12)
    failing = Repository.open(FailingAfterBackend(str(repo), allowed=10), PASSWORD)

    with pytest.raises(OSError):
        create_snapshot(failing, [str(source)])

    uploaded = set(failing.backend.list("data"))
    assert len(uploaded) == 10
    assert indexed_pack_names(failing) == uploaded
    assert failing.backend.list("snapshots") == []
    reusable = indexed_data_bytes(failing)
    assert reusable > 0
    healthy = Repository.open(str(repo), PASSWORD)
    resumed = create_snapshot(healthy, [str(source)])
    assert resumed.stats.data_added <= 3 * 1024 * 1024 - reusable + 512 * 1024
    target = tmp_path / "restored"
    restore_snapshot(healthy, resumed.manifest, str(target), str(source))
    for name in sorted(os.listdir(source)):
        assert filecmp.cmp(source / name, target / name, shallow=False), name
