"""Snapshot tests for the walker's own reads of small files and the reader-thread slots.

Files up to INLINE_READ_LIMIT are opened straight from the directory listing, read in
one call and checked with fstat before and after. These tests change, replace, delete
and lock such files at each step of that path and check what the snapshot stores.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from casbak.catalog import load_manifest, lookup_path
from casbak.operations.local_files import read_small
from casbak.operations.progress import Progress
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import INLINE_READ_LIMIT, READ_ATTEMPTS, create_snapshot
from casbak.operations.sources import PathFilter
from casbak.store.repository import Repository
from casbak.tree import DIRECTORY, FIFO, FILE, SYMLINK
from tests.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKER, make_tree, read_tree, small_config
from tests.operations.test_snapshot import jsonl_rows, nobody_workspace, run_as_nobody  # noqa: F401

LARGE = INLINE_READ_LIMIT + 4096


def small_files(count: int, seed: int) -> dict[str, bytes]:
    """Return `count` JSON-lines files of 100 bytes to 6 KB, like many small shards."""
    return {f"item-{i:04d}.json": jsonl_rows(1 + (i * 7 + seed) % 40, seed + i) for i in range(count)}


def restored(repository: Repository, result, source: Path, target: Path) -> dict:
    restore_snapshot(repository, result.manifest, str(target), str(source))
    return read_tree(target)


class AfterFile(Progress):
    """Run `action` once, right after the walker reports the file named `marker` as stored."""

    def __init__(self, marker: bytes, action: Callable[[], None]) -> None:
        self.marker = marker
        self.action = action
        self.done = False

    def file_done(self, path: bytes, size: int, read: bool) -> None:
        if not self.done and path.endswith(self.marker):
            self.done = True
            self.action()


class AppendOnRead(AfterFile):
    """Append a row to `victim` on each of the next `times` reads after `marker` is stored."""

    def __init__(self, marker: bytes, victim: Path, times: int) -> None:
        super().__init__(marker, lambda: None)
        self.victim = victim
        self.remaining = times

    def bytes_done(self, count: int) -> None:
        if self.done and self.remaining > 0:
            self.remaining -= 1
            with open(self.victim, "ab") as handle:
                handle.write(b'{"late": "row"}\n')


# Stored content, hashes and statistics


def test_small_files_restore_identical(repository, tmp_path):
    source = tmp_path / "source"
    spec = {"a": small_files(30, 1), "b": small_files(30, 2), "empty.json": b"", "tiny.json": b"{}\n"}
    make_tree(source, spec)
    total = sum(len(v) for v in spec["a"].values()) + sum(len(v) for v in spec["b"].values()) + 3

    result = create_snapshot(repository, [str(source)])

    assert result.stats.files_new == 62
    assert result.stats.bytes_total == total
    assert result.stats.bytes_read == total
    assert result.stats.errors == 0
    assert restored(repository, result, source, tmp_path / "target") == spec


@pytest.mark.parametrize("size", [0, 1, SMALL_CHUNKER.min_size, SMALL_CHUNKER.min_size + 1, 20_000, INLINE_READ_LIMIT])
def test_small_file_hashes(repository, tmp_path, size):
    # The repository's chunker has a 1 KiB minimum, so these sizes give zero, one and
    # several chunks. The content hash must cover the whole file in every case.
    source = tmp_path / "source"
    data = jsonl_rows(400, size)[:size]
    assert len(data) == size
    make_tree(source, {"shard.jsonl": data})

    result = create_snapshot(repository, [str(source)])

    entry = lookup_path(repository, result.manifest.tree, f"{source}/shard.jsonl")
    assert entry.type == FILE
    assert entry.size == size
    assert entry.content == repository.hasher.digest(data)
    assert entry.sha256 == hashlib.sha256(data).digest()
    assert b"".join(repository.iter_objects(entry.chunks)) == data
    if size == 0:
        assert entry.chunks == []
    elif size <= SMALL_CHUNKER.min_size:
        assert entry.chunks == [entry.content]
    elif size >= 2 * SMALL_CHUNKER.max_size:
        assert len(entry.chunks) > 1


def test_small_file_metadata_from_fstat(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"rows.jsonl": b'{"a": 1}\n'})
    path = source / "rows.jsonl"
    path.chmod(0o640)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    expected = path.lstat()

    result = create_snapshot(repository, [str(source)])

    entry = lookup_path(repository, result.manifest.tree, str(path))
    assert entry.mode == 0o640
    assert entry.mtime_ns == expected.st_mtime_ns
    assert entry.ctime_ns == expected.st_ctime_ns
    assert entry.inode == expected.st_ino
    assert (entry.uid, entry.gid) == (expected.st_uid, expected.st_gid)


# Files that change between the listing and the read


def test_small_file_changed_once_is_reread(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a-first.json": b"{}\n", "b-victim.json": jsonl_rows(20, 3)})
    victim = source / "b-victim.json"
    progress = AppendOnRead(b"a-first.json", victim, times=1)

    result = create_snapshot(repository, [str(source)], progress=progress)

    assert progress.remaining == 0
    assert result.warnings == []
    assert result.stats.bytes_read > result.stats.bytes_total
    tree = restored(repository, result, source, tmp_path / "target")
    assert tree["b-victim.json"] == victim.read_bytes()
    assert tree["b-victim.json"].endswith(b'{"late": "row"}\n')


def test_small_file_always_changing_warns(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a-first.json": b"{}\n", "b-victim.json": jsonl_rows(20, 4)})
    victim = source / "b-victim.json"
    progress = AppendOnRead(b"a-first.json", victim, times=10**9)

    result = create_snapshot(repository, [str(source)], progress=progress)

    assert [w["path"] for w in result.warnings] == [str(victim)]
    assert f"{READ_ATTEMPTS} times" in result.warnings[0]["warning"]
    assert result.manifest.partial is False
    entry = lookup_path(repository, result.manifest.tree, str(victim))
    stored = b"".join(repository.iter_objects(entry.chunks))
    assert len(stored) == entry.size
    assert victim.read_bytes().startswith(stored)


def replace_with(kind: str, victim: Path) -> Callable[[], None]:
    def action() -> None:
        victim.unlink()
        if kind == "fifo":
            os.mkfifo(victim)
        elif kind == "symlink":
            victim.symlink_to("a-first.json")
        else:
            make_tree(victim, {"inside.json": b"[]\n"})

    return action


@pytest.mark.parametrize("kind, expected", [("fifo", FIFO), ("symlink", SYMLINK), ("directory", DIRECTORY)])
def test_listed_file_replaced_stored_by_new_type(repository, tmp_path, kind, expected):
    # The listing reported a regular file, but the name is something else by the time
    # the walker opens it. It must be stored as what it now is, and a FIFO must not block.
    source = tmp_path / "source"
    make_tree(source, {"a-first.json": b"{}\n", "b-victim.json": b"[1]\n", "c-last.json": b"[2]\n"})
    victim = source / "b-victim.json"
    progress = AfterFile(b"a-first.json", replace_with(kind, victim))

    result = create_snapshot(repository, [str(source)], progress=progress)

    assert progress.done
    assert result.errors == []
    assert lookup_path(repository, result.manifest.tree, str(victim)).type == expected
    assert lookup_path(repository, result.manifest.tree, f"{source}/c-last.json").size == 4


def test_listed_file_deleted_recorded(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a-first.json": b"{}\n", "b-victim.json": b"[1]\n", "c-last.json": b"[2]\n"})
    victim = source / "b-victim.json"
    progress = AfterFile(b"a-first.json", victim.unlink)

    result = create_snapshot(repository, [str(source)], progress=progress)

    assert [e["path"] for e in result.errors] == [str(victim)]
    assert "No such file" in result.errors[0]["error"]
    assert result.manifest.partial is True
    assert sorted(restored(repository, result, source, tmp_path / "target")) == ["a-first.json", "c-last.json"]


def test_listed_file_grown_large_read_by_reader(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a-first.json": b"{}\n", "b-victim.json": b"[1]\n"})
    victim = source / "b-victim.json"
    grown = jsonl_rows(1200, 5)
    assert len(grown) > INLINE_READ_LIMIT
    progress = AfterFile(b"a-first.json", lambda: victim.write_bytes(grown))

    result = create_snapshot(repository, [str(source)], progress=progress)

    assert result.errors == []
    assert restored(repository, result, source, tmp_path / "target")["b-victim.json"] == grown


@dataclass
class ChangeAfterLstat(PathFilter):
    """An exclude filter that runs `action` when it is called for `victim`, right after its lstat.

    The walker consults the filter between the lstat and the open of every entry, so
    this reaches the step that the Progress callbacks cannot.
    """

    victim: bytes = b""
    action: Optional[Callable[[], None]] = None
    # Shared with the copy that create_snapshot makes with dataclasses.replace().
    calls: list[bytes] = field(default_factory=list)

    def reason(self, path: bytes, st: os.stat_result) -> Optional[str]:
        if path == self.victim and not self.calls:
            self.calls.append(path)
            self.action()
        return super().reason(path, st)


def test_file_replaced_by_fifo_after_lstat(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a-first.json": b"{}\n", "b-victim.json": b"[1]\n"})
    victim = source / "b-victim.json"
    exclude = ChangeAfterLstat(max_file_size=10**9, victim=os.fsencode(victim), action=replace_with("fifo", victim))

    result = create_snapshot(repository, [str(source)], exclude=exclude)

    assert exclude.calls == [os.fsencode(victim)]
    assert [e["path"] for e in result.errors] == [str(victim)]
    assert "no longer a regular file" in result.errors[0]["error"]


def test_file_grown_after_lstat_stored_whole(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a-first.json": b"{}\n", "b-victim.json": b"[1]\n"})
    victim = source / "b-victim.json"
    grown = jsonl_rows(1200, 6)
    assert len(grown) > INLINE_READ_LIMIT
    exclude = ChangeAfterLstat(max_file_size=10**9, victim=os.fsencode(victim), action=lambda: victim.write_bytes(grown))

    result = create_snapshot(repository, [str(source)], exclude=exclude)

    assert exclude.calls == [os.fsencode(victim)]
    assert result.errors == []
    assert restored(repository, result, source, tmp_path / "target")["b-victim.json"] == grown


def test_changed_small_file_with_parent_reread(repository, tmp_path):
    # With a parent snapshot the walker takes the lstat path; a change during the read
    # must still be caught there.
    source = tmp_path / "source"
    make_tree(source, {"a-first.json": b"{}\n", "b-victim.json": jsonl_rows(20, 7)})
    create_snapshot(repository, [str(source)])
    victim = source / "b-victim.json"
    victim.write_bytes(jsonl_rows(21, 7))
    progress = AppendOnRead(b"a-first.json", victim, times=1)

    result = create_snapshot(repository, [str(source)], progress=progress)

    assert result.stats.files_changed == 1
    assert result.warnings == []
    assert restored(repository, result, source, tmp_path / "target")["b-victim.json"] == victim.read_bytes()


def test_unreadable_small_file_recorded(nobody_workspace):  # noqa: F811
    source = nobody_workspace / "source"
    make_tree(source, {"a.json": b"[1]\n", "b-secret.json": b"[2]\n", "c.json": b"[3]\n"})
    (source / "b-secret.json").chmod(0o600)
    repo = nobody_workspace / "repo"
    Repository.init(str(repo), PASSWORD, config=small_config(), kdf=FAST_KDF)
    for directory, subdirs, files in os.walk(repo):
        for name in [directory] + [os.path.join(directory, n) for n in subdirs + files]:
            os.chown(name, 65534, 65534)

    child = run_as_nobody(
        """
        from casbak.store.repository import Repository
        from casbak.operations.snapshot import create_snapshot
        repository = Repository.open(sys.argv[1], sys.argv[2].encode())
        result = create_snapshot(repository, [sys.argv[3]])
        print(json.dumps({"id": result.manifest.id, "errors": result.manifest.errors, "files": result.stats.files_new}))
        """,
        str(repo), PASSWORD.decode(), str(source),
    )

    assert child.returncode == 0, child.stderr
    output = json.loads(child.stdout.strip().splitlines()[-1])
    assert [e["path"] for e in output["errors"]] == [f"{source}/b-secret.json"]
    assert "Permission denied" in output["errors"][0]["error"]
    assert output["files"] == 2
    repository = Repository.open(str(repo), PASSWORD)
    stored = load_manifest(repository, output["id"])
    assert stored.partial is True
    target = nobody_workspace / "target"
    restore_snapshot(repository, stored, str(target), str(source))
    assert read_tree(target) == {"a.json": b"[1]\n", "c.json": b"[3]\n"}


# Reader threads and their slots


def test_reader_slots_across_directories(repository, tmp_path):
    # More large files than the reader window holds, spread over directories and mixed
    # with small ones, so directories finish while reads of later ones are queued.
    source = tmp_path / "source"
    spec = {}
    for folder in range(4):
        files = {f"big-{i}.jsonl": jsonl_rows(1000, folder * 10 + i) for i in range(5)}
        files.update(small_files(5, folder))
        spec[f"dir-{folder}"] = files
    make_tree(source, spec)

    result = create_snapshot(repository, [str(source)], reader_threads=1)

    assert result.stats.files_new == 40
    assert result.stats.directories >= 5
    assert restored(repository, result, source, tmp_path / "target") == spec


class FailInReader(Progress):
    """Raise from a reader thread, as a bug in the read path would."""

    def bytes_done(self, count: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("reader failed on purpose")


def test_reader_exception_aborts_snapshot(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a.json": b"[1]\n", "big.jsonl": jsonl_rows(1000, 8), "c.json": b"[3]\n"})

    with pytest.raises(RuntimeError, match="reader failed on purpose"):
        create_snapshot(repository, [str(source)], progress=FailInReader())

    assert repository.list_snapshot_ids() == []


# read_small


def test_read_small_returns_extra_byte_when_grown(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        with open(path, "ab") as handle:
            handle.write(b"abc")
        data = read_small(fd, size)
    finally:
        os.close(fd)

    assert data == b"0123456789a"


def test_read_small_collects_short_reads():
    # A pipe returns what has been written so far, like a file system with short reads.
    read_end, write_end = os.pipe()

    def write_slowly() -> None:
        for piece in (b"first-", b"second-", b"third"):
            os.write(write_end, piece)
            time.sleep(0.05)
        os.close(write_end)

    writer = threading.Thread(target=write_slowly)
    writer.start()
    try:
        data = read_small(read_end, 100)
    finally:
        writer.join()
        os.close(read_end)

    assert data == b"first-second-third"
