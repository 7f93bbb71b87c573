"""Repository locks: lock objects in the store that keep gc away from running snapshots.

A lock is the sealed msgpack object `locks/<random id>` holding the host, process id,
kind (shared or exclusive), purpose and two UTC times in nanoseconds: when the lock was
taken and its last heartbeat. Snapshots take shared locks, forget and gc take exclusive
ones. Shared locks coexist; an exclusive lock conflicts with every other lock.

Taking a lock is two-phase, because object stores have no atomic create-if-absent:
write our own lock object, then list the locks again. If a conflicting fresh lock is
listed, remove ours and raise RepositoryLocked. With a store whose listings show every
write that completed before the listing started (local disks, S3 since 2020, GCS), two
conflicting parties cannot both miss each other: docs/gc.md gives the argument.

A lock whose heartbeat is older than `stale_seconds`, or that belongs to a process of
this host (and PID namespace) that no longer exists, is stale: it no longer conflicts,
and gc and `casbak unlock` may remove it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional

import msgpack

from casbak.errors import IntegrityError, ObjectNotFound, RepositoryLocked, UsageError
from casbak.store.repository import Repository

log = logging.getLogger(__name__)

LOCKS_PREFIX = "locks"
SHARED = "shared"
EXCLUSIVE = "exclusive"
LOCK_KINDS = (SHARED, EXCLUSIVE)
LOCK_VERSION = 1

DEFAULT_HEARTBEAT_SECONDS = 60.0
DEFAULT_STALE_SECONDS = 30 * 60.0


@dataclass(frozen=True)
class LockSettings:
    """Heartbeat interval and stale threshold of locks, in seconds.

    The stale threshold must be well above the heartbeat interval: a holder considers
    its lock lost once it has not refreshed it for half the threshold.
    """

    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    stale_seconds: float = DEFAULT_STALE_SECONDS

    def __post_init__(self) -> None:
        if self.heartbeat_seconds <= 0 or self.stale_seconds < 4 * self.heartbeat_seconds:
            raise UsageError(
                f"lock settings: heartbeat {self.heartbeat_seconds} s and stale threshold "
                f"{self.stale_seconds} s are invalid; the threshold must be at least 4 heartbeats"
            )


@dataclass
class LockRecord:
    """One lock object as stored; `lock_id` is the last part of its name."""

    lock_id: str
    kind: str
    purpose: str
    hostname: str
    pid: int
    pid_namespace: int
    created_ns: int
    heartbeat_ns: int

    @property
    def name(self) -> str:
        return f"{LOCKS_PREFIX}/{self.lock_id}"

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "version": LOCK_VERSION,
                "kind": self.kind,
                "purpose": self.purpose,
                "hostname": self.hostname,
                "pid": self.pid,
                "pid_namespace": self.pid_namespace,
                "created_ns": self.created_ns,
                "heartbeat_ns": self.heartbeat_ns,
            }
        )

    @classmethod
    def decode(cls, lock_id: str, data: bytes) -> "LockRecord":
        try:
            body = msgpack.unpackb(data)
            if body["version"] != LOCK_VERSION or body["kind"] not in LOCK_KINDS:
                raise ValueError(f"version {body['version']!r}, kind {body['kind']!r}")
            return cls(
                lock_id=lock_id,
                kind=str(body["kind"]),
                purpose=str(body["purpose"]),
                hostname=str(body["hostname"]),
                pid=int(body["pid"]),
                pid_namespace=int(body["pid_namespace"]),
                created_ns=int(body["created_ns"]),
                heartbeat_ns=int(body["heartbeat_ns"]),
            )
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise IntegrityError(f"lock {lock_id[:12]}: cannot be parsed ({exc})") from exc

    def age_seconds(self, now_ns: Optional[int] = None) -> float:
        """Seconds since the last heartbeat; negative when the holder's clock runs ahead."""
        return ((now_ns or time.time_ns()) - self.heartbeat_ns) / 1e9

    def stale_reason(self, stale_seconds: float, now_ns: Optional[int] = None) -> Optional[str]:
        """Return why the lock is stale, or None while its holder may still be running."""
        age = self.age_seconds(now_ns)
        if age > stale_seconds:
            return f"no heartbeat for {age:.0f} s (threshold {stale_seconds:.0f} s)"
        if self.hostname == socket.gethostname() and self.pid_namespace == _pid_namespace():
            if not _process_exists(self.pid):
                return f"process {self.pid} no longer exists on this host"
        return None

    def describe(self, now_ns: Optional[int] = None) -> str:
        return (
            f"{self.kind} lock {self.lock_id[:12]} of `{self.purpose}` held by pid {self.pid} "
            f"on host {self.hostname}, last heartbeat {self.age_seconds(now_ns):.0f} s ago"
        )

    def summary(self, stale_seconds: float) -> dict:
        """Return a JSON-ready view of the lock."""
        return {
            "id": self.lock_id,
            "kind": self.kind,
            "purpose": self.purpose,
            "hostname": self.hostname,
            "pid": self.pid,
            "created_ns": self.created_ns,
            "heartbeat_ns": self.heartbeat_ns,
            "age_seconds": round(self.age_seconds(), 3),
            "stale": self.stale_reason(stale_seconds),
        }


def conflicts(wanted_kind: str, other: LockRecord) -> bool:
    """Return True when a lock of `wanted_kind` may not coexist with `other`."""
    return wanted_kind == EXCLUSIVE or other.kind == EXCLUSIVE


def list_locks(repository: Repository) -> list[LockRecord]:
    """Read every lock object; a lock removed while we list it is left out.

    Raises IntegrityError for a damaged lock object, because ignoring a lock could let
    gc delete data that a running snapshot needs. `casbak unlock --remove-all` removes
    such an object.
    """
    records = []
    for name in repository.backend.list(LOCKS_PREFIX):
        lock_id = name.rsplit("/", 1)[1]
        try:
            sealed = repository.backend.read(name)
        except ObjectNotFound:
            continue
        try:
            plain = repository.sealer.open(sealed, what=f"lock {lock_id[:12]}")
            records.append(LockRecord.decode(lock_id, plain))
        except IntegrityError as exc:
            raise IntegrityError(
                f"{exc}; if no casbak process uses the repository, remove it with `casbak unlock --remove-all`"
            ) from exc
    return records


def remove_stale_locks(
    repository: Repository, stale_seconds: float = DEFAULT_STALE_SECONDS, remove_all: bool = False
) -> list[LockRecord]:
    """Delete stale locks (every lock when `remove_all`) and return those deleted."""
    removed = []
    if remove_all:
        # A damaged lock object cannot be parsed, so it is deleted by name.
        for name in repository.backend.list(LOCKS_PREFIX):
            lock_id = name.rsplit("/", 1)[1]
            repository.backend.delete(name)
            removed.append(LockRecord(lock_id, "unknown", "unknown", "unknown", 0, 0, 0, 0))
            log.warning("removed lock %s", lock_id[:12])
        return removed
    for record in list_locks(repository):
        reason = record.stale_reason(stale_seconds)
        if reason is None:
            continue
        repository.backend.delete(record.name)
        removed.append(record)
        log.warning("removed stale %s: %s", record.describe(), reason)
    return removed


class RepositoryLock:
    """A lock this process holds, refreshed by a heartbeat thread until released.

    Use as a context manager. `ensure_held()` checks, right before a step whose safety
    depends on the lock (writing a manifest, deleting packs), that the lock was neither
    removed nor left unrefreshed long enough for others to call it stale.
    """

    def __init__(
        self,
        repository: Repository,
        kind: str,
        purpose: str,
        settings: Optional[LockSettings] = None,
        remove_stale: bool = False,
    ) -> None:
        if kind not in LOCK_KINDS:
            raise UsageError(f"lock kind {kind!r}: must be one of {', '.join(LOCK_KINDS)}")
        self.repository = repository
        self.settings = settings or LockSettings()
        self.remove_stale = remove_stale
        now = time.time_ns()
        self.record = LockRecord(
            lock_id=secrets.token_hex(32),
            kind=kind,
            purpose=purpose,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            pid_namespace=_pid_namespace(),
            created_ns=now,
            heartbeat_ns=now,
        )
        self._written_at = 0.0  # time.monotonic() of the last successful write
        self._lost: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._write_lock = threading.Lock()

    def acquire(self) -> "RepositoryLock":
        """Take the lock or raise RepositoryLocked naming the conflicting holder."""
        # A first look avoids writing a lock object only to remove it again.
        self._raise_on_conflict(self._conflicting())
        self._write()
        try:
            # Second phase: a rival that wrote its lock before our write is listed now.
            self._raise_on_conflict(self._conflicting())
        except BaseException:
            self._delete()
            raise
        self._thread = threading.Thread(target=self._heartbeat, name="casbak-lock-heartbeat", daemon=True)
        self._thread.start()
        log.debug("took %s", self.record.describe())
        return self

    def ensure_held(self) -> None:
        """Raise RepositoryLocked unless the lock is still ours and no conflicting lock exists.

        NOTE: a holder that stops for more than half the stale threshold right after
        this check can still act on a lock that others have judged stale.
        """
        if self._lost:
            raise RepositoryLocked(f"{self.record.kind} lock {self.record.lock_id[:12]} was lost: {self._lost}; run the command again")
        silent = time.monotonic() - self._written_at
        if silent > self.settings.stale_seconds / 2:
            raise RepositoryLocked(
                f"{self.record.kind} lock {self.record.lock_id[:12]} was not refreshed for {silent:.0f} s, "
                "so other runs may have treated it as stale; run the command again"
            )
        if not self.repository.backend.exists(self.record.name):
            self._lost = "its lock object was removed (by `casbak unlock` or a gc that judged it stale)"
            raise RepositoryLocked(f"{self.record.kind} lock {self.record.lock_id[:12]} was lost: {self._lost}; run the command again")
        self._raise_on_conflict(self._conflicting())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._delete()
        log.debug("released %s lock %s", self.record.kind, self.record.lock_id[:12])

    def __enter__(self) -> "RepositoryLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _conflicting(self) -> list[LockRecord]:
        now = time.time_ns()
        found = []
        for other in list_locks(self.repository):
            if other.lock_id == self.record.lock_id or not conflicts(self.record.kind, other):
                continue
            reason = other.stale_reason(self.settings.stale_seconds, now)
            if reason is None:
                found.append(other)
            elif self.remove_stale:
                self.repository.backend.delete(other.name)
                log.warning("removed stale %s: %s", other.describe(now), reason)
            else:
                log.warning("ignoring stale %s: %s", other.describe(now), reason)
        return found

    def _raise_on_conflict(self, found: list[LockRecord]) -> None:
        if not found:
            return
        holders = "; ".join(other.describe() for other in found)
        raise RepositoryLocked(
            f"repository {self.repository.backend.url} is locked: {holders}. Wait for that run to finish; "
            "if it crashed, `casbak unlock` removes its lock once it is stale"
        )

    def _write(self) -> None:
        with self._write_lock:
            self.record.heartbeat_ns = time.time_ns()
            self.repository.backend.write(self.record.name, self.repository.sealer.seal(self.record.encode()))
            self._written_at = time.monotonic()

    def _delete(self) -> None:
        try:
            self.repository.backend.delete(self.record.name)
        except OSError as exc:
            log.error("could not remove lock %s: %s; `casbak unlock` removes it once stale", self.record.lock_id[:12], exc)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                if not self.repository.backend.exists(self.record.name):
                    self._lost = "its lock object was removed (by `casbak unlock` or a gc that judged it stale)"
                    log.error("%s lock %s: %s", self.record.kind, self.record.lock_id[:12], self._lost)
                    return
                self._write()
            except Exception as exc:  # a failed refresh is retried at the next beat
                log.warning("could not refresh lock %s: %s", self.record.lock_id[:12], exc)


def _pid_namespace() -> int:
    # Containers on one host may share a host name but not PIDs, so the PID check
    # applies only within the same PID namespace.
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
