"""ObjectWriter tests: dedup, pack splitting, index files, reopen, upload failures."""

from __future__ import annotations

import errno
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest

from casbak.store.backend import LocalBackend, StagedFile
from casbak.store.index import decode_index
from casbak.store.packs import KIND_DATA, KIND_TREE, pack_path
from casbak.store.repository import Repository
from casbak.store.writer import BATCH_BYTES, BATCH_OBJECTS
from tests.conftest import FAST_KDF, PASSWORD, SMALL_PACK, small_config


def random_chunks(count: int, size: int, seed: int = 5) -> list[bytes]:
    generator = random.Random(seed)
    return [generator.randbytes(size) for _ in range(count)]


def test_put_deduplicates_within_run(repository):
    chunk = b"the same chunk" * 100

    with repository.writer() as writer:
        first = writer.put(KIND_DATA, chunk)
        second = writer.put(KIND_DATA, chunk)
        writer.flush()

    assert first[1] is True
    assert second == (first[0], False)
    assert writer.stats.objects_new == 1
    assert writer.stats.objects_known == 1
    assert writer.stats.bytes_new_raw == len(chunk)


def test_flushed_objects_survive_reopen(repository, repo_path):
    chunks = random_chunks(40, 5000)

    with repository.writer() as writer:
        digests = [writer.put(KIND_DATA, chunk)[0] for chunk in chunks]
        tree_digest = writer.put(KIND_TREE, b"tree bytes")[0]
        writer.flush()

    reopened = Repository.open(str(repo_path), PASSWORD)
    assert list(reopened.iter_objects(digests)) == chunks
    assert reopened.get(tree_digest) == b"tree bytes"
    assert len(reopened.backend.list("tree")) == 1


def test_packs_split_at_pack_size(repository):
    chunks = random_chunks(60, 8000)

    with repository.writer() as writer:
        for chunk in chunks:
            writer.put(KIND_DATA, chunk)
        writer.flush()

    packs = repository.backend.list("data")
    total = sum(len(c) for c in chunks)
    assert len(packs) == writer.stats.packs_written
    assert len(packs) >= total // SMALL_PACK
    # A pack is closed as soon as it reaches the size, so no pack is much larger.
    assert all(repository.backend.size(p) < SMALL_PACK + 16_000 for p in packs)
    assert writer.stats.bytes_uploaded == sum(repository.backend.size(p) for p in packs)


def test_index_written_every_few_packs(repository):
    chunks = random_chunks(100, 8000)

    with repository.writer(index_every=2) as writer:
        for chunk in chunks:
            writer.put(KIND_DATA, chunk)
        writer.flush()

    packs = writer.stats.packs_written
    assert packs >= 8
    assert writer.stats.index_files_written >= packs // 2
    assert len(repository.backend.list("index")) == writer.stats.index_files_written


def test_known_objects_not_rewritten(repository, repo_path):
    chunks = random_chunks(20, 6000)
    with repository.writer() as writer:
        for chunk in chunks:
            writer.put(KIND_DATA, chunk)
        writer.flush()
    files_before = repository.backend.list("")

    reopened = Repository.open(str(repo_path), PASSWORD)
    with reopened.writer() as writer:
        for chunk in chunks:
            writer.put(KIND_DATA, chunk)
        writer.flush()

    assert writer.stats.objects_new == 0
    assert writer.stats.objects_known == len(chunks)
    assert reopened.backend.list("") == files_before


def test_concurrent_puts(repository):
    chunks = random_chunks(50, 3000)

    with repository.writer() as writer:
        with ThreadPoolExecutor(max_workers=4) as pool:
            # Every chunk is put twice from different threads.
            results = list(pool.map(lambda c: writer.put(KIND_DATA, c), chunks + chunks))
        writer.flush()

    assert sum(1 for _digest, new in results if new) == len(chunks)
    assert list(repository.iter_objects([d for d, _ in results])) == chunks + chunks


def test_empty_flush_writes_nothing(repository):
    before = repository.backend.list("")

    with repository.writer() as writer:
        writer.flush()

    assert repository.backend.list("") == before


class FullDiskBackend(LocalBackend):
    """A local backend whose pack files fail to publish, as on a full disk."""

    def publish(self, staged: StagedFile, name: str) -> None:
        if name.startswith("data/"):
            staged.discard()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        super().publish(staged, name)


def test_upload_failure_raised_by_flush(repo_path):
    Repository.init(str(repo_path), PASSWORD, config=small_config(), kdf=FAST_KDF)
    repository = Repository.open(FullDiskBackend(str(repo_path)), PASSWORD)

    with repository.writer() as writer:
        writer.put(KIND_DATA, b"a chunk that cannot be stored")
        with pytest.raises(OSError) as caught:
            writer.flush()

    assert caught.value.errno == errno.ENOSPC
    assert repository.backend.list("index") == []
    assert repository.backend.list("data") == []


class FailingAfterBackend(LocalBackend):
    """A local backend whose data pack writes fail after the first `allowed` ones."""

    def __init__(self, root: str, allowed: int) -> None:
        super().__init__(root)
        self.allowed = allowed
        self.lock = threading.Lock()

    def publish(self, staged: StagedFile, name: str) -> None:
        if name.startswith("data/"):
            with self.lock:
                self.allowed -= 1
                exhausted = self.allowed < 0
            if exhausted:
                staged.discard()
                raise OSError(errno.EIO, os.strerror(errno.EIO), name)
        super().publish(staged, name)


def indexed_pack_names(repository: Repository) -> set[str]:
    names = set()
    for name in repository.backend.list("index"):
        for pack in decode_index(name.split("/", 1)[1], repository.backend.read(name), repository.sealer):
            names.add(pack_path(pack.kind, pack.pack_id))
    return names


def test_failed_flush_indexes_uploaded_packs(repo_path):
    # Packs uploaded before a failure must be indexed, so the next run reuses them.
    Repository.init(str(repo_path), PASSWORD, config=small_config(), kdf=FAST_KDF)
    backend = FailingAfterBackend(str(repo_path), allowed=5)
    repository = Repository.open(backend, PASSWORD)

    with repository.writer(upload_workers=1) as writer:
        with pytest.raises(OSError):
            for chunk in random_chunks(120, 8000):
                writer.put(KIND_DATA, chunk)
            writer.flush()
        # What an interrupted snapshot does before it re-raises.
        with pytest.raises(OSError):
            writer.flush()

    uploaded = set(repository.backend.list("data"))
    assert len(uploaded) == 5
    assert indexed_pack_names(repository) == uploaded


def test_batches_split_by_count_and_bytes(repository, repo_path):
    # Tiny objects fill a batch by count and large ones by bytes. Both kinds may share
    # a batch, but each object must land in a pack of its own kind.
    tiny = [b"tiny object %d" % number for number in range(BATCH_OBJECTS * 2 + 3)]
    large = random_chunks(BATCH_BYTES // 50_000 + 5, 50_000, seed=11)

    with repository.writer() as writer:
        tiny_digests = [writer.put(KIND_TREE if n % 2 else KIND_DATA, obj)[0] for n, obj in enumerate(tiny)]
        large_digests = [writer.put(KIND_DATA, chunk)[0] for chunk in large]
        writer.flush()

    assert writer.stats.objects_new == len(tiny) + len(large)
    reopened = Repository.open(str(repo_path), PASSWORD)
    assert list(reopened.iter_objects(tiny_digests)) == tiny
    assert list(reopened.iter_objects(large_digests)) == large
    kinds = {reopened.index.lookup(d).kind for d in tiny_digests[1::2]}
    assert kinds == {KIND_TREE}


def test_flush_sends_a_partial_batch(repository, repo_path):
    with repository.writer() as writer:
        digest, new = writer.put(KIND_DATA, b"one object, far below the batch size")
        assert new and writer.has(digest)
        writer.flush()

    assert Repository.open(str(repo_path), PASSWORD).get(digest) == b"one object, far below the batch size"


def test_failing_object_in_batch_fails_flush(repository):
    # A str cannot be compressed: sealing raises inside the seal pool. The flush must
    # report that error instead of hanging or writing a pack without the object.
    good = random_chunks(3, 4000, seed=3)

    with repository.writer() as writer:
        for chunk in good:
            writer.put(KIND_DATA, chunk)
        writer.put(KIND_DATA, "not bytes" * 100, digest=b"\x01" * 32)
        with pytest.raises(TypeError):
            writer.flush()

    assert repository.backend.list("index") == []


@pytest.mark.parametrize("kind", ["local staged files", "remote pooled buffers"])
def test_many_packs_match_their_names(kind, repository, memory_repository):
    # A local repository streams packs into staged files. Other stores build them in
    # pooled buffers that are used again after each upload. Either way every pack must
    # match its name and hold exactly its own objects.
    target = repository if kind == "local staged files" else memory_repository
    chunks = random_chunks(300, 7000, seed=21)

    with target.writer() as writer:
        digests = [writer.put(KIND_DATA, chunk)[0] for chunk in chunks]
        writer.flush()

    names = target.backend.list("data")
    assert writer.stats.packs_written == len(names)
    assert len(names) > 4
    for name in names:
        assert blake3.blake3(target.backend.read(name)).hexdigest() == name.rsplit("/", 1)[1]
    target._index = None
    assert list(target.iter_objects(digests)) == chunks


class ShortDiskBackend(LocalBackend):
    """A local backend whose staged pack files fail once they exceed `limit` bytes."""

    def __init__(self, root: str, limit: int) -> None:
        super().__init__(root)
        self.limit = limit

    def stage(self, directory_name: str) -> StagedFile:
        staged = super().stage(directory_name)
        if directory_name != "data":
            return staged
        limit = self.limit
        write = staged.write

        def write_until_full(data) -> None:
            if staged.size + len(data) > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), staged.path)
            write(data)

        staged.write = write_until_full
        return staged


def test_disk_full_while_packing_leaves_no_files(repo_path):
    # Local packs are written while they are built, so a full disk can strike in the
    # middle of a pack. The flush must fail, and no staged file may remain.
    Repository.init(str(repo_path), PASSWORD, config=small_config(), kdf=FAST_KDF)
    repository = Repository.open(ShortDiskBackend(str(repo_path), limit=20_000), PASSWORD)

    with repository.writer() as writer:
        for chunk in random_chunks(10, 7000, seed=8):
            writer.put(KIND_DATA, chunk)
        with pytest.raises(OSError) as caught:
            writer.flush()

    assert caught.value.errno == errno.ENOSPC
    leftovers = [p for p in (repo_path / "data").rglob("*") if p.is_file()]
    assert leftovers == []
    assert repository.backend.list("index") == []

