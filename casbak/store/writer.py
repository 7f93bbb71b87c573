"""Concurrent object writer: deduplicates, seals, packs and uploads objects.

The write order is the commit protocol of the repository: a pack is uploaded first,
then an index file that names it, and a caller writes a manifest only after flush()
returned. A crash at any point therefore leaves packs that no index names (garbage,
which gc removes) or indexed packs that no manifest uses yet (which the next run
reuses), and never a manifest that references missing data.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from casbak.store.allocator import pin_mmap_threshold
from casbak.store.backend import LocalBackend
from casbak.store.index import PackInfo, encode_index
from casbak.store.packs import BUFFER_SLACK, KIND_DATA, KIND_TREE, PackBuffer, PackBuilder, StagedPack, pack_path

if TYPE_CHECKING:
    from casbak.store.repository import Repository

log = logging.getLogger(__name__)

# Objects go to the seal pool in batches of about this many plaintext bytes. One task
# per chunk cost a Future, a semaphore round trip and a thread switch for every 128 KiB,
# which profiles showed as the largest share of snapshot time (docs/benchmarks.md).
BATCH_BYTES = 1 << 20

# A batch is also sent once it contains this many objects, so that a run of tiny files does
# not keep thousands of objects waiting in one batch.
BATCH_OBJECTS = 256


@dataclass
class WriteStats:
    """Counters of one writer; all sizes in bytes."""

    objects_new: int = 0
    objects_known: int = 0
    bytes_new_raw: int = 0
    bytes_new_stored: int = 0
    packs_written: int = 0
    index_files_written: int = 0
    bytes_uploaded: int = 0
    per_kind_new: dict[str, int] = field(default_factory=lambda: {KIND_DATA: 0, KIND_TREE: 0})


class ObjectWriter:
    """Adds objects to a repository; safe to call put() from several threads.

    put() deduplicates at once and collects new objects into batches of about
    `BATCH_BYTES`. Each batch goes to a pool of `seal_workers` threads for compression
    (zstd releases the GIL) and encryption, so the caller can go on chunking. Finished
    packs go to `upload_workers` threads. Both queues are bounded. A local repository
    streams packs into staged files, so memory stays near (seal slots x batch size);
    other stores add (upload slots x pack size).
    Every `index_every` packs are named by one index file, so a run killed midway
    leaves at most that many uploaded packs that the next run cannot reuse.
    """

    def __init__(
        self,
        repository: "Repository",
        seal_workers: Optional[int] = None,
        upload_workers: Optional[int] = None,
        index_every: int = 4,
    ) -> None:
        pin_mmap_threshold()
        self.repository = repository
        self.stats = WriteStats()
        self._index_every = index_every
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        # A local repository gets each pack streamed into a staged file, so no pack is
        # held in memory. For other stores, pack buffers go back to this list after
        # their upload and are used again, so their pages stay mapped instead of being
        # faulted in anew for each pack.
        self._local = isinstance(repository.backend, LocalBackend)
        self._free_buffers: list[PackBuffer] = []
        self._builders = {KIND_DATA: self._new_builder(KIND_DATA), KIND_TREE: self._new_builder(KIND_TREE)}
        self._pending: set[bytes] = set()
        self._batch: list[tuple[str, bytes, bytes]] = []
        self._batch_bytes = 0
        self._unindexed: list[PackInfo] = []
        self._error: Optional[BaseException] = None
        seal_workers = seal_workers or max(2, os.cpu_count() or 2)
        self._seal_slots = threading.BoundedSemaphore(2 * seal_workers)
        self._seal_pool = ThreadPoolExecutor(max_workers=seal_workers, thread_name_prefix="casbak-seal")
        # Each upload slot is one finished pack waiting for its upload: in memory for a
        # remote store, which gets two uploads and a spare slot to cover latency. A local
        # pack is already on disk and only waits for fsync and rename, which one thread
        # keeps up with.
        upload_workers = upload_workers or (1 if self._local else 2)
        self._upload_slots = threading.BoundedSemaphore(upload_workers + 1)
        self._max_free_buffers = upload_workers
        self._upload_pool = ThreadPoolExecutor(max_workers=upload_workers, thread_name_prefix="casbak-upload")

    def has(self, digest: bytes) -> bool:
        """Return True when the object is stored or already queued by this writer."""
        return digest in self.repository.index or digest in self._pending

    def put(self, kind: str, plaintext: bytes, digest: Optional[bytes] = None) -> tuple[bytes, bool]:
        """Queue one object unless the repository has it; return (digest, newly queued).

        The object is durable only after flush() returns.
        """
        self._raise_pending_error()
        if digest is None:
            digest = self.repository.hasher.digest(plaintext)
        with self._lock:
            if digest in self.repository.index or digest in self._pending:
                self.stats.objects_known += 1
                return digest, False
            self._pending.add(digest)
            self._batch.append((kind, digest, plaintext))
            self._batch_bytes += len(plaintext)
            batch = self._take_batch(force=False)
        if batch:
            self._submit_batch(batch)
        return digest, True

    def _take_batch(self, force: bool) -> list[tuple[str, bytes, bytes]]:
        """Detach the open batch when it is full (or when forced); call with the lock held.

        The detached batch counts as one task in flight from here on, so flush() waits
        for it even before it reaches the pool.
        """
        if not self._batch:
            return []
        if not force and self._batch_bytes < BATCH_BYTES and len(self._batch) < BATCH_OBJECTS:
            return []
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._in_flight += 1
        return batch

    def _submit_batch(self, batch: list[tuple[str, bytes, bytes]]) -> None:
        # Blocking here is the back pressure that bounds memory. Letting the caller seal
        # the batch itself when all slots are taken used about the same CPU on 2 cores
        # and raised peak RSS, so it was not kept.
        self._seal_slots.acquire()
        try:
            self._seal_pool.submit(self._seal_batch, batch)
        except BaseException:
            self._seal_slots.release()
            self._finish_task()
            raise

    def flush(self) -> None:
        """Upload every open pack, wait for all uploads, and write the index of the rest.

        When flush() returns without an exception, every object put so far is stored
        and indexed. When it raises, the packs that did upload are still indexed, so
        the next run reuses them instead of uploading them again.
        """
        try:
            self._upload_open_packs()
        except BaseException:
            self._index_uploaded_quietly()
            raise
        self._write_index(force=True)

    def _upload_open_packs(self) -> None:
        with self._lock:
            batch = self._take_batch(force=True)
        if batch:
            self._submit_batch(batch)
        with self._idle:
            while self._in_flight:
                self._idle.wait()
            # After a failure the open packs stay in place, unsent, so close() can
            # discard their staged files.
            self._raise_pending_error()
            builders = [b for b in self._builders.values() if b.entries]
            for builder in builders:
                self._builders[builder.kind] = self._new_builder(builder.kind)
        for builder in builders:
            self._submit_upload(builder)
        with self._idle:
            while self._in_flight:
                self._idle.wait()
        self._raise_pending_error()

    def _index_uploaded_quietly(self) -> None:
        try:
            self._write_index(force=True)
        except Exception as exc:  # the error that stopped the flush is the one to report
            log.warning("could not index the packs uploaded before the failure: %s", exc)

    def close(self) -> None:
        self._seal_pool.shutdown(wait=True)
        self._upload_pool.shutdown(wait=True)
        # Open packs that were never uploaded (after a failure) leave no staged files.
        for builder in self._builders.values():
            if isinstance(builder.sink, StagedPack):
                builder.sink.discard()

    def __enter__(self) -> "ObjectWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _seal_batch(self, batch: list[tuple[str, bytes, bytes]]) -> None:
        """Seal a batch and add it to the open packs; errors surface in flush() and put()."""
        try:
            parts = self.repository.sealer.seal_parts_many([plaintext for _kind, _digest, plaintext in batch])
            sealed = [
                (kind, digest, sealed_parts, len(plaintext))
                for (kind, digest, plaintext), sealed_parts in zip(batch, parts)
            ]
            for full in self._add_to_packs(sealed):
                self._submit_upload(full)
        except BaseException as exc:
            log.error("sealing a batch of %d objects (first %s) failed: %s", len(batch), batch[0][1].hex()[:12], exc)
            self._error = exc
        finally:
            self._seal_slots.release()
            self._finish_task()

    def _add_to_packs(self, sealed: list[tuple[str, bytes, tuple[bytes, bytes], int]]) -> list[PackBuilder]:
        """Append sealed objects to the open packs; return the packs that became full."""
        full: list[PackBuilder] = []
        pack_size = self.repository.config.pack_size
        with self._lock:
            for kind, digest, parts, raw_length in sealed:
                builder = self._builders[kind]
                builder.add_parts(digest, parts, raw_length)
                self.stats.objects_new += 1
                self.stats.bytes_new_raw += raw_length
                self.stats.bytes_new_stored += len(parts[0]) + len(parts[1])
                self.stats.per_kind_new[kind] += 1
                if len(builder) >= pack_size:
                    full.append(builder)
                    self._builders[kind] = self._new_builder(kind)
        return full

    def _new_builder(self, kind: str) -> PackBuilder:
        """Return an empty builder; call with the lock held (or from __init__)."""
        if self._local:
            backend = self.repository.backend
            return PackBuilder(kind, StagedPack(lambda: backend.stage(kind)))
        if self._free_buffers:
            return PackBuilder(kind, self._free_buffers.pop())
        return PackBuilder(kind, PackBuffer(self.repository.config.pack_size + BUFFER_SLACK))

    def _reuse_buffer(self, builder: PackBuilder) -> None:
        # Only as many idle buffers are kept as uploads can run at once: more would stay
        # resident without ever being needed together.
        if not isinstance(builder.sink, PackBuffer):
            return
        builder.sink.clear()
        with self._lock:
            if len(self._free_buffers) < self._max_free_buffers:
                self._free_buffers.append(builder.sink)

    def _submit_upload(self, builder: PackBuilder) -> None:
        self._upload_slots.acquire()
        with self._lock:
            self._in_flight += 1
        try:
            self._upload_pool.submit(self._upload, builder)
        except BaseException:
            self._upload_slots.release()
            self._finish_task()
            raise

    def _upload(self, builder: PackBuilder) -> None:
        try:
            pack_id = builder.complete(self.repository.sealer)
            size = len(builder)
            self._store_pack(builder, pack_path(builder.kind, pack_id))
            info = PackInfo(pack_id, builder.kind, size, tuple(builder.entries))
            log.debug("uploaded %s pack %s (%d objects, %d bytes)", builder.kind, pack_id[:12], len(info.entries), size)
            self.repository.index.add_pack(info)
            with self._lock:
                for entry in builder.entries:
                    self._pending.discard(entry.digest)
                self._unindexed.append(info)
                self.stats.packs_written += 1
                self.stats.bytes_uploaded += size
            self._reuse_buffer(builder)
            self._write_index(force=False)
        except BaseException as exc:
            log.error("upload of a %s pack failed: %s", builder.kind, exc)
            if isinstance(builder.sink, StagedPack):
                builder.sink.discard()
            self._error = exc
        finally:
            self._upload_slots.release()
            self._finish_task()

    def _store_pack(self, builder: PackBuilder, name: str) -> None:
        sink = builder.sink
        if isinstance(sink, StagedPack):
            self.repository.backend.publish(sink.file, name)
            return
        with sink.view() as data:
            self.repository.backend.write(name, data)

    def _finish_task(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.notify_all()

    def _write_index(self, force: bool) -> None:
        with self._lock:
            if not self._unindexed or (not force and len(self._unindexed) < self._index_every):
                return
            packs, self._unindexed = self._unindexed, []
        index_id, sealed = encode_index(packs, self.repository.sealer)
        self.repository.backend.write(f"index/{index_id}", sealed)
        with self._lock:
            self.stats.index_files_written += 1
        log.debug("wrote index %s naming %d packs", index_id[:12], len(packs))

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            raise self._error
