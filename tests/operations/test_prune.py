"""Forget and prune on real repositories: repacking, no-repack, crash points, retention refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import msgpack
import pytest

from casbak.catalog import load_manifest, load_manifests, walk
from casbak.errors import IntegrityError, ObjectNotFound, StorageError
from casbak.operations.forget import FORGOTTEN_PREFIX, forget_by_ids, forget_by_policy
from casbak.operations.prune import PruneOptions, run_gc
from casbak.operations.restore import restore_snapshot
from casbak.operations.retention import RetentionPolicy
from casbak.operations.snapshot import create_snapshot
from casbak.store.locks import list_locks, remove_stale_locks
from casbak.store.repository import Repository
from tests.conftest import FAST_KDF, PASSWORD, make_tree, read_tree, small_config
from tests.servers import moto_server  # noqa: F401 - fixture

try:
    from casbak.operations.verify import VerifyOptions, verify_repository
except ImportError:  # verify is a separate module; without it the crash sweep checks by restoring only
    verify_repository = None


def snapshot_of(repository, source, spec) -> str:
    """Make `source` hold exactly `spec` and snapshot it; return the snapshot id."""
    shutil.rmtree(source, ignore_errors=True)
    make_tree(source, spec)
    return create_snapshot(repository, [str(source)]).manifest.id


def assert_restores(repository, expected: dict, source, tmp_path) -> None:
    """Restore every listed snapshot through a freshly opened repository and compare."""
    for snapshot_id, spec in expected.items():
        target = tmp_path / f"restore-{snapshot_id[:12]}-{os.urandom(4).hex()}"
        restore_snapshot(repository, load_manifest(repository, snapshot_id), str(target), str(source))
        assert read_tree(target) == spec, f"snapshot {snapshot_id[:12]} restored wrong content"


def reopen(repository) -> Repository:
    return Repository.open(repository.backend.url, PASSWORD if repository.encrypted else None)


def stored(repository, prefix) -> list[str]:
    return repository.backend.list(prefix)


def test_shared_pack_is_repacked_not_deleted(repository, tmp_path):
    source = tmp_path / "src"
    keep_data, drop_data = os.urandom(20_000), os.urandom(20_000)
    first = snapshot_of(repository, source, {"keep.bin": keep_data, "drop.bin": drop_data})
    # One data pack contains the chunks of both files, so it is half garbage once `first` goes.
    shared_packs = stored(repository, "data")
    assert len(shared_packs) == 1
    drop_chunks = [e.chunks for e in _entries(repository, first) if e.name == b"drop.bin"][0]
    second = snapshot_of(repository, source, {"keep.bin": keep_data})

    report = run_gc(repository, RetentionPolicy(last=1))

    assert report.forget.removed == [first]
    # The one data pack is repacked; the deleted pack is the first snapshot's tree pack.
    assert report.prune.packs_repacked == 1
    assert report.prune.packs_deleted == 1
    repository = reopen(repository)
    assert shared_packs[0] not in stored(repository, "data")
    assert len(stored(repository, "data")) == 1
    for digest in drop_chunks:
        with pytest.raises(ObjectNotFound):
            repository.get(digest)
    assert_restores(repository, {second: {"keep.bin": keep_data}}, source, tmp_path)


def test_shared_pack_kept_below_max_unused(repository, tmp_path):
    source = tmp_path / "src"
    keep_data = os.urandom(40_000)
    snapshot_of(repository, source, {"keep.bin": keep_data, "drop.bin": os.urandom(5_000)})
    packs = stored(repository, "data")
    second = snapshot_of(repository, source, {"keep.bin": keep_data})

    report = run_gc(repository, RetentionPolicy(last=1), options=PruneOptions(max_unused=0.5))

    assert report.prune.packs_repacked == 0
    assert stored(repository, "data") == packs
    assert_restores(reopen(repository), {second: {"keep.bin": keep_data}}, source, tmp_path)


class NoDataReads:
    """Storage double that fails every read of a data pack."""

    def __init__(self, backend):
        self._backend = backend
        self.data_reads = 0

    def read(self, name, start=None, end=None):
        if name.startswith("data/"):
            self.data_reads += 1
            raise PermissionError(f"test double: reading {name} is not allowed")
        return self._backend.read(name, start, end)

    def __getattr__(self, attribute):
        return getattr(self._backend, attribute)


def test_no_repack_reads_no_data_pack(repository, tmp_path):
    source = tmp_path / "src"
    keep_data = os.urandom(20_000)
    snapshot_of(repository, source, {"keep.bin": keep_data, "drop.bin": os.urandom(20_000)})
    snapshot_of(repository, source, {"keep.bin": keep_data, "other.bin": os.urandom(30_000)})
    last = snapshot_of(repository, source, {"keep.bin": keep_data})
    data_before = len(stored(repository, "data"))
    double = NoDataReads(repository.backend)
    repository.backend = double

    report = run_gc(repository, RetentionPolicy(last=1), options=PruneOptions(repack=False))

    assert double.data_reads == 0
    assert report.prune.packs_repacked == 0
    # other.bin's data pack is entirely unused; the half-used pack of drop.bin stays.
    assert len(stored(repository, "data")) == data_before - 1
    assert_restores(reopen(repository), {last: {"keep.bin": keep_data}}, source, tmp_path)


def test_repack_needs_data_reads(repository, tmp_path):
    source = tmp_path / "src"
    keep_data = os.urandom(20_000)
    snapshot_of(repository, source, {"keep.bin": keep_data, "drop.bin": os.urandom(20_000)})
    snapshot_of(repository, source, {"keep.bin": keep_data})
    packs_before = stored(repository, "data")
    repository.backend = NoDataReads(repository.backend)

    with pytest.raises(PermissionError):
        run_gc(repository, RetentionPolicy(last=1))

    assert set(packs_before) <= set(stored(repository, "data"))


def test_second_gc_changes_nothing(repository, tmp_path):
    source = tmp_path / "src"
    snapshot_of(repository, source, {"a.bin": os.urandom(30_000)})
    snapshot_of(repository, source, {"b.bin": os.urandom(30_000)})
    run_gc(repository, RetentionPolicy(last=1))
    before = {prefix: stored(repository, prefix) for prefix in ("data", "tree", "index", "snapshots")}

    report = run_gc(repository, RetentionPolicy(last=1))

    assert report.prune.packs_deleted == report.prune.packs_repacked == report.prune.index_files_written == 0
    assert {prefix: stored(repository, prefix) for prefix in before} == before
    assert list_locks(repository) == []


def test_unindexed_pack_is_deleted(repository, tmp_path):
    source = tmp_path / "src"
    last = snapshot_of(repository, source, {"a.bin": os.urandom(10_000)})
    leftover = "data/ab/" + "ab" * 32
    repository.backend.write(leftover, b"an upload whose index was never written")

    report = run_gc(repository)

    assert report.prune.unindexed_packs_deleted == 1
    assert not repository.backend.exists(leftover)
    assert_restores(reopen(repository), {last: read_tree(source)}, source, tmp_path)


def test_stale_staged_files_are_removed(repository, tmp_path, repo_path):
    # A snapshot killed while it wrote a pack leaves a staged file that no listing shows.
    source = tmp_path / "src"
    last = snapshot_of(repository, source, {"a.bin": os.urandom(10_000)})
    stale = repo_path / "data" / ".tmp-0123456789abcdef"
    fresh = repo_path / "tree" / ".tmp-fedcba9876543210"
    stale.write_bytes(b"half a pack" * 100)
    fresh.write_bytes(b"a pack being written right now")
    two_hours_ago = stale.stat().st_mtime - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))

    report = run_gc(repository)

    assert report.prune.temporary_files_deleted == 1
    assert not stale.exists()
    assert fresh.exists()
    assert_restores(reopen(repository), {last: read_tree(source)}, source, tmp_path)


def test_damaged_index_stops_before_deleting(repository, tmp_path):
    source = tmp_path / "src"
    snapshot_of(repository, source, {"a.bin": os.urandom(10_000)})
    snapshot_of(repository, source, {"b.bin": os.urandom(10_000)})
    name = stored(repository, "index")[0]
    repository.backend.write(name, b"\x01\x00\x01" + os.urandom(100))
    before = stored(repository, "data") + stored(repository, "tree")

    with pytest.raises(IntegrityError):
        run_gc(repository, RetentionPolicy(last=1))

    assert stored(repository, "data") + stored(repository, "tree") == before


def test_damaged_manifest_stops_before_deleting(repository, tmp_path):
    source = tmp_path / "src"
    first = snapshot_of(repository, source, {"a.bin": os.urandom(10_000)})
    snapshot_of(repository, source, {"b.bin": os.urandom(10_000)})
    repository.backend.write(f"snapshots/{first}", b"\x01\x00\x01" + os.urandom(60))
    before = stored(repository, "data") + stored(repository, "tree")

    with pytest.raises(IntegrityError):
        run_gc(repository)

    assert stored(repository, "data") + stored(repository, "tree") == before


class FailingDeletes:
    """Storage double whose deletes of packs fail for good, as after exhausted retries."""

    def __init__(self, backend):
        self._backend = backend

    def delete(self, name):
        if name.startswith("data/"):
            raise StorageError(f"delete of {name} failed: gave up after 5 attempts")
        self._backend.delete(name)

    def __getattr__(self, attribute):
        return getattr(self._backend, attribute)


def test_storage_failure_stops_gc_safely(repository, tmp_path):
    source = tmp_path / "src"
    snapshot_of(repository, source, {"gone.bin": os.urandom(20_000)})
    last = snapshot_of(repository, source, {"keep.bin": b"kept content"})
    repository.backend = FailingDeletes(repository.backend)

    with pytest.raises(StorageError):
        run_gc(repository, RetentionPolicy(last=1))

    survivor = reopen(repository)
    remove_stale_locks(survivor, remove_all=True)
    assert_restores(survivor, {last: {"keep.bin": b"kept content"}}, source, tmp_path)
    # The failed run may have deleted the tree pack before it reached the data pack.
    report = run_gc(survivor)
    assert report.prune.unindexed_packs_deleted in (1, 2)
    assert run_gc(survivor).prune.unindexed_packs_deleted == 0


def test_missing_pack_with_needed_objects_stops_gc(repository, tmp_path):
    source = tmp_path / "src"
    snapshot_of(repository, source, {"old.bin": os.urandom(20_000)})
    snapshot_of(repository, source, {"new.bin": os.urandom(20_000)})
    # Both snapshots are kept, so every data pack holds objects that a snapshot needs.
    repository.backend.delete(stored(repository, "data")[0])
    before = stored(repository, "data") + stored(repository, "tree") + stored(repository, "index")

    with pytest.raises(IntegrityError, match="in no stored pack"):
        run_gc(repository)

    assert stored(repository, "data") + stored(repository, "tree") + stored(repository, "index") == before


def test_missing_unneeded_pack_is_dropped_from_index(repository, tmp_path):
    source = tmp_path / "src"
    first = snapshot_of(repository, source, {"old.bin": os.urandom(20_000)})
    old_packs = stored(repository, "data")
    last = snapshot_of(repository, source, {"new.bin": os.urandom(20_000)})
    forget_by_ids(repository, [first])
    repository.backend.delete(old_packs[0])

    run_gc(repository)

    reopened = reopen(repository)
    indexed = {pack_id for pack_id, _kind, _size in reopened.index.packs()}
    assert old_packs[0].rsplit("/", 1)[1] not in indexed
    assert_restores(reopened, {last: read_tree(source)}, source, tmp_path)


class RecordingBackend:
    """Storage double that records every write and delete in order."""

    def __init__(self, backend):
        self._backend = backend
        self.operations: list[tuple[str, str]] = []

    def write(self, name, data):
        self.operations.append(("write", name))
        self._backend.write(name, data)

    def delete(self, name):
        self.operations.append(("delete", name))
        self._backend.delete(name)

    def __getattr__(self, attribute):
        return getattr(self._backend, attribute)


def test_forget_record_written_before_manifests_deleted(repository, tmp_path):
    source = tmp_path / "src"
    ids = [snapshot_of(repository, source, {"n.txt": str(n).encode()}) for n in range(3)]
    manifests = {m.id: m for m in load_manifests(repository)}
    double = RecordingBackend(repository.backend)
    repository.backend = double

    result = forget_by_policy(repository, RetentionPolicy(last=1))

    assert sorted(result.removed) == sorted(ids[:2])
    names = [name for op, name in double.operations if not name.startswith("locks/")]
    record_name = result.record
    assert names.index(record_name) < min(names.index(f"snapshots/{i}") for i in ids[:2])
    body = msgpack.unpackb(repository.sealer.open(repository.backend.read(record_name)))
    assert body["version"] == 1
    listed = {item["id"]: item for item in body["snapshots"]}
    assert set(listed) == set(ids[:2])
    assert listed[ids[1]]["previous"] == manifests[ids[1]].previous
    assert listed[ids[1]]["time_ns"] == manifests[ids[1]].time_ns
    assert record_name.startswith(FORGOTTEN_PREFIX + "/")
    assert repository.list_snapshot_ids() == [ids[2]]


def test_forget_by_id_and_dry_run(repository, tmp_path):
    source = tmp_path / "src"
    ids = [snapshot_of(repository, source, {"n.txt": str(n).encode()}) for n in range(3)]

    dry = forget_by_ids(repository, [ids[0][:10]], dry_run=True)
    assert [d.manifest.id for d in dry.decisions] == [ids[0]]
    assert sorted(repository.list_snapshot_ids()) == sorted(ids)

    result = forget_by_ids(repository, [ids[0][:10], ids[1]])
    assert sorted(result.removed) == sorted(ids[:2])
    assert repository.list_snapshot_ids() == [ids[2]]


def test_gc_dry_run_changes_nothing(repository, tmp_path):
    source = tmp_path / "src"
    snapshot_of(repository, source, {"a.bin": os.urandom(20_000), "b.bin": os.urandom(20_000)})
    snapshot_of(repository, source, {"a.bin": os.urandom(20_000)})
    before = {prefix: stored(repository, prefix) for prefix in ("data", "tree", "index", "snapshots", "forgotten")}

    report = run_gc(repository, RetentionPolicy(last=1), options=PruneOptions(dry_run=True))

    assert report.prune.dry_run
    assert report.prune.packs_deleted + report.prune.packs_repacked >= 1
    assert {prefix: stored(repository, prefix) for prefix in before} == before


class RetainingBackend:
    """Storage double that rejects deletes as S3 Object Lock does before retain-until."""

    def __init__(self, backend, prefixes, wrapped=False):
        self._backend = backend
        self._prefixes = prefixes
        self._wrapped = wrapped

    def delete(self, name):
        if not name.startswith(self._prefixes):
            self._backend.delete(name)
            return
        error = PermissionError(f"test double: {name} is under retention")
        error.retain_until = "2030-01-01T00:00:00Z"
        if not self._wrapped:
            raise error
        # Remote backends report the rejection as a StorageError caused by it.
        try:
            raise error
        except PermissionError as cause:
            raise StorageError(f"delete of {name} failed: access denied") from cause

    def __getattr__(self, attribute):
        return getattr(self._backend, attribute)


@pytest.mark.parametrize(
    "prefixes, wrapped",
    [(("data/", "tree/"), False), (("index/",), False), (("snapshots/", "data/", "tree/", "index/"), False), (("data/",), True)],
)
def test_retained_deletes_are_reported(repository, tmp_path, prefixes, wrapped):
    source = tmp_path / "src"
    keep_data = os.urandom(20_000)
    snapshot_of(repository, source, {"keep.bin": keep_data, "drop.bin": os.urandom(20_000)})
    snapshot_of(repository, source, {"gone.bin": os.urandom(20_000)})
    last = snapshot_of(repository, source, {"keep.bin": keep_data})
    original = repository.backend
    repository.backend = RetainingBackend(original, prefixes, wrapped)

    report = run_gc(repository, RetentionPolicy(last=1))

    retained = report.prune.retained + (report.forget.retained if report.forget else [])
    assert retained
    assert all("retained until 2030-01-01" in item["detail"] for item in retained)
    repository = reopen(repository)
    assert_restores(repository, {last: {"keep.bin": keep_data}}, source, tmp_path)
    for snapshot_id in repository.list_snapshot_ids():
        _walk_all(repository, snapshot_id)


class SimulatedCrash(BaseException):
    """Stands for the process dying: no `except Exception` in casbak catches it."""


class CrashAfter:
    """Storage double that raises after a number of writes and deletes (a simulated crash)."""

    def __init__(self, backend, limit):
        self._backend = backend
        self.remaining = limit
        self.count = 0

    def _tick(self):
        self.count += 1
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining < 0:
                raise SimulatedCrash("test double: simulated crash")

    def write(self, name, data):
        self._tick()
        self._backend.write(name, data)

    def delete(self, name):
        self._tick()
        self._backend.delete(name)

    def __getattr__(self, attribute):
        return getattr(self._backend, attribute)


def test_gc_interrupted_at_every_step_leaves_valid_repository(tmp_path):
    # Unencrypted on purpose: deterministic sealing lets a repacked pack coincide with
    # the unindexed leftover of an interrupted run, the hardest case for pack deletion.
    template = tmp_path / "template"
    Repository.init(str(template), None, config=small_config(encrypted=False))
    repository = Repository.open(str(template))
    source = tmp_path / "src"
    keep_data = os.urandom(30_000)
    snapshot_of(repository, source, {"keep.bin": keep_data, "drop.bin": os.urandom(30_000)})
    snapshot_of(repository, source, {"gone.bin": os.urandom(20_000)})
    kept = {snapshot_of(repository, source, {"keep.bin": keep_data, "n": b"1"}): {"keep.bin": keep_data, "n": b"1"}}
    kept[snapshot_of(repository, source, {"keep.bin": keep_data, "n": b"2"})] = {"keep.bin": keep_data, "n": b"2"}

    counting = CrashAfter(Repository.open(str(template)).backend, None)
    probe_dir = tmp_path / "probe"
    shutil.copytree(template, probe_dir)
    probe = Repository.open(str(probe_dir))
    counting._backend = probe.backend
    probe.backend = counting
    run_gc(probe, RetentionPolicy(last=2))
    total = counting.count
    assert total > 6

    interrupted = 0
    for limit in range(total):
        work = tmp_path / f"crash-{limit}"
        shutil.copytree(template, work)
        victim = Repository.open(str(work))
        victim.backend = CrashAfter(victim.backend, limit)
        try:
            run_gc(victim, RetentionPolicy(last=2))
        except SimulatedCrash:
            interrupted += 1
        # This process lives on, so its leftover lock is not stale; a crashed process's would be.
        remove_stale_locks(Repository.open(str(work)), remove_all=True)

        survivor = Repository.open(str(work))
        remaining = set(survivor.list_snapshot_ids())
        assert set(kept) <= remaining, f"crash after {limit} steps lost a kept snapshot"
        assert_verify_clean(survivor, allow_warnings=True)
        for snapshot_id in remaining:
            _walk_all(survivor, snapshot_id)
        assert_restores(survivor, kept, source, tmp_path)

        run_gc(survivor, RetentionPolicy(last=2))
        final = Repository.open(str(work))
        assert set(final.list_snapshot_ids()) == set(kept)
        assert_verify_clean(final, allow_warnings=False)
        assert_restores(final, kept, source, tmp_path)
        again = run_gc(final, RetentionPolicy(last=2))
        assert again.prune.packs_deleted == again.prune.unindexed_packs_deleted == again.prune.packs_repacked == 0
    assert interrupted == total


def assert_verify_clean(repository, allow_warnings: bool) -> None:
    """Run the verify module (when present) over all data; unindexed leftovers are only warnings."""
    if verify_repository is None:
        return
    result = verify_repository(repository, VerifyOptions(read_data=True, lock=False))
    assert result.errors == []
    if not allow_warnings:
        assert result.warnings == []


def _entries(repository, snapshot_id):
    manifest = load_manifest(repository, snapshot_id)
    return [entry for _path, entry in walk(repository, manifest.tree)]


def _walk_all(repository, snapshot_id) -> None:
    """Read every tree and chunk of a snapshot, verifying each against its digest."""
    for entry in _entries(repository, snapshot_id):
        for digest in entry.chunks or []:
            repository.get(digest)


def test_gc_on_memory_repository(memory_repository, tmp_path):
    source = tmp_path / "src"
    keep_data = os.urandom(20_000)
    snapshot_of(memory_repository, source, {"keep.bin": keep_data, "drop.bin": os.urandom(20_000)})
    last = snapshot_of(memory_repository, source, {"keep.bin": keep_data})

    report = run_gc(memory_repository, RetentionPolicy(last=1))

    assert report.prune.packs_repacked == 1
    assert_restores(Repository.open(memory_repository.backend.url), {last: {"keep.bin": keep_data}}, source, tmp_path)


@pytest.mark.parametrize("object_lock", [False, True])
def test_gc_on_s3_repository(moto_server, tmp_path, object_lock):
    bucket = moto_server.new_bucket(object_lock=object_lock)
    url = f"s3://{bucket}/gc"
    options = {"endpoint_url": moto_server.endpoint, "skip_instance_cache": True}
    changes = {"object_lock_days": 3, "object_lock_mode": "governance"} if object_lock else {}
    Repository.init(url, PASSWORD, config=small_config(**changes), kdf=FAST_KDF, options=options)
    repository = Repository.open(url, PASSWORD, options)
    source = tmp_path / "src"
    keep_data = os.urandom(20_000)
    snapshot_of(repository, source, {"keep.bin": keep_data, "drop.bin": os.urandom(20_000)})
    snapshot_of(repository, source, {"gone.bin": os.urandom(20_000)})
    last = snapshot_of(repository, source, {"keep.bin": keep_data})

    report = run_gc(repository, RetentionPolicy(last=1))

    # With Object Lock a plain delete only adds a delete marker, so it succeeds too.
    assert report.forget.retained == []
    assert report.prune.retained == []
    assert report.prune.packs_repacked == 1
    reopened = Repository.open(url, PASSWORD, options)
    assert reopened.list_snapshot_ids() == [last]
    assert_restores(reopened, {last: {"keep.bin": keep_data}}, source, tmp_path)
    assert list_locks(reopened) == []
    again = run_gc(reopened, RetentionPolicy(last=1))
    assert again.prune.packs_deleted == again.prune.packs_repacked == again.prune.unindexed_packs_deleted == 0


def run_cli(repo_path, *args):
    env = {**os.environ, "CASBAK_PASSWORD": PASSWORD.decode()}
    return subprocess.run(
        [sys.executable, "-c", "from casbak.cli.main import main; main()", "--repo", str(repo_path), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


def test_cli_forget_dry_run_and_gc_json(repository, repo_path, tmp_path):
    source = tmp_path / "src"
    ids = [snapshot_of(repository, source, {"n.txt": str(n).encode() * 5000}) for n in range(3)]

    dry = run_cli(repo_path, "forget", "--keep-last", "1", "--keep-tag", "none", "--dry-run")

    assert dry.returncode == 0, dry.stderr
    assert f"keep   {ids[2][:12]}" in dry.stdout
    assert "[last]" in dry.stdout
    assert f"remove {ids[0][:12]}" in dry.stdout
    assert "would remove 2 of 3 snapshots" in dry.stdout
    assert sorted(repository.list_snapshot_ids()) == sorted(ids)

    result = run_cli(repo_path, "--json", "gc", "--keep-last", "1", "--max-unused", "0%")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(report["forget"]["removed"]) == sorted(ids[:2])
    assert report["forget"]["forget_record"].startswith("forgotten/")
    assert report["prune"]["packs_deleted"] >= 2
    assert report["prune"]["bytes_freed"] > 0
    assert repository.list_snapshot_ids() == [ids[2]]

    invalid = run_cli(repo_path, "gc", "--max-unused", "lots")
    assert invalid.returncode == 2
    assert "--max-unused" in invalid.stderr
