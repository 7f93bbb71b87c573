"""Storage backend tests: atomic local writes, listings, fsspec memory round trip."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from casbak.errors import ObjectNotFound, UsageError
from casbak.store.backend import FsspecBackend, LocalBackend, open_backend


def all_files(root) -> list[str]:
    found = []
    for directory, _subdirs, files in os.walk(root):
        for name in files:
            found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


def test_local_write_leaves_no_temp_files(tmp_path):
    backend = LocalBackend(str(tmp_path))

    backend.write("data/ab/abcdef", b"x" * 100_000)
    backend.write("index/0123", b"")

    assert all_files(tmp_path) == ["data/ab/abcdef", "index/0123"]
    assert backend.read("data/ab/abcdef") == b"x" * 100_000
    assert backend.read("index/0123") == b""


def test_local_write_replaces_existing(tmp_path):
    backend = LocalBackend(str(tmp_path))
    backend.write("config", b"old")

    backend.write("config", b"new content")

    assert backend.read("config") == b"new content"


def test_local_write_accepts_bytearray_and_memoryview(tmp_path):
    backend = LocalBackend(str(tmp_path))

    backend.write("a", bytearray(b"bytearray"))
    backend.write("b", memoryview(b"__memoryview__")[2:-2])

    assert backend.read("a") == b"bytearray"
    assert backend.read("b") == b"memoryview"


def test_local_write_failing_midway_hides_file(tmp_path):
    # RLIMIT_FSIZE makes write(2) fail with EFBIG once the temporary file reaches
    # 64 KiB, which is a real failure in the middle of the data.
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from casbak.store.backend import LocalBackend
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            LocalBackend(sys.argv[1]).write("data/ab/abcd", b"z" * 1_000_000)
        except OSError as exc:
            print("failed", exc.errno)
        else:
            print("written")
        """
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("failed")
    assert all_files(tmp_path) == []


def test_local_write_failing_rename_cleans_up(tmp_path):
    backend = LocalBackend(str(tmp_path))
    # A non-empty directory under the final name makes the rename fail.
    (tmp_path / "snapshots" / "abc" / "inner").mkdir(parents=True)

    with pytest.raises(OSError):
        backend.write("snapshots/abc", b"manifest")

    assert os.listdir(tmp_path / "snapshots") == ["abc"]
    assert os.listdir(tmp_path / "snapshots" / "abc") == ["inner"]


def test_local_list_ignores_temp_files(tmp_path):
    backend = LocalBackend(str(tmp_path))
    backend.write("data/ab/abcd", b"pack")
    backend.write("data/cd/cdef", b"pack")
    (tmp_path / "data" / "ab" / ".tmp-0123456789abcdef").write_bytes(b"half a pack")

    assert backend.list("data") == ["data/ab/abcd", "data/cd/cdef"]
    assert backend.list("index") == []


def test_local_read_ranges(tmp_path):
    backend = LocalBackend(str(tmp_path))
    backend.write("blob", bytes(range(100)))

    assert backend.read("blob", 0, 10) == bytes(range(10))
    assert backend.read("blob", 90) == bytes(range(90, 100))
    assert backend.read("blob", 40, 45) == bytes(range(40, 45))
    assert backend.size("blob") == 100


def test_local_missing_and_delete(tmp_path):
    backend = LocalBackend(str(tmp_path))
    backend.write("keys/one", b"k")

    backend.delete("keys/one")
    backend.delete("keys/never-existed")

    assert not backend.exists("keys/one")
    with pytest.raises(ObjectNotFound):
        backend.read("keys/one")
    with pytest.raises(ObjectNotFound):
        backend.size("keys/one")


def test_memory_backend_round_trip():
    url = f"memory://casbak-backend-{uuid.uuid4().hex}"
    backend = open_backend(url)
    assert isinstance(backend, FsspecBackend)

    backend.write("data/ab/abcd", b"0123456789")
    backend.write("index/ff", b"index")

    assert backend.read("data/ab/abcd") == b"0123456789"
    assert backend.read("data/ab/abcd", 2, 5) == b"234"
    assert backend.size("data/ab/abcd") == 10
    assert backend.list("data") == ["data/ab/abcd"]
    assert backend.list("snapshots") == []
    assert backend.exists("index/ff")

    backend.delete("index/ff")

    assert not backend.exists("index/ff")
    with pytest.raises(ObjectNotFound):
        backend.read("index/ff")


def test_open_backend_local_forms(tmp_path):
    assert isinstance(open_backend(str(tmp_path)), LocalBackend)
    assert isinstance(open_backend(f"file://{tmp_path}"), LocalBackend)
    assert open_backend(f"file://{tmp_path}").root == str(tmp_path)


def test_open_backend_empty_location():
    with pytest.raises(UsageError):
        open_backend("")


def test_local_write_syncs_new_directories(tmp_path, monkeypatch):
    # Each directory the write creates must have its entry synced in its parent, or a
    # power loss could drop the directory with the packs inside it.
    root = tmp_path / "repo"
    root.mkdir()
    synced_inodes = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced_inodes.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)

    LocalBackend(str(root)).write("data/ab/abcd", b"pack")

    for directory in (root, root / "data", root / "data" / "ab"):
        assert directory.stat().st_ino in synced_inodes, directory
