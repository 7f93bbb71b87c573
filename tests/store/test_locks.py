"""Repository locks: conflicts, the two-phase check, stale detection, heartbeat, unlock."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from casbak.catalog import load_manifest
from casbak.errors import IntegrityError, RepositoryLocked
from casbak.operations.progress import Progress
from casbak.operations.prune import run_gc
from casbak.operations.restore import restore_snapshot
from casbak.operations.retention import RetentionPolicy
from casbak.operations.snapshot import create_snapshot
from casbak.store.locks import (
    EXCLUSIVE,
    SHARED,
    LockRecord,
    LockSettings,
    RepositoryLock,
    list_locks,
    remove_stale_locks,
)
from casbak.store.repository import Repository
from tests.conftest import PASSWORD, make_tree

HOUR_NS = 3600 * 1_000_000_000


def write_record(repository, kind, *, host=None, pid=None, age_ns=0, lock_id=None) -> LockRecord:
    """Store a lock object as another process would have written it."""
    now = time.time_ns()
    record = LockRecord(
        lock_id=lock_id or os.urandom(32).hex(),
        kind=kind,
        purpose="test",
        hostname=host or socket.gethostname(),
        pid=pid or os.getpid(),
        pid_namespace=os.stat("/proc/self/ns/pid").st_ino if os.path.exists("/proc/self/ns/pid") else 0,
        created_ns=now - age_ns,
        heartbeat_ns=now - age_ns,
    )
    repository.backend.write(record.name, repository.sealer.seal(record.encode()))
    return record


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_shared_locks_coexist(repository):
    with RepositoryLock(repository, SHARED, "snapshot"), RepositoryLock(repository, SHARED, "snapshot"):
        assert len(list_locks(repository)) == 2

    assert list_locks(repository) == []


def test_exclusive_rejected_while_shared_held(repository):
    with RepositoryLock(repository, SHARED, "snapshot"):
        with pytest.raises(RepositoryLocked) as caught:
            RepositoryLock(repository, EXCLUSIVE, "gc").acquire()
        assert f"pid {os.getpid()}" in str(caught.value)
        assert socket.gethostname() in str(caught.value)
        assert len(list_locks(repository)) == 1


def test_shared_rejected_while_exclusive_held(repository):
    with RepositoryLock(repository, EXCLUSIVE, "gc"):
        with pytest.raises(RepositoryLocked):
            RepositoryLock(repository, SHARED, "snapshot").acquire()
        with pytest.raises(RepositoryLocked):
            RepositoryLock(repository, EXCLUSIVE, "gc").acquire()


class RivalBeforeWrite:
    """Storage double: a rival's lock lands just before ours, after our first check."""

    def __init__(self, backend, repository, rival_kind):
        self._backend = backend
        self._repository = repository
        self._rival_kind = rival_kind
        self.rival = None

    def write(self, name, data):
        if name.startswith("locks/") and self.rival is None:
            self.rival = "writing"  # the rival's own write passes straight through
            self.rival = write_record(self._repository, self._rival_kind, host="other-host", pid=1)
        self._backend.write(name, data)

    def __getattr__(self, attribute):
        return getattr(self._backend, attribute)


@pytest.mark.parametrize("mine, rival", [(EXCLUSIVE, SHARED), (SHARED, EXCLUSIVE), (EXCLUSIVE, EXCLUSIVE)])
def test_second_phase_sees_rival_lock(repository, mine, rival):
    original = repository.backend
    double = RivalBeforeWrite(original, repository, rival)
    repository.backend = double

    with pytest.raises(RepositoryLocked) as caught:
        RepositoryLock(repository, mine, "test").acquire()

    repository.backend = original
    assert "other-host" in str(caught.value)
    assert [r.lock_id for r in list_locks(repository)] == [double.rival.lock_id]


def test_stale_by_heartbeat_age(repository):
    record = write_record(repository, SHARED, host="other-host", pid=1, age_ns=HOUR_NS)

    reason = record.stale_reason(LockSettings().stale_seconds)

    assert reason is not None and "no heartbeat" in reason


def test_fresh_lock_of_other_host_is_not_stale(repository):
    record = write_record(repository, SHARED, host="other-host", pid=dead_pid())

    assert record.stale_reason(LockSettings().stale_seconds) is None


def test_stale_when_process_is_gone(repository):
    record = write_record(repository, SHARED, pid=dead_pid())

    reason = record.stale_reason(LockSettings().stale_seconds)

    assert reason is not None and "no longer exists" in reason


def test_exclusive_removes_stale_lock(repository):
    stale = write_record(repository, SHARED, pid=dead_pid())

    with RepositoryLock(repository, EXCLUSIVE, "gc", remove_stale=True) as lock:
        assert [r.lock_id for r in list_locks(repository)] == [lock.record.lock_id]

    assert not repository.backend.exists(stale.name)


def test_snapshot_ignores_stale_exclusive_lock(repository, tmp_path):
    stale = write_record(repository, EXCLUSIVE, host="other-host", pid=1, age_ns=HOUR_NS)
    make_tree(tmp_path / "src", {"a.txt": b"hello"})

    create_snapshot(repository, [str(tmp_path / "src")])

    assert [r.lock_id for r in list_locks(repository)] == [stale.lock_id]


def test_snapshot_rejected_while_exclusive_held(repository, tmp_path):
    make_tree(tmp_path / "src", {"a.txt": b"hello"})

    with RepositoryLock(repository, EXCLUSIVE, "gc"):
        with pytest.raises(RepositoryLocked):
            create_snapshot(repository, [str(tmp_path / "src")])

    assert repository.list_snapshot_ids() == []
    assert list_locks(repository) == []


def test_heartbeat_refreshes_lock(repository):
    settings = LockSettings(heartbeat_seconds=0.05, stale_seconds=5.0)
    with RepositoryLock(repository, SHARED, "snapshot", settings) as lock:
        first = list_locks(repository)[0].heartbeat_ns
        deadline = time.monotonic() + 10
        while list_locks(repository)[0].heartbeat_ns == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list_locks(repository)[0].heartbeat_ns > first
        lock.ensure_held()


def test_ensure_held_fails_after_lock_removed(repository):
    with RepositoryLock(repository, SHARED, "snapshot") as lock:
        remove_stale_locks(repository, remove_all=True)

        with pytest.raises(RepositoryLocked) as caught:
            lock.ensure_held()
        assert "removed" in str(caught.value)


def test_ensure_held_fails_on_new_conflicting_lock(repository):
    with RepositoryLock(repository, SHARED, "snapshot") as lock:
        write_record(repository, EXCLUSIVE, host="other-host", pid=1)

        with pytest.raises(RepositoryLocked):
            lock.ensure_held()


def test_remove_stale_locks_keeps_fresh(repository):
    fresh = write_record(repository, SHARED, host="other-host", pid=1)
    old = write_record(repository, EXCLUSIVE, host="other-host", pid=1, age_ns=HOUR_NS)
    gone = write_record(repository, SHARED, pid=dead_pid())

    removed = remove_stale_locks(repository)

    assert sorted(r.lock_id for r in removed) == sorted([old.lock_id, gone.lock_id])
    assert [r.lock_id for r in list_locks(repository)] == [fresh.lock_id]


def test_damaged_lock_blocks_and_remove_all_clears_it(repository):
    repository.backend.write("locks/" + "ab" * 32, b"\x01\x00\x01garbage")

    with pytest.raises(IntegrityError):
        list_locks(repository)
    with pytest.raises(IntegrityError):
        RepositoryLock(repository, EXCLUSIVE, "gc").acquire()

    removed = remove_stale_locks(repository, remove_all=True)

    assert len(removed) == 1
    assert list_locks(repository) == []


def test_invalid_settings_rejected():
    with pytest.raises(Exception):
        LockSettings(heartbeat_seconds=10, stale_seconds=20)


def run_cli(repo_path, *args):
    env = {**os.environ, "CASBAK_PASSWORD": PASSWORD.decode()}
    return subprocess.run(
        [sys.executable, "-c", "from casbak.cli.main import main; main()", "--repo", str(repo_path), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


def test_cli_gc_exits_4_while_snapshot_holds_lock(repository, repo_path):
    with RepositoryLock(repository, SHARED, "snapshot"):
        result = run_cli(repo_path, "gc", "--keep-last", "1")

        assert result.returncode == 4, result.stderr
        assert f"pid {os.getpid()}" in result.stderr
        assert socket.gethostname() in result.stderr
        assert len(list_locks(repository)) == 1

    result = run_cli(repo_path, "gc", "--keep-last", "1")
    assert result.returncode == 0, result.stderr


def test_cli_unlock_removes_only_stale_locks(repository, repo_path):
    with RepositoryLock(repository, SHARED, "snapshot") as held:
        stale = write_record(repository, EXCLUSIVE, host="other-host", pid=1, age_ns=HOUR_NS)

        result = run_cli(repo_path, "unlock")

        assert result.returncode == 0, result.stderr
        assert stale.lock_id[:12] in result.stdout
        assert [r.lock_id for r in list_locks(repository)] == [held.record.lock_id]

        result = run_cli(repo_path, "unlock", "--remove-all")

        assert result.returncode == 0, result.stderr
        assert list_locks(repository) == []


class RemoveLocksOnFirstFile(Progress):
    """Progress receiver that removes every lock while the snapshot runs, as `unlock --remove-all` would."""

    def __init__(self, repository):
        self.repository = repository
        self.removed = False

    def file_done(self, path, size, read):
        if not self.removed:
            self.removed = True
            remove_stale_locks(self.repository, remove_all=True)


def test_snapshot_with_lost_lock_writes_no_manifest(repository, tmp_path):
    make_tree(tmp_path / "src", {"a.txt": b"hello", "b.txt": b"world"})
    progress = RemoveLocksOnFirstFile(repository)

    with pytest.raises(RepositoryLocked) as caught:
        create_snapshot(repository, [str(tmp_path / "src")], progress=progress)

    assert "lost" in str(caught.value)
    assert progress.removed
    assert repository.list_snapshot_ids() == []


class SharedLockWithNewIndex:
    """Storage double: a snapshot's lock appears while gc writes its new index files.

    A correct snapshot cannot do this while gc holds its lock; the double stands for one
    that wrongly judged the gc lock stale.
    """

    def __init__(self, backend, repository):
        self._backend = backend
        self._repository = repository
        self.injected = False

    def write(self, name, data):
        self._backend.write(name, data)
        if name.startswith("index/") and not self.injected:
            self.injected = True
            write_record(self._repository, SHARED, host="other-host", pid=1)

    def __getattr__(self, attribute):
        return getattr(self._backend, attribute)


def test_gc_rechecks_locks_before_deleting(repository, tmp_path):
    source = tmp_path / "src"
    make_tree(source, {"a.bin": os.urandom(20_000)})
    create_snapshot(repository, [str(source)])
    (source / "a.bin").write_bytes(os.urandom(20_000))
    last = create_snapshot(repository, [str(source)]).manifest.id
    index_before = repository.backend.list("index")
    double = SharedLockWithNewIndex(repository.backend, repository)
    repository.backend = double

    with pytest.raises(RepositoryLocked):
        run_gc(repository, RetentionPolicy(last=1))

    # The new index files were written, but nothing was deleted: every old index file is still there.
    assert set(index_before) <= set(repository.backend.list("index"))
    assert double.injected
    remove_stale_locks(repository, remove_all=True)
    reopened = Repository.open(str(repository.backend.url), PASSWORD)
    restore_snapshot(reopened, load_manifest(reopened, last), str(tmp_path / "out"), str(source))
    assert (tmp_path / "out" / "a.bin").read_bytes() == (source / "a.bin").read_bytes()
