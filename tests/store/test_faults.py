"""Retries under injected faults: error classification, backoff, and snapshots through a faulty proxy."""

from __future__ import annotations

import errno
import logging
import os

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from s3fs.errors import translate_boto_error

from casbak.catalog import resolve_snapshot
from casbak.errors import StorageError
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from casbak.store.backend import FsspecBackend
from casbak.store.repository import Repository
from casbak.store.retry import RetryPolicy, call_with_retry, is_transient
from tests.conftest import FAST_KDF, PASSWORD, make_tree, read_tree, small_config
from tests.servers import FaultPlan, FaultProxy, moto_server, run_cli  # noqa: F401 - fixtures

FAST_RETRIES = RetryPolicy(attempts=12, base_delay=0.01, max_delay=0.2)


def _client_error(status: int, code: str) -> ClientError:
    response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


# Classification of real client library errors


@pytest.mark.parametrize(
    "status, code",
    [(503, "SlowDown"), (500, "InternalError"), (503, "ServiceUnavailable"), (400, "RequestTimeout"), (429, "TooManyRequests")],
)
def test_s3_server_errors_are_transient(status, code):
    assert is_transient(translate_boto_error(_client_error(status, code)))


@pytest.mark.parametrize("status, code", [(403, "AccessDenied"), (404, "NoSuchKey"), (400, "InvalidRequest")])
def test_s3_client_errors_are_permanent(status, code):
    assert not is_transient(translate_boto_error(_client_error(status, code)))


def test_connection_errors_are_transient():
    assert is_transient(ConnectionResetError(errno.ECONNRESET, "reset by peer"))
    assert is_transient(TimeoutError("read timed out"))
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))


def test_gcs_errors_classified_by_status():
    from gcsfs.retry import HttpError

    assert is_transient(HttpError({"code": 503, "message": "backend error"}))
    assert is_transient(HttpError({"code": 429, "message": "rate limit"}))
    assert not is_transient(HttpError({"code": 400, "message": "bad request"}))
    assert not is_transient(OSError("Forbidden: b/bucket/o/name"))


# call_with_retry


class FlakyCall:
    """Raises the given errors in turn, then returns "done"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_retry_recovers_and_logs_each_attempt(caplog):
    flaky = FlakyCall(ConnectionResetError("reset"), translate_boto_error(_client_error(503, "SlowDown")))

    with caplog.at_level(logging.WARNING, logger="casbak.store.retry"):
        result = call_with_retry(flaky, "write", "data/ab/pack", "s3://bucket/repo", FAST_RETRIES)

    assert result == "done"
    assert flaky.calls == 3
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert all("write data/ab/pack failed" in message for message in messages)
    assert "ConnectionResetError" in messages[0]
    assert "SlowDown" in messages[1]


def test_retry_stops_after_max_attempts():
    flaky = FlakyCall(*[ConnectionResetError("reset")] * 5)

    with pytest.raises(StorageError, match="gave up after 3 attempts"):
        call_with_retry(flaky, "read", "index/1", "s3://bucket/repo", RetryPolicy(attempts=3, base_delay=0.001))

    assert flaky.calls == 3


def test_permanent_error_fails_at_once():
    flaky = FlakyCall(translate_boto_error(_client_error(403, "AccessDenied")))

    with pytest.raises(StorageError, match="check the credentials"):
        call_with_retry(flaky, "list", "snapshots", "s3://bucket/repo", FAST_RETRIES)

    assert flaky.calls == 1


def test_not_found_passes_through_unretried():
    flaky = FlakyCall(FileNotFoundError("index/9"))

    with pytest.raises(FileNotFoundError):
        call_with_retry(flaky, "read", "index/9", "s3://bucket/repo", FAST_RETRIES)

    assert flaky.calls == 1


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(attempts=10, base_delay=0.5, max_delay=4.0)

    delays = [max(policy.delay(failures) for _ in range(200)) for failures in range(1, 8)]

    assert all(0 <= delay <= 4.0 for delay in delays)
    assert delays[0] <= 0.5
    assert delays[-1] > 2.0


# Snapshots through a faulty proxy


@pytest.fixture
def faulty_proxy(moto_server):
    plan = FaultPlan(server_error=0.2, reset_before=0.05, reset_after=0.05, seed=7)
    proxy = FaultProxy(moto_server.endpoint, plan, max_requests=5000, max_seconds=240).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _bare_backend(url: str, endpoint: str) -> FsspecBackend:
    """A backend whose only retries are casbak's: botocore and s3fs make one attempt each."""
    options = {"endpoint_url": endpoint, "config_kwargs": {"retries": {"max_attempts": 0}}, "skip_instance_cache": True}
    backend = FsspecBackend(url, options, FAST_RETRIES)
    backend.fs.retries = 1
    return backend


def _spec() -> dict:
    return {
        "shard-0.jsonl": os.urandom(150_000),
        "shard-1.jsonl": os.urandom(60_000),
        "meta": {"card.md": b"# dataset card\n" * 50, "empty": b""},
    }


def _read_every_object(repository: Repository) -> int:
    digests = list(repository.index.digests())
    for digest in digests:
        repository.get(digest)
    return len(digests)


def test_snapshot_through_faults_completes(moto_server, faulty_proxy, tmp_path, caplog):
    url = f"s3://{moto_server.new_bucket()}/faulty"
    source = tmp_path / "source"
    spec = _spec()
    make_tree(source, spec)

    with caplog.at_level(logging.WARNING, logger="casbak.store.retry"):
        Repository.init(_bare_backend(url, faulty_proxy.endpoint), PASSWORD, config=small_config(), kdf=FAST_KDF)
        repository = Repository.open(_bare_backend(url, faulty_proxy.endpoint), PASSWORD)
        create_snapshot(repository, [str(source)])
        second = create_snapshot(Repository.open(_bare_backend(url, faulty_proxy.endpoint), PASSWORD), [str(source)])

    clean = Repository.open(url, PASSWORD, {"endpoint_url": moto_server.endpoint, "skip_instance_cache": True})
    target = tmp_path / "target"
    restore_snapshot(clean, resolve_snapshot(clean, "latest"), str(target), str(source))
    assert sum(faulty_proxy.log.faults.values()) > 0
    assert any("retrying" in record.getMessage() for record in caplog.records)
    assert second.stats.chunks_new == 0
    assert read_tree(target) == spec
    assert _read_every_object(clean) > 0
    assert len(clean.list_snapshot_ids()) == 2


def test_snapshot_fails_cleanly_when_store_is_down(moto_server, faulty_proxy, tmp_path):
    url = f"s3://{moto_server.new_bucket()}/down"
    source = tmp_path / "source"
    spec = _spec()
    make_tree(source, spec)
    faulty_proxy.plan = FaultPlan()
    Repository.init(_bare_backend(url, faulty_proxy.endpoint), PASSWORD, config=small_config(), kdf=FAST_KDF)
    create_snapshot(Repository.open(_bare_backend(url, faulty_proxy.endpoint), PASSWORD), [str(source)])
    make_tree(source, {"shard-2.jsonl": os.urandom(80_000)})
    repository = Repository.open(_bare_backend(url, faulty_proxy.endpoint), PASSWORD)
    repository.load_index()
    faulty_proxy.plan = FaultPlan(server_error=1.0)

    with pytest.raises(StorageError, match="gave up after 12 attempts"):
        create_snapshot(repository, [str(source)])

    clean = Repository.open(url, PASSWORD, {"endpoint_url": moto_server.endpoint, "skip_instance_cache": True})
    target = tmp_path / "target"
    restore_snapshot(clean, resolve_snapshot(clean, "latest"), str(target), str(source))
    assert len(clean.list_snapshot_ids()) == 1
    assert read_tree(target) == spec
    assert _read_every_object(clean) > 0


@pytest.mark.slow
def test_cli_snapshot_through_faults(moto_server, faulty_proxy, tmp_path):
    url = f"s3://{moto_server.new_bucket()}/cli-faulty"
    source = tmp_path / "source"
    spec = _spec()
    make_tree(source, spec)
    environment = {"CASBAK_PASSWORD": "fault test", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    direct = ["-r", url, "-o", f"s3.endpoint_url={moto_server.endpoint}"]
    proxied = ["-r", url, "-o", f"s3.endpoint_url={faulty_proxy.endpoint}"]

    created = run_cli([*direct, "init", "--kdf-n", "1024"], environment)
    snapshot = run_cli([*proxied, "snapshot", str(source)], environment)
    restored = run_cli([*direct, "restore", "latest", "--target", str(tmp_path / "target")], environment)

    assert created.returncode == 0, created.stderr
    assert sum(faulty_proxy.log.faults.values()) > 0
    # The client libraries' own retries plus casbak's must carry the run through 30% faults.
    assert snapshot.returncode == 0, snapshot.stderr
    assert restored.returncode == 0, restored.stderr
    assert read_tree(tmp_path / "target" / source.relative_to("/")) == spec
