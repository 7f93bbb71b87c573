"""Repositories on S3 through real s3fs against a local moto server: cycle, cache, Object Lock."""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from casbak.catalog import load_manifests, resolve_snapshot
from casbak.errors import EXIT_USAGE
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from casbak.store.backend import open_backend
from casbak.store.cache import CachedBackend, default_cache_root
from casbak.store.repository import Repository
from tests.conftest import FAST_KDF, PASSWORD, make_tree, read_tree, small_config
from tests.servers import counting_proxy, moto_server, run_cli  # noqa: F401 - fixtures

CLI_PASSWORD = "s3 test password"


def _source_spec() -> dict:
    return {
        "prefs.jsonl": os.urandom(120_000),
        "empty.txt": b"",
        "configs": {"dpo.yaml": b"beta: 0.1\n", "nested": {"notes.md": b"# run 7\n" * 100}},
        "link": ("symlink", "configs/dpo.yaml"),
    }


def _open_options(endpoint: str) -> dict:
    # A fresh filesystem object per test keeps fsspec's instance cache from sharing
    # state between tests that talk to different endpoints.
    return {"endpoint_url": endpoint, "skip_instance_cache": True}


def test_s3_snapshot_restore_cycle_api(moto_server, tmp_path):
    url = f"s3://{moto_server.new_bucket()}/backups/main"
    options = _open_options(moto_server.endpoint)
    source = tmp_path / "source"
    spec = _source_spec()
    make_tree(source, spec)
    Repository.init(url, PASSWORD, config=small_config(), kdf=FAST_KDF, options=options)
    repository = Repository.open(url, PASSWORD, options)

    first = create_snapshot(repository, [str(source)])
    target = tmp_path / "target"
    restore_snapshot(repository, resolve_snapshot(repository, "latest"), str(target), str(source))
    packs_before = repository.backend.list("data")
    second = create_snapshot(Repository.open(url, PASSWORD, options), [str(source)])

    assert read_tree(target) == spec
    assert first.stats.files_new == 4
    assert second.stats.bytes_read == 0
    assert second.stats.chunks_new == 0
    assert repository.backend.list("data") == packs_before
    assert len(repository.list_snapshot_ids()) == 2


@pytest.mark.slow
def test_s3_snapshot_restore_cycle_cli(moto_server, tmp_path):
    url = f"s3://{moto_server.new_bucket()}/cli"
    source = tmp_path / "source"
    spec = _source_spec()
    make_tree(source, spec)
    environment = {"CASBAK_PASSWORD": CLI_PASSWORD, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    common = ["-r", url, "-o", f"s3.endpoint_url={moto_server.endpoint}"]

    created = run_cli([*common, "init", "--kdf-n", "1024"], environment)
    first = run_cli([*common, "--json", "snapshot", str(source)], environment)
    restored = run_cli([*common, "restore", "latest", "--target", str(tmp_path / "target")], environment)
    second = run_cli([*common, "--json", "snapshot", str(source)], environment)

    assert created.returncode == 0, created.stderr
    assert first.returncode == 0, first.stderr
    assert restored.returncode == 0, restored.stderr
    assert second.returncode == 0, second.stderr
    assert read_tree(tmp_path / "target" / source.relative_to("/")) == spec
    assert '"bytes_read": 0' in second.stdout
    assert '"chunks_new": 0' in second.stdout


def test_s3_wrong_endpoint_fails_cleanly(tmp_path):
    # Nothing listens on port 9 (discard) of the loopback address.
    environment = {"CASBAK_PASSWORD": CLI_PASSWORD, "CASBAK_RETRIES": "2"}
    common = ["-r", "s3://nobucket/x", "-o", "s3.endpoint_url=http://127.0.0.1:9",
              "-o", "s3.config_kwargs.retries.max_attempts=0", "-o", "s3.config_kwargs.connect_timeout=1"]

    result = run_cli([*common, "snapshots"], environment, timeout=300)

    assert result.returncode == 1
    assert "gave up after 2 attempts" in result.stderr
    assert "casbak: error:" in result.stderr
    assert "Traceback" not in result.stderr


# Cache


def _index_gets(proxy) -> int:
    return proxy.log.count("GET", "/index/")


def test_s3_second_open_reads_index_from_cache(moto_server, counting_proxy, tmp_path):
    url = f"s3://{moto_server.new_bucket()}/cached"
    options = _open_options(counting_proxy.endpoint)
    make_tree(tmp_path / "source", _source_spec())
    Repository.init(url, PASSWORD, config=small_config(), kdf=FAST_KDF, options=options)
    create_snapshot(Repository.open(url, PASSWORD, options), [str(tmp_path / "source")])
    counting_proxy.log.clear()

    first = Repository.open(url, PASSWORD, options)
    first_objects = len(first.index)
    second = Repository.open(url, PASSWORD, options)
    second_objects = len(second.index)

    assert isinstance(first.backend, CachedBackend)
    assert first_objects == second_objects > 0
    # The writing run stored its index files in the cache already, so neither open downloads them.
    assert _index_gets(counting_proxy) == 0
    assert counting_proxy.log.count("GET", "/snapshots/") == 0


def test_s3_unchanged_daily_run_downloads_nothing(moto_server, counting_proxy, tmp_path):
    url = f"s3://{moto_server.new_bucket()}/daily"
    options = _open_options(counting_proxy.endpoint)
    make_tree(tmp_path / "source", _source_spec())
    Repository.init(url, PASSWORD, config=small_config(), kdf=FAST_KDF, options=options)
    create_snapshot(Repository.open(url, PASSWORD, options), [str(tmp_path / "source")])
    counting_proxy.log.clear()

    second = create_snapshot(Repository.open(url, PASSWORD, options), [str(tmp_path / "source")])

    assert second.stats.files_unmodified == 4
    # The parent's manifest, its trees and the index all come from the cache.
    for prefix in ("/index/", "/tree/", "/snapshots/", "/data/"):
        assert counting_proxy.log.count("GET", prefix) == 0, prefix
    assert counting_proxy.log.count("PUT", "/snapshots/") == 1


def test_s3_cold_cache_downloads_each_index_once(moto_server, counting_proxy, tmp_path, monkeypatch):
    url = f"s3://{moto_server.new_bucket()}/cold"
    options = _open_options(counting_proxy.endpoint)
    make_tree(tmp_path / "source", _source_spec())
    Repository.init(url, PASSWORD, config=small_config(), kdf=FAST_KDF, options=options)
    create_snapshot(Repository.open(url, PASSWORD, options), [str(tmp_path / "source")])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-cache"))
    counting_proxy.log.clear()

    cold = Repository.open(url, PASSWORD, options)
    index_files = len(cold.backend.list("index"))
    cold.load_index()
    warm_before = _index_gets(counting_proxy)
    Repository.open(url, PASSWORD, options).load_index()

    assert index_files > 0
    assert warm_before == index_files
    assert _index_gets(counting_proxy) == index_files


def test_s3_corrupt_cache_entry_is_refetched(moto_server, counting_proxy, tmp_path, caplog):
    url = f"s3://{moto_server.new_bucket()}/corrupt"
    options = _open_options(counting_proxy.endpoint)
    source = tmp_path / "source"
    spec = _source_spec()
    make_tree(source, spec)
    Repository.init(url, PASSWORD, config=small_config(), kdf=FAST_KDF, options=options)
    repository = Repository.open(url, PASSWORD, options)
    create_snapshot(repository, [str(source)])
    cache_dir = default_cache_root() / repository.config.repository_id
    index_name = repository.backend.list("index")[0]
    tree_name = repository.backend.list("tree")[0]
    for name in (index_name, tree_name):
        entry = cache_dir / name
        damaged = bytearray(entry.read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF
        entry.write_bytes(bytes(damaged))
    counting_proxy.log.clear()

    with caplog.at_level(logging.WARNING, logger="casbak.store.cache"):
        reopened = Repository.open(url, PASSWORD, options)
        target = tmp_path / "target"
        restore_snapshot(reopened, resolve_snapshot(reopened, "latest"), str(target), str(source))

    assert read_tree(target) == spec
    assert counting_proxy.log.count("GET", f"/{index_name}") == 1
    assert counting_proxy.log.count("GET", f"/{tree_name}") == 1
    assert sum("damaged" in record.getMessage() for record in caplog.records) == 2
    assert (cache_dir / index_name).read_bytes()[:-32] == reopened.backend.read(index_name)


def test_s3_cache_drops_deleted_index_files(moto_server, tmp_path):
    url = f"s3://{moto_server.new_bucket()}/pruned"
    options = _open_options(moto_server.endpoint)
    make_tree(tmp_path / "source", _source_spec())
    Repository.init(url, None, config=small_config(encrypted=False), options=options)
    repository = Repository.open(url, None, options)
    create_snapshot(repository, [str(tmp_path / "source")])
    cache_dir = default_cache_root() / repository.config.repository_id
    doomed = repository.backend.list("index")[0]
    repository.backend.inner.delete(doomed)  # removed behind the cache's back, as another host's gc would

    Repository.open(url, None, options).load_index()

    assert not (cache_dir / doomed).exists()


def test_cli_no_cache_leaves_cache_empty(moto_server, tmp_path):
    url = f"s3://{moto_server.new_bucket()}/cli-nocache"
    make_tree(tmp_path / "source", _source_spec())
    cache = tmp_path / "cache"
    environment = {"CASBAK_PASSWORD": CLI_PASSWORD, "XDG_CACHE_HOME": str(cache)}
    common = ["-r", url, "-o", f"s3.endpoint_url={moto_server.endpoint}"]

    created = run_cli([*common, "init", "--kdf-n", "1024"], environment)
    snapshot = run_cli([*common, "snapshot", str(tmp_path / "source"), "--no-cache"], environment)

    assert created.returncode == 0, created.stderr
    assert snapshot.returncode == 0, snapshot.stderr
    assert not (cache / "casbak").exists()


def test_cache_can_be_turned_off(moto_server, monkeypatch):
    monkeypatch.setenv("CASBAK_NO_CACHE", "1")
    url = f"s3://{moto_server.new_bucket()}/nocache"
    options = _open_options(moto_server.endpoint)
    Repository.init(url, None, config=small_config(encrypted=False), options=options)

    repository = Repository.open(url, None, options)

    assert not isinstance(repository.backend, CachedBackend)


# Object Lock


@dataclass(frozen=True)
class LockedRepository:
    bucket: str
    url: str
    mode: str


@pytest.fixture(scope="module")
def locked_repositories(moto_server, tmp_path_factory) -> dict[str, LockedRepository]:
    """One snapshot in an Object Lock bucket per mode: governance repositories by the CLI, compliance by the API."""
    work = tmp_path_factory.mktemp("locked")
    make_tree(work / "source", _source_spec())
    repositories = {}

    bucket = moto_server.new_bucket(object_lock=True)
    url = f"s3://{bucket}/locked"
    environment = {"CASBAK_PASSWORD": CLI_PASSWORD, "XDG_CACHE_HOME": str(work / "cache")}
    common = ["-r", url, "-o", f"s3.endpoint_url={moto_server.endpoint}"]
    created = run_cli([*common, "init", "--kdf-n", "1024", "--object-lock-days", "3"], environment)
    assert created.returncode == 0, created.stderr
    snapshot = run_cli([*common, "snapshot", str(work / "source")], environment)
    assert snapshot.returncode == 0, snapshot.stderr
    repositories["governance"] = LockedRepository(bucket, url, "governance")

    bucket = moto_server.new_bucket(object_lock=True)
    url = f"s3://{bucket}/locked"
    options = _open_options(moto_server.endpoint)
    config = small_config(object_lock_days=3, object_lock_mode="compliance")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(work / "api-cache"))
        Repository.init(url, CLI_PASSWORD.encode(), config=config, kdf=FAST_KDF, options=options)
        create_snapshot(Repository.open(url, CLI_PASSWORD.encode(), options), [str(work / "source")])
    repositories["compliance"] = LockedRepository(bucket, url, "compliance")
    return repositories


def _keys(client, bucket: str, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


@pytest.mark.parametrize("mode", ["governance", "compliance"])
def test_object_lock_retention_on_written_files(moto_server, locked_repositories, mode):
    bucket = locked_repositories[mode].bucket
    client = moto_server.client()
    now = dt.datetime.now(dt.timezone.utc)

    locked = [key for prefix in ("locked/data/", "locked/tree/", "locked/index/", "locked/snapshots/")
              for key in _keys(client, bucket, prefix)]
    config_head = client.head_object(Bucket=bucket, Key="locked/config")

    assert {key.split("/")[1] for key in locked} == {"data", "tree", "index", "snapshots"}
    for key in locked:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == mode.upper(), key
        retain_until = head["ObjectLockRetainUntilDate"]
        assert now + dt.timedelta(days=2) < retain_until < now + dt.timedelta(days=4), key
    assert "ObjectLockMode" not in config_head


@pytest.mark.parametrize("mode", ["governance", "compliance"])
def test_object_lock_blocks_deleting_versions(moto_server, locked_repositories, mode):
    bucket = locked_repositories[mode].bucket
    client = moto_server.client()
    keys = [_keys(client, bucket, "locked/snapshots/")[0], _keys(client, bucket, "locked/data/")[0],
            _keys(client, bucket, "locked/index/")[0]]

    for key in keys:
        version = client.head_object(Bucket=bucket, Key=key)["VersionId"]
        with pytest.raises(ClientError) as raised:
            client.delete_object(Bucket=bucket, Key=key, VersionId=version)
        assert raised.value.response["Error"]["Code"] == "AccessDenied", key


def test_object_lock_delete_leaves_locked_version(moto_server, locked_repositories):
    locked = locked_repositories["governance"]
    client = moto_server.client()
    key = _keys(client, locked.bucket, "locked/tree/")[0]
    version = client.head_object(Bucket=locked.bucket, Key=key)["VersionId"]
    backend = open_backend(locked.url, _open_options(moto_server.endpoint))

    # A delete without a version id only stacks a delete marker on top.
    backend.delete(key.removeprefix("locked/"))
    locked_content = client.get_object(Bucket=locked.bucket, Key=key, VersionId=version)["Body"].read()

    assert not backend.exists(key.removeprefix("locked/"))
    assert len(locked_content) > 0


def test_object_lock_rejects_bucket_without_lock(moto_server, tmp_path):
    url = f"s3://{moto_server.new_bucket()}/nolock"
    environment = {"CASBAK_PASSWORD": CLI_PASSWORD}
    common = ["-r", url, "-o", f"s3.endpoint_url={moto_server.endpoint}"]

    result = run_cli([*common, "init", "--kdf-n", "1024", "--object-lock-days", "3"], environment)

    assert result.returncode == EXIT_USAGE
    assert "Object Lock" in result.stderr
    assert "Traceback" not in result.stderr


def test_object_lock_rejects_non_s3_location(tmp_path):
    environment = {"CASBAK_PASSWORD": CLI_PASSWORD}

    result = run_cli(["-r", str(tmp_path / "repo"), "init", "--object-lock-days", "3"], environment)

    assert result.returncode == EXIT_USAGE
    assert "s3://" in result.stderr
    assert not Path(tmp_path / "repo" / "config").exists()


def test_object_lock_setting_survives_reopen(moto_server, locked_repositories):
    locked = locked_repositories["governance"]

    repository = Repository.open(locked.url, CLI_PASSWORD.encode(), _open_options(moto_server.endpoint))

    assert repository.config.object_lock_days == 3
    assert repository.config.object_lock_mode == "governance"
    assert repository.backend.object_lock is not None
    assert len(load_manifests(repository)) == 1
