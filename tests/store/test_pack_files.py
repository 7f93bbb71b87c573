"""PackFiles: ranged reads of pack files through descriptors kept open between reads."""

from __future__ import annotations

import os
import random
import threading

import pytest

from casbak.errors import ObjectNotFound
from casbak.store.packs import KIND_DATA, pack_path
from casbak.store.repository import PackFiles, Repository


def store_chunks(repository: Repository, count: int, size: int) -> list[bytes]:
    """Store `count` random chunks. With the test pack size, they span several packs."""
    rng = random.Random(count * 1000 + size)
    chunks = [rng.randbytes(size) for _ in range(count)]
    with repository.writer() as writer:
        for chunk in chunks:
            writer.put(KIND_DATA, chunk)
        writer.flush()
    return chunks


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_reads_match_iter_objects_across_packs(repository):
    chunks = store_chunks(repository, 40, 9000)
    digests = [repository.hasher.digest(chunk) for chunk in chunks]
    packs = {repository.index.lookup(digest).pack_id for digest in digests}
    # One descriptor per thread forces an eviction at every change of pack.
    pack_files = PackFiles(repository, max_open=1)

    try:
        restored = list(repository.iter_objects(digests, packs=pack_files))
        again = list(repository.iter_objects(list(reversed(digests)), max_read=1, packs=pack_files))
    finally:
        pack_files.close()

    assert len(packs) > 1
    assert restored == chunks
    assert again == list(reversed(chunks))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_close_releases_every_thread_descriptor(repository):
    chunks = store_chunks(repository, 30, 9000)
    digests = [repository.hasher.digest(chunk) for chunk in chunks]
    before = open_descriptors()
    pack_files = PackFiles(repository, max_open=4)
    results: dict[int, list[bytes]] = {}

    def read_all(number: int) -> None:
        results[number] = list(repository.iter_objects(digests, packs=pack_files))

    threads = [threading.Thread(target=read_all, args=(number,)) for number in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    opened = open_descriptors()
    pack_files.close()

    assert results == {number: chunks for number in range(3)}
    assert opened > before
    assert open_descriptors() == before


def test_missing_pack_is_object_not_found(repository, repo_path):
    chunks = store_chunks(repository, 3, 5000)
    digest = repository.hasher.digest(chunks[0])
    location = repository.index.lookup(digest)
    pack = next(path for path in (repo_path / "data").rglob(location.pack_id))
    pack.unlink()
    pack_files = PackFiles(repository)

    with pytest.raises(ObjectNotFound, match=location.pack_id):
        list(repository.iter_objects([digest], packs=pack_files))

    pack_files.close()


def test_read_past_end_returns_short(repository):
    chunks = store_chunks(repository, 2, 5000)
    location = repository.index.lookup(repository.hasher.digest(chunks[0]))
    name = pack_path(location.kind, location.pack_id)
    size = repository.backend.size(name)
    pack_files = PackFiles(repository)

    try:
        tail = pack_files.read(name, size - 10, size + 100)
    finally:
        pack_files.close()

    assert tail == repository.backend.read(name, size - 10, size)


def test_other_backends_read_without_descriptors(memory_repository):
    chunks = store_chunks(memory_repository, 10, 7000)
    digests = [memory_repository.hasher.digest(chunk) for chunk in chunks]
    pack_files = PackFiles(memory_repository)

    assert list(memory_repository.iter_objects(digests, packs=pack_files)) == chunks
    pack_files.close()
