"""One conformance suite for every storage backend: local, memory://, S3 (moto), GCS (emulator)."""

from __future__ import annotations

import logging
import os
import uuid

import blake3
import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casbak.cli.context import parse_options
from casbak.errors import ObjectNotFound, StorageError
from casbak.store.backend import FsspecBackend, LocalBackend, open_backend
from casbak.store.cache import CachedBackend, MetadataCache
from casbak.store.retry import RetryPolicy
from tests.servers import FaultPlan, FaultProxy, counting_proxy, gcs_server, moto_server  # noqa: F401 - fixtures

# "cached" is a memory:// store behind the metadata cache that remote repositories use.
KINDS = ["local", "memory", "cached", "s3", "gcs"]


def _fresh_url_and_options(kind, request, tmp_path):
    if kind == "local":
        return str(tmp_path / "store"), {}
    if kind in ("memory", "cached"):
        return f"memory://casbak-conformance-{uuid.uuid4().hex}", {}
    if kind == "s3":
        server = request.getfixturevalue("moto_server")
        return f"s3://{server.new_bucket()}/repo", {"endpoint_url": server.endpoint}
    server = request.getfixturevalue("gcs_server")
    return f"gs://{server.new_bucket()}/repo", server.options()


@pytest.fixture(params=KINDS)
def store(request, tmp_path):
    """(backend, url, options) of an empty store of each kind."""
    url, options = _fresh_url_and_options(request.param, request, tmp_path)
    backend = open_backend(url, options)
    if request.param == "cached":
        backend = CachedBackend(backend, MetadataCache(tmp_path / "cache"))
    return backend, url, options


def _second_client(url, options):
    """Open the same store through a separate filesystem object with its own caches."""
    if "://" not in url:
        return LocalBackend(url)
    backend = FsspecBackend(url, {**options, "skip_instance_cache": True})
    return backend


def test_open_backend_picks_class(store):
    backend, url, _options = store
    expected = LocalBackend if "://" not in url else FsspecBackend
    assert isinstance(getattr(backend, "inner", backend), expected)


def test_write_then_read_whole(store):
    backend, _url, _options = store
    payload = os.urandom(70_000)

    backend.write("data/ab/object", payload)

    assert backend.read("data/ab/object") == payload


def test_range_reads(store):
    backend, _url, _options = store
    payload = bytes(range(256)) * 40
    backend.write("tree/01/pack", payload)

    assert backend.read("tree/01/pack", 0, 10) == payload[:10]
    assert backend.read("tree/01/pack", 100, 356) == payload[100:356]
    assert backend.read("tree/01/pack", len(payload) - 8, len(payload)) == payload[-8:]
    assert backend.read("tree/01/pack", 5000) == payload[5000:]


def test_size_and_exists(store):
    backend, _url, _options = store
    backend.write("index/one", b"x" * 1234)

    assert backend.size("index/one") == 1234
    assert backend.exists("index/one")
    assert not backend.exists("index/two")


def test_missing_file_raises_not_found(store):
    backend, _url, _options = store

    with pytest.raises(ObjectNotFound):
        backend.read("snapshots/missing")
    with pytest.raises(ObjectNotFound):
        backend.size("snapshots/missing")


def test_list_is_recursive_sorted_and_relative(store):
    backend, _url, _options = store
    for name in ("data/bb/2", "data/aa/1", "index/9", "snapshots/s"):
        backend.write(name, name.encode())

    assert backend.list("data") == ["data/aa/1", "data/bb/2"]
    assert backend.list("index") == ["index/9"]
    assert backend.list("keys") == []


def test_delete_removes_and_tolerates_missing(store):
    backend, _url, _options = store
    backend.write("data/aa/1", b"one")

    backend.delete("data/aa/1")
    backend.delete("data/aa/1")

    assert not backend.exists("data/aa/1")
    assert backend.list("data") == []


def test_overwrite_of_same_content_is_harmless(store):
    backend, _url, _options = store
    payload = os.urandom(5000)
    backend.write("data/cc/same", payload)

    backend.write("data/cc/same", payload)

    assert backend.read("data/cc/same") == payload
    assert backend.list("data") == ["data/cc/same"]


def test_listing_sees_changes_made_by_another_client(store):
    backend, url, options = store
    backend.write("index/first", b"1")
    assert backend.list("index") == ["index/first"]
    assert backend.exists("index/first")
    other = _second_client(url, options)

    other.write("index/second", b"2")
    other.delete("index/first")

    assert backend.list("index") == ["index/second"]
    assert not backend.exists("index/first")
    assert backend.exists("index/second")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(min_size=1, max_size=3000), data=st.data())
def test_range_read_matches_slice(store, payload, data):
    backend, _url, _options = store
    start = data.draw(st.integers(0, len(payload) - 1))
    end = data.draw(st.integers(start + 1, len(payload)))
    backend.write("data/dd/range", payload)

    assert backend.read("data/dd/range", start, end) == payload[start:end]


def test_s3_cli_options_reach_s3fs(moto_server):
    url = f"s3://{moto_server.new_bucket()}/repo"
    options = parse_options([
        f"s3.endpoint_url={moto_server.endpoint}",
        "s3.client_kwargs.region_name=us-east-1",
        "s3.config_kwargs.connect_timeout=7",
        "s3.skip_instance_cache=true",
    ])

    backend = open_backend(url, options)
    backend.write("config", b"c")

    assert isinstance(backend, FsspecBackend)
    assert backend.fs.endpoint_url == moto_server.endpoint
    assert backend.fs.client_kwargs == {"region_name": "us-east-1"}
    assert backend.fs.config_kwargs == {"connect_timeout": 7}
    assert backend.read("config") == b"c"


@pytest.mark.slow
def test_s3_large_write_uses_multipart_and_completes(moto_server, counting_proxy):
    url = f"s3://{moto_server.new_bucket()}/repo"
    backend = open_backend(url, {"endpoint_url": counting_proxy.endpoint, "skip_instance_cache": True})
    # s3fs switches to a multipart upload at twice its 50 MiB part size.
    payload = os.urandom(101 * 1024 * 1024)

    backend.write("data/ee/big", payload)

    assert counting_proxy.log.count("POST", "/data/ee/big") == 2  # create and complete
    assert backend.size("data/ee/big") == len(payload)
    assert backend.read("data/ee/big", 60 * 1024 * 1024, 60 * 1024 * 1024 + 16) == payload[60 * 1024 * 1024 :][:16]
    assert fsspec.filesystem("s3", endpoint_url=moto_server.endpoint).exists(f"{url}/data/ee/big")


@pytest.mark.slow
def test_s3_failed_multipart_leaves_nothing(moto_server):
    url = f"s3://{moto_server.new_bucket()}/repo"
    # Every CompleteMultipartUpload request fails, and casbak makes a single attempt.
    proxy = FaultProxy(moto_server.endpoint, FaultPlan(always_fail=("POST", "uploadId=")), max_requests=200).start()
    try:
        options = {"endpoint_url": proxy.endpoint, "config_kwargs": {"retries": {"max_attempts": 0}},
                   "skip_instance_cache": True}
        backend = FsspecBackend(url, options, RetryPolicy(attempts=1))
        backend.fs.retries = 1

        with pytest.raises(StorageError):
            backend.write("data/ff/big", os.urandom(101 * 1024 * 1024))
    finally:
        proxy.stop()

    direct = open_backend(url, {"endpoint_url": moto_server.endpoint})
    assert not direct.exists("data/ff/big")
    assert direct.list("data") == []
    assert proxy.log.faults["server_error"] >= 1
    assert proxy.log.count("PUT", "/data/ff/big") >= 2  # the parts were uploaded


# The metadata cache over a memory:// store


@pytest.fixture
def cached_store(tmp_path):
    inner = open_backend(f"memory://casbak-cache-{uuid.uuid4().hex}")
    return CachedBackend(inner, MetadataCache(tmp_path / "cache")), inner


def test_cached_range_reads_match_store(cached_store):
    cached, inner = cached_store
    payload = os.urandom(9000)
    name = f"tree/aa/{blake3.blake3(payload).hexdigest()}"
    inner.write(name, payload)

    first = cached.read_cached(name, 100, 400)
    second = cached.read_cached(name, 8000, 9000)

    assert first == payload[100:400]
    assert second == payload[8000:9000]
    assert cached.cache.misses == 1
    assert cached.cache.hits == 1


def test_cache_skips_file_not_matching_name(cached_store, caplog):
    cached, inner = cached_store
    inner.write("index/" + "0" * 64, b"not the content its name promises")

    with caplog.at_level(logging.WARNING, logger="casbak.store.cache"):
        data = cached.read_cached("index/" + "0" * 64)

    assert data == b"not the content its name promises"
    assert cached.cache.names("index") == []
    assert "does not match its name" in caplog.text


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_cache_entry_is_refetched(cached_store, damage):
    cached, _inner = cached_store
    payload = os.urandom(3000)
    name = f"index/{blake3.blake3(payload).hexdigest()}"
    cached.write(name, payload)
    entry = cached.cache.directory / name
    stored = entry.read_bytes()
    damaged = {"truncate": stored[:20], "flip": stored[:-1] + bytes([stored[-1] ^ 1]), "empty": b""}[damage]
    entry.write_bytes(damaged)

    data = cached.read_cached(name)

    assert data == payload
    assert entry.read_bytes() == stored


def test_cache_delete_discards_entry(cached_store):
    cached, inner = cached_store
    payload = b"manifest bytes"
    cached.write("snapshots/abc", payload)

    cached.delete("snapshots/abc")

    assert not inner.exists("snapshots/abc")
    assert cached.cache.names("snapshots") == []


def test_data_packs_are_not_cached(cached_store):
    cached, inner = cached_store
    payload = os.urandom(2000)
    name = f"data/bb/{blake3.blake3(payload).hexdigest()}"
    cached.write(name, payload)

    assert cached.read_cached(name, 10, 20) == payload[10:20]
    assert cached.cache.names("data") == []


def test_unwritable_cache_logs_once_and_still_reads(tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"a file where the cache directory should be")
    inner = open_backend(f"memory://casbak-cache-{uuid.uuid4().hex}")
    cached = CachedBackend(inner, MetadataCache(blocker / "cache"))
    payloads = [os.urandom(500) for _ in range(3)]

    with caplog.at_level(logging.WARNING, logger="casbak.store.cache"):
        for payload in payloads:
            name = f"index/{blake3.blake3(payload).hexdigest()}"
            cached.write(name, payload)
            assert cached.read_cached(name) == payload

    warnings = [record for record in caplog.records if "could not be written" in record.getMessage()]
    assert len(warnings) == 1
    assert cached.cache.write_failed


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_write_to_missing_bucket_fails_cleanly(request, kind):
    if kind == "s3":
        server = request.getfixturevalue("moto_server")
        url, options = "s3://casbak-missing-bucket/repo", {"endpoint_url": server.endpoint}
    else:
        server = request.getfixturevalue("gcs_server")
        url, options = "gs://casbak-missing-bucket/repo", server.options()
    backend = open_backend(url, options)

    with pytest.raises(StorageError, match="create the bucket"):
        backend.write("keys/first", b"key file")
