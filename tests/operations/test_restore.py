"""Restore tests: property-based round trips and safety against hostile trees and targets."""

from __future__ import annotations

import os
import random
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casbak.catalog import load_manifest
from casbak.errors import CorruptObject, PathNotFound, RestoreError
from casbak.manifest import Manifest
import casbak.operations.restore as restore_module
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from casbak.store.packs import KIND_DATA, KIND_TREE
from casbak.store.repository import Repository
from casbak.tree import DIRECTORY, FILE, SYMLINK, TREE_VERSION, Entry, Tree
from tests.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKER, make_tree, read_tree, small_config

# Hypothesis builds trees from these pieces. Names are raw bytes: Linux allows any
# byte except "/" and NUL, and ML data sets do contain names that are not UTF-8.
SPECIAL_NAMES = [b"\xff\xfe.jsonl", b"caf\xc3\xa9.txt", b"-rf", b" space ", b".hidden", b"a" * 200]
FILE_MODES = [0o600, 0o644, 0o755, 0o400, 0o4755]
DIRECTORY_MODES = [0o755, 0o700, 0o500]
# Signed 32-bit seconds (1901 to 2038) with nanoseconds: every common Linux file system
# stores that range, and pre-1970 times exercise negative values.
MTIMES_NS = st.integers(min_value=-(2**31 - 1) * 10**9, max_value=(2**31 - 1) * 10**9)

names = st.one_of(
    st.sampled_from(SPECIAL_NAMES),
    st.binary(min_size=1, max_size=16).filter(lambda n: b"/" not in n and b"\x00" not in n and n not in (b".", b"..")),
)
# Sizes up to 5x the maximum chunk, so files cross several chunk boundaries.
contents = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.builds(lambda seed, size: random.Random(seed).randbytes(size), st.integers(0, 2**32), st.integers(0, 5 * SMALL_CHUNKER.max_size)),
)
files = st.tuples(st.just("file"), contents, st.sampled_from(FILE_MODES), MTIMES_NS)
symlinks = st.tuples(st.just("symlink"), st.sampled_from([b"missing/target", b"/nonexistent/abs", b"..", b"\xff\xfe.jsonl"]), MTIMES_NS)
trees = st.recursive(
    st.dictionaries(names, st.one_of(files, symlinks), max_size=4),
    lambda children: st.dictionaries(
        names,
        st.one_of(files, symlinks, st.tuples(st.just("dir"), children, st.sampled_from(DIRECTORY_MODES), MTIMES_NS)),
        max_size=4,
    ),
    max_leaves=12,
)


def build(root: bytes, spec: dict) -> None:
    """Create `spec` below the existing directory `root`, setting modes and times."""
    for name, value in spec.items():
        path = os.path.join(root, name)
        kind = value[0]
        if kind == "file":
            _kind, data, mode, mtime = value
            with open(path, "wb") as handle:
                handle.write(data)
            os.chmod(path, mode)
            os.utime(path, ns=(mtime, mtime))
        elif kind == "symlink":
            _kind, target, mtime = value
            os.symlink(target, path)
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
        else:
            _kind, children, mode, mtime = value
            os.mkdir(path)
            build(path, children)
            os.chmod(path, mode)
            os.utime(path, ns=(mtime, mtime))


def describe(root: bytes) -> dict:
    """Map every relative path below `root` to its type, mode, mtime and content."""
    found = {}
    for directory, subdirs, filenames in os.walk(root):
        for name in subdirs + filenames:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            st_ = os.lstat(path)
            if stat.S_ISLNK(st_.st_mode):
                found[relative] = ("symlink", os.readlink(path), st_.st_mtime_ns)
            elif stat.S_ISDIR(st_.st_mode):
                found[relative] = ("dir", stat.S_IMODE(st_.st_mode), st_.st_mtime_ns)
            else:
                with open(path, "rb") as handle:
                    data = handle.read()
                found[relative] = ("file", stat.S_IMODE(st_.st_mode), st_.st_mtime_ns, data)
    return found


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=trees, encrypted=st.booleans())
def test_round_trip_random_trees(spec, encrypted):
    with tempfile.TemporaryDirectory() as work:
        work_bytes = os.fsencode(work)
        source = os.path.join(work_bytes, b"source")
        os.mkdir(source)
        build(source, spec)
        expected = describe(source)
        password = PASSWORD if encrypted else None
        repository = Repository.init(os.path.join(work, "repo"), password, config=small_config(encrypted), kdf=FAST_KDF)
        target = os.path.join(work_bytes, b"target")

        result = create_snapshot(repository, [os.fsdecode(source)])
        restore_snapshot(repository, result.manifest, os.fsdecode(target), os.fsdecode(source))

        assert result.manifest.partial is False
        assert describe(target) == expected


def test_round_trip_after_reopen(repository, repo_path, tmp_path):
    source = tmp_path / "source"
    spec = {"a.jsonl": random.Random(3).randbytes(70_000), "d": {"e": {"f.txt": b"deep"}}, "l": ("symlink", "d/e")}
    make_tree(source, spec)
    snapshot_id = create_snapshot(repository, [str(source)]).manifest.id

    reopened = Repository.open(str(repo_path), PASSWORD)
    restore_snapshot(reopened, load_manifest(reopened, snapshot_id), str(tmp_path / "target"), str(source))

    assert read_tree(tmp_path / "target") == spec


def test_restore_whole_snapshot_mirrors_absolute_paths(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"x.txt": b"x"})
    manifest = create_snapshot(repository, [str(source)]).manifest
    target = tmp_path / "target"

    restore_snapshot(repository, manifest, str(target))

    assert (target / str(source).lstrip("/") / "x.txt").read_bytes() == b"x"


def test_restore_single_file_path(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"d": {"model.safetensors": b"weights" * 1000}})
    manifest = create_snapshot(repository, [str(source)]).manifest

    restore_snapshot(repository, manifest, str(tmp_path / "out"), f"{source}/d/model.safetensors")

    assert os.listdir(tmp_path / "out") == ["model.safetensors"]
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"weights" * 1000


def test_restore_unknown_path_fails(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a": b"1"})
    manifest = create_snapshot(repository, [str(source)]).manifest

    with pytest.raises(PathNotFound):
        restore_snapshot(repository, manifest, str(tmp_path / "out"), f"{source}/missing")


# Hostile trees written through the API


def store_manifest(repository: Repository, tree_digest: bytes) -> Manifest:
    manifest = Manifest(
        time_ns=time.time_ns(), hostname=socket.gethostname(), username="test", sources=["/crafted"],
        tree=tree_digest, program_version="test",
    )
    manifest.id = repository.write_manifest(manifest.encode())
    return manifest


def store_raw_tree(repository: Repository, entries: list[dict], chunk: bytes = b"payload") -> bytes:
    """Store a tree from raw wire entries, bypassing Tree.encode's checks."""
    with repository.writer() as writer:
        writer.put(KIND_DATA, chunk)
        digest, _new = writer.put(KIND_TREE, msgpack.packb({"version": TREE_VERSION, "entries": entries}))
        writer.flush()
    return digest


def file_wire(repository: Repository, name: bytes, chunk: bytes = b"payload") -> dict:
    digest = repository.hasher.digest(chunk)
    return Entry(name=name, type=FILE, mode=0o644, size=len(chunk), chunks=[digest], content=digest).to_wire()


@pytest.mark.parametrize("bad_name", [b"..", b".", b"a/b", b"../escape", b"/abs", b"", b"nul\x00"])
def test_restore_rejects_bad_names(repository, tmp_path, bad_name):
    digest = store_raw_tree(repository, [file_wire(repository, bad_name)])
    manifest = store_manifest(repository, digest)
    target = tmp_path / "nest" / "target"

    with pytest.raises(CorruptObject):
        restore_snapshot(repository, manifest, str(target))

    assert sorted(os.listdir(tmp_path)) == ["nest", "repo"]
    assert os.listdir(tmp_path / "nest") == ["target"]
    assert os.listdir(target) == []


def test_restore_rejects_duplicate_symlink_and_dir(repository, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    inner = store_raw_tree(repository, [file_wire(repository, b"victim")])
    entries = [
        Entry(name=b"d", type=SYMLINK, target=os.fsencode(outside)).to_wire(),
        Entry(name=b"d", type=DIRECTORY, mode=0o755, subtree=inner).to_wire(),
    ]
    manifest = store_manifest(repository, store_raw_tree(repository, entries))

    with pytest.raises(CorruptObject):
        restore_snapshot(repository, manifest, str(tmp_path / "target"))

    assert os.listdir(outside) == []


def test_restore_rejects_unsorted_entries(repository, tmp_path):
    entries = [file_wire(repository, b"b"), file_wire(repository, b"a")]
    manifest = store_manifest(repository, store_raw_tree(repository, entries))

    with pytest.raises(CorruptObject):
        restore_snapshot(repository, manifest, str(tmp_path / "target"))


def test_symlink_then_directory_across_restores(repository, tmp_path):
    # The first restore leaves `d` as a symlink to a directory outside the target.
    # Restoring a snapshot where `d` is a directory must replace the link, not follow it.
    outside = tmp_path / "outside"
    outside.mkdir()
    link_tree = Tree([Entry(name=b"d", type=SYMLINK, target=os.fsencode(outside))])
    inner = store_raw_tree(repository, [file_wire(repository, b"victim")])
    dir_tree = Tree([Entry(name=b"d", type=DIRECTORY, mode=0o755, subtree=inner)])
    with repository.writer() as writer:
        link_digest = writer.put(KIND_TREE, link_tree.encode())[0]
        dir_digest = writer.put(KIND_TREE, dir_tree.encode())[0]
        writer.flush()
    target = tmp_path / "target"

    restore_snapshot(repository, store_manifest(repository, link_digest), str(target))
    assert (target / "d").is_symlink()
    restore_snapshot(repository, store_manifest(repository, dir_digest), str(target))

    assert os.listdir(outside) == []
    assert not (target / "d").is_symlink()
    assert (target / "d" / "victim").read_bytes() == b"payload"


def test_existing_symlink_replaced_not_followed(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"train.jsonl": b'{"prompt": "new"}\n'})
    manifest = create_snapshot(repository, [str(source)]).manifest
    victim = tmp_path / "victim.jsonl"
    victim.write_bytes(b"precious")
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(victim, target / "train.jsonl")

    restore_snapshot(repository, manifest, str(target), str(source))

    assert victim.read_bytes() == b"precious"
    assert not (target / "train.jsonl").is_symlink()
    assert (target / "train.jsonl").read_bytes() == b'{"prompt": "new"}\n'


def test_existing_hard_link_not_written_through(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"train.jsonl": b"restored content"})
    manifest = create_snapshot(repository, [str(source)]).manifest
    victim = tmp_path / "victim.jsonl"
    victim.write_bytes(b"precious")
    target = tmp_path / "target"
    target.mkdir()
    os.link(victim, target / "train.jsonl")

    restore_snapshot(repository, manifest, str(target), str(source))

    assert victim.read_bytes() == b"precious"
    assert os.stat(victim).st_nlink == 1
    assert (target / "train.jsonl").read_bytes() == b"restored content"


def test_existing_directory_symlink_in_target_not_followed(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"configs": {"dpo.yaml": b"beta: 0.1\n"}})
    manifest = create_snapshot(repository, [str(source)]).manifest
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "configs")

    restore_snapshot(repository, manifest, str(target), str(source))

    assert os.listdir(outside) == []
    assert (target / "configs" / "dpo.yaml").read_bytes() == b"beta: 0.1\n"


def test_directory_in_way_of_file_fails(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a": b"file"})
    manifest = create_snapshot(repository, [str(source)]).manifest
    target = tmp_path / "target"
    (target / "a").mkdir(parents=True)

    with pytest.raises(RestoreError):
        restore_snapshot(repository, manifest, str(target), str(source))


def test_tampered_chunk_detected(repository, tmp_path):
    # A file entry whose content hash does not match its chunks must fail the restore.
    chunk = b"real chunk"
    digest = repository.hasher.digest(chunk)
    wrong = Entry(name=b"f", type=FILE, mode=0o644, size=len(chunk), chunks=[digest], content=b"\x00" * 32)
    manifest = store_manifest(repository, store_raw_tree(repository, [wrong.to_wire()], chunk))

    with pytest.raises(CorruptObject):
        restore_snapshot(repository, manifest, str(tmp_path / "target"))


def test_restore_over_previous_restore(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a.txt": b"version one, which is longer", "d": {"b.txt": b"b"}})
    first = create_snapshot(repository, [str(source)]).manifest
    (source / "a.txt").write_bytes(b"version two")
    (source / "d" / "b.txt").unlink()
    (source / "d" / "b.txt").symlink_to("../a.txt")
    second = create_snapshot(repository, [str(source)]).manifest
    target = tmp_path / "target"
    restore_snapshot(repository, first, str(target), str(source))

    restore_snapshot(repository, second, str(target), str(source))

    assert (target / "a.txt").read_bytes() == b"version two"
    assert os.readlink(target / "d" / "b.txt") == "../a.txt"


def make_deep_chain(root: Path, depth: int) -> Path:
    """Create root/d/d/.../d (`depth` levels) with a file at the bottom; return that file."""
    directory = root
    for _level in range(depth):
        directory = directory / "d"
        directory.mkdir(parents=True)
    leaf = directory / "leaf.txt"
    leaf.write_bytes(b"bottom")
    return leaf


def test_restore_deep_tree(repository, tmp_path):
    # Deeper than Python's default recursion limit allows for three frames per level.
    depth = 450
    source = tmp_path / "source"
    leaf = make_deep_chain(source, depth)
    manifest = create_snapshot(repository, [str(source)]).manifest
    target = tmp_path / "target"

    stats = restore_snapshot(repository, manifest, str(target), str(source))

    assert stats.directories == depth
    restored_leaf = target / leaf.relative_to(source)
    assert restored_leaf.read_bytes() == b"bottom"


@pytest.mark.parametrize("bad_target", [b"", b"a\x00b"])
def test_restore_rejects_bad_symlink_target(repository, tmp_path, bad_target):
    entries = [Entry(name=b"link", type=SYMLINK, target=bad_target).to_wire()]
    manifest = store_manifest(repository, store_raw_tree(repository, entries))

    with pytest.raises(CorruptObject):
        restore_snapshot(repository, manifest, str(tmp_path / "target"))

    assert os.listdir(tmp_path / "target") == []


def test_target_that_is_a_file_fails(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a": b"1"})
    manifest = create_snapshot(repository, [str(source)]).manifest
    target = tmp_path / "target"
    target.write_bytes(b"not a directory")

    with pytest.raises(RestoreError) as caught:
        restore_snapshot(repository, manifest, str(target), str(source))

    assert str(target) in str(caught.value)
    assert target.read_bytes() == b"not a directory"


WRITE_LIMIT_SCRIPT = """
import resource, signal, sys
from casbak.catalog import load_manifest
from casbak.errors import RestoreError
from casbak.operations.restore import restore_snapshot
from casbak.store.repository import Repository
repository = Repository.open(sys.argv[1], sys.argv[2].encode())
manifest = load_manifest(repository, sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    restore_snapshot(repository, manifest, sys.argv[4], sys.argv[5])
except RestoreError as exc:
    print("RestoreError", exc)
"""


def test_write_failure_becomes_restore_error(repository, repo_path, tmp_path):
    # RLIMIT_FSIZE makes the restore's write(2) fail with EFBIG, as a full disk would.
    source = tmp_path / "source"
    make_tree(source, {"big.jsonl": random.Random(9).randbytes(300_000)})
    manifest = create_snapshot(repository, [str(source)]).manifest
    target = tmp_path / "target"

    child = subprocess.run(
        [sys.executable, "-c", WRITE_LIMIT_SCRIPT, str(repo_path), PASSWORD.decode(), manifest.id, str(target), str(source)],
        capture_output=True, text=True, timeout=120,
    )

    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("RestoreError restore into")
    assert "File too large" in child.stdout


def test_snapshot_deeper_than_recursion_limit(repository, tmp_path):
    # The walker used two Python frames per level and failed near 500 levels.
    depth = 1200
    source = tmp_path / "source"
    leaf = make_deep_chain(source, depth)

    result = create_snapshot(repository, [str(source)])
    target = tmp_path / "target"
    stats = restore_snapshot(repository, result.manifest, str(target), str(source))

    assert result.manifest.partial is False
    assert stats.directories == depth
    assert (target / leaf.relative_to(source)).read_bytes() == b"bottom"
    # shutil.rmtree recurses once per level, so pytest could not clean this up later.
    remove_deep_chain(source)
    remove_deep_chain(target)


def remove_deep_chain(root: Path) -> None:
    """Delete a tree made by make_deep_chain() from the bottom up, without recursion."""
    directories = [root]
    while True:
        children = [child for child in directories[-1].iterdir() if child.is_dir() and not child.is_symlink()]
        if not children:
            break
        directories.append(children[0])
    for directory in reversed(directories):
        for child in directory.iterdir():
            if not child.is_dir() or child.is_symlink():
                child.unlink()
        directory.rmdir()


# Writer threads and batches


@pytest.fixture
def tiny_batches(monkeypatch):
    """Batches of at most three files, 20,000 bytes or two directories, and one queued
    batch per thread, so that small trees cross every batch boundary and fill the queue."""
    monkeypatch.setattr(restore_module, "BATCH_FILES", 3)
    monkeypatch.setattr(restore_module, "BATCH_BYTES", 20_000)
    monkeypatch.setattr(restore_module, "BATCH_DIRECTORIES", 2)
    monkeypatch.setattr(restore_module, "QUEUED_BATCHES_PER_THREAD", 1)


def batch_source(root: Path) -> Path:
    """A tree whose files fill several batches: small files, one file above BATCH_BYTES,
    and a read-only directory, each with its own mode and mtime."""
    source = root / "source"
    rng = random.Random(11)
    spec = {
        "flat": {f"f{number:02d}.jsonl": rng.randbytes(rng.randint(0, 3000)) for number in range(10)},
        "large.safetensors": rng.randbytes(50_000),
        "sealed": {"a.txt": b"a", "b.txt": b"b", "inner": {"c.txt": b"c"}},
    }
    make_tree(source, spec)
    for number in range(10):
        path = source / "flat" / f"f{number:02d}.jsonl"
        os.chmod(path, FILE_MODES[number % len(FILE_MODES)])
        os.utime(path, ns=(number * 10**9 + 7, number * 10**9 + 7))
    os.utime(source / "large.safetensors", ns=(123, 123))
    for directory, mode, mtime in [("sealed/inner", 0o700, 5 * 10**9), ("sealed", 0o500, 6 * 10**9), ("flat", 0o755, 7 * 10**9)]:
        os.chmod(source / directory, mode)
        os.utime(source / directory, ns=(mtime, mtime))
    return source


@pytest.mark.parametrize("threads", [1, 3])
def test_batches_restore_modes_and_mtimes(repository, tmp_path, tiny_batches, threads):
    source = batch_source(tmp_path)
    expected = describe(os.fsencode(source))
    manifest = create_snapshot(repository, [str(source)]).manifest
    target = tmp_path / "target"

    stats = restore_snapshot(repository, manifest, str(target), str(source), writer_threads=threads)

    assert describe(os.fsencode(target)) == expected
    assert stats.files == 14
    assert stats.directories == 3


def test_links_inside_batches_not_written_through(repository, tmp_path, tiny_batches):
    source = tmp_path / "source"
    make_tree(source, {"d": {f"f{number}.jsonl": f"row {number}\n".encode() for number in range(8)}})
    manifest = create_snapshot(repository, [str(source)]).manifest
    symlink_victim = tmp_path / "symlink-victim"
    symlink_victim.write_bytes(b"precious one")
    hard_link_victim = tmp_path / "hard-link-victim"
    hard_link_victim.write_bytes(b"precious two")
    target = tmp_path / "target"
    (target / "d").mkdir(parents=True)
    os.symlink(symlink_victim, target / "d" / "f3.jsonl")
    os.symlink(tmp_path / "missing", target / "d" / "f4.jsonl")
    os.link(hard_link_victim, target / "d" / "f5.jsonl")
    (target / "d" / "f6.jsonl").write_bytes(b"an older version, longer than the new one")

    restore_snapshot(repository, manifest, str(target), str(source))

    assert symlink_victim.read_bytes() == b"precious one"
    assert hard_link_victim.read_bytes() == b"precious two"
    assert os.stat(hard_link_victim).st_nlink == 1
    assert not (tmp_path / "missing").exists()
    assert read_tree(target) == read_tree(source)


def corrupt_data_packs(repo_path: Path) -> int:
    """Flip one byte near the start of every data pack; return how many packs changed."""
    packs = [path for path in (repo_path / "data").rglob("*") if path.is_file()]
    for path in packs:
        content = bytearray(path.read_bytes())
        content[10] ^= 0x01
        path.write_bytes(bytes(content))
    return len(packs)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("threads", [1, 2])
def test_worker_error_surfaces_and_stops(repository, repo_path, tmp_path, tiny_batches, threads):
    # The walker has more batches to queue than the queue holds, so it is usually blocked
    # on a full queue when a writer thread fails. The error must still reach it.
    source = tmp_path / "source"
    rng = random.Random(5)
    make_tree(source, {f"d{group}": {f"f{number}": rng.randbytes(2000) for number in range(9)} for group in range(4)})
    manifest = create_snapshot(repository, [str(source)]).manifest
    assert corrupt_data_packs(repo_path) > 0
    reopened = Repository.open(str(repo_path), PASSWORD)
    descriptors = open_descriptors() if os.path.isdir("/proc/self/fd") else None

    with pytest.raises(CorruptObject):
        restore_snapshot(reopened, manifest, str(tmp_path / "target"), str(source), writer_threads=threads)

    if descriptors is not None:
        assert open_descriptors() == descriptors


@pytest.mark.timeout(120)
def test_worker_os_error_becomes_restore_error(repository, tmp_path, tiny_batches):
    source = tmp_path / "source"
    make_tree(source, {"d": {f"f{number}": b"x" for number in range(7)}})
    manifest = create_snapshot(repository, [str(source)]).manifest
    target = tmp_path / "target"
    (target / "d" / "f5").mkdir(parents=True)

    with pytest.raises(RestoreError, match="f5"):
        restore_snapshot(repository, manifest, str(target), str(source))


def test_multi_chunk_content_mismatch_detected(repository, tmp_path):
    chunks = [b"first chunk of the file", b"second chunk of the file"]
    digests = [repository.hasher.digest(chunk) for chunk in chunks]
    wrong = Entry(
        name=b"f", type=FILE, mode=0o644, size=sum(map(len, chunks)), chunks=digests,
        content=repository.hasher.digest(chunks[1] + chunks[0]),
    )
    with repository.writer() as writer:
        for chunk in chunks:
            writer.put(KIND_DATA, chunk)
        tree_digest, _new = writer.put(KIND_TREE, Tree([wrong]).encode())
        writer.flush()

    with pytest.raises(CorruptObject, match="content hash"):
        restore_snapshot(repository, store_manifest(repository, tree_digest), str(tmp_path / "target"))
